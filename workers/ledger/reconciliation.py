"""Worker leases and the reconciler: the ledger decides when a dead worker's jobs come back.

Every process that runs attempts holds a lease row and renews it; each attempt records the
lease it runs under. An open attempt whose lease has expired, or whose lease row is gone
(its process released it, or its parent found it dead), belongs to a dead process: the
reconciler closes it as ``lost`` and puts the job back in the outbox with a new retry
generation, so the relay publishes it at once and any older message for it is dropped as
stale. A job whose worker died ``poison_after`` times in one round is failed as poison
instead. Each job is taken under a row lock that other reconcilers skip, so any number of
them cooperate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, exists, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from workers.ledger import attempt_statements as statements
from workers.ledger.models import ATTEMPTS, JOBS, LEASES, AttemptOutcome, JobStatus, UTCDateTime

#: Expired lease rows are kept this long (for operators) before the reconciler deletes them.
EXPIRED_LEASES_KEPT = timedelta(days=1)


@dataclass(frozen=True)
class Lease:
    """A process's lease: who holds it, and for how long each renewal lasts."""

    id: str
    worker: str
    pool: str
    pid: int
    ttl: timedelta


@dataclass(frozen=True)
class LostAttempt:
    """An open attempt whose process is dead."""

    job_id: str
    number: int


@dataclass(frozen=True)
class Reconciled:
    """What one reconciliation did."""

    put_back: int = 0
    poisoned: int = 0
    closed: int = 0  # open attempts of jobs that had moved on (cancelled meanwhile)


def renew(connection: Connection, lease: Lease, now: datetime) -> None:
    """Create or extend ``lease`` until ``now`` + its ttl."""
    values = {
        "id": lease.id,
        "worker": lease.worker,
        "pool": lease.pool,
        "pid": lease.pid,
        "started_at": now,
        "renewed_at": now,
        "expires_at": now + lease.ttl,
    }
    insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = insert(LEASES).values(values)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "renewed_at": statement.excluded.renewed_at,
                "expires_at": statement.excluded.expires_at,
            },
        )
    )


def expire(connection: Connection, lease_ids: Sequence[str], now: datetime) -> None:
    """End leases now (a process that stopped, or that its parent saw die)."""
    if lease_ids:
        connection.execute(
            LEASES.update().where(LEASES.c.id.in_(list(lease_ids))).values(expires_at=now)
        )


def expire_gone_children(
    connection: Connection, prefix: str, alive: Sequence[int], now: datetime
) -> int:
    """End the live leases named ``prefix…`` whose process is not in ``alive``; how many."""
    statement = (
        LEASES.update()
        .where(
            LEASES.c.id.startswith(prefix, autoescape=True),
            LEASES.c.expires_at > now,
            LEASES.c.pid.not_in(list(alive)),
        )
        .values(expires_at=now)
    )
    return int(connection.execute(statement).rowcount or 0)


def release(connection: Connection, lease_id: str) -> None:
    """Delete a lease whose process stops having finished its attempts."""
    connection.execute(delete(LEASES).where(LEASES.c.id == lease_id))


