"""Conveyor's task catalog, the exceptions tasks raise, and the policies that answer them."""
