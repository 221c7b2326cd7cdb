"""``conveyor worker``, ``beat``, ``api`` and ``migrate``: the long-running processes and the
ledger's schema.

Each command execs (or runs) the real server with the settings' values, so a process
manager's signals reach Celery or uvicorn directly.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import ExitStack
from typing import Annotated, Any, cast

import typer
from sqlalchemy.exc import SQLAlchemyError

from conveyor.cli.context import ExitCode, command_settings, database_failure, refuse
from tasks.catalog import POOL_OF_KIND, Kind
from workers.settings import Settings

_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def worker_command(kind: Kind, settings: Settings, extra: list[str]) -> list[str]:
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
    command = worker_command(cast(Kind, kind), command_settings(), list(ctx.args))
    # exec: Celery's own entry point monkey-patches gevent before anything else is imported,
    # and signals (SIGTERM for a warm shutdown) reach the worker directly
    os.execv(sys.executable, command)  # noqa: S606 - fixed argv, no shell


def beat(ctx: typer.Context) -> None:
    """Run Celery beat: it relays the outbox every second itself (optional: workers relay).

    Further options go to `celery beat` as they are.
    """
    settings = command_settings()
    command = [
        sys.executable, "-m", "celery", "-A", "workers.app", "beat",
        "--loglevel", settings.log_level, *ctx.args,
    ]  # fmt: skip
    os.execv(sys.executable, command)  # noqa: S606 - fixed argv, no shell


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
    """Serve the HTTP API (uvicorn); several workers each accept on a socket of their own."""
    import uvicorn  # noqa: PLC0415 - loaded by this command only: every command starts faster

    from api_shim.request_deadlines import RequestDeadlineProtocol  # noqa: PLC0415 - loaded by this command only: every command starts faster
    from conveyor.cli.api_listeners import SpreadSupervisor, reuse_port_listeners  # noqa: PLC0415 - loaded by this command only: every command starts faster

    settings = command_settings()
    options: dict[str, Any] = {
        "factory": True,
        "http": RequestDeadlineProtocol,  # slow clients are disconnected
        "host": host or settings.api_host,
        "port": port or settings.api_port,
        "log_config": None,  # the JSON logging configured by the app
        "log_level": settings.log_level.lower(),
        "access_log": False,  # requests are counted in /metrics; errors are logged with ids
        "server_header": False,
        "proxy_headers": False,
    }
    if workers == 1:
        uvicorn.run("api_shim.app:build", **options)
        return
    config = uvicorn.Config("api_shim.app:build", workers=workers, **options)
    with ExitStack() as stack:
        if not os.environ.get(_METRICS_DIR):
            # each worker process counts in files here, so one scrape adds every process up;
            # the directory goes when the API stops
            counts = stack.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-metrics-"))
            os.environ[_METRICS_DIR] = counts
        try:
            sockets = stack.enter_context(reuse_port_listeners(config.host, config.port, workers))
        except OSError as error:
            address = f"{config.host}:{config.port}"
            refuse(ExitCode.USAGE, f"cannot listen on {address}: {error.strerror}")
        SpreadSupervisor(config, sockets).run()


def migrate(
    revision: Annotated[str, typer.Option(help="target revision")] = "head",
) -> None:
    """Upgrade the ledger database to the newest schema (Alembic)."""
    from alembic.util.exc import CommandError  # noqa: PLC0415 - loaded by this command only: every command starts faster

    from workers.ledger.schema import upgrade  # noqa: PLC0415 - loaded by this command only: every command starts faster

    settings = command_settings()
    try:
        upgrade(settings.database_url, revision)
    except SQLAlchemyError as error:
        refuse(ExitCode.DEPENDENCY, f"the database failed: {database_failure(error, settings)}")
    except CommandError as error:  # an unknown revision, say
        refuse(ExitCode.USAGE, f"migration refused: {str(error).splitlines()[0]}")
    typer.echo(f"ledger at {revision}")
