"""Pool fitness of a gevent worker: which task blocked the event loop, and for how long.

A task's greenlet that runs without yielding keeps every other greenlet (heartbeats and
acks included) waiting. gevent's monitor thread notices; this module ties the greenlet to
its task and reports each block once, when it is over: a WARNING log line and the
pool-fitness counters.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
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
    """Turns gevent's "event loop blocked" events into one :class:`HubBlock` per block.

    gevent's monitor thread checks the loop every ``threshold`` seconds and raises an event
    when the same greenlet ran through a whole period without yielding. The events of one
    greenlet make up one block; it is over once no event came for 1.5 periods. The task is
    looked up at the first event, while its greenlet is still running it. A block is caught
    once it lasts two periods, and its length is known to about one period: from the first
    event to the last, plus the two periods the checks cannot see. ``report`` is called in
    the hub's thread, inside a new greenlet, where logging and I/O are safe.
    """

    def __init__(
        self, tasks: RunningTasks, threshold: float, report: Callable[[HubBlock], None]
    ) -> None:
        self._tasks = tasks
        self._threshold = threshold
        self._report = report
        self._lock = threading.Lock()
        self._hub: Any = None
        self._spawn: Callable[..., Any] | None = None
        self._blocker: Any = None
        self._blocker_task: tuple[str, str] | None = None
        self._first_seen = 0.0
        self._last_seen = 0.0

    def start(self) -> None:
        """Start gevent's monitor thread for this thread's hub and listen to it."""
        import gevent  # noqa: PLC0415 - only a gevent worker may load gevent
        from gevent import events  # noqa: PLC0415

        gevent.config.monitor_thread = True
        gevent.config.max_blocking_time = self._threshold
        gevent.config.print_blocking_reports = False  # reported as JSON log lines instead
        self._hub = gevent.get_hub()
        self._spawn = gevent.spawn
        monitor = self._hub.start_periodic_monitoring_thread()
        events.subscribers.append(self._on_event)
        monitor.add_monitoring_function(self._check, self._threshold / 2)

    def _on_event(self, event: object) -> None:
        # called in the monitor thread, for every gevent event
        from gevent.events import EventLoopBlocked  # noqa: PLC0415

        # every hub's monitor thread (a thread pool's too) notifies the same subscribers
        if not isinstance(event, EventLoopBlocked) or event.hub is not self._hub:
            return
        now = time.monotonic()
        with self._lock:
            if event.greenlet is not self._blocker:
                self._close()
                self._blocker = event.greenlet
                self._blocker_task = self._tasks.of(event.greenlet)
                self._first_seen = now
            self._last_seen = now

    def _check(self, _hub: object) -> None:
        # called in the monitor thread every half period
        with self._lock:
            if self._blocker is not None and time.monotonic() - self._last_seen > (
                1.5 * self._threshold
            ):
                self._close()

    def _close(self) -> None:
        if self._blocker is None:
            return
        seconds = self._last_seen - self._first_seen + 2 * self._threshold
        running = self._blocker_task
        self._blocker = None
        self._blocker_task = None
        if running is None:
            return  # the worker's own greenlets: not a task's doing
        block = HubBlock(task=running[0], job_id=running[1], seconds=round(seconds, 2))
        # the hub runs the callback once it is free; the report needs a greenlet of its own
        self._hub.loop.run_callback_threadsafe(self._spawn, self._report, block)
