"""``conveyor dev`` end to end: with no Redis at CONVEYOR_REDIS_URL it runs an embedded Valkey,
the SQLite ledger, the API, both workers, beat and Flower, and Ctrl-C stops all of them."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.devstack.stack import DEV_API_KEY, DEV_FLOWER_LOGIN
from conveyor.devstack.supervision import free_ports
from tests.support.polling import wait_for
from tests.support.processes import alive, descendants, dying_with_this_process
from tests.support.workers import CONVEYOR, embedded_dev_environment


@contextlib.contextmanager
def started_dev(
    directory: Path, log_name: str = "dev.log", **settings: str
) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    """``conveyor dev`` in ``directory`` on the embedded defaults; its process, API and
    Flower ports and log. Whatever is still running after the block is killed."""
    api_port, flower_port = free_ports(2)
    env = embedded_dev_environment(
        directory, **{"io_concurrency": "20", "cpu_concurrency": "1", **settings}
    )
    log_path = directory / log_name
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            dying_with_this_process(
                [CONVEYOR, "dev", "--api-port", str(api_port), "--flower-port", str(flower_port)],
                supervisor=True,
            ),
            env=env,
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as a terminal gives it
        )
    try:
        yield process, api_port, flower_port, log_path
    finally:
        if process.poll() is None:
            for pid in descendants(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            process.wait(10)


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    with started_dev(tmp_path) as started:
        yield started


def wait_until_ready(process: subprocess.Popen[bytes], api_port: int, log_path: Path) -> None:
    """Wait until the stack's API answers /readyz."""

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"conveyor dev exited:\n{log_path.read_text()[-4000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{api_port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=90, interval=0.5, what="the API")


