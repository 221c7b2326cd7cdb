"""A worker's main process SIGKILLed with its pool, or frozen: at the default visibility
timeout, the ledger's leases bring every job back within the lease term plus 30 s, and each
job has one recorded outcome."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.api_server import API_KEYS, running_api
from tests.support.ledger_reads import LedgerReader
from tests.support.polling import wait_for
from tests.support.workers import start_worker

# CONVEYOR_CHAOS_LEASE_SECONDS=30 measures the default lease (the target grows with it)
LEASE_SECONDS = int(os.environ.get("CONVEYOR_CHAOS_LEASE_SECONDS", "10"))
TARGET_SECONDS = LEASE_SECONDS + 30
WORK_SECONDS = 3.0
# (task, args, concurrency, jobs): twice as many jobs as the pool runs at once
WORKLOADS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "io": ("diagnostics.echo", {"sleep_seconds": WORK_SECONDS}, 10, 20),
    "cpu": ("diagnostics.spin", {"milliseconds": int(WORK_SECONDS * 1000)}, 2, 6),
}


@dataclass
class Aftermath:
    """What became of a workload whose worker's main process was killed."""

    ids: list[str]
    held: set[str]  # running in the killed worker
    finished_after: dict[str, float] = field(default_factory=dict)  # seconds after the kill


