"""A gevent worker whose prefetch slots are all taken resumes as soon as one is freed."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.conftest import plain_client
from tests.support.workers import running_worker, worker_environment

CONCURRENCY = 2
JOBS = 12
SLEEP_SECONDS = 0.1


def test_a_full_gevent_worker_takes_the_next_job_when_one_finishes(
    quiet_redis_url: str, quiet_ledger_url: str, tmp_path: Path
) -> None:
    # Every job fills a slot, so the worker is out of credit after each pair it takes.
    # kombu then stops reading its BRPOP and waits in poll until Celery's two-second
    # drain timeout; the acknowledgements that free the slots do not wake it. Six pairs
    # of 0.1 s jobs took 9.5 s that way; resumed at once, 0.7 s.
    env = worker_environment(
        env="test",
        redis_url=quiet_redis_url,
        database_url=quiet_ledger_url,
        storage_dir=str(tmp_path / "blobs"),
        io_concurrency=str(CONCURRENCY),
        log_level="INFO",
    )
    client = plain_client(quiet_redis_url)
    node = f"credit-{time.monotonic_ns()}@test"
    with client, running_worker(client, "io", node, tmp_path / "io.log", env) as worker:
        started = time.monotonic()
        results = [
            client.send_task(
                "diagnostics.echo", kwargs={"value": n, "sleep_seconds": SLEEP_SECONDS}, queue="io"
            )
            for n in range(JOBS)
        ]
        values = [result.get(timeout=60)["value"] for result in results]
        elapsed = time.monotonic() - started

    pairs = JOBS / CONCURRENCY
    print(f"{JOBS} jobs of {SLEEP_SECONDS} s at concurrency {CONCURRENCY}: {elapsed:.2f} s")
    assert values == list(range(JOBS)), worker.log()[-4000:]
    # each pair may take its sleep and a second of overhead; a pause in poll takes two
    assert elapsed < pairs * (SLEEP_SECONDS + 1.0), worker.log()[-4000:]
