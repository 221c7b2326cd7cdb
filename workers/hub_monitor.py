"""Pool fitness of a gevent worker: which task blocked the event loop, and for how long.

gevent's monitor thread notices a greenlet that has not yielded for ``threshold`` seconds.
This module ties that greenlet to the task it runs, measures the whole block, and reports
it once, when the loop runs again: a WARNING log line and the pool-fitness counters.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from greenlet import getcurrent, greenlet


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

    @contextmanager
    def running(self, task: str, job_id: str) -> Iterator[None]:
        """Mark the current greenlet as running ``task`` for the ``with`` block."""
        current = getcurrent()
        self._by_greenlet[current] = (task, job_id)
        try:
            yield
        finally:
            self._by_greenlet.pop(current, None)

    def of(self, runner: Any) -> tuple[str, str] | None:
        """``(task, job_id)`` for the greenlet ``runner``, or ``None``."""
        try:
            return self._by_greenlet.get(runner)
        except TypeError:  # not weak-referenceable: not one of ours
            return None


class HubBlockMonitor:
    """Turns gevent's "event loop blocked" events into one :class:`HubBlock` per block.

    gevent's monitor thread raises an event every ``threshold`` seconds while one greenlet
    holds the loop. A greenlet tracer notes when each greenlet was switched in and when the
    blocking one finally switched out, so the block's length is exact, not rounded to the
    monitor's period. ``report`` is then called in the hub's own thread, inside a new
    greenlet, where logging and I/O are safe.
    """

    def __init__(
        self, tasks: RunningTasks, threshold: float, report: Callable[[HubBlock], None]
    ) -> None:
        self._tasks = tasks
        self._threshold = threshold
        self._report = report
        self._lock = threading.Lock()
        self._hub: Any = None
        self._previous_trace: Any = None  # whichever tracer was installed before ours
        # written by the tracer, in the hub's thread
        self._switched_in_at = time.perf_counter()
        self._blocker_left_at: float | None = None
        # written by the monitor thread
        self._blocker: Any = None
        self._blocker_since = 0.0
        self._blocker_task: tuple[str, str] | None = None

    def start(self) -> None:
        """Start gevent's monitor thread for this thread's hub and listen to it."""
        import gevent  # noqa: PLC0415 - only a gevent worker may load gevent
        import greenlet  # noqa: PLC0415
        from gevent import events  # noqa: PLC0415

        gevent.config.monitor_thread = True
        gevent.config.max_blocking_time = self._threshold
        gevent.config.print_blocking_reports = False  # reported as JSON log lines instead
        self._hub = gevent.get_hub()
        monitor = self._hub.start_periodic_monitoring_thread()
        self._previous_trace = greenlet.settrace(self._trace)
        events.subscribers.append(self._on_event)
        monitor.add_monitoring_function(self._check, self._threshold / 2)

    def _trace(self, event: str, args: Any) -> None:
        # called in the hub's thread at every greenlet switch: keep it tiny
        if event in ("switch", "throw"):
            now = time.perf_counter()
            if args[0] is self._blocker and self._blocker_left_at is None:
                self._blocker_left_at = now
            self._switched_in_at = now
        if self._previous_trace is not None:
            self._previous_trace(event, args)

    def _on_event(self, event: object) -> None:
        # called in the monitor thread, for every gevent event
        from gevent.events import EventLoopBlocked  # noqa: PLC0415

        if not isinstance(event, EventLoopBlocked):
            return
        with self._lock:
            if event.greenlet is self._blocker:
                return
            self._close()
            # the greenlet has not switched out since it was switched in: the block began then
            self._blocker_since = self._switched_in_at
            self._blocker_left_at = None
            self._blocker_task = self._tasks.of(event.greenlet)
            self._blocker = event.greenlet

    def _check(self, _hub: object) -> None:
        # called in the monitor thread every half threshold
        with self._lock:
            if self._blocker is not None and self._blocker_left_at is not None:
                self._close()

    def _close(self) -> None:
        if self._blocker is None:
            return
        ended = self._blocker_left_at if self._blocker_left_at is not None else time.perf_counter()
        task, job_id = self._blocker_task or ("(not a task)", "")
        block = HubBlock(task=task, job_id=job_id, seconds=round(ended - self._blocker_since, 3))
        self._blocker = None
        self._blocker_task = None
        import gevent  # noqa: PLC0415

        # the hub runs the callback once it is free; the report needs a greenlet of its own
        self._hub.loop.run_callback_threadsafe(gevent.spawn, self._report, block)
