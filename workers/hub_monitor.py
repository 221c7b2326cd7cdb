"""Pool fitness of a gevent worker: which task blocked the event loop, and for how long.

A task's greenlet that runs without yielding keeps every other greenlet (heartbeats and
acks included) waiting. Every greenlet switch of the worker's thread is timed here: when a
task's greenlet switches out after running longer than the threshold, that stretch is one
block, reported once: a WARNING log line and the pool-fitness counters.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from greenlet import getcurrent, greenlet, settrace


@dataclass(frozen=True)
class HubBlock:
    """A stretch during which one task's greenlet kept the event loop from running."""

    task: str
    job_id: str
    seconds: float


class RunningTasks:
    """Which task each greenlet of this process is running."""

    def __init__(self) -> None:
        self._by_greenlet: weakref.WeakKeyDictionary[greenlet, tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )

    def mark(self, task: str, job_id: str) -> None:
        """Note that the current greenlet runs ``task``.

        The note stays until the greenlet runs another task or is gone: a block that ends
        as the task returns is still the task's, and so is the bookkeeping after it.
        """
        self._by_greenlet[getcurrent()] = (task, job_id)

    def of(self, runner: Any) -> tuple[str, str] | None:
        """``(task, job_id)`` for the greenlet ``runner``, or ``None``."""
        try:
            return self._by_greenlet.get(runner)
        except TypeError:  # not weak-referenceable: not one of ours
            return None


class HubBlockMonitor:
    """Times every greenlet switch in this thread and reports each long run of a task.

    A greenlet runs from the switch into it to the switch out of it; nothing else can run
    on the event loop meanwhile, so a run longer than ``threshold`` is a block, and its
    length is exact. The timing is a ``greenlet.settrace`` function (per thread, chained to
    any tracer installed before), which costs about a microsecond per switch. ``report`` is
    called later, in a new greenlet, where logging and I/O are safe.
    """

    def __init__(
        self, tasks: RunningTasks, threshold: float, report: Callable[[HubBlock], None]
    ) -> None:
        self._tasks = tasks
        self._threshold = threshold
        self._report = report
        self._hub: Any = None
        self._spawn: Callable[..., Any] | None = None
        self._previous: Any = None  # the tracer installed before, if any
        self._switched_in = time.perf_counter()

    def start(self) -> None:
        """Start timing the switches of this thread's greenlets."""
        import gevent  # noqa: PLC0415 - only a gevent worker may load gevent

        self._hub = gevent.get_hub()
        self._spawn = gevent.spawn
        self._switched_in = time.perf_counter()
        self._previous = settrace(self._trace)

    def _trace(self, event: str, args: Any) -> None:
        if self._previous is not None:
            self._previous(event, args)
        if event not in ("switch", "throw"):
            return
        now = time.perf_counter()
        ran = now - self._switched_in
        self._switched_in = now
        if ran < self._threshold:
            return
        origin = args[0]
        running = self._tasks.of(origin)
        if running is None or origin is self._hub:
            return  # the worker's own greenlets: not a task's doing
        block = HubBlock(task=running[0], job_id=running[1], seconds=round(ran, 2))
        # no switch may happen inside a trace function: the hub reports it once it runs
        self._hub.loop.run_callback(self._spawn, self._report, block)
