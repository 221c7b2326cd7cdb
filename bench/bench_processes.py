"""The processes a benchmark starts: Conveyor and plain Celery workers and the Conveyor API.

Each is a context manager that starts the process with its output in a log file, waits until
it answers, and stops it (SIGTERM, a warm shutdown; SIGKILL if it hangs) when the block ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Literal

from bench_services import (
    BIN,
    ROOT,
    START_TIMEOUT,
    celery_client,
    free_port,
    stop,
    wait_ready,
)

Popen = subprocess.Popen[bytes]
HOST = "127.0.0.1"


def exit_on_sigterm() -> None:
    """Let SIGTERM unwind the benchmark, so every block stops what it started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def base_env() -> dict[str, str]:
    """This process's environment without any ``CONVEYOR_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}


def conveyor_env(redis_url: str, database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a Conveyor process on this run's services, in test mode (private
    networks allowed, diagnostics tasks on); ``io_concurrency="50"`` sets
    ``CONVEYOR_IO_CONCURRENCY``, and so on."""
    return {
        **base_env(),
        "CONVEYOR_ENV": "test",
        "CONVEYOR_REDIS_URL": redis_url,
        "CONVEYOR_DATABASE_URL": database_url,
        "CONVEYOR_LOG_LEVEL": "WARNING",
        **{f"CONVEYOR_{name.upper()}": value for name, value in settings.items()},
    }


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (a prefork worker's pool, uvicorn's workers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread or process ended while it was read
            continue
        for child in children:
            found.extend(process_tree(int(child)))
    return found


@contextmanager
def log_directory(prefix: str) -> Iterator[Path]:
    """A directory for a run's process logs: removed when the block ends normally, kept and
    named on stderr when it fails, so that the logs can be read."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield directory
    except BaseException:
        print(f"the processes' logs are kept in {directory}", file=sys.stderr)
        raise
    shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def started(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[Popen]:
    """``command`` running from the repository root, its output in ``log_path``."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield process
    finally:
        stop(process)


@contextmanager
def celery_worker(
    command: list[str], env: dict[str, str], node: str, redis_url: str, log_path: Path
) -> Iterator[Popen]:
    """A Celery worker started with ``command`` as ``node``, answering pings inside the block."""
    with started(command, env, log_path) as process, celery_client(redis_url) as client:
        wait_ready(client, node, process, log_path)
        yield process


@contextmanager
def conveyor_worker(
    kind: Literal["io", "cpu"], env: dict[str, str], workdir: Path, name: str
) -> Iterator[Popen]:
    """``conveyor worker <kind>`` named ``name@bench``, with the settings of ``env``."""
    node = f"{name}@bench"
    command = [str(BIN / "conveyor"), "worker", kind, "-n", node]
    with celery_worker(
        command, env, node, env["CONVEYOR_REDIS_URL"], workdir / f"{name}.log"
    ) as process:
        yield process


def plain_env(redis_url: str, *, pool_size: int, tuned: bool = False) -> dict[str, str]:
    """The environment of a plain Celery worker of ``bench/plain_celery_*.py`` on ``redis_url``,
    its Redis connection pools sized ``pool_size``; ``tuned``: one result backend shared by
    the process, as Conveyor has it (``result_backend_thread_safe``)."""
    return {
        **base_env(),
        "BENCH_REDIS_URL": redis_url,
        "PYTHONPATH": str(ROOT),
        "BENCH_POOL": str(pool_size),
        "BENCH_TUNED": "1" if tuned else "0",
    }


@contextmanager
def plain_worker(
    app: str,
    pool: Literal["gevent", "prefork"],
    concurrency: int,
    env: dict[str, str],
    *,
    workdir: Path,
    name: str,
) -> Iterator[Popen]:
    """``celery -A <app> worker`` on the ``io`` queue, the pool and concurrency given."""
    node = f"{name}@bench"
    command = [
        str(BIN / "celery"), "-A", app, "worker", "-P", pool, "-c", str(concurrency),
        "-Q", "io", "-n", node, "--without-mingle", "--prefetch-multiplier", "1", "-l", "WARNING",
    ]  # fmt: skip
    with celery_worker(
        command, env, node, env["BENCH_REDIS_URL"], workdir / f"{name}.log"
    ) as process:
        yield process


def wait_healthy(port: int, process: Popen, log: Path) -> None:
    """Wait until the API on ``port`` answers ``GET /healthz``; exit the benchmark if not."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the API exited early; its log:\n{log.read_text()[-3000:]}")
        connection = HTTPConnection(HOST, port, timeout=2)
        try:
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.2)
    raise SystemExit(f"the API did not answer /healthz within {START_TIMEOUT} s")


@dataclass(frozen=True)
class RunningApi:
    """A ``conveyor api`` process and the port it serves."""

    process: Popen
    port: int


@contextmanager
def conveyor_api(env: dict[str, str], workdir: Path, *, workers: int = 1) -> Iterator[RunningApi]:
    """``conveyor api`` with ``workers`` uvicorn processes on a free port of 127.0.0.1."""
    port = free_port()
    command = [
        str(BIN / "conveyor"), "api", "--host", HOST, "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    log_path = workdir / "api.log"
    with started(command, env, log_path) as process:
        wait_healthy(port, process, log_path)
        yield RunningApi(process, port)
