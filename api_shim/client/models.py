"""The documents the Conveyor API takes and returns: jobs, attempts, blobs, tasks, stats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import pydantic

JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
Priority = Literal["high", "normal", "low"]
FINISHED_STATUSES: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})


def _as_utc(value: datetime) -> datetime:
    # the API sends UTC with a "Z"; a naive time is taken as UTC rather than refused
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, pydantic.AfterValidator(_as_utc)]


@dataclass(frozen=True)
class JobError:
    """Why a job (or one attempt) failed."""

    type: str
    message: str
    error_id: str | None = None


@dataclass(frozen=True)
class Attempt:
    """One entry of a job's ``history``."""

    number: int
    status: str
    worker: str
    pool: str
    pid: int
    started_at: UtcDatetime
    finished_at: UtcDatetime | None = None
    retry_delay_seconds: float | None = None
    error: JobError | None = None


@dataclass(frozen=True)
class Job:
    """A job as the ledger has it.

    ``history`` is ``None`` when the answer did not carry it (lists, enqueues) and one
    entry per attempt from :meth:`ConveyorClient.get`. ``replayed`` is true when the
    server answered an enqueue with an earlier job of the same idempotency key.
    """

    id: str
    task: str
    queue: str
    status: JobStatus
    args: dict[str, Any]
    priority: Priority
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    request_id: str | None
    created_at: UtcDatetime
    scheduled_for: UtcDatetime | None
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    next_retry_at: UtcDatetime | None
    result: Any
    error: JobError | None
    history: tuple[Attempt, ...] | None = None
    replayed: bool = False
    schedule: str | None = None  # the schedule whose tick made the job

    @property
    def finished(self) -> bool:
        """Whether the job is ``succeeded``, ``failed`` or ``cancelled``."""
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True)
class JobSpec:
    """One job to enqueue, for :meth:`ConveyorClient.enqueue_many` (a plain dict works too)."""

    task: str
    args: Mapping[str, Any] | None = None
    idempotency_key: str | None = None
    priority: Priority | None = None
    delay_seconds: float | None = None
    run_at: datetime | None = None

    def to_document(self) -> dict[str, Any]:
        """The JSON object ``POST /v1/jobs`` takes."""
        document: dict[str, Any] = {"task": self.task, "args": dict(self.args or {})}
        if self.idempotency_key is not None:
            document["idempotency_key"] = self.idempotency_key
        if self.priority is not None:
            document["priority"] = self.priority
        if self.delay_seconds is not None:
            document["delay_seconds"] = self.delay_seconds
        if self.run_at is not None:
            document["run_at"] = self.run_at.isoformat()
        return document


@dataclass(frozen=True)
class JobPage:
    """One page of ``GET /v1/jobs``, newest first."""

    items: tuple[Job, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class Blob:
    """A stored blob: its content address ``sha256:<hex>`` and its size in bytes."""

    id: str
    size: int

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class TaskInfo:
    """A catalog entry."""

    name: str
    queue: str
    description: str
    args_schema: dict[str, Any]


@dataclass(frozen=True)
class Stats:
    """The calling client's jobs by status, and every queue's depth."""

    jobs: dict[str, int]
    queues: dict[str, int]


@dataclass(frozen=True)
class _BlobOut:
    blob: str
    size: int


@dataclass(frozen=True)
class _PageOut:
    items: list[Job]
    next_cursor: str | None


@dataclass(frozen=True)
class _BatchOut:
    jobs: list[Job]
