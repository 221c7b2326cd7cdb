"""Retention, run by the workers: finished jobs past ``CONVEYOR_JOB_RETENTION`` /
``CONVEYOR_FAILED_RETENTION`` are deleted with their attempts, and blobs not written for
``CONVEYOR_BLOB_RETENTION`` that no remaining job names are deleted from the store.

The work goes in small steps that a loop beside the relay takes four times a second
(:meth:`Retention.step`): one batch of jobs, or one page of the blob sweep. So it never
holds a worker's event loop or a prefork main process for long, and never locks more than a
batch of rows. Every worker takes steps, but a batch needs the retention turn
(:mod:`workers.retention_turns`): one batch at a time across the deployment, at a pace that
slows when batches take long. A worker that found nothing to delete waits a while before it
looks again. The blob sweep reads the whole ledger, so one process per host and storage
directory makes it, under a claim in Redis.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from workers.blob_store import BlobStore
from workers.ledger.models import JobStatus
from workers.ledger.retention import blob_ids_named, prune_finished
from workers.retention_turns import RetentionTurns
from workers.settings import RetentionPeriods

logger = logging.getLogger(__name__)

#: Jobs deleted per transaction.
BATCH = 250
#: After a step that found nothing to delete, a worker looks again this much later, at most.
IDLE_WAIT = timedelta(seconds=60)
#: How often, at most, one process per host and storage directory sweeps the blobs.
BLOB_SWEEP_EVERY = timedelta(hours=1)


@dataclass
class Pruned:
    """What retention deleted so far in this process."""

    jobs: int = 0
    blobs: int = 0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Retention:
    """Takes the retention steps of one process."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        redis_client: Callable[[], redis.Redis],
        blobs: BlobStore,
        retention: RetentionPeriods,
        *,
        turns: RetentionTurns | None = None,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._redis = redis_client
        self._blobs = blobs
        self._retention = retention
        self._turns = turns or RetentionTurns(redis_client)
        self._clock = clock
        self._monotonic = monotonic
        # a short retention (tests, demos) is looked after more often than every minute
        shortest = min(retention.finished, retention.failed)
        self._idle_wait = min(IDLE_WAIT, shortest / 2).total_seconds()
        self._sweep_every = min(BLOB_SWEEP_EVERY, retention.blobs / 2)
        # each status on its own, so that the index gives its oldest rows in order
        self._kept_for = {
            JobStatus.SUCCEEDED.value: retention.finished,
            JobStatus.CANCELLED.value: retention.finished,
            JobStatus.FAILED.value: retention.failed,
        }
        self._next_prune = dict.fromkeys(self._kept_for, 0.0)
        self._sweep: Iterator[int] | None = None
        self.pruned = Pruned()

    def step(self) -> None:
        """One small piece of retention work, if any is due; a failure is logged."""
        try:
            if not self._prune_step():
                self._sweep_step()
        except (redis.RedisError, SQLAlchemyError, OSError) as error:
            logger.warning("retention could not run", extra={"reason": str(error)})

    def _prune_step(self) -> bool:
        """Delete one batch of expired jobs if this process has the turn; whether it did."""
        now = self._monotonic()
        due = [status for status, at in self._next_prune.items() if now >= at]
        if not due or not self._turns.take():
            return False
        try:
            for status in due:
                before = self._clock() - self._kept_for[status]
                deleted = prune_finished(self._engine(), status, before, batch=BATCH)
                if deleted:
                    self.pruned.jobs += deleted
                    logger.info(
                        "retention deleted %d %s jobs", deleted, status, extra={"deleted": deleted}
                    )
                    return True
                self._next_prune[status] = now + self._idle_wait
            return False
        finally:
            self._turns.spent(self._monotonic() - now)

    def _sweep_step(self) -> None:
        """Advance the blob sweep by one page, starting one when this process may."""
        if self._sweep is None:
            if not self._claim_sweep():
                return
            self._sweep = self._sweep_blobs()
        try:
            self.pruned.blobs += next(self._sweep)
        except StopIteration:
            self._sweep = None

    def _claim_sweep(self) -> bool:
        key = f"conveyor:retention:blobs:{socket.gethostname()}:{self._blobs.root.resolve()}"
        seconds = max(1, int(self._sweep_every.total_seconds()))
        return bool(self._redis().set(key, "1", nx=True, ex=seconds))

    def _sweep_blobs(self) -> Iterator[int]:
        """The blob sweep, a page at a time: each ``next`` does one page and yields how many
        blobs it deleted."""
        cutoff = (self._clock() - self._retention.blobs).timestamp()
        candidates = set(self._blobs.written_before(cutoff))
        yield 0
        if not candidates:
            return
        for named in blob_ids_named(self._engine()):
            candidates -= named
            yield 0
        removed = 0
        for blob_id in candidates:
            removed += self._blobs.remove_if_written_before(blob_id, cutoff)
        if removed:
            logger.info("retention deleted %d blobs no job names", removed)
        yield removed
