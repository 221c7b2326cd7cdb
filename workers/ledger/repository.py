"""The ledger's operations: every state transition of a job, each in the caller's session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workers.ledger.models import Attempt, AttemptOutcome, Job, JobStatus


@dataclass(frozen=True)
class Runner:
    """Who runs an attempt: the worker node, its pool and the process."""

    worker: str
    pool: str
    pid: int


@dataclass(frozen=True)
class ErrorInfo:
    """What the ledger keeps of an error: its type, message and the id found in the logs."""

    type: str
    message: str
    error_id: str

    def as_json(self) -> dict[str, str]:
        """The ``error`` object of the contract."""
        return {"type": self.type, "message": self.message, "error_id": self.error_id}


class Verdict(Enum):
    """What a worker should do with a delivered message."""

    RUN = "run"
    DROP = "drop"  # finished, cancelled or stale: acknowledge and forget
    POISON = "poison"  # its worker died too often: the job is now failed


@dataclass(frozen=True)
class AttemptStart:
    """The answer to :func:`begin_attempt`."""

    verdict: Verdict
    attempt: int
    request_id: str | None
    reason: str = ""
    attempt_in_round: int = 0  # counted since the latest replay, for the retry policies


@dataclass(frozen=True)
class NewJob:
    """What a worker knows of a job it meets for the first time (a plain ``send_task``)."""

    job_id: str
    task: str
    queue: str
    args: dict[str, Any]
    max_attempts: int
    request_id: str | None


WORKER_LOST = "WorkerLostError"


def _locked_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def _adopt(session: Session, new: NewJob, now: datetime) -> Job:
    job = Job(
        id=new.job_id,
        client_id=None,
        task=new.task,
        queue=new.queue,
        status=JobStatus.QUEUED.value,
        args=new.args,
        priority="normal",
        attempts=0,
        max_attempts=new.max_attempts,
        retry_generation=0,
        attempt_base=0,
        request_id=new.request_id,
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        # another delivery of the same message created it first
        existing = _locked_job(session, new.job_id)
        if existing is None:
            raise
        return existing
    return job


def _open_attempts(session: Session, job_id: str) -> list[Attempt]:
    query = select(Attempt).where(
        Attempt.job_id == job_id, Attempt.outcome == AttemptOutcome.RUNNING.value
    )
    return list(session.scalars(query))


def _count_lost(session: Session, job: Job) -> int:
    query = select(func.count()).where(
        Attempt.job_id == job.id,
        Attempt.outcome == AttemptOutcome.LOST.value,
        Attempt.number > job.attempt_base,
    )
    return int(session.scalar(query) or 0)


def begin_attempt(
    session: Session,
    new: NewJob,
    *,
    generation: int,
    runner: Runner,
    poison_after: int,
    poison_error: ErrorInfo,
    now: datetime,
) -> AttemptStart:
    """Record the start of an attempt, or say why the message must not run.

    ``generation`` is the number of retries the message carries: a message older than the
    job's latest scheduled retry is a stale duplicate. An attempt still marked running
    belongs to a worker that died; it is closed as lost, and the job is failed as poison
    once ``poison_after`` attempts were lost.
    """
    job = _locked_job(session, new.job_id) or _adopt(session, new, now)
    if job.task != new.task:
        return AttemptStart(Verdict.DROP, job.attempts, job.request_id, "task name mismatch")
    if JobStatus(job.status).finished:
        return AttemptStart(Verdict.DROP, job.attempts, job.request_id, f"job is {job.status}")
    if generation < job.retry_generation:
        return AttemptStart(Verdict.DROP, job.attempts, job.request_id, "stale delivery")
    for attempt in _open_attempts(session, job.id):
        attempt.outcome = AttemptOutcome.LOST.value
        attempt.finished_at = now
        attempt.error = {
            "type": WORKER_LOST,
            "message": "the worker process died or was killed during this attempt",
            "error_id": None,
        }
    session.flush()
    if _count_lost(session, job) >= poison_after:
        job.status = JobStatus.FAILED.value
        job.finished_at = now
        job.next_retry_at = None
        job.error = poison_error.as_json()
        return AttemptStart(Verdict.POISON, job.attempts, job.request_id, "poison")
    job.attempts += 1
    job.status = JobStatus.RUNNING.value
    job.started_at = job.started_at or now
    job.next_retry_at = None
    session.add(
        Attempt(
            job_id=job.id,
            number=job.attempts,
            worker=runner.worker,
            pool=runner.pool,
            pid=runner.pid,
            outcome=AttemptOutcome.RUNNING.value,
            started_at=now,
        )
    )
    return AttemptStart(
        Verdict.RUN, job.attempts, job.request_id, attempt_in_round=job.attempts - job.attempt_base
    )


def _close_attempt(
    session: Session,
    job_id: str,
    number: int,
    outcome: AttemptOutcome,
    *,
    now: datetime,
    error: ErrorInfo | None = None,
    delay: float | None = None,
) -> None:
    attempt = session.scalars(
        select(Attempt).where(Attempt.job_id == job_id, Attempt.number == number)
    ).one()
    attempt.outcome = outcome.value
    attempt.finished_at = now
    attempt.error = error.as_json() if error else None
    attempt.retry_delay_seconds = delay


def _still_running(job: Job | None, attempt: int) -> bool:
    return job is not None and job.status == JobStatus.RUNNING.value and job.attempts == attempt


def record_success(
    session: Session, job_id: str, attempt: int, *, result: Any, now: datetime
) -> JobStatus:
    """Close a successful attempt; the job succeeds unless it was cancelled meanwhile."""
    job = _locked_job(session, job_id)
    if not _still_running(job, attempt):
        _close_attempt(session, job_id, attempt, AttemptOutcome.CANCELLED, now=now)
        return JobStatus(job.status) if job else JobStatus.CANCELLED
    assert job is not None  # noqa: S101 - narrowed by _still_running
    _close_attempt(session, job_id, attempt, AttemptOutcome.SUCCEEDED, now=now)
    job.status = JobStatus.SUCCEEDED.value
    job.result = result
    job.error = None
    job.finished_at = now
    return JobStatus.SUCCEEDED


def record_retry(
    session: Session, job_id: str, attempt: int, *, error: ErrorInfo, delay: float, now: datetime
) -> int | None:
    """Schedule another attempt after ``delay`` seconds; the new generation, or ``None``.

    ``None`` means the job was cancelled while the attempt ran, so nothing is scheduled.
    """
    job = _locked_job(session, job_id)
    if not _still_running(job, attempt):
        _close_attempt(session, job_id, attempt, AttemptOutcome.CANCELLED, now=now, error=error)
        return None
    assert job is not None  # noqa: S101 - narrowed by _still_running
    _close_attempt(
        session, job_id, attempt, AttemptOutcome.RETRYING, now=now, error=error, delay=delay
    )
    job.status = JobStatus.RETRYING.value
    job.error = error.as_json()
    job.next_retry_at = now + timedelta(seconds=delay)
    job.retry_generation += 1
    return job.retry_generation


def record_failure(
    session: Session, job_id: str, attempt: int, *, error: ErrorInfo, now: datetime
) -> JobStatus:
    """Close a failed attempt and move the job to ``failed`` (the dead-letter state)."""
    job = _locked_job(session, job_id)
    if not _still_running(job, attempt):
        _close_attempt(session, job_id, attempt, AttemptOutcome.CANCELLED, now=now, error=error)
        return JobStatus(job.status) if job else JobStatus.CANCELLED
    assert job is not None  # noqa: S101 - narrowed by _still_running
    _close_attempt(session, job_id, attempt, AttemptOutcome.FAILED, now=now, error=error)
    job.status = JobStatus.FAILED.value
    job.error = error.as_json()
    job.finished_at = now
    job.next_retry_at = None
    return JobStatus.FAILED


def get_job(session: Session, job_id: str) -> Job | None:
    """The job with its attempt history, or ``None``."""
    return session.get(Job, job_id)


def cancel_job(session: Session, job_id: str, *, now: datetime) -> Job | None:
    """Cancel a job that has not finished; a finished job is returned unchanged."""
    job = _locked_job(session, job_id)
    if job is None or JobStatus(job.status).finished:
        return job
    job.status = JobStatus.CANCELLED.value
    job.finished_at = now
    job.next_retry_at = None
    return job


def replay_job(session: Session, job_id: str, *, now: datetime) -> Job | None:
    """Put a ``failed`` or ``cancelled`` job back to ``queued`` for a fresh round of attempts.

    The retry generation restarts at 0, the generation a freshly published message carries.
    """
    job = _locked_job(session, job_id)
    if job is None or job.status not in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
        return job
    for attempt in _open_attempts(session, job.id):
        attempt.outcome = AttemptOutcome.LOST.value
        attempt.finished_at = now
    job.status = JobStatus.QUEUED.value
    job.retry_generation = 0
    job.attempt_base = job.attempts
    job.finished_at = None
    job.next_retry_at = None
    job.error = None
    job.result = None
    return job
