"""The ledger side of schedules: a client's periodic jobs kept, and their due ticks claimed.

Every function runs in the caller's connection and transaction. A schedule is paused
exactly when its ``next_run_at`` is ``NULL``, so the schedulers' read skips it.

Any number of schedulers claim due schedules at once. On PostgreSQL a claim locks the rows
(``FOR UPDATE SKIP LOCKED``), so two schedulers never hold the same schedule; SQLite has one
writer at a time. On both, :func:`advance` moves a schedule on only from the tick its
caller saw, so a tick is fired once even by a scheduler that read a stale row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from workers.broker import Priority
from workers.ledger.models import JOBS, SCHEDULES
from workers.schedule_timing import Firing, Timing

#: How many of a schedule's job ids its document lists, newest first.
LATEST_JOBS = 5


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as a client defines it: what to run, and when."""

    name: str
    task: str
    args: dict[str, Any]
    timing: Timing
    priority: Priority = "normal"
    paused: bool = False


def timing_of(row: Mapping[str, Any]) -> Timing:
    """The timing a ``schedules`` row stores."""
    return Timing(cron=row["cron"], every_seconds=row["every_seconds"], timezone=row["timezone"])


_ONE = select(SCHEDULES).where(
    SCHEDULES.c.client_id == bindparam("b_client"), SCHEDULES.c.name == bindparam("b_name")
)


def get_schedule(connection: Connection, client_id: str, name: str) -> dict[str, Any] | None:
    """The client's schedule ``name``, or ``None``."""
    row = connection.execute(_ONE, {"b_client": client_id, "b_name": name}).mappings().first()
    return dict(row) if row is not None else None


def _locked(connection: Connection, client_id: str, name: str) -> dict[str, Any] | None:
    query = _ONE.with_for_update()
    row = connection.execute(query, {"b_client": client_id, "b_name": name}).mappings().first()
    return dict(row) if row is not None else None


def list_schedules(connection: Connection, client_id: str) -> list[dict[str, Any]]:
    """The client's schedules, by name."""
    query = select(SCHEDULES).where(SCHEDULES.c.client_id == client_id).order_by(SCHEDULES.c.name)
    return [dict(row) for row in connection.execute(query).mappings()]


def _next_run(spec: ScheduleSpec, now: datetime, kept: Mapping[str, Any] | None) -> datetime | None:
    """The next tick of a schedule defined (or redefined) now; a redefinition that keeps the
    timing and the running state keeps its next tick."""
    if spec.paused:
        return None
    if kept is not None and kept["next_run_at"] is not None and timing_of(kept) == spec.timing:
        next_run_at: datetime = kept["next_run_at"]
        return next_run_at
    return spec.timing.first_after(now)


def _insert_new(connection: Connection, row: Mapping[str, Any]) -> bool:
    """Insert ``row`` unless the client has a schedule of that name already; whether it did."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = dialect_insert(SCHEDULES).on_conflict_do_nothing().returning(SCHEDULES.c.id)
    return connection.execute(statement, dict(row)).first() is not None


def put_schedule(
    connection: Connection, client_id: str, spec: ScheduleSpec, now: datetime
) -> tuple[dict[str, Any], bool]:
    """Create or replace the client's schedule ``spec.name``: its row, and whether it is new.

    A replacement keeps the next tick when the timing is the same, so editing a schedule's
    arguments neither skips nor adds a tick.
    """
    values = {
        "task": spec.task,
        "args": spec.args,
        "cron": spec.timing.cron,
        "every_seconds": spec.timing.every_seconds,
        "timezone": spec.timing.timezone,
        "priority": spec.priority,
        "paused": spec.paused,
        "updated_at": now,
    }
    existing = _locked(connection, client_id, spec.name)
    if existing is None:
        row = {
            "client_id": client_id,
            "name": spec.name,
            **values,
            "next_run_at": _next_run(spec, now, None),
            "last_run_at": None,
            "created_at": now,
        }
        if _insert_new(connection, row):
            created = get_schedule(connection, client_id, spec.name)
            assert created is not None  # noqa: S101 - inserted in this transaction
            return created, True
        # another request created it meanwhile: this one replaces it
        existing = _locked(connection, client_id, spec.name)
        assert existing is not None  # noqa: S101 - the insert conflicted with it
    values["next_run_at"] = _next_run(spec, now, existing)
    statement = (
        SCHEDULES.update()
        .where(SCHEDULES.c.id == existing["id"])
        .values(**values)
        .returning(*SCHEDULES.c)
    )
    return dict(connection.execute(statement).mappings().one()), False


def delete_schedule(connection: Connection, client_id: str, name: str) -> bool:
    """Delete the client's schedule ``name``; whether there was one. Its jobs stay."""
    statement = SCHEDULES.delete().where(
        SCHEDULES.c.client_id == client_id, SCHEDULES.c.name == name
    )
    return connection.execute(statement).rowcount > 0


