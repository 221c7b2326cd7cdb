"""``conveyor dev`` and ``conveyor demo``: the whole stack on one machine, and a workload on it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from conveyor.cli.context import command_settings


def dev(
    api_port: Annotated[int, typer.Option(min=1, max=65535, help="API port")] = 8000,
    flower_port: Annotated[int, typer.Option(min=1, max=65535, help="Flower port")] = 5555,
) -> None:
    """Run the whole stack locally until Ctrl-C.

    Redis at CONVEYOR_REDIS_URL, or an embedded Valkey on a free port when nothing answers
    there; the ledger (SQLite by default) migrated to head; the API, an io worker
    (gevent), a cpu worker (prefork), beat and Flower (basic auth), on 127.0.0.1. Their
    logs are interleaved under a prefix per process. Ctrl-C stops everything with a warm
    shutdown: running jobs finish, queued ones stay queued.
    """
    from conveyor.devstack.stack import StackLayout, run_dev_stack  # noqa: PLC0415 - loaded by this command only: every command starts faster
    from conveyor.devstack.supervision import StackStartError  # noqa: PLC0415 - as above

    settings = command_settings()
    if settings.env == "prod":
        typer.echo("conveyor dev: refused with CONVEYOR_ENV=prod", err=True)
        raise typer.Exit(2)
    try:
        code = run_dev_stack(
            settings,
            dict(os.environ),  # the stack's processes inherit this environment
            StackLayout(api_port=api_port, flower_port=flower_port, state_dir=Path("var")),
        )
    except StackStartError as error:
        typer.echo(f"conveyor dev: {error}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def demo(
    *,
    jobs: Annotated[
        int, typer.Option(min=20, max=5000, help="about how many jobs the workload makes")
    ] = 400,
    timeout: Annotated[
        float, typer.Option(min=5, help="seconds the workload may take before the demo gives up")
    ] = 80.0,
    retry_scale: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="CONVEYOR_RETRY_SCALE of the stack the demo starts"),
    ] = 0.05,
    api_url: Annotated[
        str | None,
        typer.Option(help="use the stack whose API answers here instead of starting one"),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CONVEYOR_DEMO_API_KEY",
            help="API key for --api-url (default: the first of CONVEYOR_API_KEYS, else the dev"
            " key)",
            show_envvar=True,
        ),
    ] = None,
    summary_json: Annotated[
        Path | None, typer.Option(help="also write the summary to this file as JSON")
    ] = None,
    keep_running: Annotated[
        bool,
        typer.Option(help="after the summary, keep the stack up (Flower, API) until Ctrl-C"),
    ] = False,
) -> None:
    """Run a realistic mixed workload through both pools, then print a summary.

    Starts the stack as `conveyor dev` does (an embedded Valkey when nothing answers at
    CONVEYOR_REDIS_URL, the SQLite ledger by default, the API, both workers, beat and
    Flower) with short retry delays, unless --api-url names a running one. The workload:
    signed webhooks to a local receiver that answers some 500s, 429s and 503s (so retries
    and dead letters show), image pipelines (fetch, then digest and thumbnails in the
    prefork pool) and deliberate failures. Exit 0 when every job ended as planned.
    """
    from conveyor.demo.runner import DemoOptions, run_demo  # noqa: PLC0415 - loaded by this command only: every command starts faster

    settings = command_settings()
    if settings.env == "prod":
        typer.echo("conveyor demo: refused with CONVEYOR_ENV=prod", err=True)
        raise typer.Exit(2)
    options = DemoOptions(
        jobs=jobs,
        timeout=timeout,
        retry_scale=retry_scale,
        api_url=api_url,
        api_key=api_key,
        state_dir=Path("var") / "demo",
        summary_json=summary_json,
        keep_running=keep_running,
    )
    # piped output (make demo in a log) gets lines wide enough for the tables
    console = Console(width=None if sys.stdout.isatty() else 120)
    raise typer.Exit(run_demo(settings, dict(os.environ), options, console))
