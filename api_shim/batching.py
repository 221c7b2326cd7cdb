"""Coalescing enqueues: concurrent requests share one ledger commit and one Redis round trip.

Each API process runs one writer thread. Requests hand it their submission and await a
future; the thread takes everything waiting (up to a cap), records it in one transaction,
publishes it in one pipeline, and answers each request. Under load this turns a commit
and a round trip per job into one per batch; alone, a request waits for nobody. Marking
the published jobs rides on the next round's commit (or is written alone 50 ms later),
so a request waits for one commit, not two.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from workers.enqueue import Accepted, Conflict, Enqueuer, Submission

logger = logging.getLogger(__name__)

_MAX_JOBS_PER_ROUND = 2000
# how long published jobs may wait for a round to carry their mark before it is written alone
_MARK_DELAY = 0.05
# the ledger itself is away: retrying submissions one by one would only wait longer
LEDGER_OUTAGE = (OperationalError, InterfaceError, PoolTimeoutError)


@dataclass(frozen=True)
class _Pending:
    submission: Submission
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Accepted | Conflict]


def _resolve(
    future: asyncio.Future[Accepted | Conflict], outcome: Accepted | Conflict | BaseException
) -> None:
    if future.done():  # the request was cancelled (client went away)
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class EnqueueBatcher:
    """Runs :meth:`Enqueuer.record_and_publish` on a writer thread for many requests at once."""

    def __init__(self, enqueuer: Enqueuer, *, max_jobs: int = _MAX_JOBS_PER_ROUND) -> None:
        self._enqueuer = enqueuer
        self._max_jobs = max_jobs
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="enqueue-writer", daemon=True)
        # published jobs whose "published" mark is written with the next round's commit
        self._unmarked: list[str] = []

    def __enter__(self) -> EnqueueBatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    async def submit(self, submission: Submission) -> Accepted | Conflict:
        """Record and publish ``submission``; raises what the ledger raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Accepted | Conflict] = loop.create_future()
        self._queue.put(_Pending(submission, loop, future))
        return await future

    def _run(self) -> None:
        while True:
            try:
                # with marks pending, wake up soon to write them even if no request comes
                first = self._queue.get(timeout=_MARK_DELAY if self._unmarked else None)
            except queue.Empty:
                self._flush_marks()
                continue
            if first is None:
                self._flush_marks()
                return
            round_ = [first]
            jobs = len(first.submission.jobs)
            stop = False
            while jobs < self._max_jobs:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                round_.append(item)
                jobs += len(item.submission.jobs)
            self._record(round_)
            if stop:
                self._flush_marks()
                return

    def _flush_marks(self) -> None:
        marks, self._unmarked = self._unmarked, []
        try:
            self._enqueuer.mark_published(marks)
        except Exception as error:  # noqa: BLE001 - the thread must outlive any one failure
            # kept for the next round's commit; should they never be written, the relay
            # publishes those jobs again and the workers drop the second message
            self._unmarked = marks + self._unmarked
            logger.warning("published marks not written yet", extra={"reason": str(error)})

    def _record(self, round_: Sequence[_Pending]) -> None:
        try:
            recorded = self._enqueuer.record_and_publish(
                [pending.submission for pending in round_], marks=self._unmarked
            )
        except Exception as error:  # noqa: BLE001 - handed to the requests that waited
            if len(round_) > 1 and not isinstance(error, LEDGER_OUTAGE):
                # one bad submission must not fail the others: record them one by one
                for pending in round_:
                    self._record([pending])
                return
            # every request of the round gets the error: the ledger is away
            outcomes: Sequence[Accepted | Conflict | BaseException] = [error] * len(round_)
        else:
            # the earlier marks were committed with this round; its own wait for the next
            self._unmarked = list(recorded.published)
            outcomes = recorded.answers
        for pending, outcome in zip(round_, outcomes, strict=True):
            pending.loop.call_soon_threadsafe(_resolve, pending.future, outcome)