def kill_main_process_mid_run(
    kind: str, *, lease_seconds: int, deadline: float, chaos_env: dict[str, str],
    chaos_ledger: LedgerReader, tmp_path: Path,
) -> Aftermath:  # fmt: skip
    """Run a workload, SIGKILL the worker's process group with a full pool, start another
    worker, and wait until every job succeeded or ``deadline`` seconds after the kill."""
    task, args, concurrency, count = WORKLOADS[kind]
    env = {
        **chaos_env,
        "CONVEYOR_API_KEYS": API_KEYS,
        "CONVEYOR_RATE_LIMIT": "off",
        "CONVEYOR_STORAGE_DIR": str(tmp_path),
        "CONVEYOR_VISIBILITY_TIMEOUT": "3600",  # the default: Redis alone would wait an hour
        "CONVEYOR_WORKER_LEASE_SECONDS": str(lease_seconds),
        f"CONVEYOR_{kind.upper()}_CONCURRENCY": str(concurrency),
    }
    doomed = start_worker(kind, f"{kind}-doomed@test", tmp_path / "doomed.log", env)
    heir = None
    try:
        with running_api(env, tmp_path / "api.log") as api, api.client() as client:
            answer = client.post(
                "/v1/jobs/batch",
                json={"jobs": [{"task": task, "args": {**args, **extra}} for extra in (
                    [{"value": n} for n in range(count)] if kind == "io" else [{}] * count
                )]},
            )  # fmt: skip
            assert answer.status_code == 202, answer.text
            aftermath = Aftermath([job["id"] for job in answer.json()["jobs"]], set())

            def running() -> set[str]:
                views = [chaos_ledger.job(job_id) for job_id in aftermath.ids]
                return {view.id for view in views if view is not None and view.status == "running"}

            wait_for(lambda: len(running()) == concurrency, timeout=60, what="a full pool")
            aftermath.held = running()
            os.killpg(doomed.process.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            doomed.process.wait(10)
            heir = start_worker(kind, f"{kind}-heir@test", tmp_path / "heir.log", env)

            def all_finished() -> bool:
                for job_id in aftermath.ids:
                    view = chaos_ledger.job(job_id)
                    done = job_id in aftermath.finished_after
                    if not done and view is not None and view.status == "succeeded":
                        aftermath.finished_after[job_id] = time.monotonic() - killed_at
                return len(aftermath.finished_after) == len(aftermath.ids)

            while not all_finished() and time.monotonic() - killed_at < deadline:
                time.sleep(0.2)
    finally:
        if heir is not None:
            heir.stop()
        if doomed.process.poll() is None:
            doomed.stop()
    return aftermath


@pytest.mark.parametrize("kind", ["io", "cpu"])
def test_a_killed_main_process_jobs_come_back_within_the_lease(
    kind: str, chaos_env: dict[str, str], chaos_ledger: LedgerReader, tmp_path: Path
) -> None:
    deadline = TARGET_SECONDS + 60
    run = kill_main_process_mid_run(
        kind, lease_seconds=LEASE_SECONDS, deadline=deadline, chaos_env=chaos_env,
        chaos_ledger=chaos_ledger, tmp_path=tmp_path,
    )  # fmt: skip

    views = [chaos_ledger.job(job_id) for job_id in run.ids]
    outcomes = {view.id: view.outcomes for view in views if view}
    assert len(run.finished_after) == len(run.ids), f"unfinished after {deadline} s: {outcomes}"
    assert all(o.count("succeeded") == 1 for o in outcomes.values()), outcomes
    assert all(outcomes[job_id][0] == "lost" for job_id in run.held), outcomes
    slowest = max(run.finished_after.values())
    print(
        f"\n{kind} main process SIGKILLed holding {len(run.held)} running jobs "
        f"(lease {LEASE_SECONDS} s, visibility timeout 3600 s): all {len(run.ids)} jobs "
        f"succeeded, the last {slowest:.1f} s after the kill (target {TARGET_SECONDS} s)"
    )
    assert slowest <= TARGET_SECONDS + WORK_SECONDS, run.finished_after


def test_without_leases_the_killed_worker_jobs_miss_the_target(
    chaos_env: dict[str, str], chaos_ledger: LedgerReader, tmp_path: Path
) -> None:
    """The control: a lease longer than the run is no protection, and the check sees it."""
    deadline = TARGET_SECONDS + WORK_SECONDS
    run = kill_main_process_mid_run(
        "io", lease_seconds=3600, deadline=deadline, chaos_env=chaos_env,
        chaos_ledger=chaos_ledger, tmp_path=tmp_path,
    )  # fmt: skip

    stranded = run.held - set(run.finished_after)
    print(
        f"\nwithout leases: {len(stranded)} of {len(run.held)} killed jobs "
        f"unfinished after {deadline:g} s"
    )
    assert stranded == run.held
    assert len(run.finished_after) == len(run.ids) - len(run.held)  # the rest ran


def test_a_paused_worker_is_taken_for_dead_and_its_late_outcomes_are_fenced_off(
    chaos_env: dict[str, str], chaos_ledger: LedgerReader, tmp_path: Path
) -> None:
    """A worker frozen (SIGSTOP: as cut off from the ledger) past its lease: its jobs run on
    another worker; when it wakes and finishes them, the ledger keeps one outcome each."""
    env = {
        **chaos_env,
        "CONVEYOR_API_KEYS": API_KEYS,
        "CONVEYOR_RATE_LIMIT": "off",
        "CONVEYOR_STORAGE_DIR": str(tmp_path),
        "CONVEYOR_VISIBILITY_TIMEOUT": "3600",
        "CONVEYOR_WORKER_LEASE_SECONDS": "5",
        "CONVEYOR_IO_CONCURRENCY": "5",
    }
    frozen = start_worker("io", "io-frozen@test", tmp_path / "frozen.log", env)
    other = None
    try:
        with running_api(env, tmp_path / "api.log") as api, api.client() as client:
            answer = client.post(
                "/v1/jobs/batch",
                json={"jobs": [
                    {"task": "diagnostics.echo", "args": {"value": n, "sleep_seconds": 4}}
                    for n in range(5)
                ]},
            )  # fmt: skip
            ids = [job["id"] for job in answer.json()["jobs"]]

            def all_running() -> bool:
                views = [chaos_ledger.job(job_id) for job_id in ids]
                return all(view is not None and view.status == "running" for view in views)

            wait_for(all_running, timeout=60, what="five jobs running on the worker")
            os.killpg(frozen.process.pid, signal.SIGSTOP)
            other = start_worker("io", "io-other@test", tmp_path / "other.log", env)
            for job_id in ids:
                chaos_ledger.wait_finished(job_id, timeout=90)
            os.killpg(frozen.process.pid, signal.SIGCONT)

            def late_finishes() -> bool:
                log = frozen.log()
                return all(f"diagnostics.echo[{job_id}] succeeded" in log for job_id in ids)

            wait_for(late_finishes, timeout=60, what="the woken worker to finish its attempts")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(frozen.process.pid, signal.SIGCONT)
        frozen.stop()
        if other is not None:
            other.stop()

    views = [chaos_ledger.job(job_id) for job_id in ids]
    assert all(view is not None for view in views)
    assert [view.outcomes for view in views if view] == [["lost", "succeeded"]] * 5
    assert {view.result["worker"] for view in views if view} == {"io-other@test"}
    assert {view.history[0].worker for view in views if view} == {"io-frozen@test"}
