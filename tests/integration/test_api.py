"""The producer API end to end: real HTTP into a real server, real Redis, PostgreSQL, workers.

One test per row of the contract's API table, plus idempotency under concurrency, the
outbox relay for delayed jobs, and the request id following a job into the worker's log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.integration.conftest import Stack
from tests.support.api_server import ALICE, BOB, ApiServer, running_api
from tests.support.polling import wait_for
from workers.enqueue import Enqueuer, JobRequest, Submission

FINISHED = ("succeeded", "failed", "cancelled")


def jobs_of(engine: Engine, client_id: str) -> int:
    """How many jobs the ledger holds for ``client_id`` (read directly: /v1/stats is cached)."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM jobs WHERE client_id = :c"), {"c": client_id}
            ).scalar_one()
        )


def finished_job(client: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until the job has finished; the job."""

    def done() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in FINISHED else None

    return wait_for(done, timeout=timeout, interval=0.05, what=f"job {job_id} to finish")


def test_a_job_is_accepted_run_in_its_pool_and_shown_with_its_history(api: ApiServer) -> None:
    with api.client() as client:
        answer = client.post(
            "/v1/jobs",
            json={"task": "diagnostics.echo", "args": {"value": {"n": 1}}},
            headers={"X-Request-ID": "req-contract-1"},
        )
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert answer.headers["Location"] == f"/v1/jobs/{job['id']}"
        assert answer.headers["X-Request-ID"] == "req-contract-1"
        assert job["status"] == "queued"
        assert job["queue"] == "io"
        assert job["request_id"] == "req-contract-1"
        assert job["priority"] == "normal"
        assert set(job) == {
            "id", "task", "queue", "status", "args", "priority", "attempts", "max_attempts",
            "idempotency_key", "request_id", "created_at", "scheduled_for", "started_at",
            "finished_at", "next_retry_at", "result", "error", "schedule",
        }  # fmt: skip
        assert job["created_at"].endswith("Z")

        done = finished_job(client, job["id"])
        assert done["status"] == "succeeded"
        assert done["result"]["value"] == {"n": 1}
        assert done["result"]["pool"] == "gevent"
        assert done["attempts"] == 1
        assert len(done["history"]) == 1
        assert done["history"][0]["status"] == "succeeded"
        assert done["history"][0]["pool"] == "gevent"


def test_a_cpu_job_runs_in_the_prefork_pool(api: ApiServer) -> None:
    with api.client() as client:
        job = client.post(
            "/v1/jobs", json={"task": "diagnostics.spin", "args": {"milliseconds": 20}}
        ).json()
        assert job["queue"] == "cpu"
        done = finished_job(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["result"]["pool"] == "prefork"


def test_the_request_id_follows_the_job_into_the_worker_log(api: ApiServer, stack: Stack) -> None:
    request_id = f"req-follow-{datetime.now(UTC).timestamp()}"
    with api.client() as client:
        job = client.post(
            "/v1/jobs",
            json={"task": "diagnostics.echo", "args": {"value": 1}},
            headers={"X-Request-ID": request_id},
        ).json()
        finished_job(client, job["id"])

    def worker_line() -> dict[str, Any] | None:
        for line in stack.io.log().splitlines():
            if request_id in line and line.startswith("{"):
                entry: dict[str, Any] = json.loads(line)
                if entry.get("request_id") == request_id and entry.get("job_id") == job["id"]:
                    return entry
        return None

    entry = wait_for(worker_line, timeout=10, what="a worker log line with the request id")
    assert entry["task_id"] == job["id"]


def test_the_same_key_and_body_replays_the_job_and_a_different_body_conflicts(
    api: ApiServer,
) -> None:
    body = {"task": "diagnostics.echo", "args": {"value": "once"}, "idempotency_key": "k-1"}
    with api.client() as client:
        first = client.post("/v1/jobs", json=body)
        again = client.post("/v1/jobs", json=body)
        other = client.post("/v1/jobs", json={**body, "args": {"value": "twice"}})
        by_header = client.post(
            "/v1/jobs",
            json={"task": "diagnostics.echo", "args": {"value": "h"}},
            headers={"Idempotency-Key": "k-header"},
        )
        header_again = client.post(
            "/v1/jobs",
            json={"task": "diagnostics.echo", "args": {"value": "h"}},
            headers={"Idempotency-Key": "k-header"},
        )
    with api.client(BOB[1]) as bob:
        bobs = bob.post("/v1/jobs", json=body)

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "conflict"
    assert by_header.status_code == 202
    assert by_header.json()["idempotency_key"] == "k-header"
    assert header_again.status_code == 200
    assert header_again.json()["id"] == by_header.json()["id"]
    # keys belong to a client: bob's k-1 is a job of his own
    assert bobs.status_code == 202
    assert bobs.json()["id"] != first.json()["id"]


def test_twenty_concurrent_identical_requests_make_exactly_one_job(api: ApiServer) -> None:
    body = {
        "task": "diagnostics.echo",
        "args": {"value": "race"},
        "idempotency_key": f"race-{datetime.now(UTC).timestamp()}",
    }

    def post(_: int) -> httpx.Response:
        with api.client() as client:
            return client.post("/v1/jobs", json=body)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(post, range(20)))

    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(202) == 1, statuses
    assert statuses.count(200) == 19, statuses
    assert len({a.json()["id"] for a in answers}) == 1
    with api.client() as client:
        listed = client.get("/v1/jobs", params={"limit": 500}).json()["items"]
    assert [j["idempotency_key"] for j in listed].count(body["idempotency_key"]) == 1


def test_a_batch_is_accepted_whole_and_runs(api: ApiServer) -> None:
    jobs = [{"task": "diagnostics.echo", "args": {"value": i}} for i in range(50)]
    jobs.append({"task": "diagnostics.spin", "args": {"milliseconds": 1}, "priority": "low"})
    with api.client() as client:
        answer = client.post("/v1/jobs/batch", json={"jobs": jobs})
        assert answer.status_code == 202, answer.text
        accepted = answer.json()["jobs"]
        assert [j["args"] for j in accepted[:50]] == [{"value": i} for i in range(50)]
        assert accepted[50]["queue"] == "cpu"
        assert accepted[50]["priority"] == "low"
        results = [finished_job(client, j["id"]) for j in accepted]
    assert {r["status"] for r in results} == {"succeeded"}


def test_one_invalid_item_refuses_the_whole_batch(api: ApiServer, ledger_engine: Engine) -> None:
    jobs = [{"task": "diagnostics.echo", "args": {"value": i}} for i in range(5)]
    jobs[3] = {"task": "diagnostics.echo", "args": {"value": 3, "sleep_seconds": 999}}
    with api.client() as client:
        before = jobs_of(ledger_engine, ALICE[0])
        answer = client.post("/v1/jobs/batch", json={"jobs": jobs})
        after = jobs_of(ledger_engine, ALICE[0])
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"].startswith("jobs[3].args.sleep_seconds")
    assert after == before


def test_a_batch_reusing_a_key_for_another_request_is_refused_whole(
    api: ApiServer, ledger_engine: Engine
) -> None:
    stamp = datetime.now(UTC).timestamp()
    with api.client() as client:
        client.post(
            "/v1/jobs",
            json={
                "task": "diagnostics.echo",
                "args": {"value": 1},
                "idempotency_key": f"b-{stamp}",
            },
        )
        before = jobs_of(ledger_engine, ALICE[0])
        answer = client.post(
            "/v1/jobs/batch",
            json={
                "jobs": [
                    {"task": "diagnostics.echo", "args": {"value": 0}},
                    {
                        "task": "diagnostics.echo",
                        "args": {"value": 2},
                        "idempotency_key": f"b-{stamp}",
                    },
                ]
            },
        )
        after = jobs_of(ledger_engine, ALICE[0])
    assert answer.status_code == 409
    assert answer.json()["error"]["details"] == {"index": 1}
    assert after == before


def test_jobs_are_listed_newest_first_page_by_page(api: ApiServer) -> None:
    task = "diagnostics.sql_sleep"
    with api.client(BOB[1]) as client:
        created = [
            client.post("/v1/jobs", json={"task": task, "args": {"seconds": 0}}).json()["id"]
            for _ in range(5)
        ]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"task": task, "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/v1/jobs", params=params).json()
            seen += [job["id"] for job in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        bad_cursor = client.get("/v1/jobs", params={"cursor": "not-a-cursor"})
        bad_status = client.get("/v1/jobs", params={"status": "sleeping"})
    assert seen[:5] == list(reversed(created))
    assert len(seen) == len(set(seen))
    assert pages >= 3
    assert bad_cursor.status_code == 422
    assert bad_status.status_code == 422


def test_cancel_then_retry_from_the_dead_letter_states(api: ApiServer) -> None:
    with api.client() as client:
        delayed = client.post(
            "/v1/jobs",
            json={"task": "diagnostics.echo", "args": {"value": 1}, "delay_seconds": 600},
        ).json()
        assert delayed["scheduled_for"] is not None

        cancelled = client.post(f"/v1/jobs/{delayed['id']}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        assert client.post(f"/v1/jobs/{delayed['id']}/cancel").status_code == 409

        retried = client.post(f"/v1/jobs/{delayed['id']}/retry")
        assert retried.status_code == 202
        assert retried.json()["status"] == "queued"
        # a replay runs now, whatever the original delay was
        assert finished_job(client, delayed["id"])["status"] == "succeeded"
        assert client.post(f"/v1/jobs/{delayed['id']}/retry").status_code == 409
        assert client.post(f"/v1/jobs/{delayed['id']}/cancel").status_code == 409

        failing = client.post(
            "/v1/jobs", json={"task": "diagnostics.fail", "args": {"error": "permanent"}}
        ).json()
        failed = finished_job(client, failing["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["type"] == "PermanentError"
        assert failed["error"]["error_id"]
        replayed = client.post(f"/v1/jobs/{failing['id']}/retry")
        assert replayed.status_code == 202
        again = finished_job(client, failing["id"])
    # diagnostics.fail fails its first attempt only: the replay's attempt succeeds
    assert again["status"] == "succeeded"
    assert again["attempts"] == 2
    assert [a["status"] for a in again["history"]] == ["failed", "succeeded"]


def test_another_clients_job_is_not_found(api: ApiServer) -> None:
    with api.client() as alice:
        job = alice.post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": 1}}).json()
    with api.client(BOB[1]) as bob:
        for answer in (
            bob.get(f"/v1/jobs/{job['id']}"),
            bob.post(f"/v1/jobs/{job['id']}/cancel"),
            bob.post(f"/v1/jobs/{job['id']}/retry"),
        ):
            assert answer.status_code == 404
            assert answer.json()["error"]["code"] == "not_found"
        assert job["id"] not in [j["id"] for j in bob.get("/v1/jobs").json()["items"]]


def test_the_catalog_lists_every_task_with_its_schema(api: ApiServer) -> None:
    with api.client() as client:
        tasks = {t["name"]: t for t in client.get("/v1/tasks").json()}
    assert tasks["diagnostics.echo"]["queue"] == "io"
    assert tasks["diagnostics.spin"]["queue"] == "cpu"
    assert "milliseconds" in tasks["diagnostics.spin"]["args_schema"]["properties"]
    assert not [name for name in tasks if name.startswith(("celery.", "conveyor."))]


def test_stats_count_the_clients_jobs_and_read_queue_depths(
    api: ApiServer, ledger_engine: Engine
) -> None:
    with api.client(BOB[1]) as client:
        client.post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": 1}})

        def matching() -> dict[str, Any] | None:
            # counts are cached for a second: poll until they include the new job
            body: dict[str, Any] = client.get("/v1/stats").json()
            return body if sum(body["jobs"].values()) == jobs_of(ledger_engine, BOB[0]) else None

        body = wait_for(matching, timeout=10, interval=0.2, what="stats to count every job")
    assert set(body["jobs"]) == {
        "queued", "running", "retrying", "succeeded", "failed", "cancelled",
    }  # fmt: skip
    assert set(body["queues"]) == {"io", "cpu"}
    assert all(isinstance(v, int) and v >= 0 for v in body["queues"].values())


def test_a_blob_goes_in_and_comes_back(api: ApiServer) -> None:
    data = bytes(range(256)) * 4096
    with api.client() as client:
        stored = client.post(
            "/v1/blobs", content=data, headers={"Content-Type": "application/octet-stream"}
        )
        assert stored.status_code == 201, stored.text
        blob = stored.json()
        back = client.get(f"/v1/blobs/{blob['blob']}")
        missing = client.get(f"/v1/blobs/sha256:{'0' * 64}")
        invalid = client.get("/v1/blobs/md5:abc")
    assert blob["size"] == len(data)
    assert back.content == data
    assert missing.status_code == 404
    assert invalid.status_code == 422


def test_probes_metrics_and_the_openapi_document(api: ApiServer) -> None:
    # a counter shows in a multiprocess scrape once it has a sample: enqueue one job first
    with api.client() as owner:
        enqueued = owner.post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": 0}})
        assert enqueued.status_code == 202
    with api.client(secret=None) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert (checks["redis"], checks["database"]) == ("ok", "ok")
    assert set(checks) == {"redis", "database", "relay"}  # the relay's state, reported
    assert "conveyor_jobs_enqueued_total" in metrics
    assert "conveyor_http_requests_total" in metrics
    assert 'conveyor_queue_depth{queue="io"}' in metrics
    ledger_rows = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("conveyor_ledger_jobs{status=")
    ]
    assert sum(ledger_rows) >= 1  # the job just enqueued, at least
    assert {"/v1/jobs", "/v1/jobs/batch", "/v1/jobs/{job_id}", "/v1/blobs"} <= set(spec["paths"])
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


@pytest.mark.usefixtures("beat")
def test_a_delayed_job_waits_in_the_ledger_and_the_relay_publishes_it(api: ApiServer) -> None:
    run_at = datetime.now(UTC) + timedelta(seconds=2)
    with api.client() as client:
        job = client.post(
            "/v1/jobs",
            json={
                "task": "diagnostics.echo",
                "args": {"value": "later"},
                "run_at": run_at.isoformat(),
            },
        ).json()
        assert job["status"] == "queued"
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        done = finished_job(client, job["id"], timeout=30)
    started = datetime.fromisoformat(done["started_at"].replace("Z", "+00:00"))
    assert done["status"] == "succeeded"
    assert started >= run_at


@pytest.mark.usefixtures("beat")
def test_the_relay_publishes_a_job_its_producer_never_published(
    api: ApiServer, ledger_engine: Engine
) -> None:
    """A job row left in the outbox (as by a producer that died after its commit) runs."""

    class DeadPublisher:
        def publish(self, dispatches: object) -> None:
            raise SystemExit("the producer died between commit and publish")

    enqueuer = Enqueuer(ledger_engine, DeadPublisher(), relay_grace=timedelta(seconds=0))  # type: ignore[arg-type]
    job = JobRequest(
        job_id=f"orphan-{datetime.now(UTC).timestamp()}",
        client_id=ALICE[0],
        task="diagnostics.echo",
        queue="io",
        args={"value": "orphan"},
        priority="normal",
        max_attempts=8,
        fingerprint="x",
    )
    with pytest.raises(SystemExit):
        enqueuer.record_and_publish([Submission((job,))])
    with api.client() as client:
        done = finished_job(client, job.job_id, timeout=30)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1


CAROL = ("carol", "carol-secret-key-0123456789")


@pytest.fixture(scope="module")
def limited_api(
    api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API allowing 5 calls a minute, with a client no other server knows."""
    env = {
        **api_env,
        "CONVEYOR_RATE_LIMIT": "5/minute",
        "CONVEYOR_API_KEYS": f"{CAROL[0]}:{CAROL[1]}",
    }
    with running_api(env, tmp_path_factory.mktemp("limited") / "api.log") as server:
        yield server


def test_the_rate_limit_is_exact_at_the_boundary(limited_api: ApiServer) -> None:
    with limited_api.client(CAROL[1]) as client:
        answers = [client.get("/v1/tasks") for _ in range(5)]
        refused = client.post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": 1}})
        health = client.get("/healthz")

    assert [a.status_code for a in answers] == [200] * 5
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0"]
    assert {a.headers["RateLimit-Limit"] for a in answers} == {"5"}
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert health.status_code == 200  # probes are not rate limited


def test_a_published_job_leaves_the_outbox(api: ApiServer, ledger_engine: Engine) -> None:
    with api.client() as client:
        job = client.post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": 1}})
    job_id = job.json()["id"]

    def marked() -> tuple[object, object] | None:
        with ledger_engine.connect() as connection:
            row = connection.execute(
                text("SELECT publish_after, published_at FROM jobs WHERE id = :id"),
                {"id": job_id},
            ).one()
        return (row[0], row[1]) if row[1] is not None else None

    publish_after, published_at = wait_for(marked, timeout=5, what="the job to be marked")
    # marked well inside the relay's grace period, so the relay never publishes it again
    assert publish_after is None
    assert published_at is not None
