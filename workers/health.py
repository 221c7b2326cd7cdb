"""Reachability checks for Redis and the ledger database, with short timeouts."""

from __future__ import annotations

from pathlib import Path

import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from workers.structured_logging import Redactor

_redact = Redactor().text


def check_redis(url: str, timeout: float = 3.0) -> str | None:
    """``None`` when Redis at ``url`` answers PING, else the reason."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as error:
        return f"Redis at {_redact(url)} does not answer: {error}"
    finally:
        client.close()
    return None


def check_database(url: str, timeout: float = 3.0) -> str | None:
    """``None`` when the database at ``url`` answers ``SELECT 1``, else the reason."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).exists():
            return f"the SQLite ledger {path} does not exist yet; run `conveyor migrate`"
    connect_args = {} if url.startswith("sqlite") else {"connect_timeout": max(1, int(timeout))}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        return f"database at {_redact(url)} does not answer: {type(error).__name__}"
    finally:
        engine.dispose()
    return None
