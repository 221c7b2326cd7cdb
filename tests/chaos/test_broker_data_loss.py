"""Redis losing its data loses no job: the ledger knows which jobs wait, and the workers
publish again the ones whose messages are gone, each once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.support.api_server import API_KEYS, running_api
from tests.support.ledger_reads import LedgerReader
from tests.support.polling import wait_for
from tests.support.workers import running_worker

JOBS = 300


@pytest.mark.timeout(300)
def test_a_flushed_broker_loses_no_job_and_runs_none_twice(
    chaos_env: dict[str, str], chaos_client: Celery, chaos_ledger: LedgerReader, tmp_path: Path
) -> None:
    env = {
        **chaos_env,
        "CONVEYOR_API_KEYS": API_KEYS,
        "CONVEYOR_RATE_LIMIT": "off",
        "CONVEYOR_IO_CONCURRENCY": "50",
    }
    broker = redis.Redis.from_url(env["CONVEYOR_REDIS_URL"])
    with running_api(env, tmp_path / "api.log") as api, api.client() as client:
        # no worker yet: the jobs are recorded, published, and waiting in Redis
        answer = client.post(
            "/v1/jobs/batch",
            json={"jobs": [
                {"task": "diagnostics.echo", "args": {"value": n}} for n in range(JOBS)
            ]},
        )  # fmt: skip
        assert answer.status_code == 202, answer.text
        ids = [job["id"] for job in answer.json()["jobs"]]
        wait_for(lambda: broker.llen("io\x06\x163") == JOBS, timeout=30, what="the messages")
        broker.flushdb()  # the broker loses everything it had
        flushed = time.monotonic()

        with running_worker(chaos_client, "io", "io-loss@test", tmp_path / "io.log", env) as io:

            def all_done() -> bool:
                return all(
                    (job := chaos_ledger.job(job_id)) is not None and job.status == "succeeded"
                    for job_id in ids
                )

            wait_for(all_done, timeout=150, interval=1.0, what=f"{JOBS} lost jobs to run")
            took = time.monotonic() - flushed
            log = io.log()

    print(f"\nbroker flushed with {JOBS} jobs waiting: all finished {took:.0f} s later")
    assert took <= 90 + 30  # the target is 90 s; slack for the worker's start here
    assert [view.attempts for view in map(chaos_ledger.job, ids) if view] == [1] * JOBS
    assert log.count("Task diagnostics.echo[") >= JOBS
    for job_id in ids:
        assert log.count(f"Task diagnostics.echo[{job_id}] received") == 1, job_id
