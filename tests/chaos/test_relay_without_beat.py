"""No beat, no singleton: the io workers relay the outbox themselves, and two of them never
publish a job twice; beat, when it runs, relays in its own process."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

from tests.support.api_server import API_KEYS, running_api, running_beat
from tests.support.ledger_reads import JobView, LedgerReader
from tests.support.polling import wait_for
from tests.support.workers import start_worker
from workers.broker import queue_keys

DELAY = 3.0


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


JOBS = 200


def test_without_beat_delayed_jobs_run_and_two_relays_publish_each_job_once(
    chaos_env: dict[str, str], chaos_ledger: LedgerReader, tmp_path: Path
) -> None:
    env = {
        **chaos_env,
        "CONVEYOR_API_KEYS": API_KEYS,
        "CONVEYOR_STORAGE_DIR": str(tmp_path),
        "CONVEYOR_RATE_LIMIT": "off",
    }
    workers = [
        start_worker("io", f"io-relay-{n}@test", tmp_path / f"io-{n}.log", env) for n in (1, 2)
    ]
    try:
        with running_api(env, tmp_path / "api.log") as api, api.client() as client:

            def relay_reported() -> dict[str, Any] | None:
                ready = client.get("/readyz").json()
                return ready if ready["checks"].get("relay") == "ok" else None

            wait_for(relay_reported, timeout=90, what="a worker's relay to run")
            assert client.get("/v1/stats").json()["relay"]["status"] == "ok"

            one = client.post(
                "/v1/jobs",
                json={"task": "diagnostics.echo", "args": {"value": 1}, "delay_seconds": DELAY},
            ).json()
            batch = client.post(
                "/v1/jobs/batch",
                json={"jobs": [
                    {"task": "diagnostics.echo", "args": {"value": n}, "delay_seconds": DELAY}
                    for n in range(JOBS)
                ]},
            )  # fmt: skip
            assert batch.status_code == 202, batch.text
            ids = [job["id"] for job in batch.json()["jobs"]]

            def finished(job_id: str) -> JobView | None:
                job = chaos_ledger.job(job_id)
                return job if job is not None and job.status == "succeeded" else None

            wait_for(lambda: finished(one["id"]), timeout=60, what="the delayed job")
            done = client.get(f"/v1/jobs/{one['id']}").json()
            waited = (_when(done["started_at"]) - _when(done["created_at"])).total_seconds()
            print(f"\nno beat: a {DELAY:g} s delayed job started after {waited:.2f} s")
            assert waited >= DELAY
            wait_for(
                lambda: all(finished(job_id) for job_id in ids),
                timeout=120,
                interval=0.5,
                what=f"{JOBS} delayed jobs",
            )
            attempts = [view.attempts for view in map(chaos_ledger.job, ids) if view]
    finally:
        for worker in workers:
            worker.stop()

    assert attempts == [1] * JOBS
    received = re.findall(r"Task diagnostics\.echo\[([0-9a-f-]+)\] received", "".join(
        worker.log() for worker in workers
    ))  # fmt: skip
    duplicates = {job_id for job_id in ids if received.count(job_id) != 1}
    assert not duplicates, f"{len(duplicates)} jobs delivered more than once"


def test_beat_relays_in_its_own_process_and_sends_no_relay_messages(
    chaos_env: dict[str, str], chaos_redis: str, tmp_path: Path
) -> None:
    env = {**chaos_env, "CONVEYOR_API_KEYS": API_KEYS, "CONVEYOR_RATE_LIMIT": "off"}
    broker = redis.Redis.from_url(chaos_redis)

    def io_messages() -> list[bytes | str]:
        return [raw for key in queue_keys("io") for raw in broker.lrange(key, 0, -1)]

    with running_api(env, tmp_path / "api.log") as api, api.client() as client:
        job = client.post(
            "/v1/jobs",
            json={"task": "diagnostics.echo", "args": {"value": 1}, "delay_seconds": 1},
        ).json()
        assert not io_messages()  # no worker and no beat yet: it waits in the ledger
        with running_beat(env, tmp_path / "beat.log"):
            wait_for(io_messages, timeout=60, what="beat to relay the job")
            # several relay runs later, the queue holds the job and nothing else
            wait_for(
                lambda: client.get("/readyz").json()["checks"].get("relay") == "ok",
                timeout=30,
                what="beat's relay runs to be reported",
            )
    messages = [json.loads(raw) for raw in io_messages()]
    broker.close()
    assert [message["headers"]["id"] for message in messages] == [job["id"]]
