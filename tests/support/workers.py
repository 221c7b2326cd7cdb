"""Real ``conveyor worker`` processes for tests: started, awaited, stopped, their logs kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from tests.support.polling import wait_for
from tests.support.processes import ServiceProcess, dying_with_this_process, free_port

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))


@dataclass
class WorkerProcess(ServiceProcess):
    """A running worker: its process, log file and node name."""

    node: str = ""


def worker_environment(**settings: str) -> dict[str, str]:
    """The environment of a worker: this one without CONVEYOR_*, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({f"CONVEYOR_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def embedded_dev_environment(directory: Path, **settings: str) -> dict[str, str]:
    """A dev environment whose Redis URL answers nothing (so an embedded Valkey is used),
    with the SQLite ledger and blob store in ``directory``; ``settings`` on top."""
    return worker_environment(
        env="dev",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=f"sqlite:///{directory}/ledger.db",
        storage_dir=str(directory / "blobs"),
        **settings,
    )


def start_worker(
    kind: str, node: str, log_path: Path, env: dict[str, str], *extra: str
) -> WorkerProcess:
    """Start ``conveyor worker KIND`` named ``node``; returns before it is ready."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        dying_with_this_process([CONVEYOR, "worker", kind, "--hostname", node, *extra]),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return WorkerProcess(process, log_path, node)


def wait_until_ready(client: Celery, worker: WorkerProcess, timeout: float = 60) -> None:
    """Wait until ``worker`` answers a broadcast ping."""

    def answered() -> bool:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker {worker.node} exited:\n{worker.log()[-4000:]}")
        replies = client.control.ping(destination=[worker.node], timeout=0.5) or []
        return any(worker.node in reply for reply in replies)

    wait_for(answered, timeout=timeout, interval=0.2, what=f"worker {worker.node} to answer")


@contextmanager
def running_worker(
    client: Celery, kind: str, node: str, log_path: Path, env: dict[str, str], *extra: str
) -> Iterator[WorkerProcess]:
    """A worker that is ready inside the block and stopped (warm shutdown) after it."""
    worker = start_worker(kind, node, log_path, env, *extra)
    try:
        wait_until_ready(client, worker)
        yield worker
    finally:
        worker.stop()


def children_of(pid: int) -> list[int]:
    """The pids of the direct children of ``pid`` (prefork pool processes)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def kill(pid: int) -> None:
    """SIGKILL ``pid``."""
    os.kill(pid, signal.SIGKILL)
