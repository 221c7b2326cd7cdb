"""Killing and stopping workers: redelivery, poison jobs and warm shutdown lose no job."""

from __future__ import annotations

import signal
from pathlib import Path

from celery import Celery
from celery.result import AsyncResult

from tests.support.ledger_reads import JobView, LedgerReader
from tests.support.polling import wait_for
from tests.support.workers import children_of, kill, running_worker, start_worker, wait_until_ready


def _running_attempt(ledger: LedgerReader, job_id: str, number: int) -> JobView | None:
    job = ledger.job(job_id)
    if job and len(job.history) >= number and job.history[number - 1].outcome == "running":
        return job
    return None


def _kill_attempt(ledger: LedgerReader, job_id: str, number: int, parent_pid: int) -> None:
    job = wait_for(
        lambda: _running_attempt(ledger, job_id, number),
        timeout=30,
        what=f"attempt {number} to start",
    )
    pid = job.history[number - 1].pid
    assert pid in children_of(parent_pid), "the attempt runs in a pool child"
    kill(pid)


def test_a_killed_prefork_child_job_is_redelivered_and_finishes_once(
    chaos_client: Celery, chaos_env: dict[str, str], chaos_ledger: LedgerReader, logs: Path
) -> None:
    with running_worker(chaos_client, "cpu", "cpu-chaos@test", logs / "cpu.log", chaos_env) as cpu:
        result = chaos_client.send_task(
            "diagnostics.spin", kwargs={"milliseconds": 3000}, queue="cpu"
        )
        _kill_attempt(chaos_ledger, result.id, 1, cpu.process.pid)

        job = chaos_ledger.wait_finished(result.id, timeout=60)

    assert job.status == "succeeded"
    assert job.outcomes == ["lost", "succeeded"]
    assert job.history[0].error is not None
    assert job.history[0].error["type"] == "WorkerLostError"
    assert job.history[0].pid != job.history[1].pid
    assert AsyncResult(result.id, app=chaos_client).state == "SUCCESS"


def test_a_job_that_kills_its_worker_three_times_fails_as_poison(
    chaos_client: Celery, chaos_env: dict[str, str], chaos_ledger: LedgerReader, logs: Path
) -> None:
    with running_worker(chaos_client, "cpu", "cpu-poison@test", logs / "cpu.log", chaos_env) as cpu:
        result = chaos_client.send_task(
            "diagnostics.spin", kwargs={"milliseconds": 30000}, queue="cpu"
        )
        for number in (1, 2, 3):
            _kill_attempt(chaos_ledger, result.id, number, cpu.process.pid)

        job = chaos_ledger.wait_finished(result.id, timeout=60)
        state = wait_for(
            lambda: AsyncResult(result.id, app=chaos_client).state == "FAILURE",
            timeout=20,
            what="Celery state FAILURE",
        )

    assert job.status == "failed"
    assert job.outcomes == ["lost", "lost", "lost"]
    assert job.error is not None and job.error["type"] == "PoisonJobError"
    assert state


def test_warm_shutdown_finishes_running_jobs_and_loses_none(
    chaos_client: Celery, chaos_env: dict[str, str], chaos_ledger: LedgerReader, logs: Path
) -> None:
    first = start_worker("io", "io-first@test", logs / "first.log", chaos_env)
    wait_until_ready(chaos_client, first)
    results = [
        chaos_client.send_task(
            "diagnostics.echo", kwargs={"value": n, "sleep_seconds": 1.5}, queue="io"
        )
        for n in range(12)
    ]
    wait_for(
        lambda: (
            sum(1 for r in results if (job := chaos_ledger.job(r.id)) and job.status == "running")
            == 4
        ),
        timeout=30,
        what="four jobs running",
    )

    exit_code = first.stop(signal.SIGTERM, timeout=30)

    assert exit_code == 0, first.log()[-3000:]
    with running_worker(chaos_client, "io", "io-second@test", logs / "second.log", chaos_env):
        jobs = [chaos_ledger.wait_finished(r.id, timeout=60) for r in results]

    assert [job.status for job in jobs] == ["succeeded"] * 12
    assert all(job.outcomes == ["succeeded"] for job in jobs), [j.outcomes for j in jobs]
    workers = {job.history[0].worker for job in jobs}
    assert workers == {"io-first@test", "io-second@test"}


def test_an_io_job_past_its_hard_time_limit_is_redelivered_then_failed_as_poison(
    chaos_client: Celery, chaos_env: dict[str, str], chaos_ledger: LedgerReader, logs: Path
) -> None:
    # gevent pools enforce only the hard limit: the greenlet is killed like a lost worker
    with running_worker(chaos_client, "io", "io-limit@test", logs / "w.log", chaos_env):
        result = chaos_client.send_task(
            "diagnostics.echo", kwargs={"value": 1, "sleep_seconds": 20}, queue="io", time_limit=1
        )

        job = chaos_ledger.wait_finished(result.id, timeout=60)

    assert job.status == "failed"
    assert job.outcomes == ["lost", "lost", "lost"]
    assert job.error is not None
    assert job.error["type"] == "PoisonJobError"


def test_a_cpu_job_past_its_soft_time_limit_follows_the_transient_policy(
    chaos_client: Celery, chaos_env: dict[str, str], chaos_ledger: LedgerReader, logs: Path
) -> None:
    with running_worker(chaos_client, "cpu", "cpu-limit@test", logs / "w.log", chaos_env):
        result = chaos_client.send_task(
            "diagnostics.spin",
            kwargs={"milliseconds": 20000},
            queue="cpu",
            soft_time_limit=1,
            time_limit=10,
        )

        job = chaos_ledger.wait_finished(result.id, timeout=90)

    assert job.status == "failed"
    assert job.outcomes == ["retrying"] * 7 + ["failed"]
    assert {a.error["type"] for a in job.history if a.error} == {"SoftTimeLimitExceeded"}
