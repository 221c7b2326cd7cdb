"""Chaos fixtures: workers of the test's own that it may kill, on a Redis db of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import database_name, empty_redis_database, xdist_index
from tests.integration.conftest import plain_client
from tests.support.embedded_services import RunServices
from tests.support.fault_harness import POOL_SIZE
from tests.support.ledger_reads import LedgerReader
from tests.support.postgres_databases import PostgresServer
from tests.support.workers import worker_environment
from workers.ledger.database import create_ledger_engine, create_session_factory


@pytest.fixture(scope="session")
def chaos_database(
    postgres_server: PostgresServer, services: RunServices, worker_id: str
) -> Iterator[str]:
    with postgres_server.migrated_database(database_name(services, worker_id, "chaos")) as url:
        yield url


@pytest.fixture
def chaos_redis(services: RunServices, worker_id: str) -> Iterator[str]:
    """A Redis database of the run's server apart from the integration workers' (5, 6, …),
    emptied per test."""
    with empty_redis_database(services.redis_url, 5 + xdist_index(worker_id)) as url:
        yield url


@pytest.fixture
def chaos_env(chaos_redis: str, chaos_database: str) -> dict[str, str]:
    return worker_environment(
        env="test",
        redis_url=chaos_redis,
        database_url=chaos_database,
        retry_scale="0.02",
        io_concurrency="4",
        cpu_concurrency="1",
        visibility_timeout="300",
        database_pool_size=POOL_SIZE,
    )


@pytest.fixture
def chaos_client(chaos_redis: str) -> Iterator[Celery]:
    client = plain_client(chaos_redis)
    yield client
    client.close()


@pytest.fixture(scope="session")
def chaos_sessions(chaos_database: str) -> Iterator[sessionmaker[Session]]:
    engine = create_ledger_engine(chaos_database, pool_size=2)
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture
def chaos_ledger(chaos_sessions: sessionmaker[Session]) -> LedgerReader:
    return LedgerReader(chaos_sessions)


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path
