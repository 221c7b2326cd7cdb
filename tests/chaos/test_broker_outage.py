"""A Redis outage loses no job: the API records it, the relay publishes it once Redis is back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support.api_server import API_KEYS, running_api, running_beat
from tests.support.polling import wait_for
from tests.support.redis_server import private_redis
from tests.support.workers import start_worker, worker_environment


def test_a_job_enqueued_while_redis_is_down_runs_once_redis_is_back(
    chaos_database: str, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as broker:
        env = worker_environment(
            env="test",
            redis_url=broker.url,
            database_url=chaos_database,
            retry_scale="0.02",
            io_concurrency="4",
            cpu_concurrency="1",
            visibility_timeout="300",
            api_keys=API_KEYS,
            storage_dir=str(tmp_path / "blobs"),
        )
        worker = start_worker("io", "io-outage@test", tmp_path / "io.log", env)
        try:
            with (
                running_beat(env, tmp_path / "beat.log"),
                running_api(env, tmp_path / "api.log") as api,
                api.client() as client,
            ):
                warm = client.post(
                    "/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": 0}}
                )
                assert warm.status_code == 202

                def status(job_id: str) -> str:
                    return str(client.get(f"/v1/jobs/{job_id}").json()["status"])

                wait_for(lambda: status(warm.json()["id"]) == "succeeded", timeout=60,
                         what="the first job to run")  # fmt: skip

                broker.stop()
                started = time.monotonic()
                answer = client.post(
                    "/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": "kept"}}
                )
                took = time.monotonic() - started
                assert answer.status_code == 202, answer.text
                job: dict[str, Any] = answer.json()
                assert job["status"] == "queued"
                assert took < 5, f"the API took {took:.1f} s with Redis down"
                assert client.get("/readyz").status_code == 503

                broker.start()
                wait_for(lambda: status(job["id"]) == "succeeded", timeout=90, interval=0.2,
                         what="the job recorded during the outage to run")  # fmt: skip
                done = client.get(f"/v1/jobs/{job['id']}").json()
            assert done["result"]["value"] == "kept"
            assert done["attempts"] == 1
        finally:
            worker.stop()
