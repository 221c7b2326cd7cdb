"""The local stack of ``conveyor dev`` and ``conveyor demo``: what it runs, and how it is
supervised."""
