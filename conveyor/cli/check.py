"""``conveyor check``: the settings are valid, and Redis and the ledger database answer.

The probes use short timeouts and report one line each, with secrets redacted.
"""

from __future__ import annotations

import redis
import typer
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from conveyor.cli.context import command_settings
from conveyor.cli.failure_reasons import database_reason, redis_reason
from tasks.catalog import build_catalog
from workers.ledger.database_url import is_sqlite, missing_sqlite_file
from workers.relay_heartbeat import describe_relay, relay_age
from workers.settings import SettingsError
from workers.structured_logging import Redactor

_redact = Redactor().text


def check_redis(url: str, timeout: float = 3.0) -> str | None:
    """``None`` when Redis at ``url`` answers PING, else the reason."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as error:
        return f"Redis at {_redact(url)} does not answer: {_redact(redis_reason(error, url))}"
    finally:
        client.close()
    return None


def check_database(url: str, timeout: float = 3.0) -> str | None:
    """``None`` when the database at ``url`` answers ``SELECT 1``, else the reason."""
    missing = missing_sqlite_file(url)
    if missing is not None:
        return f"the SQLite ledger {missing} does not exist yet; run `conveyor migrate`"
    connect_args = {} if is_sqlite(url) else {"connect_timeout": max(1, int(timeout))}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        return f"database at {_redact(url)} failed: {_redact(database_reason(error, url))}"
    finally:
        engine.dispose()
    return None


def check() -> None:
    """Validate the settings and reach Redis and the database; exit 1 with the reason."""
    from workers.celery_app import check_visibility_timeout  # noqa: PLC0415 - loaded by this command only: every command starts faster

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
    # workers may not run yet (a check before a deploy): said, not failed
    typer.echo(f"outbox relay: {relay_status(settings.redis_url)}")


def relay_status(url: str, timeout: float = 3.0) -> str:
    """Whether the outbox relay runs against the Redis at ``url``, in a few words."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return describe_relay(relay_age(client))
    except redis.RedisError as error:
        return f"unknown ({error})"
    finally:
        client.close()
