"""The ledger's reads: one job with its history, jobs page by page (a client's, or every
client's for operators), and counts by status."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, literal, select, tuple_
from sqlalchemy.orm import Session

from workers.ledger.models import JOBS, Job, UTCDateTime

# rows read from the database at a time while a page is filled
_FETCH_BATCH = 50
# the fields of a job document besides its JSON values, generously
_FIXED_FIELDS_BYTES = 600


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
    schedule: str | None = None,
    after: PagePosition | None = None,
    max_bytes: int | None = None,
) -> tuple[list[dict[str, Any]], PagePosition | None]:
    """Up to ``limit`` of the client's jobs, newest first, and where the next page starts.

    ``client_id`` ``None`` lists every client's jobs (the operator's view). Keyset
    pagination on ``(created_at, id)``: a page costs the same however deep it is, and jobs
    added meanwhile never shift a page. With ``max_bytes`` the page also ends once its jobs'
    documents would pass that size (it always holds one job), so that no page of large jobs
    costs the reader more memory than that; rows past the end are never fetched.
    """
    query = select(JOBS)
    if client_id is not None:
        query = query.where(JOBS.c.client_id == client_id)
    if status is not None:
        query = query.where(JOBS.c.status == status)
    if task is not None:
        query = query.where(JOBS.c.task == task)
    if schedule is not None:
        query = query.where(JOBS.c.schedule == schedule)
    if after is not None:
        query = query.where(
            tuple_(JOBS.c.created_at, JOBS.c.id)
            < tuple_(literal(after.created_at, UTCDateTime()), literal(after.job_id))
        )
    query = query.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(limit + 1)
    rows: list[dict[str, Any]] = []
    size = 0
    result = connection.execution_options(yield_per=_FETCH_BATCH).execute(query).mappings()
    with result:
        for row in result:
            weight = document_weight(row)
            full = len(rows) == limit
            if full or (rows and max_bytes is not None and size + weight > max_bytes):
                last = rows[-1]
                return rows, PagePosition(last["created_at"], last["id"])
            rows.append(dict(row))
            size += weight
    return rows, None


def document_weight(row: Mapping[Any, Any]) -> int:
    """About how many bytes the job's JSON document takes: its JSON values, and the rest."""
    values = (row["args"], row["result"], row["error"])
    return _FIXED_FIELDS_BYTES + sum(
        len(json.dumps(value, ensure_ascii=False, separators=(",", ":"))) for value in values
    )


def count_by_status(connection: Connection, client_id: str | None) -> dict[str, int]:
    """How many of the client's jobs (every client's with ``None``) are in each status
    (statuses with none left out)."""
    query = select(JOBS.c.status, func.count()).group_by(JOBS.c.status)
    if client_id is not None:
        query = query.where(JOBS.c.client_id == client_id)
    return {status: int(count) for status, count in connection.execute(query)}
