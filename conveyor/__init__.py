"""Conveyor's operator tools: the ``conveyor`` command line, the local stack and the demo.

This package sits on top of the others: it may import the API, the worker runtime and the
tasks, and nothing imports it.
"""
