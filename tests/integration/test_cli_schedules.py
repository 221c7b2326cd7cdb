"""``conveyor schedules`` through the real entry point, on the session's ledger and workers.

Every schedule a test sets is deleted at its end: the session's workers would go on firing
it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from tests.integration.conftest import Stack
from tests.integration.test_cli import conveyor, succeeded
from tests.support.polling import wait_for
from workers.ledger.models import JOBS

ECHO = ("--task", "diagnostics.echo", "--args", '{"value": "tick"}')


@pytest.fixture
def cli(stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    """The session's stack; the client `cli`'s schedules are deleted afterwards."""
    yield stack
    listed = json.loads(succeeded(conveyor(stack.env, tmp_path, "schedules", "list", "--json")))
    for schedule in listed:
        succeeded(conveyor(stack.env, tmp_path, "schedules", "delete", schedule["name"]))


def listed(stack: Stack, cwd: Path) -> dict[str, dict[str, Any]]:
    documents = json.loads(succeeded(conveyor(stack.env, cwd, "schedules", "list", "--json")))
    return {document["name"]: document for document in documents}


def test_set_list_pause_resume_delete(cli: Stack, tmp_path: Path) -> None:
    created = succeeded(
        conveyor(cli.env, tmp_path, "schedules", "set", "cli-nightly", *ECHO, "--cron", "0 3 * * *",
                 "--timezone", "Europe/Berlin")
    )  # fmt: skip
    assert created.startswith("schedule cli-nightly created; next run at ")
    replaced = json.loads(
        succeeded(
            conveyor(cli.env, tmp_path, "schedules", "set", "cli-nightly", *ECHO, "--every",
                     "86400", "--priority", "low", "--json")
        )
    )  # fmt: skip
    assert (replaced["every_seconds"], replaced["cron"], replaced["priority"]) == (
        86400,
        None,
        "low",
    )

    schedules = listed(cli, tmp_path)
    assert schedules["cli-nightly"] == replaced
    table = succeeded(conveyor(cli.env, tmp_path, "schedules", "list"))
    assert table.splitlines()[0].split()[:3] == ["NAME", "TASK", "WHEN"]
    assert "every 86400 s" in table

    paused = succeeded(conveyor(cli.env, tmp_path, "schedules", "pause", "cli-nightly"))
    assert paused.strip() == "schedule cli-nightly paused; next run at - (paused)"
    assert listed(cli, tmp_path)["cli-nightly"]["paused"] is True
    resumed = json.loads(
        succeeded(conveyor(cli.env, tmp_path, "schedules", "resume", "cli-nightly", "--json"))
    )
    assert (resumed["paused"], resumed["next_run_at"] is not None) == (False, True)

    assert succeeded(conveyor(cli.env, tmp_path, "schedules", "delete", "cli-nightly")).strip() == (
        "schedule cli-nightly deleted"
    )
    assert "cli-nightly" not in listed(cli, tmp_path)
    missing = conveyor(cli.env, tmp_path, "schedules", "delete", "cli-nightly")
    assert (missing.returncode, missing.stderr.strip()) == (
        3,
        "conveyor: no schedule 'cli-nightly'",
    )
    assert conveyor(cli.env, tmp_path, "schedules", "pause", "cli-nightly").returncode == 3


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (ECHO, "--cron: give exactly one of cron and every_seconds"),
        ((*ECHO, "--cron", "61 * * * *"), "--cron: not a cron expression"),
        ((*ECHO, "--cron", "* * * * *", "--every", "5"), "--cron: give exactly one"),
        ((*ECHO, "--every", "5", "--timezone", "Nowhere/Land"), "--timezone: unknown IANA"),
        (("--task", "no.such", "--every", "5"), "unknown task 'no.such'"),
        (("--task", "diagnostics.echo", "--every", "5"), "invalid arguments: args.value"),
        ((*ECHO, "--every", "0"), "Invalid value for '--every'"),
    ],
)
def test_a_refused_schedule_exits_2_naming_the_option(
    cli: Stack, tmp_path: Path, options: tuple[str, ...], expected: str
) -> None:
    finished = conveyor(cli.env, tmp_path, "schedules", "set", "cli-refused", *options)

    assert finished.returncode == 2
    assert expected in finished.stderr
    assert "cli-refused" not in listed(cli, tmp_path)


def test_a_bad_name_exits_2(cli: Stack, tmp_path: Path) -> None:
    finished = conveyor(cli.env, tmp_path, "schedules", "set", "no spaces", *ECHO, "--every", "5")

    assert finished.returncode == 2
    assert "NAME:" in finished.stderr


def test_the_workers_fire_a_schedule_set_on_the_command_line(
    cli: Stack, tmp_path: Path, ledger_engine: Engine
) -> None:
    succeeded(conveyor(cli.env, tmp_path, "schedules", "set", "cli-pulse", *ECHO, "--every", "1"))

    def jobs() -> list[str] | None:
        with ledger_engine.connect() as connection:
            query = select(JOBS.c.id).where(
                JOBS.c.client_id == "cli", JOBS.c.schedule == "cli-pulse"
            )
            return list(connection.execute(query).scalars()) or None

    job_ids = wait_for(jobs, timeout=30, interval=0.2, what="a tick of cli-pulse")
    done = cli.ledger.wait_finished(job_ids[0])
    assert done.status == "succeeded"
    assert set(listed(cli, tmp_path)["cli-pulse"]["latest_jobs"]) & set(jobs() or [])
