"""The ``conveyor`` command line."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import typer
import uvicorn
from rich.console import Console

from tasks.catalog import build_catalog
from workers.celery_app import check_visibility_timeout
from workers.cli_context import EXIT_CODES_HELP, command_settings
from workers.cli_enqueue import enqueue
from workers.cli_jobs import jobs_cli
from workers.demo.runner import DemoOptions, run_demo
from workers.dev_stack import StackLayout, StackStartError, run_dev_stack
from workers.flower_command import flower
from workers.health import check_database, check_redis
from workers.schema import upgrade
from workers.settings import Settings, SettingsError

cli = typer.Typer(
    name="conveyor",
    help="Conveyor: reliable background jobs on Celery, Redis and a job ledger.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

WorkerKind = Literal["io", "cpu"]
POOL_OF_KIND: dict[str, str] = {"io": "gevent", "cpu": "prefork"}
_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def worker_command(kind: str, settings: Settings, extra: list[str]) -> list[str]:
    """The ``celery worker`` command line for a worker of ``kind``."""
    concurrency = settings.io_concurrency if kind == "io" else settings.cpu_concurrency
    command = [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker",
        "--pool", POOL_OF_KIND[kind],
        "--concurrency", str(concurrency),
        "--queues", kind,
        "--loglevel", settings.log_level,
        "--prefetch-multiplier", "1",
        "--without-mingle",
    ]  # fmt: skip
    if not any(arg in ("-n", "--hostname") or arg.startswith("--hostname=") for arg in extra):
        command += ["--hostname", f"{kind}@%h"]
    return command + extra


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def worker(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="io (gevent pool) or cpu (prefork pool)")],
) -> None:
    """Run a Celery worker for the io or cpu queue, with the pool that kind needs.

    Further options go to `celery worker` as they are (e.g. `-n name@%h`, `-c 50`).
    """
    if kind not in POOL_OF_KIND:
        typer.echo("conveyor: worker kind must be io or cpu", err=True)
        raise typer.Exit(2)
    command = worker_command(kind, command_settings(), list(ctx.args))
    # exec: Celery's own entry point monkey-patches gevent before anything else is imported,
    # and signals (SIGTERM for a warm shutdown) reach the worker directly
    os.execv(sys.executable, command)  # noqa: S606 - fixed argv, no shell


@cli.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def beat(ctx: typer.Context) -> None:
    """Run Celery beat: it schedules the outbox relay every second (run exactly one).

    Further options go to `celery beat` as they are.
    """
    settings = command_settings()
    command = [
        sys.executable, "-m", "celery", "-A", "workers.app", "beat",
        "--loglevel", settings.log_level, *ctx.args,
    ]  # fmt: skip
    os.execv(sys.executable, command)  # noqa: S606 - fixed argv, no shell


@cli.command()
def api(
    host: Annotated[
        str | None,
        typer.Option(help="address to bind (default: CONVEYOR_API_HOST, else 127.0.0.1)"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="port to listen on (default: CONVEYOR_API_PORT, else 8000)"
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn)."""
    settings = command_settings()
    if workers > 1 and not os.environ.get(_METRICS_DIR):
        # each worker process counts in files here, so one scrape adds every process up
        os.environ[_METRICS_DIR] = tempfile.mkdtemp(prefix="conveyor-metrics-")
    uvicorn.run(
        "api_shim.app:build",
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_config=None,  # the JSON logging configured by the app
        log_level=settings.log_level.lower(),
        access_log=False,  # requests are counted in /metrics; errors are logged with ids
        server_header=False,
        proxy_headers=False,
    )


@cli.command()
def migrate(
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Upgrade the ledger database to the newest schema (Alembic)."""
    settings = command_settings()
    upgrade(settings.database_url, revision)
    typer.echo(f"ledger at {revision}")


@cli.command()
def check() -> None:
    """Validate the settings and reach Redis and the database; exit 1 with the reason."""
    settings = command_settings()
    try:
        check_visibility_timeout(settings, build_catalog(diagnostics=bool(settings.diagnostics)))
    except SettingsError as error:
        typer.echo(f"conveyor check: {error}", err=True)
        raise typer.Exit(1) from None
    failures = [
        problem
        for problem in (check_redis(settings.redis_url), check_database(settings.database_url))
        if problem
    ]
    for problem in failures:
        typer.echo(f"conveyor check: {problem}", err=True)
    if failures:
        raise typer.Exit(1)
    typer.echo("settings valid; Redis and the database answer")


cli.command()(enqueue)


@cli.command()
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


@cli.command()
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


cli.add_typer(jobs_cli)
cli.command()(flower)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
