"""What the benchmarks share: a fresh ledger database, a plain Celery client, worker
start-up and shutdown, and the ledger's verdict on the jobs a run sent."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psycopg
from celery import Celery

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def fresh_database(name: str) -> str:
    """An empty database ``name`` (dropped first if it exists); its URL."""
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{POSTGRES}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def ledger_statuses(database: str, job_ids: list[str]) -> dict[str, int]:
    """How many of ``job_ids`` the ledger has in each status."""
    with psycopg.connect(database) as connection:
        rows = connection.execute(
            "SELECT status, count(*) FROM jobs WHERE id = ANY(%s) GROUP BY status", (job_ids,)
        ).fetchall()
    return {str(status): int(count) for status, count in rows}


def client_for(url: str) -> Celery:
    """A plain Celery client (JSON only) on ``url``."""
    client = Celery("bench-client", broker=url, backend=url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"])
    return client


def wait_ready(
    client: Celery, node: str, process: subprocess.Popen[bytes], log: Path | None = None
) -> None:
    """Wait until worker ``node`` answers a ping; exit the benchmark if it cannot."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = f":\n{log.read_text()[-3000:]}" if log is not None else ""
            raise SystemExit(f"worker {node} exited early{tail}")
        if any(node in reply for reply in client.control.ping([node], timeout=0.5) or []):
            return
    raise SystemExit(f"worker {node} did not answer within 90 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown for a Celery worker), then wait; kill if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
