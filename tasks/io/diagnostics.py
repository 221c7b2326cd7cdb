"""I/O diagnostics: echo, deliberate failures and a database hold, reporting their pool."""

from __future__ import annotations

import time

from pydantic import JsonValue
from sqlalchemy import text

from tasks.arguments import EchoArguments, FailArguments, SqlSleepArguments
from tasks.base import JobContext
from tasks.declaration import conveyor_task
from tasks.errors import (
    DependencyUnavailableError,
    PermanentError,
    RateLimitedError,
    TransientError,
)


class SimulatedCrashError(RuntimeError):
    """Stands for a bug: an exception the retry-policy table does not know."""


@conveyor_task("diagnostics.echo")
def echo(context: JobContext, arguments: EchoArguments) -> dict[str, JsonValue]:
    """Return the value after sleeping; under gevent the sleep yields to other jobs."""
    if arguments.sleep_seconds:
        time.sleep(arguments.sleep_seconds)
    return {
        "value": arguments.value,
        "pool": context.pool,
        "worker": context.worker,
        "pid": context.pid,
    }


def raise_failure(arguments: FailArguments) -> None:
    """Raise the exception that ``arguments.error`` names."""
    message = f"diagnostics.fail: simulated {arguments.error} failure"
    if arguments.error == "transient":
        raise TransientError(message)
    if arguments.error == "rate_limited":
        retry_after = 1.0 if arguments.retry_after is None else arguments.retry_after
        raise RateLimitedError(message, retry_after=retry_after)
    if arguments.error == "dependency":
        raise DependencyUnavailableError(message)
    if arguments.error == "permanent":
        raise PermanentError(message)
    raise SimulatedCrashError(message)


@conveyor_task("diagnostics.fail")
def fail(context: JobContext, arguments: FailArguments) -> dict[str, JsonValue]:
    """Fail on the first ``times`` attempts with the named error, then succeed."""
    if context.attempt <= arguments.times:
        raise_failure(arguments)
    return {"attempts": context.attempt}


@conveyor_task("diagnostics.sql_sleep")
def sql_sleep(context: JobContext, arguments: SqlSleepArguments) -> dict[str, JsonValue]:
    """Hold one ledger connection in ``pg_sleep``: shows whether the driver yields."""
    if context.database.dialect.name != "postgresql":
        raise PermanentError("diagnostics.sql_sleep needs the PostgreSQL ledger")
    started = time.monotonic()
    with context.database.connect() as connection:
        connection.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": arguments.seconds})
    return {
        "seconds": round(time.monotonic() - started, 4),
        "pool": context.pool,
        "pid": context.pid,
    }
