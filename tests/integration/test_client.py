"""The Python client (``api_shim.client``) against a real API in front of real workers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC

import httpx
import pytest

from api_shim.client import (
    CHUNK_SIZE,
    USER_AGENT,
    AsyncConveyorClient,
    ConflictError,
    ConveyorClient,
    ConveyorConnectionError,
    JobSpec,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
    UnknownTaskError,
    ValidationError,
    WaitTimeoutError,
)
from tests.support.api_server import ALICE, BOB, ApiServer, running_api

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

ECHO = "diagnostics.echo"
DELAYED = 300  # seconds: a job that stays queued for the whole test


@dataclass
class Exchange:
    """One request the client sent, and what came back."""

    method: str
    path: str
    sent_at: float
    status: int | None = None
    answered_at: float | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


class RecordingTransport(httpx.BaseTransport):
    """The real HTTP transport, recording every exchange; it can fail the next requests."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.exchanges: list[Exchange] = []
        self.failures: list[httpx.TransportError] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        exchange = Exchange(request.method, request.url.path, time.monotonic())
        exchange.headers = dict(request.headers)
        with self._lock:
            self.exchanges.append(exchange)
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure
        response = self._inner.handle_request(request)
        exchange.status = response.status_code
        exchange.answered_at = time.monotonic()
        if "retry-after" in response.headers:
            exchange.retry_after = float(response.headers["retry-after"])
        return response

    def close(self) -> None:
        self._inner.close()

    def statuses(self) -> list[int | None]:
        return [exchange.status for exchange in self.exchanges]


@pytest.fixture
def alice(api: ApiServer) -> Iterator[ConveyorClient]:
    with ConveyorClient(api.base_url, ALICE[1]) as client:
        yield client


@pytest.fixture
def bob(api: ApiServer) -> Iterator[ConveyorClient]:
    with ConveyorClient(api.base_url, BOB[1]) as client:
        yield client


@pytest.fixture
def recorded(api: ApiServer) -> Iterator[tuple[ConveyorClient, RecordingTransport]]:
    transport = RecordingTransport()
    with ConveyorClient(api.base_url, ALICE[1], transport=transport) as client:
        yield client, transport


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- jobs


def test_enqueue_then_wait_returns_the_echo_from_the_gevent_pool(alice: ConveyorClient) -> None:
    value = {"n": unique("echo"), "list": [1, 2.5, None, "é"]}
    request_id = unique("req")

    job = alice.enqueue(ECHO, {"value": value}, request_id=request_id)

    assert (job.task, job.queue, job.replayed) == (ECHO, "io", False)
    assert job.status in ("queued", "running", "succeeded")
    assert job.request_id == request_id
    assert job.created_at.tzinfo is not None
    done = alice.wait(job.id, timeout=60)
    assert done.id == job.id
    assert done.status == "succeeded", done
    assert done.result["value"] == value
    assert done.result["pool"] == "gevent"
    assert done.history is not None
    assert len(done.history) == 1
    (attempt,) = done.history
    assert (attempt.number, attempt.status, attempt.pool) == (1, "succeeded", "gevent")
    assert done.finished_at is not None
    assert done.finished_at.tzinfo is UTC
    assert done.finished_at >= attempt.started_at >= done.created_at


def test_enqueue_many_accepts_specs_and_dicts_in_order(alice: ConveyorClient) -> None:
    values = [unique("batch") for _ in range(5)]
    specs: list[JobSpec | dict[str, object]] = [JobSpec(ECHO, {"value": v}) for v in values[:3]]
    specs += [{"task": ECHO, "args": {"value": v}, "priority": "high"} for v in values[3:]]

    jobs = alice.enqueue_many(specs)

    assert [job.args["value"] for job in jobs] == values
    assert len({job.id for job in jobs}) == 5
    assert [job.priority for job in jobs] == ["normal"] * 3 + ["high"] * 2
    finished = [alice.wait(job, timeout=60) for job in jobs]
    assert [job.status for job in finished] == ["succeeded"] * 5
    assert [job.result["value"] for job in finished] == values


