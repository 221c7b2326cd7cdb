"""``conveyor demo`` end to end on the embedded defaults (nothing answers at
CONVEYOR_REDIS_URL, a SQLite ledger): it exits 0, its summary agrees with the ledger,
and it leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack
from tests.support.api_server import ALICE, ApiServer
from tests.support.polling import wait_for
from tests.support.processes import alive, descendants
from tests.support.workers import CONVEYOR, embedded_dev_environment

DEMO_JOBS = 60
#: The demo's own limits (stack start-up, workload) fit in this, on a loaded machine too.
DEMO_DEADLINE = 200


def run_demo(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, set[int]]:
    """Run ``conveyor demo`` in ``directory``; its exit code, output and every process it
    had below it. Without ``env``, on the embedded defaults."""
    if env is None:
        env = embedded_dev_environment(directory, io_concurrency="50", cpu_concurrency="2")
    log_path = directory / "demo.out"
    seen: set[int] = set()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [CONVEYOR, "demo", *args], env=env, cwd=directory, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + DEMO_DEADLINE
        while process.poll() is None and time.monotonic() < deadline:
            seen |= descendants(process.pid)
            time.sleep(0.2)
        if process.poll() is None:
            process.kill()
        code = process.wait(10)
    return code, log_path.read_text(errors="replace"), seen


def ledger_rows(database: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute("SELECT * FROM jobs")]


def attempt_pools(database: Path) -> dict[str, set[str]]:
    """The pools each queue's attempts ran in."""
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT jobs.queue, job_attempts.pool FROM job_attempts JOIN jobs"
            " ON jobs.id = job_attempts.job_id"
        ).fetchall()
    pools: dict[str, set[str]] = {}
    for queue, pool in rows:
        pools.setdefault(queue, set()).add(pool)
    return pools


@pytest.mark.timeout(DEMO_DEADLINE + 30)
def test_demo_runs_both_pools_and_its_summary_matches_the_ledger(tmp_path: Path) -> None:
    started = time.monotonic()
    code, output, processes = run_demo(
        tmp_path, "--jobs", str(DEMO_JOBS), "--summary-json", "summary.json"
    )
    elapsed = time.monotonic() - started
    print(f"conveyor demo --jobs {DEMO_JOBS}: exit {code} in {elapsed:.1f} s")
    assert code == 0, output[-6000:]
    assert "Every job ended as planned." in output
    assert "Jobs by task and status" in output
    assert "Pools" in output

    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = ledger_rows(tmp_path / "ledger.db")
    assert summary["total"] == len(rows) == DEMO_JOBS
    assert summary["by_status"] == dict(Counter(row["status"] for row in rows))
    by_task: dict[str, Counter[str]] = {}
    for row in rows:
        by_task.setdefault(row["task"], Counter())[row["status"]] += 1
    assert summary["by_task"] == {task: dict(counts) for task, counts in by_task.items()}
    assert summary["retries"] == sum(row["attempts"] - 1 for row in rows)
    assert summary["retries"] > 0
    failed = sorted(row["id"] for row in rows if row["status"] == "failed")
    assert failed  # the dead-letter state shows
    assert sorted(letter["id"] for letter in summary["dead_letters"]) == failed
    assert set(by_task) == {
        "webhooks.deliver", "http.fetch", "files.digest", "images.thumbnail", "diagnostics.fail",
    }  # fmt: skip
    assert attempt_pools(tmp_path / "ledger.db") == {"io": {"gevent"}, "cpu": {"prefork"}}
    assert {pool["queue"]: pool["finished"] for pool in summary["pools"]} == dict(
        Counter(row["queue"] for row in rows)
    )
    assert summary["unexpected"] == []
    assert {job["id"]: job["status"] for job in summary["jobs"]} == {
        row["id"]: row["status"] for row in rows
    }

    assert len(processes) >= 6, processes  # five processes, prefork children and Valkey
    left = [pid for pid in processes if alive(pid)]
    assert left == [], f"processes left behind: {left}"


@pytest.mark.timeout(DEMO_DEADLINE + 30)
def test_demo_uses_a_running_stack_when_given_its_api(
    api: ApiServer, api_env: dict[str, str], stack: Stack, tmp_path: Path
) -> None:
    code, output, processes = run_demo(
        tmp_path, "--api-url", api.base_url, "--api-key", ALICE[1], "--jobs", "20",
        "--summary-json", "summary.json", env=api_env,
    )  # fmt: skip
    assert code == 0, output[-6000:]
    assert "Starting the stack" not in output
    assert processes == set()  # it started nothing
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["total"] == 20
    for job in summary["jobs"]:
        recorded = stack.ledger.job(job["id"])
        assert recorded is not None
        assert (recorded.task, recorded.status, recorded.attempts) == (
            job["task"], job["status"], job["attempts"],
        )  # fmt: skip
    assert {letter["task"] for letter in summary["dead_letters"]} == {
        "webhooks.deliver", "http.fetch", "diagnostics.fail",
    }  # fmt: skip


@pytest.mark.timeout(DEMO_DEADLINE + 30)
def test_ctrl_c_stops_the_demo_and_its_stack_in_order(tmp_path: Path) -> None:
    env = embedded_dev_environment(tmp_path, io_concurrency="50", cpu_concurrency="2")
    log_path = tmp_path / "demo.out"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [CONVEYOR, "demo", "--jobs", "5000"], env=env, cwd=tmp_path, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    seen: set[int] = set()
    try:

        def workload_running() -> bool:
            seen.update(descendants(process.pid))
            if process.poll() is not None:
                raise AssertionError(log_path.read_text(errors="replace")[-4000:])
            return "Running about" in log_path.read_text(errors="replace")

        wait_for(workload_running, timeout=120, interval=0.2, what="the workload to start")
        seen |= descendants(process.pid)
        # Ctrl-C in a terminal: SIGINT to every process of the foreground process group
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    output = log_path.read_text(errors="replace")
    assert code == 130, output[-4000:]
    assert "interrupted" in output
    stack_log = (tmp_path / "var" / "demo" / "stack.log").read_text()
    assert "valkey     | " in stack_log
    # the embedded Valkey stopped last, after the workers' warm shutdown
    assert stack_log.rindex("valkey     | exited") > stack_log.rindex("worker-io  | exited")
    assert "did not stop" not in stack_log
    left = [pid for pid in seen if alive(pid)]
    assert left == [], f"processes left behind: {left}"
    statuses = Counter(row["status"] for row in ledger_rows(tmp_path / "ledger.db"))
    assert statuses["running"] == 0, statuses  # every started job finished its attempt
    assert statuses["queued"] > 0, statuses  # the rest wait for the next start
