"""Conveyor's version: written here once; the package metadata, the API and User-Agents read it."""

VERSION = "0.1.0"
