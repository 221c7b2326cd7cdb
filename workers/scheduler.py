"""Fires due schedules: each tick becomes exactly one job, however many schedulers run.

Every relay loop (:mod:`workers.relay`: each worker and each ``conveyor beat``) calls
:meth:`Scheduler.fire_due` once a run, in the process itself: a tick is never a Celery
message. In one transaction a scheduler claims the due schedules
(:func:`workers.ledger.schedules.claim_due`), moves each past its tick, and records the
tick's job with the idempotency key ``schedule:<name>:<tick>``; the client's unique keys
make a second job for the same tick impossible. After the commit the jobs are published;
one Redis refused stays in the outbox for the relay. Ticks missed while no scheduler ran
make one job, for the latest of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from tasks.catalog import Catalog
from workers.enqueue import Enqueuer, JobRequest
from workers.ledger import schedules
from workers.ledger.documents import timestamp
from workers.schedule_timing import MISSED_COUNTED_AT_MOST, Firing, ScheduleTimingError

logger = logging.getLogger(__name__)

# schedules fired per transaction; more due wait for the next run, a second later
_BATCH = 100


def _utcnow() -> datetime:
    return datetime.now(UTC)


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of schedule ``name``'s job for ``tick``."""
    return f"schedule:{name}:{timestamp(tick, 'seconds')}"


def _fingerprint(row: Mapping[str, Any]) -> str:
    """What a tick asks for, hashed: a job request reusing its key is told apart."""
    canonical = {key: row[key] for key in ("name", "task", "args", "priority")}
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()


class Scheduler:
    """Turns the due ticks of every client's schedules into jobs."""

    def __init__(
        self,
        engine_of: Callable[[], Engine],
        enqueuer_of: Callable[[], Enqueuer],
        catalog: Catalog,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._engine_of = engine_of
        self._enqueuer_of = enqueuer_of
        self._catalog = catalog
        self._clock = clock

    def fire_due(self, *, limit: int = _BATCH) -> int:
        """Fire every schedule due now (up to ``limit``); how many jobs were recorded.

        Raises the database's error if the ledger cannot be written: nothing is fired then.
        """
        now = self._clock()
        enqueuer = self._enqueuer_of()
        jobs: list[JobRequest] = []
        with self._engine_of().begin() as connection:
            for row in schedules.claim_due(connection, now, limit):
                firing = self._firing(row, now)
                if firing is None or not schedules.advance(connection, row, firing):
                    continue
                job = self._job(row, firing)
                if job is not None:
                    jobs.append(job)
            inserted = enqueuer.record(connection, jobs)
        recorded = [job for job in jobs if job.job_id in inserted]
        enqueuer.publish_recorded([job.dispatch() for job in recorded])
        return len(recorded)

    @staticmethod
    def _firing(row: Mapping[str, Any], now: datetime) -> Firing | None:
        try:
            firing = schedules.timing_of(row).fire(row["next_run_at"], now)
        except ScheduleTimingError as error:
            # stored by an older version that read it differently: the others still fire
            logger.error(  # noqa: TRY400 - the reason is the message; no traceback to add
                "schedule %s of client %s cannot tick: %s",
                row["name"],
                row["client_id"],
                error,
            )
            return None
        if firing.missed:
            logger.info(
                "schedule %s: %d%s missed ticks coalesced into the tick of %s",
                row["name"],
                firing.missed,
                " or more" if firing.missed >= MISSED_COUNTED_AT_MOST else "",
                timestamp(firing.tick),
                extra={
                    "schedule": row["name"],
                    "client_id": row["client_id"],
                    "missed_ticks": firing.missed,
                    "tick": timestamp(firing.tick),
                },
            )
        return firing

    def _job(self, row: Mapping[str, Any], firing: Firing) -> JobRequest | None:
        spec = self._catalog.get(row["task"])
        if spec is None:
            logger.error(
                "schedule %s of client %s names task %s, which is not in the catalog; "
                "its tick of %s made no job",
                row["name"],
                row["client_id"],
                row["task"],
                timestamp(firing.tick),
            )
            return None
        return JobRequest(
            job_id=str(uuid.uuid4()),
            client_id=row["client_id"],
            task=spec.name,
            queue=spec.queue,
            args=dict(row["args"] or {}),
            priority=row["priority"],
            max_attempts=spec.max_attempts,
            fingerprint=_fingerprint(row),
            idempotency_key=tick_key(row["name"], firing.tick),
            scheduled_for=firing.tick,
            schedule=row["name"],
        )
