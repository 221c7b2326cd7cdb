"""The fault-injection harness: a whole deployment a scenario may break, a workload sent
through the API, and the checker that reads the ledger once everything is quiet.

The deployment is real: ``conveyor api``, an io (gevent) and a cpu (prefork) worker, beats
if asked, a Redis server of its own with append-only persistence (``appendfsync
everysec``), and the run's PostgreSQL reached through a proxy the scenario can cut.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from tests.support.api_server import API_KEYS, ApiServer, running_api
from tests.support.fault_proxy import FaultProxy, fault_proxy
from tests.support.processes import ServiceProcess, descendants, dying_with_this_process
from tests.support.redis_server import PrivateRedis, private_redis
from tests.support.workers import CONVEYOR, WorkerProcess, start_worker, worker_environment

# Database connections per process of a chaos deployment. make test runs the scenarios beside
# the integration stack, all on one server's 100 connections, and sets it low; make chaos runs
# alone and keeps the default, so the workers drain at their usual speed.
POOL_SIZE = os.environ.get("CONVEYOR_CHAOS_POOL_SIZE", "20")

# (share of the workload, task, arguments from a random source)
_MIX: list[tuple[float, str, Callable[[random.Random, int], dict[str, Any]]]] = [
    (0.8, "diagnostics.echo", lambda rng, n: {"value": n, "sleep_seconds": rng.uniform(0, 0.05)}),
    (0.2, "diagnostics.spin", lambda rng, _n: {"milliseconds": rng.randint(1, 10)}),
]


@dataclass
class Tally:
    """What the checker found: every figure a scenario reports."""

    acknowledged: int = 0  # 202s
    refused: int = 0  # clear refusals (503 while a dependency was down): not acknowledged
    indeterminate: int = 0  # requests that got no answer: neither acknowledged nor lost
    finished: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged, never finished
    duplicate_outcomes: list[str] = field(default_factory=list)  # two terminal outcomes
    re_executions: int = 0  # attempts beyond the first (lost ones), allowed
    poison: int = 0

    def line(self) -> str:
        """The tally on one line."""
        return (
            f"acknowledged {self.acknowledged}, finished {self.finished}, lost {len(self.lost)}, "
            f"duplicate outcomes {len(self.duplicate_outcomes)}, re-executions "
            f"{self.re_executions}, poison {self.poison}, refused {self.refused}, "
            f"indeterminate {self.indeterminate}"
        )


_LEDGER_READ = text(
    """
    SELECT j.id, j.status, j.error,
           count(*) FILTER (WHERE a.outcome IN ('succeeded', 'failed')) AS terminal,
           count(*) FILTER (WHERE a.outcome = 'lost') AS lost_attempts
    FROM jobs j LEFT JOIN job_attempts a ON a.job_id = j.id
    WHERE j.id = ANY(:ids)
    GROUP BY j.id
    """
)


def read_ledger(engine: Engine, ids: list[str], tally: Tally) -> Tally:
    """Fill the ledger's side of ``tally`` for the acknowledged ``ids``."""
    with engine.connect() as connection:
        rows = {row.id: row for row in connection.execute(_LEDGER_READ, {"ids": ids})}
    tally.acknowledged = len(ids)
    tally.finished = sum(
        1 for row in rows.values() if row.status in ("succeeded", "failed", "cancelled")
    )
    tally.lost = [
        job_id
        for job_id in ids
        if job_id not in rows or rows[job_id].status not in ("succeeded", "failed", "cancelled")
    ]
    tally.duplicate_outcomes = [row.id for row in rows.values() if row.terminal > 1]
    tally.re_executions = sum(int(row.lost_attempts) for row in rows.values())
    tally.poison = sum(
        1
        for row in rows.values()
        if row.status == "failed" and (row.error or {}).get("type") == "PoisonJobError"
    )
    return tally