@pytest.mark.parametrize(
    "stop",
    [
        # Ctrl-C in a terminal: SIGINT to every process of the foreground process group
        lambda pid: os.killpg(pid, signal.SIGINT),
        # the terminal closed
        lambda pid: os.kill(pid, signal.SIGHUP),
    ],
    ids=["ctrl-c", "hangup"],
)
def test_dev_serves_everything_and_stops_cleanly(
    dev_stack: tuple[subprocess.Popen[bytes], int, int, Path], stop: Callable[[int], None]
) -> None:
    process, api_port, flower_port, log_path = dev_stack
    api = f"http://127.0.0.1:{api_port}"
    flower = f"http://127.0.0.1:{flower_port}"

    def ready(url: str) -> bool:
        if process.poll() is not None:
            raise AssertionError(f"conveyor dev exited:\n{log_path.read_text()[-4000:]}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # the banner comes once everything serves: nothing is polled for after it
    wait_for(
        lambda: ready(f"{api}/healthz") and "ready: " in log_path.read_text(),
        timeout=150, interval=0.5, what="the ready banner",
    )  # fmt: skip
    assert httpx.get(f"{api}/readyz", timeout=5).status_code == 200
    user, password = DEV_FLOWER_LOGIN.split(":")
    assert httpx.get(flower, timeout=5).status_code == 401
    assert httpx.get(flower, auth=(user, password), timeout=5).status_code == 200
    assert httpx.get(flower, auth=(user, "wrong"), timeout=5).status_code == 401

    headers = {"Authorization": f"Bearer {DEV_API_KEY[1]}"}
    with httpx.Client(base_url=api, headers=headers, timeout=10) as client:
        jobs = [
            client.post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": 1}}),
            client.post("/v1/jobs", json={"task": "diagnostics.spin", "args": {"milliseconds": 5}}),
        ]
        assert [answer.status_code for answer in jobs] == [202, 202]

        def finished() -> list[dict[str, object]] | None:
            states = [client.get(f"/v1/jobs/{a.json()['id']}").json() for a in jobs]
            return states if all(s["status"] == "succeeded" for s in states) else None

        states = wait_for(finished, timeout=60, interval=0.3, what="both jobs to succeed")
    assert [s["queue"] for s in states] == ["io", "cpu"]

    # a second terminal, with what the banner says to export, finds the stack's jobs
    exports = dict(
        line.split("export ", 1)[1].split("=", 1)
        for line in log_path.read_text().splitlines()
        if "  export CONVEYOR_" in line
    )
    assert set(exports) == {"CONVEYOR_REDIS_URL", "CONVEYOR_DATABASE_URL"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    for command in (["check"], ["jobs", "show", str(states[0]["id"]), "--json"]):
        second_terminal = subprocess.run(
            [CONVEYOR, *command], env={**clean, **exports}, cwd="/", capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second_terminal.returncode == 0, second_terminal.stderr + second_terminal.stdout
    assert '"succeeded"' in second_terminal.stdout

    log = log_path.read_text()
    assert "(embedded Valkey)" in log
    for prefix in ("valkey", "api", "worker-io", "worker-cpu", "beat", "flower"):
        assert f"\n{prefix:<10} | " in log, prefix
    children = descendants(process.pid)
    assert len(children) >= 6  # five processes, prefork children and Valkey

    stop(process.pid)
    assert process.wait(90) == 0, log_path.read_text()[-4000:]
    left = [pid for pid in children if alive(pid)]
    assert left == [], f"processes left behind: {left}"
    lines = log_path.read_text().splitlines()
    assert "stopped" in lines[-1]
    # each process ended as asked: the API's re-raised SIGTERM is no error code
    endings = {
        prefix: [line for line in lines if line.startswith(f"{prefix:<10} | ")][-1]
        for prefix in ("valkey", "api", "worker-io", "worker-cpu", "beat", "flower")
    }
    assert all(line.endswith("| stopped") for line in endings.values()), endings


def test_a_supervisor_killed_outright_leaves_no_process_behind(
    dev_stack: tuple[subprocess.Popen[bytes], int, int, Path],
) -> None:
    process, api_port, _, log_path = dev_stack
    wait_until_ready(process, api_port, log_path)
    children = descendants(process.pid)
    assert len(children) >= 6

    process.kill()  # no chance to stop anything itself
    process.wait(10)

    def all_gone() -> bool:
        return not any(alive(pid) for pid in children)

    try:
        wait_for(all_gone, timeout=90, interval=0.5, what="the stack's processes to end")
    finally:
        for pid in filter(alive, children):  # orphans of a failed run go too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_jobs_still_queued_at_ctrl_c_run_after_the_next_start(tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {DEV_API_KEY[1]}"}
    # one greenlet, so most of the jobs are still waiting in Valkey at Ctrl-C
    with started_dev(tmp_path, "first.log", io_concurrency="1") as (process, port, _, log):
        wait_until_ready(process, port, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            answer = client.post(
                "/v1/jobs/batch",
                json={"jobs": [
                    {"task": "diagnostics.echo", "args": {"value": n, "sleep_seconds": 0.5}}
                    for n in range(20)
                ]},
            )  # fmt: skip
            assert answer.status_code == 202, answer.text
            ids = [job["id"] for job in answer.json()["jobs"]]
            wait_for(
                lambda: client.get(f"/v1/jobs/{ids[0]}").json()["status"] == "succeeded",
                timeout=60, what="the first job",
            )  # fmt: skip
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(90) == 0, log.read_text()[-4000:]
    left_over = {row[0] for row in ledger_statuses(tmp_path / "ledger.db") if row[1] == "queued"}
    assert left_over, "every job had run before Ctrl-C: nothing was left to lose"

    with started_dev(tmp_path, "second.log") as (process, port, _, log):
        wait_until_ready(process, port, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:

            def all_succeeded() -> bool:
                return all(
                    client.get(f"/v1/jobs/{job}").json()["status"] == "succeeded" for job in ids
                )

            wait_for(all_succeeded, timeout=90, interval=0.5, what="every job to succeed")
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(90) == 0, log.read_text()[-4000:]


def ledger_statuses(database: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT id, status FROM jobs").fetchall()
