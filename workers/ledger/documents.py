"""Ledger rows as the contract's JSON documents, serialised without a model round trip."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, overload

from workers.ledger.models import JOBS, Attempt, Job

JOB_FIELDS = (
    "id",
    "task",
    "queue",
    "status",
    "args",
    "priority",
    "attempts",
    "max_attempts",
    "idempotency_key",
    "request_id",
    "created_at",
    "scheduled_for",
    "started_at",
    "finished_at",
    "next_retry_at",
    "result",
    "error",
    "schedule",
)
SCHEDULE_FIELDS = (
    "name",
    "task",
    "args",
    "cron",
    "every_seconds",
    "timezone",
    "priority",
    "paused",
    "next_run_at",
    "last_run_at",
    "created_at",
    "updated_at",
)
_SCHEDULE_TIMES = ("next_run_at", "last_run_at", "created_at", "updated_at")
_COLUMNS = tuple(column.key for column in JOBS.columns)


@overload
def timestamp(value: datetime, timespec: str = ...) -> str: ...
@overload
def timestamp(value: None, timespec: str = ...) -> None: ...
@overload
def timestamp(value: datetime | None, timespec: str = ...) -> str | None: ...
def timestamp(value: datetime | None, timespec: str = "microseconds") -> str | None:
    """ISO 8601 in UTC with a ``Z`` (to the microsecond, or ``timespec``), or ``None``."""
    if value is None:
        return None
    # isoformat, not strftime: %Y drops the leading zeros of years before 1000
    return value.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def job_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's job object for a ``jobs`` row."""
    document = {name: row[name] for name in JOB_FIELDS}
    for name in ("created_at", "scheduled_for", "started_at", "finished_at", "next_retry_at"):
        document[name] = timestamp(document[name])
    return document


def schedule_document(row: Mapping[str, Any], latest_jobs: Iterable[str]) -> dict[str, Any]:
    """The contract's schedule object for a ``schedules`` row and its latest job ids."""
    document = {name: row[name] for name in SCHEDULE_FIELDS}
    for name in _SCHEDULE_TIMES:
        document[name] = timestamp(document[name])
    document["latest_jobs"] = list(latest_jobs)
    return document


def job_row(job: Job) -> dict[str, Any]:
    """An ORM job as a plain row."""
    return {name: getattr(job, name) for name in _COLUMNS}


def attempt_document(attempt: Attempt) -> dict[str, Any]:
    """One entry of a job's ``history``."""
    return {
        "number": attempt.number,
        "status": attempt.outcome,
        "worker": attempt.worker,
        "pool": attempt.pool,
        "pid": attempt.pid,
        "started_at": timestamp(attempt.started_at),
        "finished_at": timestamp(attempt.finished_at),
        "retry_delay_seconds": attempt.retry_delay_seconds,
        "error": attempt.error,
    }


def job_with_history(job: Job) -> dict[str, Any]:
    """The job and one ``history`` entry per attempt."""
    document = job_document(job_row(job))
    document["history"] = [attempt_document(a) for a in job.history]
    return document


def jobs_documents(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Several job objects."""
    return [job_document(row) for row in rows]
