"""A Redis outage loses no job: the API records it, the relay publishes it once Redis is back;
a job whose delivery Celery ends on the connection loss is put back by its own worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from tests.integration.conftest import plain_client
from tests.support.api_server import API_KEYS, running_api, running_beat
from tests.support.ledger_reads import LedgerReader
from tests.support.polling import wait_for
from tests.support.redis_server import PrivateRedis, private_redis
from tests.support.workers import running_worker, start_worker, worker_environment
from workers.ledger.database import create_ledger_engine
from workers.ledger.models import JOBS


def test_a_job_enqueued_while_redis_is_down_runs_once_redis_is_back(
    chaos_database: str, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as broker:
        env = _environment(
            broker, chaos_database, tmp_path, retry_scale="0.02", cpu_concurrency="1",
            api_keys=API_KEYS,
        )  # fmt: skip
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


def test_a_job_whose_delivery_dies_while_its_claim_waits_is_put_back(
    chaos_database: str, chaos_ledger: LedgerReader, tmp_path: Path
) -> None:
    # Celery ends a gevent task whose message it can no longer acknowledge when the broker
    # connection drops. A task ended while its claim waited for the ledger left the attempt
    # the claim then opened under the worker's live lease: no reconciler took it, the message
    # was gone with Redis's data, and the job stayed running for good.
    with private_redis(tmp_path) as broker:
        env = _environment(
            broker, chaos_database, tmp_path, worker_lease_seconds="6", log_level="INFO"
        )
        client = plain_client(broker.url)
        engine = create_ledger_engine(chaos_database, pool_size=2)
        node = f"io-claim-{time.monotonic_ns()}@test"
        try:
            with running_worker(client, "io", node, tmp_path / "io.log", env) as worker:
                with engine.connect() as blocker:
                    # holds every claim of the jobs table until rolled back
                    blocker.exec_driver_sql(f"LOCK TABLE {JOBS.name} IN SHARE ROW EXCLUSIVE MODE")
                    job_id = client.send_task(
                        "diagnostics.echo", kwargs={"value": "kept"}, queue="io"
                    ).id
                    wait_for(lambda: _claims_waiting_on_a_lock(engine), timeout=30,
                             what="the claim to wait for the table lock")  # fmt: skip
                    broker.kill()
                    wait_for(lambda: "cannot be acknowledged after a connection loss"
                             in worker.log(), timeout=30,
                             what="Celery to end the task on the connection loss")  # fmt: skip
                    blocker.rollback()
                broker.start()  # without its data: the message is gone
                job = chaos_ledger.wait_finished(job_id, timeout=60)
        finally:
            client.close()
            engine.dispose()

    assert job.status == "succeeded", worker.log()[-4000:]
    assert job.outcomes == ["lost", "succeeded"]


def _environment(
    broker: PrivateRedis, database_url: str, tmp_path: Path, **settings: str
) -> dict[str, str]:
    return worker_environment(
        env="test",
        redis_url=broker.url,
        database_url=database_url,
        io_concurrency="4",
        visibility_timeout="300",
        storage_dir=str(tmp_path / "blobs"),
        **settings,
    )


def _claims_waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        waiting = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%jsonb_to_recordset%%'"
        ).scalar()
    return bool(waiting)
