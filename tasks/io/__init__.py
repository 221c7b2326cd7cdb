"""Implementations of I/O-bound tasks, run by gevent workers on the ``io`` queue."""
