"""``conveyor enqueue``: one job, checked as the API checks it, recorded, then published.

The job belongs to the client ``cli``. Like an API request it goes through the ledger's
outbox: if Redis does not answer, the job is still recorded and the relay publishes it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

import typer

from api_shim.intake import JobIntake, JobRefusedError, RefusalReason
from api_shim.json_body import JsonDocumentError, parse_json_document
from api_shim.schemas import MAX_DELAY_SECONDS
from conveyor.cli.context import ExitCode, command_settings, ledger_access, print_json, refuse
from tasks.catalog import Catalog, build_catalog
from workers.enqueue import Accepted
from workers.ledger.documents import job_document

#: The client id of every job created on the command line.
CLIENT_ID = "cli"
# the API reads --args inside a request body, one level down
_ARGS_MAX_DEPTH = 31
_OPTION_OF_FIELD = {
    "idempotency_key": "--idempotency-key",
    "delay_seconds": "--delay-seconds",
    "priority": "--priority",
    "task": "TASK",
}


class PriorityChoice(StrEnum):
    """The priority lanes of a queue."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


def parse_args_option(text: str) -> dict[str, Any]:
    """The ``--args`` JSON object, read with the API's strict JSON rules."""
    try:
        document = parse_json_document(text.encode(), max_depth=_ARGS_MAX_DEPTH)
    except JsonDocumentError as error:
        refuse(ExitCode.USAGE, f"--args is not acceptable JSON: {error}")
    if not isinstance(document, dict):
        refuse(ExitCode.USAGE, "--args must be a JSON object, e.g. '{\"value\": 1}'")
    return document


def refusal_line(
    refusal: JobRefusedError,
    catalog: Catalog,
    options: Mapping[str, str] = _OPTION_OF_FIELD,
) -> str:
    """The intake's refusal in the command line's words: the option (of ``options``, by
    field) that set the field."""
    if refusal.reason is RefusalReason.UNKNOWN_TASK:
        return f"{refusal.problem}; the catalog has: {', '.join(sorted(catalog))}"
    field = re.split(r"[.\[]", refusal.location, maxsplit=1)[0]
    if field == "args":
        return f"invalid arguments: {refusal.message}"
    option = options.get(field)
    if option is None:
        return refusal.message
    more = f" (and {refusal.more} more)" if refusal.more else ""
    return f"{option}: {refusal.problem}{more}"


def enqueue(  # noqa: PLR0917 - typer passes the options by name
    task: Annotated[
        str,
        typer.Argument(
            metavar="TASK", help="catalog task name, e.g. diagnostics.echo", show_default=False
        ),
    ],
    args: Annotated[str, typer.Option("--args", help="the task's arguments, a JSON object")] = "{}",
    priority: Annotated[
        PriorityChoice, typer.Option(help="priority lane within the task's queue")
    ] = PriorityChoice.NORMAL,
    delay_seconds: Annotated[
        float | None,
        typer.Option(
            min=0, max=MAX_DELAY_SECONDS, help="run no sooner than this many seconds from now"
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="enqueue at most once per key: the same key again answers the same job"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the job as the API's JSON document")
    ] = False,
) -> None:
    """Enqueue one job and print its id.

    The task and its arguments are checked as the HTTP API checks them. The job is recorded
    in the ledger (client id `cli`), then queued on Redis; if Redis does not answer, it
    stays recorded and the outbox relay (`conveyor beat`) publishes it later (exit 0).

    Exit codes: 0 enqueued (or recorded for the relay); 1 the database failed; 2 bad
    option, bad JSON, unknown task or invalid arguments; 4 the idempotency key was used for
    a different request.
    """
    settings = command_settings()
    catalog = build_catalog(diagnostics=bool(settings.diagnostics))
    document: dict[str, Any] = {
        "task": task,
        "args": parse_args_option(args),
        "priority": priority.value,
        "delay_seconds": delay_seconds,
        "idempotency_key": idempotency_key,
    }
    try:
        submission = JobIntake(catalog).single(
            document, client_id=CLIENT_ID, request_id=uuid.uuid4().hex
        )
    except JobRefusedError as refusal:
        refuse(ExitCode.USAGE, refusal_line(refusal, catalog))
    request = submission.jobs[0]
    with ledger_access(settings) as ledger:
        recorded = ledger.enqueuer.record_and_publish([submission])
        ledger.enqueuer.mark_published(recorded.published)
    answer = recorded.answers[0]
    if not isinstance(answer, Accepted):
        refuse(
            ExitCode.CONFLICT,
            f"idempotency key {answer.idempotency_key!r} was used for a different request",
        )
    job, replayed = answer.jobs[0], answer.replayed[0]
    if replayed:
        typer.echo(
            f"conveyor: idempotency key seen before; job {job['id']} already exists", err=True
        )
    elif request.scheduled_for is None and request.job_id not in recorded.published:
        typer.echo(
            f"conveyor: Redis did not answer; job {job['id']} is recorded and the outbox relay "
            "will queue it when Redis is back",
            err=True,
        )
    if as_json:
        print_json(job_document(job))
    else:
        typer.echo(job["id"])