def test_same_idempotency_key_replays_and_a_different_body_conflicts(
    recorded: tuple[ConveyorClient, RecordingTransport],
) -> None:
    client, transport = recorded
    key = unique("key")

    first = client.enqueue(ECHO, {"value": 1}, idempotency_key=key, delay_seconds=DELAYED)
    again = client.enqueue(ECHO, {"value": 1}, idempotency_key=key, delay_seconds=DELAYED)

    assert not first.replayed
    assert again.replayed
    assert again.id == first.id
    assert again.idempotency_key == key
    with pytest.raises(ConflictError) as conflict:
        client.enqueue(ECHO, {"value": 2}, idempotency_key=key, delay_seconds=DELAYED)
    error = conflict.value
    assert (error.status, error.code) == (409, "conflict")
    assert error.error_id is not None
    assert error.error_id.startswith("err_")
    assert key in error.message
    assert transport.statuses() == [202, 200, 409]  # a 409 is never retried
    client.cancel(first)


@pytest.mark.parametrize("task", ["celery.backend_cleanup", "nope"])
def test_unknown_task_is_a_validation_error_and_not_retried(
    recorded: tuple[ConveyorClient, RecordingTransport], task: str
) -> None:
    client, transport = recorded

    with pytest.raises(UnknownTaskError) as refused:
        client.enqueue(task, {})

    error = refused.value
    assert isinstance(error, ValidationError)
    assert (error.status, error.code) == (422, "unknown_task")
    assert error.details == [{"loc": "task", "msg": f"unknown task {task!r}"}]
    assert transport.statuses() == [422]


def test_validation_error_names_the_argument(alice: ConveyorClient) -> None:
    request_id = unique("req")

    with pytest.raises(ValidationError) as refused:
        alice.enqueue(ECHO, {"value": 1, "sleep_seconds": 61}, request_id=request_id)

    error = refused.value
    assert not isinstance(error, UnknownTaskError)
    assert (error.status, error.code) == (422, "validation_error")
    assert "args.sleep_seconds" in [detail["loc"] for detail in error.details]
    assert error.request_id == request_id
    assert "args.sleep_seconds" in str(error)


def test_another_clients_job_is_not_found(alice: ConveyorClient, bob: ConveyorClient) -> None:
    job = alice.enqueue(ECHO, {"value": "mine"}, delay_seconds=DELAYED)
    request_id = unique("req")

    with pytest.raises(NotFoundError) as hidden:
        bob.get(job.id, request_id=request_id)
    with pytest.raises(NotFoundError):
        bob.cancel(job.id)

    assert (hidden.value.status, hidden.value.code) == (404, "not_found")
    assert hidden.value.request_id == request_id
    assert alice.get(job.id).status == "queued"  # bob's cancel did nothing
    alice.cancel(job.id)


def test_a_bad_key_is_unauthorized(api: ApiServer) -> None:
    with (
        ConveyorClient(api.base_url, "not-a-key") as client,
        pytest.raises(UnauthorizedError) as refused,
    ):
        client.stats()

    assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    assert ALICE[1] not in str(refused.value)


def test_cancel_a_delayed_job_then_retry_it(alice: ConveyorClient) -> None:
    job = alice.enqueue(ECHO, {"value": "later"}, delay_seconds=DELAYED)
    assert job.status == "queued"
    assert job.scheduled_for is not None
    assert (job.scheduled_for - job.created_at).total_seconds() == pytest.approx(DELAYED, abs=5)

    cancelled = alice.cancel(job.id)
    assert (cancelled.id, cancelled.status) == (job.id, "cancelled")
    assert cancelled.finished_at is not None
    with pytest.raises(ConflictError):
        alice.cancel(job.id)

    requeued = alice.retry(job.id)
    assert (requeued.id, requeued.status) == (job.id, "queued")
    assert requeued.finished_at is None
    with pytest.raises(ConflictError):  # queued, or already run again: not retryable
        alice.retry(job.id)


def test_wait_times_out_with_the_last_state_seen(alice: ConveyorClient) -> None:
    job = alice.enqueue(ECHO, {"value": "slow"}, delay_seconds=DELAYED)
    started = time.monotonic()

    with pytest.raises(WaitTimeoutError) as timed_out:
        alice.wait(job.id, timeout=0.5, poll_interval=0.05, max_interval=0.2)

    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5
    assert timed_out.value.job.id == job.id
    assert timed_out.value.job.status == "queued"
    assert timed_out.value.job.history == ()
    assert timed_out.value.code == "wait_timeout"
    alice.cancel(job.id)