def set_paused(
    connection: Connection, client_id: str, name: str, *, paused: bool, now: datetime
) -> dict[str, Any] | None:
    """Pause or resume the client's schedule ``name``; its row, or ``None`` if there is none.

    A resumed schedule ticks next at its first tick after now: the ticks it was paused over
    are not made up.
    """
    row = _locked(connection, client_id, name)
    if row is None or row["paused"] == paused:
        return row
    next_run_at = None if paused else timing_of(row).first_after(now)
    statement = (
        SCHEDULES.update()
        .where(SCHEDULES.c.id == row["id"])
        .values(paused=paused, next_run_at=next_run_at, updated_at=now)
        .returning(*SCHEDULES.c)
    )
    return dict(connection.execute(statement).mappings().one())


def latest_job_ids(
    connection: Connection, client_id: str, names: Iterable[str], per_schedule: int = LATEST_JOBS
) -> dict[str, list[str]]:
    """The ids of each named schedule's latest jobs, newest first."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    rank = (
        func.row_number()
        .over(
            partition_by=JOBS.c.schedule,
            order_by=(JOBS.c.created_at.desc(), JOBS.c.id.desc()),
        )
        .label("rank")
    )
    ranked = (
        select(JOBS.c.schedule, JOBS.c.id, rank)
        .where(JOBS.c.client_id == client_id, JOBS.c.schedule.in_(wanted))
        .subquery()
    )
    query = (
        select(ranked.c.schedule, ranked.c.id)
        .where(ranked.c.rank <= per_schedule)
        .order_by(ranked.c.schedule, ranked.c.rank)
    )
    found: dict[str, list[str]] = {name: [] for name in wanted}
    for schedule, job_id in connection.execute(query):
        found[schedule].append(job_id)
    return found


_DUE = (
    select(SCHEDULES)
    .where(SCHEDULES.c.next_run_at <= bindparam("b_now"))
    .order_by(SCHEDULES.c.next_run_at)
    .limit(bindparam("b_limit"))
)


def claim_due(connection: Connection, now: datetime, limit: int) -> list[dict[str, Any]]:
    """Schedules whose next tick has come, earliest first, locked for this transaction.

    Rows another scheduler has locked are skipped rather than waited for (PostgreSQL).
    """
    query = _DUE.with_for_update(skip_locked=True)
    rows = connection.execute(query, {"b_now": now, "b_limit": limit}).mappings()
    return [dict(row) for row in rows]


def advance(connection: Connection, row: Mapping[str, Any], firing: Firing) -> bool:
    """Move a claimed schedule past ``firing``; whether it was still at the tick it was
    claimed at (if not, another scheduler fired that tick, and the caller makes no job)."""
    statement = (
        SCHEDULES.update()
        .where(SCHEDULES.c.id == row["id"], SCHEDULES.c.next_run_at == row["next_run_at"])
        # updated_at tells when the definition last changed, not the latest tick
        .values(
            next_run_at=firing.next_run_at,
            last_run_at=firing.tick,
            updated_at=SCHEDULES.c.updated_at,
        )
    )
    return connection.execute(statement).rowcount == 1
