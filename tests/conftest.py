"""Shared fixtures: the real Redis and PostgreSQL, one Redis db and one database per process.

A missing service skips its tests on a developer machine and fails them in CI
(``CI=true``), where the services are mandatory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from workers import schema

REDIS_BASE = os.environ.get("CONVEYOR_TEST_REDIS", "redis://127.0.0.1:6379")
POSTGRES_BASE = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_service(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: services are required)", pytrace=False)
    pytest.skip(reason)


def xdist_index(worker_id: str) -> int:
    """0 for the main process, N+1 for xdist worker gwN."""
    return int(worker_id.removeprefix("gw")) + 1 if worker_id.startswith("gw") else 0


@contextmanager
def empty_redis_database(number: int) -> Iterator[str]:
    """Redis database ``number``, emptied before and after; its URL."""
    url = f"{REDIS_BASE}/{number}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as error:
        missing_service(f"Redis at {url} is not usable: {error}")
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def redis_url(worker_id: str) -> Iterator[str]:
    """A Redis database of this test process's own (1, 2, …), empty at the start."""
    with empty_redis_database(1 + xdist_index(worker_id)) as url:
        yield url


def admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(f"{POSTGRES_BASE}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        missing_service(f"PostgreSQL at {POSTGRES_BASE} does not answer: {error}")
        raise


def create_database(name: str) -> str:
    """Drop and create database ``name``; its SQLAlchemy URL."""
    with admin_connection() as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{POSTGRES_BASE.replace('postgresql://', 'postgresql+psycopg://')}/{name}"


def drop_database(name: str) -> None:
    """Drop database ``name`` and any connection still open to it."""
    with admin_connection() as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def migrated_database(name: str) -> Iterator[str]:
    """A fresh PostgreSQL database ``name`` at the newest schema, dropped afterwards; its URL."""
    url = create_database(name)
    try:
        schema.upgrade(url)
        yield url
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> Iterator[str]:
    """A migrated PostgreSQL ledger of this test process's own."""
    with migrated_database(f"conveyor_test_{xdist_index(worker_id)}") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite ledger in this test's temporary directory."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    schema.upgrade(url)
    return url