_LIVE_LEASE = exists().where(
    LEASES.c.id == ATTEMPTS.c.lease,
    LEASES.c.expires_at > bindparam("b_now", type_=UTCDateTime()),
)
_ANY_LEASE = exists().where(LEASES.c.id == ATTEMPTS.c.lease)
# Open attempts under a lease that expired, or under a lease row that is gone. An attempt
# younger than one lease term may belong to a process whose first renewal is still on its
# way, so a missing row counts only for older ones.
_LOST = (
    select(ATTEMPTS.c.job_id, ATTEMPTS.c.number)
    .where(
        ATTEMPTS.c.outcome == AttemptOutcome.RUNNING.value,
        ATTEMPTS.c.lease.is_not(None),
        ~_LIVE_LEASE,
        or_(
            _ANY_LEASE,
            ATTEMPTS.c.started_at < bindparam("b_orphaned_before", type_=UTCDateTime()),
        ),
    )
    .limit(bindparam("b_limit"))
)
_LOCK_JOB = (
    select(JOBS.c.status, JOBS.c.attempts, JOBS.c.attempt_base)
    .where(JOBS.c.id == bindparam("b_job_id"))
    .with_for_update(skip_locked=True)
)
_PUT_BACK = (
    JOBS.update()
    .where(
        JOBS.c.id == bindparam("b_job_id"),
        JOBS.c.status == JobStatus.RUNNING.value,
        JOBS.c.attempts == bindparam("b_attempt"),
    )
    .values(
        status=JobStatus.RETRYING.value,
        retry_generation=JOBS.c.retry_generation + 1,
        next_retry_at=bindparam("b_now", type_=UTCDateTime()),
        publish_after=bindparam("b_now", type_=UTCDateTime()),
        published_at=None,
        error=statements.LOST_ERROR,
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
)
_CLOSE_AS_LOST = statements.CLOSE_ATTEMPT.values(
    outcome=AttemptOutcome.LOST.value,
    finished_at=bindparam("b_now", type_=UTCDateTime()),
    error=statements.LOST_ERROR,
)


_OPEN_UNDER_LEASE = select(ATTEMPTS.c.job_id, ATTEMPTS.c.number).where(
    ATTEMPTS.c.job_id == bindparam("b_job_id"),
    ATTEMPTS.c.lease == bindparam("b_lease"),
    ATTEMPTS.c.outcome == AttemptOutcome.RUNNING.value,
)


def open_attempts_under(connection: Connection, job_id: str, lease_id: str) -> list[LostAttempt]:
    """The open attempts of ``job_id`` that run under ``lease_id``."""
    rows = connection.execute(_OPEN_UNDER_LEASE, {"b_job_id": job_id, "b_lease": lease_id})
    return [LostAttempt(row.job_id, int(row.number)) for row in rows]


def lost_attempts(
    connection: Connection, now: datetime, lease_term: timedelta, limit: int = 200
) -> list[LostAttempt]:
    """Open attempts whose process is dead, up to ``limit``."""
    rows = connection.execute(
        _LOST, {"b_now": now, "b_orphaned_before": now - lease_term, "b_limit": limit}
    )
    return [LostAttempt(row.job_id, int(row.number)) for row in rows]


def put_back(
    connection: Connection,
    lost: LostAttempt,
    *,
    now: datetime,
    poison_after: int,
    poison_error: dict[str, Any],
) -> str:
    """Close ``lost`` and put its job back, or fail it as poison; what was done.

    ``"put_back"``, ``"poisoned"``, ``"closed"`` (the job had moved on: only the attempt is
    closed) or ``"skipped"`` (another reconciler or a delivery holds the job right now).
    """
    job = connection.execute(_LOCK_JOB, {"b_job_id": lost.job_id}).one_or_none()
    if job is None:
        return "skipped"
    key = {"b_job_id": lost.job_id, "b_attempt": lost.number, "b_now": now}
    connection.execute(_CLOSE_AS_LOST, key)
    if job.status != JobStatus.RUNNING.value or job.attempts != lost.number:
        return "closed"
    lost_in_round = int(
        connection.scalar(
            statements.COUNT_LOST, {"b_job_id": lost.job_id, "b_base": job.attempt_base}
        )
        or 0
    )
    if lost_in_round >= poison_after:
        connection.execute(
            statements.POISON,
            {
                "b_job_id": lost.job_id,
                "status": JobStatus.FAILED.value,
                "finished_at": now,
                "next_retry_at": None,
                "error": poison_error,
                "updated_at": now,
            },
        )
        return "poisoned"
    connection.execute(_PUT_BACK, key)
    return "put_back"


def delete_old_leases(connection: Connection, now: datetime) -> None:
    """Forget leases expired long ago that no open attempt names."""
    connection.execute(
        delete(LEASES).where(
            LEASES.c.expires_at < now - EXPIRED_LEASES_KEPT,
            ~exists().where(
                and_(
                    ATTEMPTS.c.lease == LEASES.c.id,
                    ATTEMPTS.c.outcome == AttemptOutcome.RUNNING.value,
                )
            ),
        )
    )
