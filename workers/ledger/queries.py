"""The ledger's reads: one job with its history, jobs page by page (a client's, or every
client's for operators), and counts by status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, literal, select, tuple_
from sqlalchemy.orm import Session

from workers.ledger.models import JOBS, Job, UTCDateTime


@dataclass(frozen=True)
class PagePosition:
    """Where the previous page ended: its last job's creation time and id."""

    created_at: datetime
    job_id: str


def get_job(session: Session, job_id: str) -> Job | None:
    """The job with its attempt history, or ``None``."""
    return session.get(Job, job_id)


def list_jobs(
    connection: Connection,
    client_id: str | None,
    *,
    limit: int,
    status: str | None = None,
    task: str | None = None,
    after: PagePosition | None = None,
) -> tuple[list[dict[str, Any]], PagePosition | None]:
    """Up to ``limit`` of the client's jobs, newest first, and where the next page starts.

    ``client_id`` ``None`` lists every client's jobs (the operator's view).

    Keyset pagination on ``(created_at, id)``: a page costs the same however deep it is,
    and jobs added meanwhile never shift a page.
    """
    query = select(JOBS)
    if client_id is not None:
        query = query.where(JOBS.c.client_id == client_id)
    if status is not None:
        query = query.where(JOBS.c.status == status)
    if task is not None:
        query = query.where(JOBS.c.task == task)
    if after is not None:
        query = query.where(
            tuple_(JOBS.c.created_at, JOBS.c.id)
            < tuple_(literal(after.created_at, UTCDateTime()), literal(after.job_id))
        )
    query = query.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(limit + 1)
    rows = [dict(row) for row in connection.execute(query).mappings()]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    return rows, PagePosition(last["created_at"], last["id"])


def count_by_status(connection: Connection, client_id: str) -> dict[str, int]:
    """How many of the client's jobs are in each status (statuses with none left out)."""
    query = (
        select(JOBS.c.status, func.count())
        .where(JOBS.c.client_id == client_id)
        .group_by(JOBS.c.status)
    )
    return {status: int(count) for status, count in connection.execute(query)}
