"""The ``conveyor`` command line through its real entry point, against the test Redis and ledger.

Jobs are enqueued, listed, shown, replayed and cancelled with ``conveyor``; the session's
workers run them. Flower is started for real and reached over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack
from tests.support.polling import wait_for
from tests.support.processes import ServiceProcess, dying_with_this_process, free_port
from tests.support.workers import CONVEYOR

# the job document of the contract
JOB_FIELDS = {
    "id", "task", "queue", "status", "args", "priority", "attempts", "max_attempts",
    "idempotency_key", "request_id", "created_at", "scheduled_for", "started_at",
    "finished_at", "next_retry_at", "result", "error", "schedule",
}  # fmt: skip
FLOWER_LOGIN = ("ops", "flower-test-password-0123")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the commands run: no stray .env, nothing written into the checkout."""
    return tmp_path_factory.mktemp("cli")


def conveyor(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``conveyor ARGS`` to completion."""
    return subprocess.run(
        [CONVEYOR, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def succeeded(finished: subprocess.CompletedProcess[str]) -> str:
    """The standard output of a command that exited 0."""
    assert finished.returncode == 0, finished.stderr
    return finished.stdout


def enqueue(stack: Stack, cwd: Path, task: str, args: dict[str, Any], *options: str) -> str:
    """Enqueue through the command line; the job id it printed."""
    job_id = succeeded(
        conveyor(stack.env, cwd, "enqueue", task, "--args", json.dumps(args), *options)
    )
    return job_id.strip()


def show(stack: Stack, cwd: Path, job_id: str) -> dict[str, Any]:
    """``conveyor jobs show ID --json``."""
    document: dict[str, Any] = json.loads(
        succeeded(conveyor(stack.env, cwd, "jobs", "show", job_id, "--json"))
    )
    return document


def test_enqueued_job_runs_and_is_listed_and_shown(stack: Stack, workdir: Path) -> None:
    job_id = enqueue(stack, workdir, "diagnostics.echo", {"value": {"n": 7}}, "--priority", "high")

    job = stack.ledger.wait_finished(job_id)
    listed = json.loads(
        succeeded(
            conveyor(stack.env, workdir, "jobs", "list", "--task", "diagnostics.echo", "--json")
        )
    )
    shown = show(stack, workdir, job_id)
    table = succeeded(conveyor(stack.env, workdir, "jobs", "list", "--limit", "5"))

    assert (job.status, job.result["value"], job.result["pool"]) == (
        "succeeded",
        {"n": 7},
        "gevent",
    )
    assert job_id in [item["id"] for item in listed]
    assert set(listed[0]) == JOB_FIELDS
    assert set(shown) == JOB_FIELDS | {"history"}
    assert (shown["status"], shown["priority"], shown["queue"]) == ("succeeded", "high", "io")
    assert [attempt["status"] for attempt in shown["history"]] == ["succeeded"]
    assert shown["created_at"].endswith("Z")
    assert table.splitlines()[0].split()[:3] == ["ID", "TASK", "STATUS"]
    assert job_id in table


def test_enqueue_json_prints_the_job_document(stack: Stack, workdir: Path) -> None:
    printed = succeeded(
        conveyor(
            stack.env, workdir, "enqueue", "diagnostics.echo", "--args", '{"value": 1}',
            "--idempotency-key", "cli-test-key", "--json",
        )
    )  # fmt: skip
    again = conveyor(
        stack.env, workdir, "enqueue", "diagnostics.echo", "--args", '{"value": 1}',
        "--idempotency-key", "cli-test-key",
    )  # fmt: skip
    conflict = conveyor(
        stack.env, workdir, "enqueue", "diagnostics.echo", "--args", '{"value": 2}',
        "--idempotency-key", "cli-test-key",
    )  # fmt: skip

    document = json.loads(printed)
    assert set(document) == JOB_FIELDS
    assert (document["status"], document["idempotency_key"]) == ("queued", "cli-test-key")
    assert succeeded(again).strip() == document["id"]
    assert conflict.returncode == 4
    stack.ledger.wait_finished(document["id"])


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["enqueue", "no.such.task"], "unknown task 'no.such.task'"),
        (
            ["enqueue", "diagnostics.echo", "--args", '{"value": 1, "sleep_seconds": 100}'],
            "args.sleep_seconds",
        ),
        (["enqueue", "diagnostics.echo", "--args", '{"value": '], "--args"),
        (["enqueue", "diagnostics.echo", "--args", "[1]"], "JSON object"),
        (["enqueue", "diagnostics.echo", "--priority", "urgent"], "urgent"),
        (["jobs", "list", "--status", "lost"], "lost"),
    ],
    ids=["unknown-task", "invalid-args", "bad-json", "not-an-object", "bad-priority", "bad-status"],
)
def test_usage_and_validation_errors_exit_2(
    stack: Stack, workdir: Path, arguments: list[str], expected: str
) -> None:
    finished = conveyor(stack.env, workdir, *arguments)

    assert finished.returncode == 2, finished.stderr
    assert expected in finished.stderr
    assert finished.stdout == ""


@pytest.mark.parametrize("action", ["show", "retry", "cancel"])
def test_an_unknown_job_exits_3(stack: Stack, workdir: Path, action: str) -> None:
    finished = conveyor(stack.env, workdir, "jobs", action, "00000000-0000-4000-8000-000000000000")

    assert finished.returncode == 3
    assert "no job" in finished.stderr


def test_a_dead_letter_is_replayed_and_finished_jobs_refuse_retry_and_cancel(
    stack: Stack, workdir: Path
) -> None:
    # diagnostics.fail fails its first attempt only: the replay's attempt succeeds
    job_id = enqueue(stack, workdir, "diagnostics.fail", {"error": "permanent"})
    assert stack.ledger.wait_finished(job_id).status == "failed"
    dead_letters = json.loads(
        succeeded(conveyor(stack.env, workdir, "jobs", "list", "--status", "failed", "--json"))
    )
    assert job_id in [item["id"] for item in dead_letters]

    retried = conveyor(stack.env, workdir, "jobs", "retry", job_id)
    job = stack.ledger.wait_finished(job_id)
    shown = show(stack, workdir, job_id)
    retry_again = conveyor(stack.env, workdir, "jobs", "retry", job_id)
    cancel_finished = conveyor(stack.env, workdir, "jobs", "cancel", job_id)

    assert retried.returncode == 0, retried.stderr
    assert (job.status, job.attempts, job.outcomes) == ("succeeded", 2, ["failed", "succeeded"])
    assert [a["status"] for a in shown["history"]] == ["failed", "succeeded"]
    assert shown["history"][0]["error"]["type"] == "PermanentError"
    assert (retry_again.returncode, cancel_finished.returncode) == (4, 4)
    assert "succeeded" in retry_again.stderr
    assert "finished" in cancel_finished.stderr


def test_a_delayed_job_is_cancelled(stack: Stack, workdir: Path) -> None:
    job_id = enqueue(stack, workdir, "diagnostics.echo", {"value": 1}, "--delay-seconds", "3600")
    queued = show(stack, workdir, job_id)

    cancelled = conveyor(stack.env, workdir, "jobs", "cancel", job_id, "--json")

    assert queued["status"] == "queued" and queued["scheduled_for"]
    assert json.loads(succeeded(cancelled))["status"] == "cancelled"
    view = stack.ledger.job(job_id)
    assert view is not None and view.status == "cancelled"


def test_without_redis_the_job_is_recorded_for_the_relay(stack: Stack, workdir: Path) -> None:
    no_redis = {**stack.env, "CONVEYOR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}

    finished = conveyor(no_redis, workdir, "enqueue", "diagnostics.echo", "--args", '{"value": 1}')

    job_id = succeeded(finished).strip()
    assert "relay" in finished.stderr
    view = stack.ledger.job(job_id)
    # recorded, and due for the relay at once: if beat runs in this test process, its
    # relay may already have published the job, and a worker run it
    assert view is not None and view.status in ("queued", "running", "succeeded"), view
    # out of the outbox again, so no relay of a later test runs it (exit 4 if it has run)
    cleanup = conveyor(stack.env, workdir, "jobs", "cancel", job_id)
    assert cleanup.returncode in (0, 4), cleanup.stderr


@pytest.mark.parametrize(
    "command",
    [["enqueue", "diagnostics.echo", "--args", '{"value": 1}'], ["jobs", "list"], ["migrate"]],
)
def test_a_database_that_does_not_answer_exits_1_quickly(
    stack: Stack, workdir: Path, command: list[str]
) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing"
    started = time.monotonic()

    finished = conveyor({**stack.env, "CONVEYOR_DATABASE_URL": url}, workdir, *command)

    assert finished.returncode == 1
    assert time.monotonic() - started < 10
    assert "database" in finished.stderr
    assert len(finished.stderr.strip().splitlines()) == 1


def test_flower_refuses_to_start_without_a_login(stack: Stack, workdir: Path) -> None:
    finished = conveyor(stack.env, workdir, "flower", timeout=20)

    assert finished.returncode == 2
    assert "CONVEYOR_FLOWER_BASIC_AUTH" in finished.stderr


def test_flower_serves_behind_basic_auth_and_stops_on_sigterm(stack: Stack, workdir: Path) -> None:
    port = free_port()
    state = workdir / "flower-state" / "flower.db"
    env = {
        **stack.env,
        "CONVEYOR_FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN),
        "CONVEYOR_FLOWER_PORT": str(port),
        "CONVEYOR_FLOWER_DB": str(state),
    }
    log_path = workdir / "flower.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            dying_with_this_process([CONVEYOR, "flower", "--host", "127.0.0.1"]),
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    flower = ServiceProcess(process, log_path)
    base = f"http://127.0.0.1:{port}"

    def answers() -> int | None:
        if process.poll() is not None:
            raise AssertionError(f"Flower exited:\n{flower.log()[-4000:]}")
        try:
            return httpx.get(base, timeout=1).status_code
        except httpx.TransportError:
            return None

    try:
        anonymous = wait_for(answers, timeout=30, interval=0.2, what="Flower to answer")
        with httpx.Client(base_url=base, auth=FLOWER_LOGIN, timeout=10) as client:
            page = client.get("/")
            metrics = client.get("/metrics")
        wrong = httpx.get(base, auth=(FLOWER_LOGIN[0], "wrong"), timeout=10)
        command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes()
    finally:
        code = flower.stop(timeout=20)

    assert (anonymous, page.status_code, wrong.status_code) == (401, 200, 401)
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "# TYPE" in metrics.text and "flower_" in metrics.text
    assert FLOWER_LOGIN[1].encode() not in command_line
    assert b"--persistent=True" in command_line
    assert code == 0
    assert process.poll() is not None and not Path(f"/proc/{process.pid}").exists()
    assert any(state.parent.iterdir())  # the persistent state was saved
