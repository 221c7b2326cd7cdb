"""Recording jobs and handing them to the broker, so that none is lost between the two.

Each job is committed with a ``publish_after`` time before its message is pushed; once
Redis has it, the job leaves the outbox. If the process dies or Redis fails in between,
the relay (:meth:`Enqueuer.relay_due`, run by Celery beat) publishes it later. A job due
in the future waits in the ledger the same way instead of as a long broker ETA, which
Redis would redeliver after its visibility timeout. A duplicate publish is harmless: the
worker drops a message for a job that has finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Connection, Engine

from workers.broker import Dispatch, Priority, Publisher
from workers.ledger import outbox
from workers.ledger.models import JobStatus
from workers.ledger.outbox import RELAY_GRACE

logger = logging.getLogger(__name__)

# a reconciler reads every message Redis holds to find lost ones, up to this many
_MESSAGES_READ_AT_MOST = 200_000
_SECOND_LOOK_SECONDS = 1.0
# a countdown message due this long ago has surely started if its worker is alive
_COUNTDOWN_SLACK = timedelta(seconds=30)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobRequest:
    """One job as the producer prepared it, ready to record."""

    job_id: str
    client_id: str
    task: str
    queue: str
    args: dict[str, Any]
    priority: Priority
    max_attempts: int
    fingerprint: str
    idempotency_key: str | None = None
    request_id: str | None = None
    scheduled_for: datetime | None = None
    schedule: str | None = None  # the client's schedule whose tick this job is

    def row(self, now: datetime, publish_after: datetime) -> dict[str, Any]:
        """The ``jobs`` row to insert."""
        return {
            "id": self.job_id,
            "client_id": self.client_id,
            "task": self.task,
            "queue": self.queue,
            "status": JobStatus.QUEUED.value,
            "args": self.args,
            "priority": self.priority,
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "retry_generation": 0,
            "attempt_base": 0,
            "idempotency_key": self.idempotency_key,
            "request_fingerprint": self.fingerprint,
            "request_id": self.request_id,
            "created_at": now,
            "updated_at": now,
            "scheduled_for": self.scheduled_for,
            "started_at": None,
            "finished_at": None,
            "next_retry_at": None,
            "result": None,
            "error": None,
            "publish_after": publish_after,
            "published_at": None,
            "schedule": self.schedule,
        }

    def dispatch(self) -> Dispatch:
        """The message that runs this job."""
        return Dispatch(self.job_id, self.task, self.queue, self.args, self.priority)


@dataclass(frozen=True)
class Submission:
    """The jobs of one request: all are recorded, or none."""

    jobs: tuple[JobRequest, ...]


@dataclass(frozen=True)
class Accepted:
    """The jobs of a submission as recorded; ``replayed[i]`` when job i already existed."""

    jobs: list[Mapping[str, Any]]
    replayed: list[bool] = field(default_factory=list)


@dataclass(frozen=True)
class Recorded:
    """What one round recorded: each submission's answer, and the job ids published."""

    answers: list[Accepted | Conflict]
    published: list[str]


@dataclass(frozen=True)
class Conflict:
    """Job ``index`` reuses an idempotency key with a different request."""

    index: int
    idempotency_key: str


