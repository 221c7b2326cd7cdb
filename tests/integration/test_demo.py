"""``conveyor demo`` end to end on the embedded defaults (nothing answers at
CONVEYOR_REDIS_URL, a SQLite ledger): it exits 0, its summary agrees with the ledger,
and it leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.devstack.readiness import CANARY_KEY_PREFIX
from tests.integration.conftest import Stack
from tests.support.api_server import ALICE, ApiServer
from tests.support.polling import wait_for
from tests.support.processes import alive, descendants, dying_with_this_process
from tests.support.workers import CONVEYOR, embedded_dev_environment

DEMO_JOBS = 60
#: The demo's own limits (stack start-up, workload) fit in this, on a loaded machine too.
DEMO_DEADLINE = 200


@dataclass
class DemoRun:
    """A running ``conveyor demo``, in a process group of its own as a terminal gives it,
    and every process seen below it."""

    process: subprocess.Popen[bytes]
    log_path: Path
    seen: set[int] = field(default_factory=set)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = DEMO_DEADLINE) -> re.Match[str]:
        """Wait until the output (white space folded) matches ``pattern``; the match."""

        def matched() -> re.Match[str] | None:
            self.seen |= descendants(self.process.pid)
            if self.process.poll() is not None:
                raise AssertionError(f"the demo exited:\n{self.output()[-4000:]}")
            return re.search(pattern, " ".join(self.output().split()))

        return wait_for(matched, timeout=timeout, interval=0.2, what=pattern)

    def wait(self, timeout: float = DEMO_DEADLINE) -> int:
        """Wait for the exit, noting the processes below it meanwhile; the exit code."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.seen |= descendants(self.process.pid)
            time.sleep(0.2)
        return self.process.wait(10)

    def interrupt(self) -> int:
        """Ctrl-C in a terminal: SIGINT to every process of the foreground process group."""
        self.seen |= descendants(self.process.pid)
        os.killpg(self.process.pid, signal.SIGINT)
        return self.wait(120)

    def left_behind(self) -> list[int]:
        return [pid for pid in self.seen if alive(pid)]


@contextmanager
def started_demo(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[DemoRun]:
    """``conveyor demo ARGS`` in ``directory``, killed if still running after the block.
    Without ``env``, on the embedded defaults."""
    if env is None:
        env = embedded_dev_environment(directory, io_concurrency="50", cpu_concurrency="2")
    log_path = directory / "demo.out"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            dying_with_this_process([CONVEYOR, "demo", *args], supervisor=True), env=env,
            cwd=directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield DemoRun(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def run_demo(
    directory: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, set[int]]:
    """Run ``conveyor demo`` to the end; its exit code, output and every process it had
    below it."""
    with started_demo(directory, *args, env=env) as demo:
        code = demo.wait()
    return code, demo.output(), demo.seen


def ledger_rows(database: Path) -> list[dict[str, Any]]:
    """The demo's jobs: every job but the stack's start-up canaries."""
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        rows = [dict(row) for row in connection.execute("SELECT * FROM jobs")]
    return [r for r in rows if not (r["idempotency_key"] or "").startswith(CANARY_KEY_PREFIX)]


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
    # the stack stops after the summary: it sends nobody to Flower or /docs
    assert "The stack stops now" in output
    assert "/docs" not in output.replace("API's /docs", "")
    assert "Flower: http" not in output
    # the warm shutdown ends without tracebacks from any process
    stack_log = (tmp_path / "var" / "demo" / "stack.log").read_text()
    assert "Exception ignored" not in stack_log

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
    with started_demo(tmp_path, "--jobs", "5000") as demo:
        demo.wait_for_output("Running about", timeout=120)
        code = demo.interrupt()
    output = demo.output()
    assert code == 130, output[-4000:]
    assert "interrupted" in output
    stack_log = (tmp_path / "var" / "demo" / "stack.log").read_text()
    assert "valkey     | " in stack_log
    # the embedded Valkey stopped last, after the workers' warm shutdown
    assert stack_log.rindex("valkey     | stopped") > stack_log.rindex("worker-io  | stopped")
    assert "did not stop" not in stack_log
    assert demo.left_behind() == []
    statuses = Counter(row["status"] for row in ledger_rows(tmp_path / "ledger.db"))
    assert statuses["running"] == 0, statuses  # every started job finished its attempt
    assert statuses["queued"] > 0, statuses  # the rest wait for the next start


@pytest.mark.timeout(DEMO_DEADLINE + 30)
def test_keep_running_leaves_flower_showing_the_failures_until_ctrl_c(tmp_path: Path) -> None:
    with started_demo(
        tmp_path, "--jobs", "20", "--keep-running", "--summary-json", "summary.json"
    ) as demo:
        found = demo.wait_for_output(r"stays up: .* Flower (http://\S+) \(login (\S+):(\S+)\)")
        flower, user, password = found.group(1), found.group(2), found.group(3)
        dead_letters = {
            letter["id"]
            for letter in json.loads((tmp_path / "summary.json").read_text())["dead_letters"]
        }
        assert httpx.get(f"{flower}/api/tasks", timeout=10).status_code == 401

        def failures_shown() -> set[str]:
            answer = httpx.get(
                f"{flower}/api/tasks", params={"state": "FAILURE"}, auth=(user, password),
                timeout=10,
            )  # fmt: skip
            assert answer.status_code == 200
            return set(answer.json())

        # the workers send task events from their start, and Flower was up before them; the
        # last failure's event may still be on its way when the ledger already has it
        wait_for(lambda: failures_shown() == dead_letters, timeout=30, interval=0.2,
                 what="Flower to show every dead letter")  # fmt: skip
        assert failures_shown() == dead_letters
        code = demo.interrupt()
    assert code == 0, demo.output()[-4000:]
    assert demo.left_behind() == []
