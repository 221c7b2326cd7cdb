"""SQLAlchemy models of the ledger: ``jobs``, their ``job_attempts``, ``worker_leases`` and
``schedules``."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Ids, keys and names in the ledger are printable ASCII: a NUL or a control character
#: names nothing, and PostgreSQL refuses NUL in text.
PRINTABLE_ASCII = r"^[!-~]+$"  # "!" is 0x21, "~" 0x7e: no escapes, the same in every dialect
JOB_ID_MAX_LENGTH = 64
LEASE_ID_MAX_LENGTH = 64
SCHEDULE_NAME_MAX_LENGTH = 100
#: A schedule's name goes into URLs and idempotency keys as it is: letters, digits, ``._-``.
SCHEDULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def is_job_id(text: str) -> bool:
    """Whether ``text`` could name a job (anything else names none)."""
    return len(text) <= JOB_ID_MAX_LENGTH and re.fullmatch(PRINTABLE_ASCII, text) is not None


def is_schedule_name(text: str) -> bool:
    """Whether ``text`` could name a schedule (anything else names none)."""
    return (
        len(text) <= SCHEDULE_NAME_MAX_LENGTH
        and re.fullmatch(SCHEDULE_NAME_PATTERN, text) is not None
    )


class JobStatus(StrEnum):
    """Where a job stands; ``failed`` is the dead-letter state."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job has reached an end state."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class AttemptOutcome(StrEnum):
    """How one attempt ended; ``lost`` means its worker died under it."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    LOST = "lost"
    CANCELLED = "cancelled"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# None is stored as SQL NULL, not as the JSON value null
JSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(naming_convention=NAMING)


_STATUSES = ", ".join(f"'{s.value}'" for s in JobStatus)
_OUTCOMES = ", ".join(f"'{o.value}'" for o in AttemptOutcome)


class Job(Base):
    """One job: what to run, for whom, and where it stands."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUSES})", name="status"),
        CheckConstraint("priority IN ('high', 'normal', 'low')", name="priority"),
        UniqueConstraint("client_id", "idempotency_key", name="uq_jobs_client_idempotency"),
        Index("ix_jobs_client_created", "client_id", "created_at", "id"),
        Index("ix_jobs_status_scheduled", "status", "scheduled_for"),
        # retention: finished jobs by status, oldest first
        Index("ix_jobs_status_finished", "status", "finished_at"),
        Index("ix_jobs_task", "task"),
        Index("ix_jobs_client_status", "client_id", "status"),
        # a schedule's jobs, newest first (its latest jobs, and /v1/jobs?schedule=)
        Index("ix_jobs_client_schedule_created", "client_id", "schedule", "created_at"),
        # the outbox: only jobs still waiting to be published are in this index
        Index(
            "ix_jobs_publish_after",
            "publish_after",
            postgresql_where=text("publish_after IS NOT NULL"),
            sqlite_where=text("publish_after IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(JOB_ID_MAX_LENGTH), primary_key=True)
    client_id: Mapped[str | None] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    args: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    retry_generation: Mapped[int] = mapped_column(Integer, default=0)
    # attempts made before the latest replay; retry policies count only those after it
    attempt_base: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    # sha256 of the canonical request, to tell a replay of the same key from a conflict
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    result: Mapped[Any | None] = mapped_column(JSONDocument)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    # The outbox: a job is recorded before it is published. ``publish_after`` is when the
    # relay may (re)publish it; it is cleared, and ``published_at`` set, once the broker
    # has the message.
    publish_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # the name of the client's schedule whose tick made this job, if one did
    schedule: Mapped[str | None] = mapped_column(String(SCHEDULE_NAME_MAX_LENGTH))

    history: Mapped[list[Attempt]] = relationship(
        back_populates="job", order_by="Attempt.number", cascade="all, delete-orphan"
    )


class Attempt(Base):
    """One attempt at a job: which worker ran it, in which pool, and how it ended."""

    __tablename__ = "job_attempts"
    __table_args__ = (
        CheckConstraint(f"outcome IN ({_OUTCOMES})", name="outcome"),
        UniqueConstraint("job_id", "number", name="uq_job_attempts_job_number"),
        # the reconciler's read: only open attempts are in this index
        Index(
            "ix_job_attempts_running_lease",
            "lease",
            postgresql_where=text("outcome = 'running'"),
            sqlite_where=text("outcome = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    pool: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16), default=AttemptOutcome.RUNNING.value)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    retry_delay_seconds: Mapped[float | None] = mapped_column(Float())
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    # the lease of the process running the attempt: when it expires, the attempt is lost
    lease: Mapped[str | None] = mapped_column(String(LEASE_ID_MAX_LENGTH))

    job: Mapped[Job] = relationship(back_populates="history")


class WorkerLease(Base):
    """A process that runs attempts, alive while it renews ``expires_at``.

    A process whose lease has expired, or whose row is gone, is dead: the reconciler closes
    its open attempts as lost and puts their jobs back.
    """

    __tablename__ = "worker_leases"

    id: Mapped[str] = mapped_column(String(LEASE_ID_MAX_LENGTH), primary_key=True)
    worker: Mapped[str] = mapped_column(String(200))
    pool: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Schedule(Base):
    """A client's periodic job: what to run, when its ticks fall, and the next one.

    Exactly one of ``cron`` and ``every_seconds`` is set. ``next_run_at`` is the tick the
    schedulers wait for; ``NULL`` while the schedule is paused.
    """

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint("priority IN ('high', 'normal', 'low')", name="priority"),
        CheckConstraint("(cron IS NULL) <> (every_seconds IS NULL)", name="one_timing"),
        UniqueConstraint("client_id", "name", name="uq_schedules_client_name"),
        # the schedulers' read: only schedules that will tick are in this index
        Index(
            "ix_schedules_next_run_at",
            "next_run_at",
            postgresql_where=text("next_run_at IS NOT NULL"),
            sqlite_where=text("next_run_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(SCHEDULE_NAME_MAX_LENGTH))
    task: Mapped[str] = mapped_column(String(200))
    args: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    cron: Mapped[str | None] = mapped_column(String(200))
    every_seconds: Mapped[int | None] = mapped_column(Integer)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


# The Core tables behind the models. Hot paths run statements built once on these: building
# ORM statements per call cost milliseconds of CPU per job, and a gevent worker runs every
# job's bookkeeping on one core.
JOBS = Base.metadata.tables[Job.__tablename__]
ATTEMPTS = Base.metadata.tables[Attempt.__tablename__]
LEASES = Base.metadata.tables[WorkerLease.__tablename__]
SCHEDULES = Base.metadata.tables[Schedule.__tablename__]
