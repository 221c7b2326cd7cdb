"""Implementations of CPU-bound tasks, run by prefork workers on the ``cpu`` queue."""
