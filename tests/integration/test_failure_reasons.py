"""A database or Redis that fails says why in one line, and what to do, against the real
servers: a database that does not exist, a role that does not, a port nobody listens on."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.postgres_databases import PostgresServer
from tests.support.processes import free_port
from tests.support.workers import CONVEYOR, worker_environment

pytestmark = [pytest.mark.postgres]


def run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONVEYOR, *args], env=worker_environment(env="test", **settings), cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_missing_database_is_named_with_how_to_create_it(
    postgres_server: PostgresServer, redis_url: str, tmp_path: Path
) -> None:
    name = f"conveyor_missing_{uuid.uuid4().hex[:8]}"
    url = postgres_server.database_url(name)

    checked = run(tmp_path, "check", database_url=url, redis_url=redis_url)
    migrated = run(tmp_path, "migrate", database_url=url, redis_url=redis_url)

    assert checked.returncode == 1
    assert checked.stderr.strip().endswith(
        f"failed: the database {name} does not exist; create it (createdb {name}), "
        "then run conveyor migrate"
    ), checked.stderr
    assert migrated.returncode == 1
    assert (
        migrated.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"the database {name} does not exist; create it (createdb {name}), then run "
            "conveyor migrate"
        )
    ), migrated.stderr


def test_an_unknown_role_is_an_authentication_failure(
    postgres_server: PostgresServer, redis_url: str, tmp_path: Path
) -> None:
    url = make_url(postgres_server.database_url("postgres")).set(username="nobody_here")

    checked = run(
        tmp_path, "check", redis_url=redis_url,
        database_url=url.render_as_string(hide_password=False),
    )  # fmt: skip

    assert checked.returncode == 1
    assert "failed: authentication failed; check the user and password" in checked.stderr


def test_a_port_nobody_listens_on_is_named_for_each_service(tmp_path: Path) -> None:
    database_port, redis_port = free_port(), free_port()

    checked = run(
        tmp_path, "check",
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{database_port}/x",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
    )  # fmt: skip

    lines = checked.stderr.strip().splitlines()
    assert checked.returncode == 1
    assert f"nothing listens at 127.0.0.1:{redis_port}; start Redis" in lines[0]
    assert f"nothing listens at 127.0.0.1:{database_port}; start PostgreSQL" in lines[1]
