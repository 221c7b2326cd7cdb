"""Operator actions on recorded jobs: cancel, and replay (the dead-letter retry).

The checks live here once, so every front end (the API, ``conveyor jobs``) refuses the same
things: a job that is not ``failed`` or ``cancelled`` is not replayed, a finished job is
not cancelled. Each action locks the job's row once, checks it and changes it in the
caller's session; the caller commits, then publishes a replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from workers.broker import Dispatch, Priority
from workers.ledger.models import Attempt, AttemptOutcome, Job, JobStatus
from workers.ledger.outbox import RELAY_GRACE

REPLAYABLE = frozenset({JobStatus.FAILED.value, JobStatus.CANCELLED.value})


class JobActionError(Exception):
    """An action on a job was refused."""


class JobNotFoundError(JobActionError):
    """No such job (for this client); ``foreign`` when it exists but is another client's."""

    def __init__(self, job_id: str, *, foreign: bool = False) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id
        self.foreign = foreign


class JobStateError(JobActionError):
    """The job's status forbids the action."""


@dataclass(frozen=True)
class Replay:
    """A replayed job, and the message that starts its new round once the session commits."""

    job: Job
    dispatch: Dispatch


def _locked(session: Session, job_id: str, client_id: str | None) -> Job:
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise JobNotFoundError(job_id)
    if client_id is not None and job.client_id != client_id:
        raise JobNotFoundError(job_id, foreign=True)
    return job


def replay(session: Session, job_id: str, *, now: datetime, client_id: str | None = None) -> Replay:
    """Put a ``failed`` or ``cancelled`` job back to ``queued`` for a fresh round of attempts.

    ``client_id`` limits the action to that client's jobs (``None``: any job, for operators).
    The retry generation moves on by one, so messages left from the earlier round are
    dropped as stale. The job stays in the outbox until the caller has published
    :attr:`Replay.dispatch` (:meth:`workers.enqueue.Enqueuer.publish_recorded`), so a failed
    publish is relayed.
    """
    job = _locked(session, job_id, client_id)
    if job.status not in REPLAYABLE:
        raise JobStateError(
            f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
        )
    still_open = select(Attempt).where(
        Attempt.job_id == job.id, Attempt.outcome == AttemptOutcome.RUNNING.value
    )
    for attempt in session.scalars(still_open):
        attempt.outcome = AttemptOutcome.LOST.value
        attempt.finished_at = now
    job.status = JobStatus.QUEUED.value
    job.retry_generation += 1
    job.attempt_base = job.attempts
    job.finished_at = None
    job.next_retry_at = None
    job.error = None
    job.result = None
    job.publish_after = now + RELAY_GRACE
    session.flush()
    dispatch = Dispatch(
        job.id,
        job.task,
        job.queue,
        dict(job.args),
        cast(Priority, job.priority),
        job.retry_generation,
    )
    return Replay(job, dispatch)


def cancel(session: Session, job_id: str, *, now: datetime, client_id: str | None = None) -> Job:
    """Cancel a job that has not finished; :class:`JobStateError` if it has.

    A running attempt is not interrupted; its outcome is not recorded.
    """
    job = _locked(session, job_id, client_id)
    if JobStatus(job.status).finished:
        raise JobStateError(f"job {job_id} has already finished ({job.status})")
    job.status = JobStatus.CANCELLED.value
    job.finished_at = now
    job.next_retry_at = None
    # a cancelled job is never published: the relay must not pick it up either
    job.publish_after = None
    session.flush()
    return job
