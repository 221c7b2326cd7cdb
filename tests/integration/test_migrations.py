"""Alembic migrations go up and down on PostgreSQL and SQLite and match the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
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
