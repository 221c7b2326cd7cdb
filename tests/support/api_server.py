"""Real ``conveyor api`` and ``celery beat`` processes for tests: started, awaited, stopped."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.polling import wait_for
from tests.support.processes import ServiceProcess, dying_with_this_process, free_port
from tests.support.workers import CONVEYOR

ALICE = ("alice", "alice-secret-key-0123456789")
BOB = ("bob", "bob-secret-key-0123456789abc")
# a client whose jobs no other test lists: for tests that leave large jobs behind
DORA = ("dora", "dora-secret-key-0123456789ab")
API_KEYS = ",".join(f"{client}:{secret}" for client, secret in (ALICE, BOB, DORA))


@dataclass
class ApiServer(ServiceProcess):
    """A running API and its address."""

    base_url: str

    def client(self, secret: str | None = ALICE[1], **kwargs: object) -> httpx.Client:
        """An HTTP client on this server, authenticated as ``secret`` (alice by default)."""
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def _start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            dying_with_this_process(command),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


@contextmanager
def running_api(env: dict[str, str], log_path: Path, *, workers: int = 1) -> Iterator[ApiServer]:
    """``conveyor api`` on a free port, answering /healthz inside the block."""
    port = free_port()
    command = [CONVEYOR, "api", "--port", str(port), "--workers", str(workers)]
    server = ApiServer(_start(command, env, log_path), log_path, f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        if server.process.poll() is not None:
            raise AssertionError(f"the API exited:\n{server.log()[-4000:]}")
        try:
            return httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout=60, interval=0.1, what="the API to answer /healthz")
        yield server
    finally:
        server.stop()


@contextmanager
def running_beat(env: dict[str, str], log_path: Path, *extra: str) -> Iterator[ServiceProcess]:
    """``conveyor beat`` relaying the outbox and firing schedules, stopped after the block;
    ``extra`` options go to ``celery beat``."""
    command = [CONVEYOR, "beat", *extra]
    beat = ServiceProcess(_start(command, env, log_path), log_path)
    try:
        yield beat
    finally:
        beat.stop()
