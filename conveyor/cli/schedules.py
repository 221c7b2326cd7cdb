"""``conveyor schedules``: the periodic jobs of the client ``cli``, kept in the ledger.

A schedule is checked as the API checks one (``PUT /v1/schedules/{name}``); the workers and
beats fire it. ``--json`` prints the API's schedule documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from sqlalchemy import Connection

from api_shim.intake import JobIntake, JobRefusedError
from conveyor.cli.context import (
    ExitCode,
    command_group,
    command_settings,
    ledger_access,
    print_json,
    refuse,
)
from conveyor.cli.enqueue import CLIENT_ID, PriorityChoice, parse_args_option, refusal_line
from conveyor.cli.jobs import table
from tasks.catalog import build_catalog
from workers.ledger import schedules
from workers.ledger.documents import schedule_document
from workers.ledger.models import is_schedule_name
from workers.schedule_timing import MAX_EVERY_SECONDS

schedules_cli = command_group(
    "schedules", "Periodic jobs of the client `cli`: list, set, delete, pause and resume."
)

Name = Annotated[
    str, typer.Argument(metavar="NAME", help="the schedule's name", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON schedule document")]
_OPTION_OF_FIELD = {
    "task": "--task",
    "cron": "--cron",
    "every_seconds": "--every",
    "timezone": "--timezone",
    "priority": "--priority",
}


def _document(connection: Connection, row: Mapping[str, Any]) -> dict[str, Any]:
    latest = schedules.latest_job_ids(connection, CLIENT_ID, [row["name"]])
    return schedule_document(row, latest[row["name"]])


def _when(document: Mapping[str, Any]) -> str:
    if document["cron"] is not None:
        return f"cron {document['cron']} ({document['timezone']})"
    return f"every {document['every_seconds']} s"


def _report(document: Mapping[str, Any], done: str, *, as_json: bool) -> None:
    if as_json:
        print_json(document)
        return
    next_run = document["next_run_at"] or "- (paused)"
    typer.echo(f"schedule {document['name']} {done}; next run at {next_run}")


@schedules_cli.command("list")
def list_schedules(
    as_json: Annotated[
        bool, typer.Option("--json", help="print a JSON array of the API's schedule documents")
    ] = False,
) -> None:
    """List the schedules of the client `cli`, by name."""
    settings = command_settings()
    with ledger_access(settings) as ledger, ledger.engine.connect() as connection:
        rows = schedules.list_schedules(connection, CLIENT_ID)
        latest = schedules.latest_job_ids(connection, CLIENT_ID, [r["name"] for r in rows])
    documents = [schedule_document(row, latest[row["name"]]) for row in rows]
    if as_json:
        print_json(documents)
        return
    if not documents:
        typer.echo("no schedules")
        return
    header = ["NAME", "TASK", "WHEN", "STATE", "NEXT RUN", "LAST RUN"]
    lines = [
        [
            document["name"],
            document["task"],
            _when(document),
            "paused" if document["paused"] else "active",
            document["next_run_at"] or "-",
            document["last_run_at"] or "-",
        ]
        for document in documents
    ]
    for line in table(header, lines):
        typer.echo(line)


@schedules_cli.command("set")
def set_schedule(  # noqa: PLR0917 - typer passes the options by name
    name: Name,
    task: Annotated[
        str, typer.Option(help="catalog task name, e.g. diagnostics.echo", show_default=False)
    ],
    args: Annotated[str, typer.Option("--args", help="the task's arguments, a JSON object")] = "{}",
    cron: Annotated[
        str | None,
        typer.Option(help="cron expression: 5 fields, or 6 with the seconds first"),
    ] = None,
    every: Annotated[
        int | None,
        typer.Option(min=1, max=MAX_EVERY_SECONDS, help="a tick every this many seconds"),
    ] = None,
    timezone: Annotated[
        str, typer.Option(help="IANA time zone the cron expression is read in")
    ] = "UTC",
    priority: Annotated[
        PriorityChoice, typer.Option(help="priority lane of the jobs")
    ] = PriorityChoice.NORMAL,
    paused: Annotated[bool, typer.Option("--paused", help="create it paused")] = False,
    as_json: AsJson = False,
) -> None:
    """Create or replace a schedule: give --cron EXPR or --every SECONDS.

    Checked as the API checks one (exit 2 when refused). Replacing a schedule with the same
    timing keeps its next run.
    """
    if not is_schedule_name(name):
        refuse(ExitCode.USAGE, "NAME: letters, digits, '.', '_' and '-', at most 100")
    settings = command_settings()
    catalog = build_catalog(diagnostics=bool(settings.diagnostics))
    document: dict[str, Any] = {
        "task": task,
        "args": parse_args_option(args),
        "cron": cron,
        "every_seconds": every,
        "timezone": timezone,
        "priority": priority.value,
        "paused": paused,
    }
    try:
        spec = JobIntake(catalog).schedule(document, name=name)
    except JobRefusedError as refusal:
        refuse(ExitCode.USAGE, refusal_line(refusal, catalog, _OPTION_OF_FIELD))
    with ledger_access(settings) as ledger, ledger.engine.begin() as connection:
        row, created = schedules.put_schedule(connection, CLIENT_ID, spec, datetime.now(UTC))
        saved = _document(connection, row)
    _report(saved, "created" if created else "replaced", as_json=as_json)


@schedules_cli.command("delete")
def delete_schedule(name: Name) -> None:
    """Delete a schedule (exit 3 if there is none); the jobs it made stay."""
    settings = command_settings()
    with ledger_access(settings) as ledger, ledger.engine.begin() as connection:
        deleted = is_schedule_name(name) and schedules.delete_schedule(connection, CLIENT_ID, name)
    if not deleted:
        refuse(ExitCode.NOT_FOUND, f"no schedule {name!r}")
    typer.echo(f"schedule {name} deleted")


def _set_paused(name: str, *, paused: bool, as_json: bool) -> None:
    settings = command_settings()
    with ledger_access(settings) as ledger, ledger.engine.begin() as connection:
        row = None
        if is_schedule_name(name):
            now = datetime.now(UTC)
            row = schedules.set_paused(connection, CLIENT_ID, name, paused=paused, now=now)
        saved = _document(connection, row) if row is not None else None
    if saved is None:
        refuse(ExitCode.NOT_FOUND, f"no schedule {name!r}")
    _report(saved, "paused" if paused else "resumed", as_json=as_json)


@schedules_cli.command("pause")
def pause_schedule(name: Name, as_json: AsJson = False) -> None:
    """Pause a schedule: no tick fires until it is resumed (exit 3 if there is none)."""
    _set_paused(name, paused=True, as_json=as_json)


@schedules_cli.command("resume")
def resume_schedule(name: Name, as_json: AsJson = False) -> None:
    """Resume a schedule from its first tick after now (exit 3 if there is none)."""
    _set_paused(name, paused=False, as_json=as_json)
