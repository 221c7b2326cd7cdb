"""``conveyor enqueue``: one job, checked as the API checks it, recorded, then published.

The job belongs to the client ``cli``. Like an API request it goes through the ledger's
outbox: if Redis does not answer, the job is still recorded and the relay publishes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from api_shim.json_body import JsonDocumentError, parse_json_document
from api_shim.schemas import MAX_DELAY_SECONDS, JobIn
from conveyor.cli.context import ExitCode, command_settings, ledger_access, print_json, refuse
from tasks.catalog import Catalog, build_catalog
from workers.enqueue import Accepted, JobRequest, Submission
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
    "args": "--args",
}


class PriorityChoice(StrEnum):
    """The priority lanes of a queue."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


def location(parts: Sequence[int | str]) -> str:
    """``("args", "sizes", 0)`` → ``"args.sizes[0]"``, as the API names a field."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _first_problem(error: ValidationError, prefix: Sequence[int | str]) -> str:
    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    parts = [*prefix, *first["loc"]]
    if prefix or not parts:
        where = location(parts) or "request"
    else:  # a field of the request: name the option that set it
        where = _OPTION_OF_FIELD.get(str(parts[0]), location(parts))
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse_args_option(text: str) -> dict[str, Any]:
    """The ``--args`` JSON object, read with the API's strict JSON rules."""
    try:
        document = parse_json_document(text.encode(), max_depth=_ARGS_MAX_DEPTH)
    except JsonDocumentError as error:
        refuse(ExitCode.USAGE, f"--args is not acceptable JSON: {error}")
    if not isinstance(document, dict):
        refuse(ExitCode.USAGE, "--args must be a JSON object, e.g. '{\"value\": 1}'")
    return document


def prepare_job(catalog: Catalog, document: dict[str, Any], now: datetime) -> JobRequest:
    """Check a job against the request rules, the catalog and the task's argument model."""
    try:
        job = JobIn.model_validate(document)
    except ValidationError as error:
        refuse(ExitCode.USAGE, _first_problem(error, ()))
    spec = catalog.get(job.task)
    if spec is None:
        known = ", ".join(sorted(catalog))
        refuse(ExitCode.USAGE, f"unknown task {job.task!r}; the catalog has: {known}")
    try:
        spec.arguments.model_validate(job.args)
    except ValidationError as error:
        refuse(
            ExitCode.USAGE, f"invalid arguments for {spec.name}: {_first_problem(error, ['args'])}"
        )
    delay = job.delay_seconds
    return JobRequest(
        job_id=str(uuid.uuid4()),
        client_id=CLIENT_ID,
        task=spec.name,
        queue=spec.queue,
        args=dict(job.args),
        priority=job.priority,
        max_attempts=spec.max_attempts,
        fingerprint=job.fingerprint(),
        idempotency_key=job.idempotency_key,
        request_id=uuid.uuid4().hex,
        scheduled_for=now + timedelta(seconds=delay) if delay else None,
    )


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
    request = prepare_job(catalog, document, datetime.now(UTC))
    with ledger_access(settings) as ledger:
        recorded = ledger.enqueuer.record_and_publish([Submission((request,))])
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
