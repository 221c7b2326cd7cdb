"""The producer API's error list, black box over real HTTP against real uvicorn processes.

Every refusal is checked the way a client and an operator meet it: the status, the error
model's ``code``, an ``error_id`` that is also in the server's log line of that refusal, and
no traceback in any body. What a refused request must not do (record or publish a job) is
checked in the ledger itself and through ``GET /v1/stats``.
"""

from __future__ import annotations

import base64
import json
import math
import re
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from sqlalchemy import Engine, func, select

from tests.support.api_server import ALICE, BOB, DORA, ApiServer, running_api
from tests.support.polling import wait_for
from tests.support.processes import free_port
from workers.broker import depth_keys
from workers.ledger.models import Job

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

SMALL_LIMIT = 4096
JSON_HEADERS = {"Content-Type": "application/json"}
ECHO_PREFIX = b'{"task":"diagnostics.echo","args":{"value":"'
ECHO_SUFFIX = b'"}}'


# --------------------------------------------------------------------------------------------
# servers and clients


@pytest.fixture(scope="module")
def small_api(
    api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API whose body limit is 4 KiB, so the boundary is cheap to reach."""
    log = tmp_path_factory.mktemp("small-api") / "api.log"
    env = {**api_env, "CONVEYOR_MAX_BODY_BYTES": str(SMALL_LIMIT)}
    with running_api(env, log) as server:
        yield server


@pytest.fixture(scope="module")
def ledgerless_api(
    api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API whose ledger database is a port where nothing listens; Redis is the real one."""
    log = tmp_path_factory.mktemp("ledgerless-api") / "api.log"
    database = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/conveyor_absent"
    with running_api({**api_env, "CONVEYOR_DATABASE_URL": database}, log) as server:
        yield server


@pytest.fixture
def alice(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client(ALICE[1]) as client:
        yield client


@pytest.fixture
def bob(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client(BOB[1]) as client:
        yield client


@pytest.fixture
def anonymous(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client(None) as client:
        yield client


# --------------------------------------------------------------------------------------------
# helpers


def log_entry(server: ApiServer, error_id: str, timeout: float = 10) -> dict[str, Any]:
    """The JSON log line that carries ``error_id`` (the log is written asynchronously)."""

    def find() -> dict[str, Any] | None:
        for line in server.log().splitlines():
            if error_id not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("error_id") == error_id:
                return entry
        return None

    return wait_for(find, timeout=timeout, interval=0.05, what=f"{error_id} in the API log")


def assert_error(
    response: httpx.Response, status: int, code: str, server: ApiServer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The response is the contract's error model; its error and its log line."""
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["error_id"], str) and error["error_id"]
    assert response.headers.get("x-request-id")
    entry = log_entry(server, error["error_id"])
    assert entry["status"] == status, entry
    assert entry["code"] == code, entry
    assert entry["request_id"] == response.headers["x-request-id"], entry
    if status < 500:
        assert "traceback" not in entry, entry
    return error, entry


def described(response: httpx.Response, server: ApiServer) -> str:
    """The answer for an assertion message; for a 5xx, with its log line's exception."""
    text = f"{response.status_code} {response.text[:500]}"
    if response.status_code >= 500:
        try:
            error_id = response.json()["error"]["error_id"]
            entry = log_entry(server, error_id, timeout=5)
        except (ValueError, KeyError, TypeError, AssertionError):
            return text
        raised = [
            line
            for line in entry.get("traceback", "").splitlines()
            if re.match(r"[\w.]+(Error|Exception)\b", line)
        ][-1:]
        text += f"\n  server log: {entry['level']} {entry['message']!r} raised {raised}"
    return text


def locations(error: dict[str, Any]) -> list[str]:
    """The ``loc`` of every entry of ``details`` (a list of them, or none)."""
    details = error.get("details")
    if not isinstance(details, list):
        return []
    return [item["loc"] for item in details if isinstance(item, dict) and "loc" in item]


def ledger_count(engine: Engine, client_id: str = ALICE[0]) -> int:
    """How many jobs the ledger holds for ``client_id``, read directly (no cache)."""
    with engine.connect() as connection:
        query = select(func.count()).select_from(Job).where(Job.client_id == client_id)
        return int(connection.execute(query).scalar_one())


def stats_total(client: httpx.Client) -> int:
    """The calling client's jobs over every status, as ``GET /v1/stats`` reports them."""
    response = client.get("/v1/stats")
    assert response.status_code == 200, response.text
    return sum(response.json()["jobs"].values())


def assert_nothing_recorded(client: httpx.Client, engine: Engine, before: int) -> None:
    """No job was added to the ledger, and the API's stats (cached ≤ 1 s) agree."""
    assert ledger_count(engine) == before
    wait_for(
        lambda: stats_total(client) == before,
        timeout=5,
        interval=0.2,
        what=f"/v1/stats to report {before} jobs",
    )


def queued_messages_naming(redis_url: str, text: str) -> list[bytes]:
    """Messages waiting in any broker list (every queue, every priority) that mention ``text``."""
    client = redis.Redis.from_url(redis_url)
    try:
        found: list[bytes] = []
        for _queue, key in depth_keys():
            messages: list[bytes] = client.lrange(key, 0, -1)  # type: ignore[assignment]
            found.extend(m for m in messages if text.encode() in m)
        return found
    finally:
        client.close()


def echo_body(size: int) -> bytes:
    """A valid ``diagnostics.echo`` job of exactly ``size`` bytes."""
    padding = size - len(ECHO_PREFIX) - len(ECHO_SUFFIX)
    body = ECHO_PREFIX + b"x" * padding + ECHO_SUFFIX
    assert len(body) == size
    return body


def post_raw(client: httpx.Client, body: bytes, path: str = "/v1/jobs") -> httpx.Response:
    return client.post(path, content=body, headers=JSON_HEADERS)


# --------------------------------------------------------------------------------------------
# 413 and 415


def test_body_exactly_at_the_limit_is_read(small_api: ApiServer) -> None:
    with small_api.client() as client:
        response = post_raw(client, echo_body(SMALL_LIMIT))
    assert response.status_code in (202, 422), response.text
    assert "Traceback" not in response.text


def test_body_one_byte_over_the_limit_is_413(small_api: ApiServer) -> None:
    with small_api.client() as client:
        response = post_raw(client, echo_body(SMALL_LIMIT + 1))
    error, entry = assert_error(response, 413, "payload_too_large", small_api)
    assert error["details"] == {"max_bytes": SMALL_LIMIT}
    assert entry["level"] == "INFO"


def test_chunked_body_over_the_limit_is_413(small_api: ApiServer) -> None:
    chunks = [ECHO_PREFIX, b"x" * 2000, b"x" * 2000, b"x" * 2000, ECHO_SUFFIX]

    def stream() -> Iterator[bytes]:
        yield from chunks

    with small_api.client() as client:
        response = client.post("/v1/jobs", content=stream(), headers=JSON_HEADERS)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large", small_api)


def test_chunked_body_exactly_at_the_limit_is_read(small_api: ApiServer) -> None:
    body = echo_body(SMALL_LIMIT)

    def stream() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    with small_api.client() as client:
        response = client.post("/v1/jobs", content=stream(), headers=JSON_HEADERS)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code in (202, 422), response.text


def test_text_plain_is_415(api: ApiServer, alice: httpx.Client) -> None:
    response = alice.post(
        "/v1/jobs",
        content=b'{"task":"diagnostics.echo","args":{"value":1}}',
        headers={"Content-Type": "text/plain"},
    )
    error, _ = assert_error(response, 415, "unsupported_media_type", api)
    assert "text/plain" in error["message"]


# --------------------------------------------------------------------------------------------
# 422: bodies the system cannot store or that are not a job

ECHO = b'{"task":"diagnostics.echo","args":{"value":%s}}'

INVALID_BODIES = [
    pytest.param(ECHO % b'"a\\u0000b"', "$.args.value", id="nul-character"),
    pytest.param(ECHO % b'"\\ud800"', "$.args.value", id="lone-surrogate"),
    pytest.param(ECHO % b"NaN", "$.args.value", id="nan"),
    pytest.param(ECHO % b"Infinity", "$.args.value", id="infinity"),
    pytest.param(ECHO % b"-Infinity", "$.args.value", id="minus-infinity"),
    pytest.param(ECHO % (b"9" * 5000), "$.args.value", id="5000-digit-integer"),
    # the document's own object and args are two levels: 38 arrays make it 40 deep
    pytest.param(ECHO % (b"[" * 38 + b"]" * 38), "$", id="nesting-depth-40"),
    pytest.param(b'{"task": "diagnostics.echo", "args": {', "$", id="invalid-json"),
    pytest.param(b"", "$", id="empty-body"),
    pytest.param(b'[{"task":"diagnostics.echo","args":{"value":1}}]', "body", id="json-array"),
    pytest.param(
        b'{"task":"diagnostics.echo","args":{},"colour":"red"}', "colour", id="unknown-field"
    ),
    pytest.param(
        b'{"task":"diagnostics.echo","args":{"value":1},"priority":"urgent"}',
        "priority",
        id="priority-urgent",
    ),
    pytest.param(
        b'{"task":"diagnostics.echo","args":{"value":1},"delay_seconds":5,'
        b'"run_at":"2030-01-01T00:00:00Z"}',
        "body",
        id="delay-and-run-at",
    ),
    pytest.param(
        b'{"task":"diagnostics.echo","args":{"value":1},"run_at":"2030-01-01T00:00:00"}',
        "run_at",
        id="run-at-without-timezone",
    ),
    pytest.param(
        b'{"task":"diagnostics.echo","args":{"value":1},"delay_seconds":-1}',
        "delay_seconds",
        id="negative-delay",
    ),
    pytest.param(b'{"task":"diagnostics.echo","args":{}}', "args.value", id="missing-task-arg"),
]


@pytest.mark.parametrize(("body", "where"), INVALID_BODIES)
def test_invalid_job_body_is_422_naming_the_field(
    api: ApiServer, alice: httpx.Client, ledger_engine: Engine, body: bytes, where: str
) -> None:
    before = ledger_count(ledger_engine)
    response = post_raw(alice, body)
    error, entry = assert_error(response, 422, "validation_error", api)
    assert where in error["message"], error
    if error.get("details") is not None:
        assert where in locations(error), error
    assert entry["level"] == "INFO"
    assert ledger_count(ledger_engine) == before


@pytest.mark.parametrize("task", ["celery.chord", "conveyor.relay_outbox", "nope"])
def test_unknown_task_is_422_and_reaches_nothing(
    api: ApiServer, alice: httpx.Client, ledger_engine: Engine, redis_url: str, task: str
) -> None:
    before = ledger_count(ledger_engine)
    response = alice.post("/v1/jobs", json={"task": task, "args": {}})
    error, entry = assert_error(response, 422, "unknown_task", api)
    assert task in error["message"]
    assert locations(error) == ["task"]
    assert entry["level"] == "INFO"
    assert_nothing_recorded(alice, ledger_engine, before)
    assert queued_messages_naming(redis_url, task) == []


# --------------------------------------------------------------------------------------------
# 401


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Basic x", id="basic-scheme"),
        pytest.param("Bearer", id="bearer-without-key"),
        pytest.param(f"Bearer wrong-key-{uuid.uuid4().hex}", id="wrong-key"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/jobs"), ("POST", "/v1/jobs")])
def test_refused_credentials_are_401_security_events(
    api: ApiServer, anonymous: httpx.Client, authorization: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = anonymous.request(
        method, path, headers=headers, json={"task": "diagnostics.echo", "args": {"value": 1}}
    )
    _, entry = assert_error(response, 401, "unauthorized", api)
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert entry["level"] == "WARNING"
    assert entry["security_event"] is True
    assert entry["source"]
    assert entry.get("client_id") is None
    if authorization and authorization.startswith("Bearer wrong-key-"):
        key = authorization.removeprefix("Bearer ")
        assert key not in api.log()


# --------------------------------------------------------------------------------------------
# 404


@pytest.fixture
def alices_job(alice: httpx.Client) -> dict[str, Any]:
    response = alice.post("/v1/jobs", json={"task": "diagnostics.echo", "args": {"value": "mine"}})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("POST", "/cancel"), ("POST", "/retry")]
)
def test_another_clients_job_is_404_security_event(  # noqa: PLR0917 - pytest passes these by name
    api: ApiServer,
    alice: httpx.Client,
    bob: httpx.Client,
    alices_job: dict[str, Any],
    method: str,
    suffix: str,
) -> None:
    job_id = alices_job["id"]
    response = bob.request(method, f"/v1/jobs/{job_id}{suffix}")
    _, entry = assert_error(response, 404, "not_found", api)
    assert entry["level"] == "WARNING"
    assert entry["security_event"] is True
    assert entry["client_id"] == BOB[0]
    assert entry["source"]
    assert BOB[1] not in api.log()
    # bob changed nothing
    mine = alice.get(f"/v1/jobs/{job_id}")
    assert mine.status_code == 200
    assert mine.json()["status"] != "cancelled"


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("POST", "/cancel"), ("POST", "/retry")]
)
def test_unknown_job_is_404(api: ApiServer, alice: httpx.Client, method: str, suffix: str) -> None:
    response = alice.request(method, f"/v1/jobs/{uuid.uuid4()}{suffix}")
    _, entry = assert_error(response, 404, "not_found", api)
    assert entry["level"] == "INFO"
    assert not entry.get("security_event")


@pytest.mark.parametrize("path", ["/v1/nothing-here", "/nothing-here"])
def test_unknown_path_is_404_error_model(api: ApiServer, alice: httpx.Client, path: str) -> None:
    assert_error(alice.get(path), 404, "not_found", api)


# --------------------------------------------------------------------------------------------
# batches


def echo_job(value: object) -> dict[str, Any]:
    return {"task": "diagnostics.echo", "args": {"value": value}}


def test_batch_of_1001_is_422(api: ApiServer, alice: httpx.Client, ledger_engine: Engine) -> None:
    before = ledger_count(ledger_engine)
    response = alice.post("/v1/jobs/batch", json={"jobs": [echo_job(i) for i in range(1001)]})
    error, _ = assert_error(response, 422, "validation_error", api)
    assert "jobs" in locations(error), error
    assert_nothing_recorded(alice, ledger_engine, before)


@pytest.mark.parametrize(
    ("item", "code", "where"),
    [
        pytest.param(
            {"task": "diagnostics.echo", "args": {"value": 7, "colour": "red"}},
            "validation_error",
            "jobs[7].args.colour",
            id="bad-args",
        ),
        pytest.param(
            {"task": "diagnostics.echo", "args": {"value": 7}, "priority": "urgent"},
            "validation_error",
            "jobs[7].priority",
            id="bad-priority",
        ),
        pytest.param(
            {"task": "celery.chord", "args": {}}, "unknown_task", "jobs[7].task", id="unknown-task"
        ),
        pytest.param(
            {"task": "diagnostics.echo", "args": {"value": "a\x00b"}},
            "validation_error",
            "$.jobs[7].args.value",
            id="nul-character",
        ),
    ],
)
def test_one_invalid_batch_item_refuses_the_batch(  # noqa: PLR0917 - pytest passes these by name
    api: ApiServer,
    alice: httpx.Client,
    ledger_engine: Engine,
    item: dict[str, Any],
    code: str,
    where: str,
) -> None:
    jobs = [echo_job(i) for i in range(12)]
    jobs[7] = item
    before = ledger_count(ledger_engine)
    response = alice.post("/v1/jobs/batch", json={"jobs": jobs})
    error, _ = assert_error(response, 422, code, api)
    assert where in error["message"], error
    assert where in locations(error), error
    assert_nothing_recorded(alice, ledger_engine, before)


# --------------------------------------------------------------------------------------------
# request ids and rate-limit headers


def test_request_id_is_echoed_and_stored(alice: httpx.Client) -> None:
    response = alice.post(
        "/v1/jobs", json=echo_job("traced"), headers={"X-Request-ID": "req-abc-123"}
    )
    assert response.status_code == 202, response.text
    assert response.headers["x-request-id"] == "req-abc-123"
    assert response.json()["request_id"] == "req-abc-123"
    stored = alice.get(f"/v1/jobs/{response.json()['id']}")
    assert stored.json()["request_id"] == "req-abc-123"


def test_request_id_is_generated_when_absent(alice: httpx.Client) -> None:
    first = alice.post("/v1/jobs", json=echo_job("untraced"))
    second = alice.post("/v1/jobs", json=echo_job("untraced"))
    assert first.status_code == second.status_code == 202
    generated = first.headers["x-request-id"]
    assert generated and generated != second.headers["x-request-id"]
    assert first.json()["request_id"] == generated
    assert alice.get(f"/v1/jobs/{first.json()['id']}").json()["request_id"] == generated


def test_request_id_follows_an_error_into_the_log(api: ApiServer, alice: httpx.Client) -> None:
    response = alice.post("/v1/jobs", json={"task": "nope"}, headers={"X-Request-ID": "req-err-9"})
    assert response.headers["x-request-id"] == "req-err-9"
    _, entry = assert_error(response, 422, "unknown_task", api)
    assert entry["request_id"] == "req-err-9"


def test_rate_limit_headers_on_success(alice: httpx.Client, anonymous: httpx.Client) -> None:
    for response in (alice.get("/v1/tasks"), alice.post("/v1/jobs", json=echo_job("limited"))):
        assert response.status_code in (200, 202), response.text
        assert response.headers["ratelimit-limit"] == "100000"
        assert 0 <= int(response.headers["ratelimit-remaining"]) < 100000
        assert int(response.headers["ratelimit-reset"]) >= 0
    assert anonymous.get("/healthz").status_code == 200


# --------------------------------------------------------------------------------------------
# inputs that must be refused, never crash (the fuzzing of the spec's parameters led here)


def cursor_for(created_at: str, job_id: str) -> str:
    """A cursor in the API's own encoding (base64url of ``[created_at, job_id]``)."""
    raw = json.dumps([created_at, job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CODES = {404: "not_found", 422: "validation_error"}


@pytest.mark.parametrize(
    ("method", "path", "params", "allowed"),
    [
        pytest.param("GET", "/v1/jobs/a%00b", None, {404, 422}, id="nul-in-job-id"),
        pytest.param("POST", "/v1/jobs/a%00b/cancel", None, {404, 422}, id="nul-in-job-id-cancel"),
        pytest.param("POST", "/v1/jobs/a%00b/retry", None, {404, 422}, id="nul-in-job-id-retry"),
        pytest.param("GET", "/v1/jobs", {"task": "a\x00b"}, {200, 422}, id="nul-in-task-filter"),
        pytest.param(
            "GET",
            "/v1/jobs",
            {"cursor": cursor_for("0001-01-01T00:00:00+01:00", str(uuid.uuid4()))},
            {422},
            id="cursor-before-year-1-in-utc",
        ),
        pytest.param(
            "GET",
            "/v1/jobs",
            {"cursor": cursor_for("2020-01-01T00:00:00+00:00", "a\x00b")},
            {200, 422},
            id="cursor-with-nul-in-job-id",
        ),
    ],
)
def test_odd_parameters_are_refused_not_500(  # noqa: PLR0917 - pytest passes these by name
    api: ApiServer,
    alice: httpx.Client,
    method: str,
    path: str,
    params: dict[str, str] | None,
    allowed: set[int],
) -> None:
    response = alice.request(method, path, params=params)
    assert response.status_code in allowed, described(response, api)
    if response.status_code >= 400:
        assert_error(response, response.status_code, CODES[response.status_code], api)
    else:
        assert response.json()["items"] == []


@pytest.mark.parametrize(
    "run_at",
    [
        pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-in-utc"),
        pytest.param("9999-12-31T23:59:59-01:00", id="after-year-9999-in-utc"),
    ],
)
def test_run_at_outside_the_calendar_is_422(
    api: ApiServer, alice: httpx.Client, ledger_engine: Engine, run_at: str
) -> None:
    before = ledger_count(ledger_engine)
    response = alice.post("/v1/jobs", json={**echo_job("when?"), "run_at": run_at})
    assert response.status_code == 422, described(response, api)
    error, _ = assert_error(response, 422, "validation_error", api)
    assert "run_at" in error["message"]
    assert ledger_count(ledger_engine) == before


def test_early_run_at_is_answered_as_iso_8601(alice: httpx.Client) -> None:
    sent = datetime.now(UTC)
    response = alice.post("/v1/jobs", json={**echo_job("early"), "run_at": "0999-06-01T00:00:00Z"})
    if response.status_code == 422:  # refusing a date that far back is as good
        assert "run_at" in response.json()["error"]["message"]
        return
    assert response.status_code == 202, response.text
    answered = datetime.now(UTC)
    for document in (response.json(), alice.get(f"/v1/jobs/{response.json()['id']}").json()):
        scheduled_for = document["scheduled_for"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", scheduled_for), (
            f"scheduled_for {scheduled_for!r} is not ISO 8601"
        )
        when = datetime.fromisoformat(scheduled_for)
        # kept as sent, or (a time already past) due at once
        assert when == datetime(999, 6, 1, tzinfo=UTC) or sent <= when <= answered, when


def test_wrong_method_is_405_with_allow(api: ApiServer, alice: httpx.Client) -> None:
    response = alice.delete("/v1/jobs")
    assert_error(response, 405, "method_not_allowed", api)
    allowed = {m.strip() for m in response.headers.get("allow", "").split(",")}
    assert {"GET", "POST"} <= allowed, f"Allow: {response.headers.get('allow')!r}"


@pytest.mark.parametrize("method", ["OPTIONS", "GET", "DELETE"])
def test_the_batch_path_takes_only_post_and_is_never_a_job_id(
    api: ApiServer, alice: httpx.Client, method: str
) -> None:
    response = alice.request(method, "/v1/jobs/batch")

    assert_error(response, 405, "method_not_allowed", api)
    assert response.headers["allow"] == "POST"


def test_an_empty_blob_upload_is_refused(api: ApiServer, alice: httpx.Client) -> None:
    response = alice.post(
        "/v1/blobs", content=b"", headers={"Content-Type": "application/octet-stream"}
    )

    error, _ = assert_error(response, 422, "validation_error", api)
    assert "empty" in error["message"]


def test_the_spec_gives_the_blob_id_its_pattern(alice: httpx.Client) -> None:
    spec = alice.get("/openapi.json").json()
    parameters = spec["paths"]["/v1/blobs/{blob}"]["get"]["parameters"]
    blob = next(parameter for parameter in parameters if parameter["name"] == "blob")

    assert blob["schema"]["pattern"] == "^sha256:([0-9a-f]{64})$"


# --------------------------------------------------------------------------------------------
# 503 when the ledger database is away


def timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_database_down_answers_503_quickly(ledgerless_api: ApiServer) -> None:
    with ledgerless_api.client() as client:
        response, elapsed = timed(lambda: client.post("/v1/jobs", json=echo_job("lost?")))
        assert elapsed < 5, f"POST /v1/jobs took {elapsed:.1f} s with the database down"
        _, entry = assert_error(response, 503, "service_unavailable", ledgerless_api)
        assert int(response.headers["retry-after"]) > 0
        assert entry["level"] == "ERROR"
        assert entry.get("traceback")  # in the log only

        for path in ("/v1/jobs", f"/v1/jobs/{uuid.uuid4()}", "/v1/stats"):
            response, elapsed = timed(lambda path=path: client.get(path))
            assert elapsed < 5, f"GET {path} took {elapsed:.1f} s with the database down"
            assert_error(response, 503, "service_unavailable", ledgerless_api)
            assert int(response.headers["retry-after"]) > 0

        ready, elapsed = timed(lambda: client.get("/readyz"))
        assert elapsed < 5
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["redis"] == "ok"
        assert ready.json()["checks"]["database"] != "ok"
        assert "Traceback" not in ready.text

        assert client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------------------------
# No answer grows far beyond what was sent


@pytest.mark.parametrize("number", ["1e308", "-1.7976931348623157e308", "1e-40", "1e33"])
def test_a_number_the_ledger_would_print_in_hundreds_of_digits_is_422(
    api: ApiServer, alice: httpx.Client, number: str
) -> None:
    body = f'{{"task": "diagnostics.echo", "args": {{"value": [{number}]}}}}'.encode()

    response = alice.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})

    error, _ = assert_error(response, 422, "validation_error", api)
    assert "plain decimal notation" in error["message"]


def test_ordinary_numbers_come_back_as_they_went_in(alice: httpx.Client) -> None:
    numbers = "[0.1, 6.02e23, 1e-20, -2.5, 1e31, 123456789.125]"
    body = f'{{"task": "diagnostics.echo", "args": {{"value": {numbers}}}, "delay_seconds": 3600}}'

    created = alice.post(
        "/v1/jobs", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert created.status_code == 202, created.text
    read = alice.get(f"/v1/jobs/{created.json()['id']}")
    alice.post(f"/v1/jobs/{created.json()['id']}/cancel")

    # the ledger keeps the decimal sent (6.02e23 comes back as 602000000000000000000000)
    returned = read.json()["args"]["value"]
    assert all(math.isclose(a, b) for a, b in zip(returned, json.loads(numbers), strict=True))
    assert len(json.dumps(returned)) <= 2 * len(numbers)


def test_a_page_of_large_jobs_ends_early_and_the_cursor_goes_on(api: ApiServer) -> None:
    """Five jobs of about 900 KiB: a page holds at most 4 MiB of them."""
    with api.client(DORA[1]) as dora:
        created = []
        for n in range(5):
            big = {"task": "diagnostics.echo", "args": {"value": f"{n}" + "x" * 900_000},
                   "delay_seconds": 3600}  # fmt: skip
            answer = dora.post("/v1/jobs", json=big)
            assert answer.status_code == 202, answer.text
            created.append(answer.json()["id"])
        try:
            first = dora.get("/v1/jobs", params={"limit": 50})
            rest = dora.get("/v1/jobs", params={"limit": 50, "cursor": first.json()["next_cursor"]})
        finally:
            for job_id in created:
                dora.post(f"/v1/jobs/{job_id}/cancel")

    assert first.status_code == 200
    assert len(first.content) <= 4 * 1024 * 1024 + 1_000_000
    page = [job["id"] for job in first.json()["items"]]
    assert 1 <= len(page) < 5 and first.json()["next_cursor"]
    following = [job["id"] for job in rest.json()["items"]]
    assert page + following[: 5 - len(page)] == list(reversed(created))


def test_a_request_that_is_not_valid_http_gets_the_error_model(api: ApiServer) -> None:
    address = urlsplit(api.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(b"GET /v1/stats HTTP/1.1\r\nHost: x\r\ncontent-length: p,\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "bad_request"
    assert log_entry(api, error["error_id"])["status"] == 400