def test_list_follows_cursors_across_pages(
    recorded: tuple[ConveyorClient, RecordingTransport],
) -> None:
    client, transport = recorded
    created = client.enqueue_many([JobSpec(ECHO, {"value": unique("page")}) for _ in range(5)])
    wanted = {job.id for job in created}

    seen = list(client.list(task=ECHO, limit=2))

    ids = [job.id for job in seen]
    assert wanted <= set(ids)
    assert len(ids) == len(set(ids))  # no job on two pages
    assert all(job.task == ECHO for job in seen)
    times = [job.created_at for job in seen]
    assert times == sorted(times, reverse=True)  # newest first
    pages = [e for e in transport.exchanges if e.method == "GET" and e.path == "/v1/jobs"]
    assert len(pages) >= 3
    assert all(e.status == 200 for e in pages)


def test_tasks_and_stats(alice: ConveyorClient) -> None:
    catalog = {task.name: task for task in alice.tasks()}
    stats = alice.stats()

    assert catalog[ECHO].queue == "io"
    assert "sleep_seconds" in catalog[ECHO].args_schema["properties"]
    assert "celery.backend_cleanup" not in catalog
    assert set(stats.queues) == {"io", "cpu"}
    assert {"queued", "succeeded", "cancelled", "failed"} <= set(stats.jobs)


def test_requests_carry_the_user_agent_and_request_id(
    recorded: tuple[ConveyorClient, RecordingTransport],
) -> None:
    client, transport = recorded

    client.stats(request_id="trace-123")

    (exchange,) = transport.exchanges
    assert exchange.headers["user-agent"] == USER_AGENT
    assert USER_AGENT.startswith("conveyor-client/")
    assert exchange.headers["x-request-id"] == "trace-123"


# --------------------------------------------------------------------------- blobs


