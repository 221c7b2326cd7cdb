"""Engines and sessions for the ledger: one engine per process, one session per unit of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from workers.ledger.database_url import is_sqlite


def _configure_sqlite(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Several processes share the file: WAL lets readers run beside the writer and the
    # busy timeout makes a writer wait for the lock instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_ledger_engine(
    url: str,
    *,
    pool_size: int,
    connect_timeout: float = 5.0,
    pre_ping: bool = True,
    pool_timeout: float = 60.0,
    statement_timeout_ms: int | None = None,
) -> Engine:
    """An engine for ``url`` whose pool holds at most ``pool_size`` connections.

    Callers size ``pool_size`` to their concurrency; greenlets or threads beyond it wait
    for a connection (``pool_timeout``) instead of opening more than the server allows.
    ``pre_ping`` spends a round trip per checkout to catch connections the server closed.
    ``statement_timeout_ms`` bounds every PostgreSQL statement, so a request never hangs
    on a stuck server.
    """
    if is_sqlite(url):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=0,
        )
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    # psycopg prepares a statement after a few runs, and PostgreSQL may then keep a generic
    # plan made while the jobs table was small: a sequential scan that every claim and
    # update keeps using as the table grows. Custom plans are re-made from current sizes.
    options = ["-c plan_cache_mode=force_custom_plan"]
    if statement_timeout_ms is not None:
        options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
    connect_args: dict[str, Any] = {
        "connect_timeout": max(1, int(connect_timeout)),
        "options": " ".join(options),
    }
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
