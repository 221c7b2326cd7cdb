"""Operator actions on recorded jobs: cancel, replay (dead-letter retry) and the newest jobs.

The checks live here once, so every front end refuses the same things: a job that is not
``failed`` or ``cancelled`` is not replayed, a finished job is not cancelled. Each action
works in the caller's session; the caller commits, then publishes a replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from workers.broker import Dispatch, Priority
from workers.enqueue import RELAY_GRACE
from workers.ledger import repository
from workers.ledger.models import Job, JobStatus
from workers.ledger.repository import JOBS

REPLAYABLE = frozenset({JobStatus.FAILED.value, JobStatus.CANCELLED.value})


class JobControlError(Exception):
    """An action on a job was refused."""


class JobNotFoundError(JobControlError):
    """No such job (for this client); ``foreign`` when it exists but is another client's."""

    def __init__(self, job_id: str, *, foreign: bool = False) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id
        self.foreign = foreign


class JobStateError(JobControlError):
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
    The job stays in the outbox until the caller has published :attr:`Replay.dispatch`
    (:meth:`workers.enqueue.Enqueuer.publish_recorded`), so a failed publish is relayed.
    """
    job = _locked(session, job_id, client_id)
    if job.status not in REPLAYABLE:
        raise JobStateError(
            f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
        )
    replayed = repository.replay_job(session, job_id, now=now)
    assert replayed is job  # noqa: S101 - the same row, locked above
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
    """Cancel a job that has not finished; :class:`JobStateError` if it has."""
    job = _locked(session, job_id, client_id)
    if JobStatus(job.status).finished:
        raise JobStateError(f"job {job_id} has already finished ({job.status})")
    cancelled = repository.cancel_job(session, job_id, now=now)
    assert cancelled is job  # noqa: S101 - the same row, locked above
    # a cancelled job is never published: the relay must not pick it up either
    job.publish_after = None
    session.flush()
    return job


def newest_jobs(
    connection: Connection, *, limit: int, status: str | None = None, task: str | None = None
) -> list[dict[str, Any]]:
    """Up to ``limit`` jobs of every client, newest first (the operator's view)."""
    query = select(JOBS)
    if status is not None:
        query = query.where(JOBS.c.status == status)
    if task is not None:
        query = query.where(JOBS.c.task == task)
    query = query.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(limit)
    return [dict(row) for row in connection.execute(query).mappings()]
