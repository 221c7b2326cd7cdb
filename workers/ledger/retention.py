"""Retention in the ledger: finished jobs past their time deleted with their attempts, a small
batch per transaction, and the blob ids the remaining jobs name.

A batch takes its rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of
pruners share the work and none waits on a job a worker is updating.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime

from sqlalchemy import Engine, String, cast, delete, or_, select

from workers.ledger.models import ATTEMPTS, JOBS

_BLOB_ID = re.compile(r"sha256:[0-9a-f]{64}")


def prune_finished(
    engine: Engine, statuses: Sequence[str], finished_before: datetime, *, batch: int
) -> int:
    """Delete up to ``batch`` jobs in ``statuses`` that finished before ``finished_before``,
    with their attempts, in one transaction; how many went."""
    chosen = (
        select(JOBS.c.id)
        .where(JOBS.c.status.in_(statuses), JOBS.c.finished_at < finished_before)
        .order_by(JOBS.c.finished_at)
        .limit(batch)
    )
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        ids = list(connection.execute(chosen).scalars())
        if not ids:
            return 0
        connection.execute(delete(ATTEMPTS).where(ATTEMPTS.c.job_id.in_(ids)))
        # the status again: a job replayed since the read is no longer finished
        deleted = connection.execute(
            delete(JOBS).where(JOBS.c.id.in_(ids), JOBS.c.status.in_(statuses))
        )
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
