"""The fault-injection suite: each scenario sends a workload through the API to a whole
deployment, injects its faults at times drawn from a logged seed, waits until everything is
quiet, and checks the ledger: nothing acknowledged is lost, no attempt has two outcomes.

Set ``CONVEYOR_CHAOS_SEED`` to replay a run, ``CONVEYOR_CHAOS_JOBS`` to change its size.
``make test`` runs the two fastest scenarios (with 1,500 jobs); ``make chaos`` runs them all.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import Engine, text

from tests.support.api_server import ALICE
from tests.support.fault_harness import Deployment, Tally, Workload, deployment, wait_quiet
from tests.support.polling import wait_for
from tests.support.workers import children_of
from workers.ledger.database import create_ledger_engine

JOBS = int(os.environ.get("CONVEYOR_CHAOS_JOBS", "5000"))
PER_SECOND = 250.0
LEASE_SECONDS = 10
SETTLE_SECONDS = LEASE_SECONDS + 30  # after the last fault, every job is finished by then
Injector = Callable[[Deployment, random.Random], None]


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("CONVEYOR_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nchaos seed {value} (CONVEYOR_CHAOS_SEED={value} replays it)")
    return value


@pytest.fixture
def ledger(chaos_database: str) -> Iterator[Engine]:
    engine = create_ledger_engine(chaos_database, pool_size=2)
    yield engine
    engine.dispose()


def run_scenario(
    name: str, inject: Injector, *, seed: int, directory: Path, database_url: str,
    ledger: Engine, **settings: str,
) -> Tally:  # fmt: skip
    """Deploy, send the workload, inject the faults, wait for quiet; the checker's tally."""
    rng = random.Random(seed)
    started = time.monotonic()
    with deployment(
        directory, database_url, **{"worker_lease_seconds": str(LEASE_SECONDS), **settings}
    ) as deployed:
        workload = Workload(deployed.api, random.Random(seed + 1), JOBS, PER_SECOND)
        workload.start()
        inject(deployed, rng)
        workload.join(timeout=300)
        faults_over = time.monotonic()
        tally = wait_quiet(ledger, workload.acknowledged, stalled_for=SETTLE_SECONDS, cap=300)
        quiet_after = time.monotonic() - faults_over
    tally.refused = workload.answers["503"]
    tally.indeterminate = workload.answers["no answer"]
    print(
        f"{name}: {tally.line()}; quiet {quiet_after:.1f} s after the last fault "
        f"({time.monotonic() - started:.0f} s in all); answers {dict(workload.answers)}"
    )
    assert workload.error_ids_missing == 0, "an error answer without an error_id"
    assert tally.acknowledged > 0
    return tally


def at(moments: list[float]) -> Iterator[None]:
    """Yield at each of ``moments`` (seconds from now, in order)."""
    start = time.monotonic()
    for moment in sorted(moments):
        pause = start + moment - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        yield


def span() -> float:
    """How long the workload takes to send: faults fall inside it."""
    return JOBS / PER_SECOND


def kill_workers(deployed: Deployment, rng: random.Random) -> None:
    """5 prefork-child SIGKILLs and 3 main-process SIGKILLs (both pools), restarted at once."""
    faults = ["child"] * 5 + ["io", "cpu", rng.choice(["io", "cpu"])]
    rng.shuffle(faults)
    moments = [rng.uniform(1, span()) for _ in faults]
    for fault, _ in zip(faults, at(moments), strict=False):
        if fault == "child":
            children = children_of(deployed.workers["cpu"].process.pid)
            if children:
                os.kill(rng.choice(children), signal.SIGKILL)
            continue
        deployed.kill_worker(fault)
        deployed.start_worker(fault)


@pytest.mark.long_chaos
@pytest.mark.timeout(600)
def test_worker_kills_lose_nothing(
    seed: int, tmp_path: Path, chaos_database: str, ledger: Engine
) -> None:
    tally = run_scenario(
        "worker kills", kill_workers, seed=seed, directory=tmp_path,
        database_url=chaos_database, ledger=ledger,
    )  # fmt: skip
    assert (tally.lost, tally.duplicate_outcomes) == ([], [])


@pytest.mark.long_chaos
@pytest.mark.timeout(600)
def test_without_leases_worker_kills_lose_jobs(
    seed: int, tmp_path: Path, chaos_database: str, ledger: Engine
) -> None:
    """The control: with leases longer than the run (no reconciler in effect), main-process
    kills at the default visibility timeout strand jobs, and the checker sees them."""

    def kill_main_processes(deployed: Deployment, rng: random.Random) -> None:
        # each kill waits until the ledger shows the worker running attempts: the jobs are
        # short, and a kill between two of them would strand nothing to see
        for kind in ["io", "cpu", "io", "cpu"]:
            node = deployed.workers[kind].node
            running = functools.partial(open_attempts, ledger, node)
            wait_for(lambda: running() >= 2, timeout=60, interval=0.01,  # noqa: B023 - called at once
                     what=f"{node} to run attempts")  # fmt: skip
            deployed.kill_worker(kind)
            deployed.start_worker(kind)

    tally = run_scenario(
        "worker kills, no leases", kill_main_processes, seed=seed, directory=tmp_path,
        database_url=chaos_database, ledger=ledger, worker_lease_seconds="3600",
    )  # fmt: skip
    assert tally.lost, "the checker saw no loss without the protection"


def open_attempts(ledger: Engine, node: str) -> int:
    """How many attempts are open in the ledger on the worker ``node``."""
    with ledger.connect() as connection:
        return int(
            connection.scalar(
                text("SELECT count(*) FROM job_attempts WHERE outcome = 'running' AND worker = :n"),
                {"n": node},
            )
            or 0
        )


