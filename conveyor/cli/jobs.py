"""``conveyor jobs``: the operator's view of the ledger and its dead letters, every client's jobs.

``--json`` prints the HTTP API's job documents, so scripts read both the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from conveyor.cli.context import (
    ExitCode,
    command_group,
    command_settings,
    ledger_access,
    print_json,
    refuse,
)
from workers.ledger import operator_actions, queries
from workers.ledger.database import session_scope
from workers.ledger.documents import job_document, job_row, job_with_history
from workers.ledger.models import JobStatus, is_job_id

jobs_cli = command_group(
    "jobs", "Ledger and dead-letter operations on every client's jobs (an operator's tool)."
)

JobId = Annotated[str, typer.Argument(metavar="ID", help="the job id", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON job document")]


def _checked_id(job_id: str) -> str:
    if not is_job_id(job_id):
        refuse(ExitCode.NOT_FOUND, f"no job {job_id!r}")
    return job_id


@contextmanager
def _refusals() -> Iterator[None]:
    """Turn a refused job action into its exit code and one line."""
    try:
        yield
    except operator_actions.JobNotFoundError as error:
        refuse(ExitCode.NOT_FOUND, str(error))
    except operator_actions.JobStateError as error:
        refuse(ExitCode.CONFLICT, str(error))


def _short_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns under ``header``."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _job_line(row: Mapping[str, Any]) -> list[str]:
    return [
        row["id"],
        row["task"],
        row["status"],
        f"{row['attempts']}/{row['max_attempts']}",
        row["client_id"] or "-",
        _short_time(row["created_at"]),
    ]


@jobs_cli.command("list")
def list_jobs(
    status: Annotated[JobStatus | None, typer.Option(help="only jobs in this status")] = None,
    task: Annotated[str | None, typer.Option(help="only jobs of this task")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many jobs")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="print a JSON array of the API's job documents")
    ] = False,
) -> None:
    """List jobs, newest first: a table, or a JSON array of job documents with --json.

    `conveyor jobs list --status failed` lists the dead letters.
    """
    settings = command_settings()
    with ledger_access(settings) as ledger, ledger.engine.connect() as connection:
        # every client's jobs: the operator's view
        rows, _ = queries.list_jobs(
            connection, None, limit=limit, status=status.value if status else None, task=task
        )
    if as_json:
        print_json([job_document(row) for row in rows])
        return
    if not rows:
        typer.echo("no jobs")
        return
    header = ["ID", "TASK", "STATUS", "ATTEMPTS", "CLIENT", "CREATED"]
    for line in table(header, [_job_line(row) for row in rows]):
        typer.echo(line)


def _describe(document: Mapping[str, Any], client_id: str | None) -> list[str]:
    error = document["error"]
    fields = [
        ("id", document["id"]),
        ("task", f"{document['task']} (queue {document['queue']})"),
        ("status", document["status"]),
        ("priority", document["priority"]),
        ("attempts", f"{document['attempts']} of at most {document['max_attempts']}"),
        ("client", client_id or "- (sent by a plain Celery client)"),
        ("idempotency_key", document["idempotency_key"] or "-"),
        ("request_id", document["request_id"] or "-"),
        ("created_at", document["created_at"]),
        ("scheduled_for", document["scheduled_for"] or "-"),
        ("started_at", document["started_at"] or "-"),
        ("finished_at", document["finished_at"] or "-"),
        ("next_retry_at", document["next_retry_at"] or "-"),
        ("args", json.dumps(document["args"], ensure_ascii=False)),
        ("result", json.dumps(document["result"], ensure_ascii=False)),
        ("error", f"{error['type']}: {error['message']} ({error['error_id']})" if error else "-"),
    ]
    lines = [f"{name:<16}{value}" for name, value in fields]
    history = document["history"]
    if not history:
        return [*lines, "history         no attempts yet"]
    rows = [
        [
            str(attempt["number"]),
            attempt["status"],
            attempt["pool"],
            attempt["worker"],
            attempt["started_at"] or "-",
            attempt["finished_at"] or "-",
            attempt["error"]["type"] if attempt["error"] else "-",
        ]
        for attempt in history
    ]
    header = ["#", "OUTCOME", "POOL", "WORKER", "STARTED", "FINISHED", "ERROR"]
    return [*lines, "history:", *(f"  {line}" for line in table(header, rows))]


@jobs_cli.command("show")
def show_job(job_id: JobId, as_json: AsJson = False) -> None:
    """Show one job with its attempt history (exit 3 if there is no such job)."""
    job_id = _checked_id(job_id)
    settings = command_settings()
    with ledger_access(settings) as ledger, session_scope(ledger.sessions) as session:
        job = queries.get_job(session, job_id)
        if job is None:
            refuse(ExitCode.NOT_FOUND, f"no job {job_id}")
        document, client_id = job_with_history(job), job.client_id
    if as_json:
        print_json(document)
        return
    for line in _describe(document, client_id):
        typer.echo(line)


@jobs_cli.command("retry")
def retry_job(job_id: JobId, as_json: AsJson = False) -> None:
    """Replay a failed (dead-letter) or cancelled job for a fresh round of attempts.

    Exit 3 if there is no such job, 4 if it is not failed or cancelled. If Redis does not
    answer, the replay is recorded and the outbox relay queues it later (exit 0).
    """
    job_id = _checked_id(job_id)
    settings = command_settings()
    with _refusals(), ledger_access(settings) as ledger:
        with session_scope(ledger.sessions) as session:
            replay = operator_actions.replay(session, job_id, now=datetime.now(UTC))
            document = job_document(job_row(replay.job))
        published = ledger.enqueuer.publish_recorded([replay.dispatch])
    if not published:
        typer.echo(
            f"conveyor: Redis did not answer; the replay of job {job_id} is recorded and the "
            "outbox relay will queue it when Redis is back",
            err=True,
        )
    if as_json:
        print_json(document)
    else:
        typer.echo(f"job {job_id} requeued")


@jobs_cli.command("cancel")
def cancel_job(job_id: JobId, as_json: AsJson = False) -> None:
    """Cancel a job that has not finished (exit 3 if there is no such job, 4 if finished).

    A running attempt is not interrupted; its outcome is discarded and no retry follows.
    """
    job_id = _checked_id(job_id)
    settings = command_settings()
    with (
        _refusals(),
        ledger_access(settings) as ledger,
        session_scope(ledger.sessions) as session,
    ):
        job = operator_actions.cancel(session, job_id, now=datetime.now(UTC))
        document = job_document(job_row(job))
    if as_json:
        print_json(document)
    else:
        typer.echo(f"job {job_id} cancelled")
