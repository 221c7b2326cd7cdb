"""Alembic migrations go up and down on PostgreSQL and SQLite and match the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from tests.conftest import database_name
from tests.support.embedded_services import RunServices
from tests.support.postgres_databases import PostgresServer
from workers.ledger import schema
from workers.ledger.models import Base


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path, worker_id: str) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    # requested here, not as a parameter, so the SQLite case runs without PostgreSQL
    server: PostgresServer = request.getfixturevalue("postgres_server")
    services: RunServices = request.getfixturevalue("services")
    name = database_name(services, worker_id, "migrations")
    yield server.create_database(name)
    server.drop_database(name)


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    schema.upgrade(empty_database)
    assert {"jobs", "job_attempts"} <= _tables(empty_database)

    schema.downgrade(empty_database, "base")
    assert _tables(empty_database) <= {"alembic_version"}

    schema.upgrade(empty_database)
    assert {"jobs", "job_attempts"} <= _tables(empty_database)


def test_the_migrations_build_exactly_what_the_models_declare(empty_database: str) -> None:
    schema.upgrade(empty_database)
    engine = create_engine(empty_database, poolclass=NullPool)

    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()

    assert differences == []


def _columns(url: str, table: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return {column["name"] for column in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_schedules_come_and_go_and_the_jobs_stay(empty_database: str) -> None:
    schema.upgrade(empty_database, "0004")
    engine = create_engine(empty_database, poolclass=NullPool)
    job = {
        "id": "job-before-schedules", "task": "diagnostics.echo", "queue": "io",
        "status": "queued", "args": "{}", "priority": "normal", "attempts": 0,
        "max_attempts": 20, "retry_generation": 0, "attempt_base": 0,
        "created_at": "2026-01-01 00:00:00+00:00", "updated_at": "2026-01-01 00:00:00+00:00",
    }  # fmt: skip
    with engine.begin() as connection:
        names = ", ".join(job)
        values = ", ".join(f":{name}" for name in job)
        connection.execute(text(f"INSERT INTO jobs ({names}) VALUES ({values})"), job)  # noqa: S608 - test's own columns

    schema.upgrade(empty_database, "0005")
    assert "schedules" in _tables(empty_database)
    assert "schedule" in _columns(empty_database, "jobs")

    schema.downgrade(empty_database, "0004")
    assert "schedules" not in _tables(empty_database)
    assert "schedule" not in _columns(empty_database, "jobs")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM jobs")).scalars().all() == [job["id"]]

    schema.upgrade(empty_database, "0005")
    assert "schedules" in _tables(empty_database)
    engine.dispose()
