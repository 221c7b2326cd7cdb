"""A ledger outage loses no job: messages wait, outcomes are written once it is back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import Celery
from celery.result import AsyncResult
from psycopg import sql

from tests.conftest import database_name
from tests.support.embedded_services import RunServices
from tests.support.ledger_reads import LedgerReader
from tests.support.polling import wait_for
from tests.support.postgres_databases import PostgresServer
from tests.support.workers import WorkerProcess, running_worker
from workers.ledger.database import create_ledger_engine, create_session_factory


@pytest.fixture
def outage_database(
    postgres_server: PostgresServer, services: RunServices, worker_id: str
) -> Iterator[tuple[PostgresServer, str, str]]:
    name = database_name(services, worker_id, "outage")
    with postgres_server.migrated_database(name) as url:
        try:
            yield postgres_server, name, url
        finally:
            # a closed database cannot be dropped
            allow_connections(postgres_server, name, allowed=True)


def allow_connections(server: PostgresServer, name: str, *, allowed: bool) -> None:
    """Open or close database ``name``; closing also ends every session on it."""
    with server.admin_connection() as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.Literal(allowed)
            )
        )
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


@contextmanager
def ledger_reader(url: str) -> Iterator[LedgerReader]:
    engine = create_ledger_engine(url, pool_size=1)
    try:
        yield LedgerReader(create_session_factory(engine))
    finally:
        engine.dispose()


def logged(worker: WorkerProcess, text: str) -> bool:
    return text in worker.log()


def test_a_message_waits_while_the_ledger_is_down_and_runs_once_it_is_back(
    chaos_client: Celery,
    chaos_env: dict[str, str],
    outage_database: tuple[PostgresServer, str, str],
    logs: Path,
) -> None:
    server, name, url = outage_database
    env = {**chaos_env, "CONVEYOR_DATABASE_URL": url}
    with running_worker(chaos_client, "io", "io-outage@test", logs / "io.log", env) as io:
        allow_connections(server, name, allowed=False)
        result = chaos_client.send_task("diagnostics.echo", kwargs={"value": 7}, queue="io")
        wait_for(lambda: logged(io, "message deferred"), timeout=30, what="the deferral")

        allow_connections(server, name, allowed=True)

        assert result.get(timeout=60)["value"] == 7
        with ledger_reader(url) as ledger:
            job = ledger.wait_finished(result.id)
    assert (job.status, job.attempts, job.outcomes) == ("succeeded", 1, ["succeeded"])


def test_an_outcome_written_during_an_outage_lands_when_the_ledger_returns(
    chaos_client: Celery,
    chaos_env: dict[str, str],
    outage_database: tuple[PostgresServer, str, str],
    logs: Path,
) -> None:
    server, name, url = outage_database
    env = {**chaos_env, "CONVEYOR_DATABASE_URL": url}
    with (
        running_worker(chaos_client, "io", "io-outage@test", logs / "io.log", env) as io,
        ledger_reader(url) as ledger,
    ):
        result = chaos_client.send_task(
            "diagnostics.echo", kwargs={"value": 8, "sleep_seconds": 1.5}, queue="io"
        )
        wait_for(
            lambda: (job := ledger.job(result.id)) and job.status == "running",
            timeout=30,
            what="the attempt to start",
        )
        allow_connections(server, name, allowed=False)
        wait_for(lambda: logged(io, "ledger write failed"), timeout=30, what="a failed write")

        allow_connections(server, name, allowed=True)

        job = ledger.wait_finished(result.id, timeout=30)
    assert (job.status, job.attempts, job.outcomes) == ("succeeded", 1, ["succeeded"])
    assert AsyncResult(result.id, app=chaos_client).get(timeout=10)["value"] == 8
