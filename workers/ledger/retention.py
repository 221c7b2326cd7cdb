"""Retention in the ledger: finished jobs past their time deleted with their attempts, a small
batch per transaction, and the blob ids the remaining jobs name.

A batch takes its rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of
pruners share the work and none waits on a job a worker is updating.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Engine, String, cast, delete, or_, select, text

from workers.ledger.models import ATTEMPTS, JOBS

_BLOB_ID = re.compile(r"sha256:[0-9a-f]{64}")


def prune_finished(engine: Engine, status: str, finished_before: datetime, *, batch: int) -> int:
    """Delete up to ``batch`` jobs in ``status`` that finished before ``finished_before``,
    oldest first, with their attempts, in one transaction; how many went.

    The rows are chosen and deleted by the database itself: no job id travels to this
    process, so a gevent worker spends next to no CPU on a batch while its jobs run. One
    status at a time, so that the status/finish-time index gives the oldest rows in order
    and the scan stops after ``batch`` of them."""
    chosen = (
        select(JOBS.c.id)
        .where(JOBS.c.status == status, JOBS.c.finished_at < finished_before)
        .order_by(JOBS.c.finished_at)
        .limit(batch)
    )
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # a lost deletion is made again on the next run: its commit need not wait for the
            # disk, and so never holds the jobs' own commits behind a larger flush
            connection.execute(text("SET LOCAL synchronous_commit = off"))
            # one statement; the attempts go by the foreign key's ON DELETE CASCADE
            doomed = chosen.with_for_update(skip_locked=True).cte("doomed")
            deleted = connection.execute(delete(JOBS).where(JOBS.c.id.in_(select(doomed.c.id))))
        else:
            # SQLite enforces no foreign keys here, and has one writer: the same choice twice
            connection.execute(delete(ATTEMPTS).where(ATTEMPTS.c.job_id.in_(chosen)))
            deleted = connection.execute(delete(JOBS).where(JOBS.c.id.in_(chosen)))
        return int(deleted.rowcount)


def blob_ids_named(engine: Engine, *, page: int = 1000) -> Iterator[set[str]]:
    """The blob ids named in the arguments or results of the jobs in the ledger, a page of
    jobs at a time (keyset order by id), so that a caller may pause between pages."""
    args, result = cast(JOBS.c.args, String), cast(JOBS.c.result, String)
    after = ""
    while True:
        query = (
            select(JOBS.c.id, args, result)
            .where(JOBS.c.id > after)
            .where(or_(args.contains("sha256:"), result.contains("sha256:")))
            .order_by(JOBS.c.id)
            .limit(page)
        )
        with engine.connect() as connection:
            rows = connection.execute(query).all()
        if not rows:
            return
        found: set[str] = set()
        for _, args_text, result_text in rows:
            found.update(_BLOB_ID.findall(f"{args_text or ''} {result_text or ''}"))
        yield found
        after = rows[-1][0]
