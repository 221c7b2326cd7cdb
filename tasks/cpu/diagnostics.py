"""CPU diagnostics: a busy loop that reports the pool it ran in."""

from __future__ import annotations

import time

from pydantic import JsonValue

from tasks.arguments import SpinArguments
from tasks.base import JobContext
from tasks.declaration import conveyor_task


def spin_for(milliseconds: int) -> int:
    """Busy-loop for ``milliseconds``; the number of iterations it managed."""
    deadline = time.perf_counter() + milliseconds / 1000
    iterations = 0
    while time.perf_counter() < deadline:
        iterations += 1
    return iterations


@conveyor_task("diagnostics.spin")
def spin(context: JobContext, arguments: SpinArguments) -> dict[str, JsonValue]:
    """Keep one core busy, then report the pool, worker and process."""
    return {
        "pool": context.pool,
        "worker": context.worker,
        "pid": context.pid,
        "iterations": spin_for(arguments.milliseconds),
    }
