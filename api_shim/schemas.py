"""The API's request and response documents, as pydantic models (also the OpenAPI spec)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

from workers.broker import Priority
from workers.ledger.models import PRINTABLE_ASCII
from workers.schedule_timing import MAX_CRON_LENGTH, MAX_EVERY_SECONDS

MAX_BATCH = 1000
MAX_DELAY_SECONDS = 30 * 24 * 3600
Status = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]


class JobIn(BaseModel):
    """One job to enqueue."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200, examples=["diagnostics.echo"])
    args: dict[str, JsonValue] = Field(default_factory=dict, examples=[{"value": "hello"}])
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=PRINTABLE_ASCII
    )
    priority: Priority = "normal"
    # strict: JSON true is not a one-second delay
    delay_seconds: float | None = Field(default=None, ge=0, le=MAX_DELAY_SECONDS, strict=True)
    run_at: AwareDatetime | None = None

    @field_validator("run_at", mode="before")
    @classmethod
    def _run_at_is_text(cls, value: object) -> object:
        # JSON has no dates: a number would otherwise be read as a Unix timestamp
        if value is not None and not isinstance(value, str):
            raise ValueError("give run_at as an ISO 8601 string with a time zone")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> JobIn:
        if self.delay_seconds is not None and self.run_at is not None:
            raise ValueError("give delay_seconds or run_at, not both")
        return self

    def fingerprint(self) -> str:
        """The request's hash: the same job always hashes the same, whatever its key order
        or idempotency key, so a replay is told from a conflicting reuse of the key."""
        canonical = self.model_dump(mode="json", exclude={"idempotency_key"})
        encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(encoded.encode()).hexdigest()


class BatchIn(BaseModel):
    """Up to 1,000 jobs, accepted or refused together."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[JobIn] = Field(min_length=1, max_length=MAX_BATCH)


class ScheduleIn(BaseModel):
    """A periodic job: what each tick enqueues, and when ticks fall (``cron`` or
    ``every_seconds``, exactly one)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200, examples=["diagnostics.echo"])
    args: dict[str, JsonValue] = Field(default_factory=dict, examples=[{"value": "tick"}])
    cron: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CRON_LENGTH,
        description="5 fields (minute hour day month weekday), or 6 with the seconds first",
        examples=["*/5 * * * *"],
    )
    every_seconds: int | None = Field(default=None, ge=1, le=MAX_EVERY_SECONDS, strict=True)
    timezone: str = Field(
        default="UTC",
        min_length=1,
        max_length=64,
        description="the IANA time zone the cron expression is read in",
        examples=["Europe/Berlin"],
    )
    priority: Priority = "normal"
    paused: bool = Field(default=False, strict=True)


class ErrorOut(BaseModel):
    """The ``error`` object of a failed job."""

    type: str
    message: str
    error_id: str | None


class AttemptOut(BaseModel):
    """One attempt at a job."""

    number: int
    status: str
    worker: str
    pool: str
    pid: int
    started_at: datetime
    finished_at: datetime | None
    retry_delay_seconds: float | None
    error: ErrorOut | None


class JobOut(BaseModel):
    """A job as the ledger has it."""

    id: str
    task: str
    queue: str
    status: Status
    args: dict[str, Any]
    priority: Priority
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    request_id: str | None
    created_at: datetime
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    next_retry_at: datetime | None
    result: Any
    error: ErrorOut | None
    schedule: str | None = Field(description="the schedule whose tick made the job, if any")
    history: list[AttemptOut] | None = None


class JobListOut(BaseModel):
    """One page of jobs, newest first."""

    items: list[JobOut]
    next_cursor: str | None


class ScheduleOut(BaseModel):
    """A schedule, its next and latest ticks, and its latest jobs' ids (newest first)."""

    name: str
    task: str
    args: dict[str, Any]
    cron: str | None
    every_seconds: int | None
    timezone: str
    priority: Priority
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    latest_jobs: list[str]
    created_at: datetime
    updated_at: datetime


class ScheduleListOut(BaseModel):
    """The calling client's schedules, by name."""

    items: list[ScheduleOut]


class BatchOut(BaseModel):
    """The jobs of a batch, in the order sent."""

    jobs: list[JobOut]


class TaskOut(BaseModel):
    """A catalog entry."""

    name: str
    queue: str
    description: str
    args_schema: dict[str, Any]


class RelayOut(BaseModel):
    """Whether the outbox relay runs: ``ok``, or how long it has not."""

    status: str
    seconds_since_last_run: float | None


class StatsOut(BaseModel):
    """The calling client's jobs by status, every queue's depth, and the outbox relay."""

    jobs: dict[str, int]
    queues: dict[str, int]
    relay: RelayOut


class BlobOut(BaseModel):
    """A stored blob."""

    blob: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int


class ErrorDetail(BaseModel):
    """The body of every error answer."""

    code: str
    message: str
    error_id: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    """``{"error": {...}}``."""

    error: ErrorDetail


#: What any request may get, whatever its route: not valid HTTP, or a bug.
_ALWAYS = (400, 500)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of an operation's refusals, in the error model."""
    return {status: {"model": ErrorEnvelope} for status in sorted({*_ALWAYS, *statuses})}
