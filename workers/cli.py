"""The ``conveyor`` command line."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Annotated, Literal

import typer
import uvicorn

from tasks.catalog import build_catalog
from workers.celery_app import check_visibility_timeout
from workers.health import check_database, check_redis
from workers.schema import upgrade
from workers.settings import Settings, SettingsError, get_settings
from workers.structured_logging import configure_logging

cli = typer.Typer(
    name="conveyor",
    help="Conveyor: reliable background jobs on Celery, Redis and a job ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

WorkerKind = Literal["io", "cpu"]
POOL_OF_KIND: dict[str, str] = {"io": "gevent", "cpu": "prefork"}
_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def _settings() -> Settings:
    """The settings, with JSON logging set up from them; exit 2 with one line if invalid."""
    try:
        settings = get_settings()
    except SettingsError as error:
        typer.echo(f"conveyor: {error}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.secret_values())
    return settings


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
    command = worker_command(kind, _settings(), list(ctx.args))
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
    settings = _settings()
    command = [
        sys.executable, "-m", "celery", "-A", "workers.app", "beat",
        "--loglevel", settings.log_level, *ctx.args,
    ]  # fmt: skip
    os.execv(sys.executable, command)  # noqa: S606 - fixed argv, no shell


@cli.command()
def api(
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn)."""
    settings = _settings()
    if workers > 1 and not os.environ.get(_METRICS_DIR):
        # each worker process counts in files here, so one scrape adds every process up
        os.environ[_METRICS_DIR] = tempfile.mkdtemp(prefix="conveyor-metrics-")
    uvicorn.run(
        "api_shim.app:build",
        factory=True,
        host=host,
        port=port,
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
    settings = _settings()
    upgrade(settings.database_url, revision)
    typer.echo(f"ledger at {revision}")


@cli.command()
def check() -> None:
    """Validate the settings and reach Redis and the database; exit 1 with the reason."""
    settings = _settings()
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


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
