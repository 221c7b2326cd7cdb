"""``conveyor demo``: a realistic mixed workload through both pools on the local stack.

``workload`` plans the jobs and drives the image pipelines, ``receiver`` is the flaky
local peer they talk to, ``summary`` works out the figures, ``display`` shows them,
``readiness`` waits for the stack and ``runner`` puts the stack, the receiver and the
workload together; ``errors`` says why a demo ended early.
"""