class TrackingReader(io.BytesIO):
    """A file that records how much each ``read`` asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requests: list[int | None] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.requests.append(size)
        return super().read(size)


def test_blob_round_trip_streams_both_ways(alice: ConveyorClient) -> None:
    rng = random.Random(7)
    digest = hashlib.sha256()
    total = 3 * 1024 * 1024
    chunk_size = 64 * 1024

    def chunks() -> Iterator[bytes]:
        for _ in range(total // chunk_size):
            chunk = rng.randbytes(chunk_size)
            digest.update(chunk)
            yield chunk

    blob = alice.upload_blob(chunks())

    assert blob.size == total
    assert blob.id == f"sha256:{digest.hexdigest()}"
    back = hashlib.sha256()
    received = 0
    with alice.download_blob(blob) as stream:
        assert stream.size == total
        for chunk in stream:
            back.update(chunk)
            received += len(chunk)
    assert received == total
    assert back.hexdigest() == digest.hexdigest()


def test_blob_upload_from_a_file_reads_it_in_chunks(alice: ConveyorClient) -> None:
    data = random.Random(11).randbytes(CHUNK_SIZE * 5 + 123)
    file = TrackingReader(data)

    blob = alice.upload_blob(file)

    assert (blob.id, blob.size) == (f"sha256:{hashlib.sha256(data).hexdigest()}", len(data))
    assert file.requests
    assert all(size is not None and 0 < size <= CHUNK_SIZE for size in file.requests)
    assert b"".join(alice.download_blob(blob.id)) == data  # exhausted: the stream closes itself


def test_missing_blob_is_not_found(alice: ConveyorClient) -> None:
    with pytest.raises(NotFoundError):
        alice.download_blob("sha256:" + "0" * 64)


# --------------------------------------------------------------------------- retries


def test_lost_connections_are_retried_only_when_that_is_safe(
    recorded: tuple[ConveyorClient, RecordingTransport],
) -> None:
    client, transport = recorded

    # a GET is idempotent: a reset connection is retried
    transport.failures.append(httpx.ReadError("connection reset"))
    assert client.stats().queues
    assert [e.path for e in transport.exchanges] == ["/v1/stats"] * 2

    # a POST without an idempotency key may have been recorded: not retried
    transport.exchanges.clear()
    transport.failures.append(httpx.ReadError("connection reset"))
    with pytest.raises(ConveyorConnectionError) as lost:
        client.enqueue(ECHO, {"value": 1}, delay_seconds=DELAYED, request_id="lost-1")
    assert lost.value.status is None
    assert lost.value.request_id == "lost-1"
    assert isinstance(lost.value.__cause__, httpx.ReadError)
    assert len(transport.exchanges) == 1

    # ... unless the connection never opened: nothing can have been recorded
    transport.exchanges.clear()
    transport.failures.append(httpx.ConnectError("refused"))
    job = client.enqueue(ECHO, {"value": 1}, delay_seconds=DELAYED)
    assert len(transport.exchanges) == 2
    client.cancel(job)

    # with an idempotency key the POST replays safely
    transport.exchanges.clear()
    transport.failures.append(httpx.ReadError("connection reset"))
    keyed = client.enqueue(ECHO, {"value": 1}, idempotency_key=unique("k"), delay_seconds=DELAYED)
    assert len(transport.exchanges) == 2
    client.cancel(keyed)


@pytest.fixture(scope="module")
def limited_api(
    api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """A second API whose clients may make 3 calls a second."""
    log_path = tmp_path_factory.mktemp("limited-api-logs") / "api.log"
    with running_api({**api_env, "CONVEYOR_RATE_LIMIT": "3/second"}, log_path) as server:
        yield server


def test_rate_limited_without_retries_raises_with_retry_after(limited_api: ApiServer) -> None:
    with ConveyorClient(limited_api.base_url, ALICE[1], max_retries=0) as client:
        deadline = time.monotonic() + 10
        with pytest.raises(RateLimitedError) as limited:  # noqa: PT012 - a burst until refused
            while time.monotonic() < deadline:
                client.stats()

    error = limited.value
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.retry_after is not None
    assert error.retry_after >= 1
    assert error.error_id is not None
    assert error.request_id


def test_rate_limited_calls_are_retried_after_retry_after(limited_api: ApiServer) -> None:
    transport = RecordingTransport()
    with ConveyorClient(limited_api.base_url, BOB[1], max_retries=3, transport=transport) as client:
        started = time.monotonic()
        jobs = [
            client.enqueue(ECHO, {"value": n}, delay_seconds=DELAYED, request_id=f"burst-{n}")
            for n in range(6)
        ]
        elapsed = time.monotonic() - started
        for job in jobs:
            client.cancel(job)

    assert len({job.id for job in jobs}) == 6
    assert [job.request_id for job in jobs] == [f"burst-{n}" for n in range(6)]
    assert elapsed >= 0.95
    statuses = transport.statuses()
    assert 429 in statuses
    assert set(statuses) <= {202, 200, 429}
    for refused, following in zip(transport.exchanges, transport.exchanges[1:], strict=False):
        if refused.status == 429:
            assert refused.retry_after is not None
            assert refused.answered_at is not None
            assert 1 <= refused.retry_after <= 30
            # the retry waited the whole Retry-After (less a little clock slack)
            assert following.sent_at - refused.answered_at >= refused.retry_after - 0.05
            assert following.headers.get("x-request-id") == refused.headers.get("x-request-id")


# --------------------------------------------------------------------------- async


def test_async_client_enqueues_waits_lists_and_streams(api: ApiServer) -> None:
    async def scenario() -> None:
        async with AsyncConveyorClient(api.base_url, ALICE[1]) as client:
            value = unique("async")
            job = await client.enqueue(ECHO, {"value": value})
            done = await client.wait(job.id, timeout=60)
            assert done.status == "succeeded", done
            assert done.result["value"] == value
            assert done.history is not None
            assert [a.pool for a in done.history] == ["gevent"]

            found = False
            async with aclosing(client.iter_jobs(task=ECHO, limit=2)) as jobs:
                async for listed in jobs:
                    if listed.id == job.id:
                        found = True
                        break
            assert found

            data = random.Random(3).randbytes(300_000)

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(data), 50_000):
                    yield data[start : start + 50_000]

            blob = await client.upload_blob(chunks())
            assert blob.size == len(data)
            async with await client.download_blob(blob) as stream:
                back = b"".join([chunk async for chunk in stream])
            assert back == data

            with pytest.raises(UnknownTaskError):
                await client.enqueue("nope")

    asyncio.run(scenario())