def canary_round_trip(deployed: Deployment, timeout: float) -> float:
    """Send one job through the API and wait until it succeeded; seconds it took."""
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {ALICE[1]}"}
    with httpx.Client(base_url=deployed.api.base_url, headers=headers, timeout=5) as client:

        def posted() -> str | None:
            try:
                answer = client.post(
                    "/v1/jobs",
                    # high priority: it goes ahead of the workload's backlog
                    json={
                        "task": "diagnostics.echo",
                        "args": {"value": "canary"},
                        "priority": "high",
                    },
                )
            except httpx.TransportError:
                return None
            return str(answer.json()["id"]) if answer.status_code == 202 else None

        job_id = wait_for(posted, timeout=timeout, interval=0.2, what="the canary accepted")

        def succeeded() -> bool:
            try:
                return bool(client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded")
            except httpx.TransportError:
                return False

        wait_for(succeeded, timeout=timeout, interval=0.1, what="the canary to succeed")
    return time.monotonic() - started


@pytest.mark.long_chaos
@pytest.mark.timeout(600)
def test_redis_crashes_pauses_and_flushes_lose_nothing(
    seed: int, tmp_path: Path, chaos_database: str, ledger: Engine
) -> None:
    figures: dict[str, float] = {}

    def break_redis(deployed: Deployment, rng: random.Random) -> None:
        moments = sorted(rng.uniform(1, span()) for _ in range(3))
        for number, _ in enumerate(at(moments[:2]), start=1):
            deployed.redis.kill()  # kill -9: only the append-only file survives
            deployed.redis.start()
            figures[f"crash {number} restarted"] = 1
        deployed.redis.pause()
        time.sleep(20)
        deployed.redis.resume()
        figures["canary after SIGCONT"] = canary_round_trip(deployed, timeout=30)
        client = redis.Redis.from_url(deployed.redis.url)
        client.flushdb()
        client.close()

    tally = run_scenario(
        "redis kill -9 twice, SIGSTOP 20 s, FLUSHDB", break_redis, seed=seed,
        directory=tmp_path, database_url=chaos_database, ledger=ledger,
    )  # fmt: skip
    print(f"a canary went through {figures['canary after SIGCONT']:.1f} s after SIGCONT")
    assert figures["canary after SIGCONT"] <= 30
    assert (tally.lost, tally.duplicate_outcomes) == ([], [])


@pytest.mark.timeout(600)
def test_a_database_cut_answers_503_and_loses_nothing(
    seed: int, tmp_path: Path, chaos_database: str, ledger: Engine
) -> None:
    probes: list[tuple[int, float, bool]] = []

    def cut_database(deployed: Deployment, rng: random.Random) -> None:
        for _ in at([rng.uniform(1, span() / 2)]):
            deployed.database.cut()
        headers = {"Authorization": f"Bearer {ALICE[1]}"}
        until = time.monotonic() + 30
        with httpx.Client(base_url=deployed.api.base_url, headers=headers, timeout=10) as client:
            while time.monotonic() < until:
                sent = time.monotonic()
                answer = client.post(
                    "/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": "probe"}}
                )
                has_id = "error_id" in answer.json().get("error", {})
                probes.append((answer.status_code, time.monotonic() - sent, has_id))
                time.sleep(1)
        deployed.database.heal()

    tally = run_scenario(
        "database cut 30 s", cut_database, seed=seed, directory=tmp_path,
        database_url=chaos_database, ledger=ledger,
    )  # fmt: skip
    during = probes[2:]  # the first second may still find a pooled connection alive
    slowest = max(seconds for _, seconds, _ in during)
    print(f"during the cut: answers {sorted({s for s, _, _ in during})}, slowest {slowest:.2f} s")
    assert all(status == 503 and has_id for status, _, has_id in during), probes
    assert slowest <= 2.0, probes
    assert (tally.lost, tally.duplicate_outcomes) == ([], [])


@pytest.mark.long_chaos
@pytest.mark.timeout(600)
def test_rolling_restarts_lose_nothing(
    seed: int, tmp_path: Path, chaos_database: str, ledger: Engine
) -> None:
    def restart_workers(deployed: Deployment, rng: random.Random) -> None:
        moments = [rng.uniform(0.5, span()) for _ in range(20)]
        for number, _ in enumerate(at(moments)):
            kind = ("io", "cpu")[number % 2]
            deployed.workers[kind].stop(signal.SIGTERM, timeout=60)
            deployed.start_worker(kind)

    tally = run_scenario(
        "20 rolling SIGTERM restarts", restart_workers, seed=seed, directory=tmp_path,
        database_url=chaos_database, ledger=ledger,
    )  # fmt: skip
    assert (tally.lost, tally.duplicate_outcomes) == ([], [])


@pytest.mark.timeout(600)
def test_two_beats_and_a_killed_beat_change_nothing(
    seed: int, tmp_path: Path, chaos_database: str, ledger: Engine
) -> None:
    def beats(deployed: Deployment, rng: random.Random) -> None:
        first = deployed.start_beat()
        deployed.start_beat()
        for _ in at([rng.uniform(1, span())]):
            first.process.kill()

    tally = run_scenario(
        "two beats, one killed", beats, seed=seed, directory=tmp_path,
        database_url=chaos_database, ledger=ledger,
    )  # fmt: skip
    assert (tally.lost, tally.duplicate_outcomes) == ([], [])