class Workload:
    """Sends ``total`` jobs through the API in a thread, ``batch`` at a time, ``per_second``
    jobs a second, and keeps what each request answered."""

    def __init__(self, api: ApiServer, rng: random.Random, total: int, per_second: float) -> None:
        self._api = api
        self._rng = rng
        self._total = total
        self._per_second = per_second
        self.acknowledged: list[str] = []
        self.answers: Counter[str] = Counter()
        self.error_ids_missing = 0
        self._thread = threading.Thread(target=self._send, name="workload", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def join(self, timeout: float) -> None:
        """Wait until every job was sent (or ``timeout``)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the workload did not finish sending"

    def _job(self, n: int) -> dict[str, Any]:
        draw = self._rng.random()
        for share, task, arguments in _MIX:
            if draw < share:
                return {"task": task, "args": arguments(self._rng, n)}
            draw -= share
        raise AssertionError("the mix does not add up to 1")

    def _send(self) -> None:
        batch = 50
        started = time.monotonic()
        with httpx.Client(
            base_url=self._api.base_url,
            headers={"Authorization": f"Bearer {API_KEYS.split(',')[0].split(':')[1]}"},
            timeout=10,
        ) as client:
            for first in range(0, self._total, batch):
                jobs = [self._job(n) for n in range(first, min(first + batch, self._total))]
                self._post(client, jobs)
                ahead = started + (first + batch) / self._per_second - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def _post(self, client: httpx.Client, jobs: list[dict[str, Any]]) -> None:
        try:
            answer = client.post("/v1/jobs/batch", json={"jobs": jobs})
        except httpx.TransportError:
            self.answers["no answer"] += len(jobs)
            return
        self.answers[str(answer.status_code)] += len(jobs)
        if answer.status_code == 202:
            self.acknowledged += [job["id"] for job in answer.json()["jobs"]]
        elif "error_id" not in answer.json().get("error", {}):
            self.error_ids_missing += 1


@dataclass
class Deployment:
    """A running deployment a scenario may break: its processes, Redis and database path."""

    directory: Path
    env: dict[str, str]
    redis: PrivateRedis
    database: FaultProxy
    api: ApiServer
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    beats: list[ServiceProcess] = field(default_factory=list)
    _starts: Counter[str] = field(default_factory=Counter)

    def start_worker(self, kind: str) -> WorkerProcess:
        """Start (or start again) the ``kind`` worker."""
        self._starts[kind] += 1
        node = f"{kind}-{self._starts[kind]}@faults"
        worker = start_worker(kind, node, self.directory / f"{node}.log", self.env)
        self.workers[kind] = worker
        return worker

    def kill_worker(self, kind: str) -> None:
        """SIGKILL the ``kind`` worker's main process and its pool children at once."""
        worker = self.workers[kind]
        for pid in descendants(worker.process.pid):
            os.kill(pid, signal.SIGKILL)
        worker.process.kill()
        worker.process.wait(10)

    def start_beat(self) -> ServiceProcess:
        """Start one more ``conveyor beat``."""
        log_path = self.directory / f"beat-{len(self.beats) + 1}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            dying_with_this_process([CONVEYOR, "beat"]), env=self.env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        beat = ServiceProcess(process, log_path)
        self.beats.append(beat)
        return beat

    def stop_all(self) -> None:
        """Stop every worker and beat."""
        for process in [*self.workers.values(), *self.beats]:
            if process.process.poll() is None:
                process.stop(timeout=30)


@contextlib.contextmanager
def deployment(directory: Path, database_url: str, **settings: str) -> Iterator[Deployment]:
    """A whole deployment on a Redis of its own and ``database_url`` behind a proxy."""
    url = make_url(database_url)
    with (
        private_redis(directory, append_only=True) as redis_server,
        fault_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy,
    ):
        env = worker_environment(
            env="test",
            redis_url=redis_server.url,
            database_url=url.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False
            ),
            api_keys=API_KEYS,
            rate_limit="off",
            storage_dir=str(directory / "blobs"),
            retry_scale="0.02",
            io_concurrency="20",
            cpu_concurrency="2",
            database_pool_size=POOL_SIZE,
            **settings,
        )
        with running_api(env, directory / "api.log") as api:
            deployed = Deployment(directory, env, redis_server, proxy, api)
            try:
                deployed.start_worker("io")
                deployed.start_worker("cpu")
                yield deployed
            finally:
                deployed.stop_all()


def wait_quiet(engine: Engine, ids: list[str], *, stalled_for: float, cap: float) -> Tally:
    """Read the ledger until every acknowledged job finished, or none finished for
    ``stalled_for`` seconds (what is left then is lost), or ``cap`` seconds went by.

    The deadline comes from the work: a slow machine that still drains is waited for; a job
    nothing will ever finish shows as no progress."""
    started = progressed = time.monotonic()
    finished = -1
    while True:
        tally = read_ledger(engine, ids, Tally())
        now = time.monotonic()
        if tally.finished > finished:
            finished, progressed = tally.finished, now
        if not tally.lost or now - progressed > stalled_for or now - started > cap:
            return tally
        time.sleep(0.5)