class Enqueuer:
    """Records submissions in the ledger and publishes their jobs."""

    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        *,
        clock: Callable[[], datetime] = _utcnow,
        relay_grace: timedelta = RELAY_GRACE,
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._clock = clock
        self._grace = relay_grace

    def record_and_publish(
        self, submissions: Sequence[Submission], *, marks: Sequence[str] = ()
    ) -> Recorded:
        """Record every submission in one transaction, then publish the jobs due now.

        Raises the database's error if the ledger cannot be written (nothing is recorded
        then). A broker failure is logged, not raised: the jobs are recorded, and the
        relay publishes them once Redis answers again. The published jobs are left for the
        caller to take out of the outbox (:meth:`mark_published`).

        ``marks`` are jobs published earlier and not yet marked; they are marked in the
        same transaction, which saves a commit per round under load.
        """
        now = self._clock()
        rows: list[dict[str, Any]] = []
        for submission in submissions:
            for job in submission.jobs:
                rows.append(job.row(now, self._publish_after(job, now)))
        # inserted in key order, so concurrent requests sharing idempotency keys wait for
        # each other's unique-index entries in the same order instead of deadlocking
        ordered = sorted(rows, key=lambda r: (r["client_id"], r["idempotency_key"] or ""))
        with self._engine.begin() as connection:
            if marks:
                outbox.mark_published(connection, marks, now)
            inserted = outbox.insert_new_jobs(connection, ordered)
            answers = [
                self._answer(connection, submission, inserted, rows_by_id)
                for submission, rows_by_id in _rows_by_submission(submissions, rows)
            ]
        due = [
            job.dispatch()
            for submission, answer in zip(submissions, answers, strict=True)
            if isinstance(answer, Accepted)
            for job, replayed in zip(submission.jobs, answer.replayed, strict=True)
            if not replayed and self._due_now(job, now)
        ]
        return Recorded(answers, self.publish(due))

    def record(self, connection: Connection, jobs: Sequence[JobRequest]) -> set[str]:
        """Record ``jobs`` in the caller's transaction; the ids inserted.

        A job whose idempotency key its client has used already is skipped. Once the
        transaction has committed, the caller publishes the inserted jobs
        (:meth:`publish_recorded`); if it cannot, the relay does after the grace period.
        """
        now = self._clock()
        rows = [job.row(now, self._publish_after(job, now)) for job in jobs]
        return outbox.insert_new_jobs(connection, rows)

    def publish_recorded(self, dispatches: Sequence[Dispatch]) -> bool:
        """Publish jobs already in the ledger and take them out of the outbox.

        ``False`` when Redis refused them; they stay in the outbox for the relay.
        """
        published = self.publish(dispatches)
        self.mark_published(published)
        return len(published) == len(dispatches)

    def publish(self, dispatches: Sequence[Dispatch]) -> list[str]:
        """Push recorded jobs to Redis; the ids published (none if Redis refused them).

        Refused jobs are made due for the relay at once.
        """
        if not dispatches:
            return []
        try:
            self._publisher.publish(dispatches)
        except redis.RedisError as error:
            logger.warning(
                "broker unavailable; %d recorded jobs left to the relay",
                len(dispatches),
                extra={"reason": str(error)},
            )
            self._due_for_relay_now(dispatches)
            return []
        return [d.job_id for d in dispatches]

    def mark_published(self, job_ids: Sequence[str]) -> None:
        """Take published jobs out of the outbox (a failure only means a later duplicate)."""
        if not job_ids:
            return
        try:
            with self._engine.begin() as connection:
                outbox.mark_published(connection, job_ids, self._clock())
        except Exception:
            # the messages are out; the relay will publish them again, which is harmless
            logger.exception("could not mark %d published jobs", len(job_ids))

    def _due_for_relay_now(self, dispatches: Sequence[Dispatch]) -> None:
        # the relay need not wait out the grace period: these jobs are known unpublished
        try:
            with self._engine.begin() as connection:
                outbox.schedule_publish_now(
                    connection, [d.job_id for d in dispatches], self._clock()
                )
        except Exception:
            logger.exception("could not hand %d jobs to the relay early", len(dispatches))

    def relay_due(self, *, limit: int = 1000) -> int:
        """Publish jobs that are due and still in the outbox; how many were published."""
        now = self._clock()
        with self._engine.begin() as connection:
            rows = outbox.due_for_publishing(connection, now, limit)
            if not rows:
                return 0
            dispatches = [_dispatch_of(row) for row in rows if outbox.is_publishable(row)]
            # published while the rows are locked: if Redis fails, the transaction rolls
            # back and the jobs stay in the outbox
            self._publisher.publish(dispatches)
            outbox.mark_published(connection, [row["id"] for row in rows], now)
        return len(dispatches)

    def republish_lost(
        self,
        *,
        waiting_longer_than: timedelta,
        held_longer_than: timedelta | None = None,
        at_most: int = 1000,
    ) -> int:
        """Publish again the jobs the ledger says are waiting whose messages Redis lost.

        A job published ``waiting_longer_than`` ago or more, still ``queued`` (or
        ``retrying``, its retry sent as a countdown), whose message is neither in a queue
        nor delivered to a worker, went missing in Redis (a restart without persistence, a
        failover to a lagging replica, a flush): it is published again. With
        ``held_longer_than``, a message delivered that long ago whose job has still not
        started (nor waits for a countdown) counts as missing too: the worker holding it
        died, and Redis would hand it out only after the visibility timeout. A duplicate
        this makes is dropped at delivery. How many were published. When Redis holds more
        messages than can be read in one go, nothing is decided.
        """
        now = self._clock()
        within = None if held_longer_than is None else held_longer_than.total_seconds()
        with self._engine.begin() as connection:
            rows = outbox.published_but_waiting(connection, now - waiting_longer_than, at_most)
            if not rows:
                return 0
            held = self._publisher.ids_held(at_most=_MESSAGES_READ_AT_MOST, delivered_within=within)
            if held is None:
                logger.warning("too many messages in Redis to check for lost ones; skipped")
                return 0
            lost = [row for row in rows if row["id"] not in held and not _countdown(row, now)]
            if lost:
                # a message a worker has just popped is in neither place for an instant; a
                # second look, once that instant is surely over, finds it delivered
                time.sleep(_SECOND_LOOK_SECONDS)
                again = self._publisher.ids_held(
                    at_most=_MESSAGES_READ_AT_MOST, delivered_within=within
                )
                lost = [] if again is None else [row for row in lost if row["id"] not in again]
            dispatches = [_dispatch_of(row) for row in lost]
            # published while the rows are locked, so no other reconciler publishes them too
            self._publisher.publish(dispatches)
            outbox.mark_published(connection, [row["id"] for row in lost], now)
        if lost:
            logger.warning("published again %d jobs whose messages Redis no longer had", len(lost))
        return len(lost)

    def _publish_after(self, job: JobRequest, now: datetime) -> datetime:
        if job.scheduled_for is not None and job.scheduled_for > now:
            return job.scheduled_for
        return now + self._grace

    @staticmethod
    def _due_now(job: JobRequest, now: datetime) -> bool:
        return job.scheduled_for is None or job.scheduled_for <= now

    @staticmethod
    def _answer(
        connection: Connection,
        submission: Submission,
        inserted: set[str],
        rows_by_id: dict[str, dict[str, Any]],
    ) -> Accepted | Conflict:
        """Answer one submission: its jobs, or the first idempotency conflict."""
        skipped = [job for job in submission.jobs if job.job_id not in inserted]
        existing: dict[str, Mapping[str, Any]] = {}
        if skipped:
            client_id = submission.jobs[0].client_id
            keys = [job.idempotency_key for job in skipped if job.idempotency_key]
            existing = dict(outbox.jobs_by_idempotency_key(connection, client_id, keys))
        jobs: list[Mapping[str, Any]] = []
        replayed: list[bool] = []
        for index, job in enumerate(submission.jobs):
            if job.job_id in inserted:
                jobs.append(rows_by_id[job.job_id])
                replayed.append(False)
                continue
            earlier = existing.get(job.idempotency_key or "")
            if earlier is None or earlier["request_fingerprint"] != job.fingerprint:
                mine = [j.job_id for j in submission.jobs if j.job_id in inserted]
                outbox.delete_jobs(connection, mine)
                return Conflict(index, job.idempotency_key or "")
            jobs.append(earlier)
            replayed.append(True)
        return Accepted(jobs, replayed)


def _countdown(row: Mapping[str, Any], now: datetime) -> bool:
    """Whether a waiting job's message is a countdown not yet due (a worker holds it)."""
    due = row.get("next_retry_at")
    return due is not None and due > now - _COUNTDOWN_SLACK


def _dispatch_of(row: Mapping[str, Any]) -> Dispatch:
    """The message that runs a recorded job's current round."""
    return Dispatch(
        row["id"],
        row["task"],
        row["queue"],
        dict(row["args"] or {}),
        row["priority"],
        int(row["retry_generation"]),
    )


def _rows_by_submission(
    submissions: Sequence[Submission], rows: list[dict[str, Any]]
) -> list[tuple[Submission, dict[str, dict[str, Any]]]]:
    pairs: list[tuple[Submission, dict[str, dict[str, Any]]]] = []
    position = 0
    for submission in submissions:
        count = len(submission.jobs)
        pairs.append((submission, {row["id"]: row for row in rows[position : position + count]}))
        position += count
    return pairs
