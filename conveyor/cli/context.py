"""What the ``conveyor`` commands share: settings, exit codes, one-line refusals, connections.

The exit codes are an interface: scripts branch on them (see ``docs/cli.md``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NoReturn

import redis
import typer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from conveyor.cli.failure_reasons import database_reason
from workers.broker import Publisher
from workers.enqueue import Enqueuer
from workers.ledger.database import create_ledger_engine, create_session_factory
from workers.ledger.database_url import missing_sqlite_file
from workers.settings import Settings, SettingsError, get_settings
from workers.structured_logging import Redactor, configure_logging

# a command waits this long for a dependency, then says why it gave up
REDIS_TIMEOUT_SECONDS = 2.0
DATABASE_CONNECT_TIMEOUT_SECONDS = 3.0
DATABASE_STATEMENT_TIMEOUT_MS = 10_000

EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 a dependency (database or Redis) failed; 2 usage or "
    "validation error; 3 not found; 4 conflict with the job's state."
)


class ExitCode(IntEnum):
    """How a command ended."""

    OK = 0
    DEPENDENCY = 1  # the database (or Redis, where it is needed) failed
    USAGE = 2  # bad option, bad JSON, unknown task, invalid arguments, bad setting
    NOT_FOUND = 3  # no such job
    CONFLICT = 4  # the job's state forbids the operation


def command_group(name: str, help_text: str) -> typer.Typer:
    """A group of subcommands (``conveyor NAME …``) whose help ends with the exit codes."""
    return typer.Typer(name=name, help=help_text, epilog=EXIT_CODES_HELP, no_args_is_help=True)


def refuse(code: ExitCode, message: str) -> NoReturn:
    """Print ``conveyor: message`` on stderr and exit with ``code``."""
    typer.echo(f"conveyor: {message}", err=True)
    raise typer.Exit(int(code))


def print_json(document: Any) -> None:
    """Print ``document`` as indented JSON on stdout."""
    typer.echo(json.dumps(document, ensure_ascii=False, indent=2))


def command_settings() -> Settings:
    """The settings, with JSON logging set up from them; exit 2 with one line if invalid."""
    try:
        settings = get_settings()
    except SettingsError as error:
        refuse(ExitCode.USAGE, str(error))
    configure_logging(settings.log_level, settings.secret_values())
    return settings


@dataclass(frozen=True)
class LedgerAccess:
    """The ledger and broker connections of one command."""

    engine: Engine
    sessions: sessionmaker[Session]
    enqueuer: Enqueuer


def database_failure(error: SQLAlchemyError, settings: Settings) -> str:
    """The reason for ``error`` and what to do, in one line, secrets redacted."""
    reason = database_reason(error, settings.database_url)
    return Redactor(settings.secret_values()).text(reason)


@contextmanager
def ledger_access(settings: Settings) -> Iterator[LedgerAccess]:
    """Open the ledger (and a Redis client for publishing) for one command; close both after.

    A database failure inside the block ends the command with exit 1 and the reason.
    Redis failures are the enqueuer's to handle: the outbox keeps what it could not publish.
    """
    missing = missing_sqlite_file(settings.database_url)
    if missing is not None:
        refuse(
            ExitCode.DEPENDENCY, f"the SQLite ledger {missing} does not exist; run conveyor migrate"
        )
    engine = create_ledger_engine(
        settings.database_url,
        pool_size=2,
        connect_timeout=DATABASE_CONNECT_TIMEOUT_SECONDS,
        pool_timeout=DATABASE_CONNECT_TIMEOUT_SECONDS,
        statement_timeout_ms=DATABASE_STATEMENT_TIMEOUT_MS,
        pre_ping=False,
    )
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
    )
    try:
        yield LedgerAccess(
            engine, create_session_factory(engine), Enqueuer(engine, Publisher(client))
        )
    except SQLAlchemyError as error:
        refuse(ExitCode.DEPENDENCY, f"the database failed: {database_failure(error, settings)}")
    finally:
        client.close()
        engine.dispose()
