"""Integration fixtures: one real gevent worker and one real prefork worker per test process.

They consume this process's own Redis db and write to its own PostgreSQL ledger; tests
talk to them the way a plain Celery client would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import database_name, empty_redis_database, xdist_index
from tests.support.api_server import API_KEYS, ApiServer, running_api, running_beat
from tests.support.embedded_services import RunServices
from tests.support.ledger_reads import LedgerReader
from tests.support.postgres_databases import PostgresServer
from tests.support.processes import ServiceProcess
from tests.support.workers import WorkerProcess, running_worker, worker_environment
from workers.ledger.database import create_ledger_engine, create_session_factory

RETRY_SCALE = 0.02
IO_CONCURRENCY = 500  # above redis-py's default pool cap of 100 connections


def plain_client(redis_url: str) -> Celery:
    """A Celery client that knows nothing of Conveyor's code, as another service would be."""
    client = Celery("plain-client", broker=redis_url, backend=redis_url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return client


@dataclass(frozen=True)
class Stack:
    """The running workers and what the tests need to reach them."""

    client: Celery
    io: WorkerProcess
    cpu: WorkerProcess
    ledger: LedgerReader
    env: dict[str, str]


@pytest.fixture(scope="session")
def worker_settings(
    redis_url: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The CONVEYOR_* settings every worker of this test process runs with."""
    return {
        "storage_dir": str(tmp_path_factory.mktemp("blobs")),
        "env": "test",
        "redis_url": redis_url,
        "database_url": postgres_url,
        "retry_scale": str(RETRY_SCALE),
        "io_concurrency": str(IO_CONCURRENCY),
        "cpu_concurrency": "2",
        "database_pool_size": "30",
        "visibility_timeout": "300",
        "log_level": "INFO",
    }


@pytest.fixture(scope="session")
def ledger_engine(postgres_url: str) -> Iterator[Engine]:
    """An engine on this process's PostgreSQL ledger, for reading what workers wrote."""
    engine = create_ledger_engine(postgres_url, pool_size=5)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def ledger_sessions(ledger_engine: Engine) -> sessionmaker[Session]:
    """Sessions on the test ledger."""
    return create_session_factory(ledger_engine)


@pytest.fixture(scope="session")
def stack(
    redis_url: str,
    worker_settings: dict[str, str],
    ledger_sessions: sessionmaker[Session],
    tmp_path_factory: pytest.TempPathFactory,
    worker_id: str,
) -> Iterator[Stack]:
    """An io worker (gevent) and a cpu worker (prefork), ready, stopped at the end."""
    logs = tmp_path_factory.mktemp("worker-logs")
    env = worker_environment(**worker_settings)
    client = plain_client(redis_url)
    with (
        running_worker(client, "io", f"io-{worker_id}@test", logs / "io.log", env) as io,
        running_worker(client, "cpu", f"cpu-{worker_id}@test", logs / "cpu.log", env) as cpu,
    ):
        yield Stack(client, io, cpu, LedgerReader(ledger_sessions), env)
    client.close()


@pytest.fixture(scope="session")
def api_env(stack: Stack) -> dict[str, str]:
    """The environment of the API processes: the workers' settings (blob store included)."""
    return {
        **stack.env,
        "CONVEYOR_API_KEYS": API_KEYS,
        "CONVEYOR_RATE_LIMIT": "100000/second",
    }


@pytest.fixture(scope="session")
def api(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A real ``conveyor api`` (two uvicorn workers) in front of this process's workers."""
    logs = tmp_path_factory.mktemp("api-logs")
    with running_api(api_env, logs / "api.log", workers=2) as server:
        yield server


@pytest.fixture(scope="session")
def beat(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Celery beat, scheduling the outbox relay every second."""
    logs = tmp_path_factory.mktemp("beat-logs")
    with running_beat(stack.env, logs / "beat.log") as process:
        yield process


@pytest.fixture(scope="session")
def quiet_ledger_url(
    postgres_server: PostgresServer, services: RunServices, worker_id: str
) -> Iterator[str]:
    """A migrated PostgreSQL ledger no worker of the session reads: a schedule due in it
    fires only when a test fires it."""
    with postgres_server.migrated_database(database_name(services, worker_id, "quiet")) as url:
        yield url


@pytest.fixture
def quiet_redis_url(services: RunServices, worker_id: str) -> Iterator[str]:
    """A Redis database apart from the session workers' (9, 10, …), emptied per test."""
    with empty_redis_database(services.redis_url, 9 + xdist_index(worker_id)) as url:
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, postgres_url: str, sqlite_url: str) -> Iterator[Engine]:
    """A ledger engine on each backend in turn (for tests of the ledger's statements)."""
    url = postgres_url if request.param == "postgresql" else sqlite_url
    engine = create_ledger_engine(url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(engine)
