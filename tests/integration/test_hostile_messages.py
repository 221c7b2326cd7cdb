"""Messages nobody should have sent: each is refused once, logged without its contents,
counted, never requeued, and the worker that received it keeps consuming.

They are pushed straight into the workers' Redis lists, as anyone who can write to Redis
(or a buggy plain Celery client) could; a canary job sent after each proves the worker is
still taking work.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import Stack
from tests.support.api_server import ApiServer
from tests.support.polling import wait_for

SECRET = "s3cr3t-token-never-logged"


def _headers(task: str, **extra: Any) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "lang": "py", "task": task, "id": str(uuid.uuid4()), "retries": 0, "root_id": None,
        "parent_id": None, "group": None, "eta": None, "expires": None,
        "timelimit": [None, None], "X-Api-Token": SECRET,
    }  # fmt: skip
    headers.update(extra)
    return headers


def _envelope(
    queue: str,
    headers: dict[str, Any],
    body: Any = None,
    *,
    raw_body: bytes | None = None,
    content_type: str = "application/json",
) -> bytes:
    payload = raw_body if raw_body is not None else json.dumps(body).encode()
    return json.dumps(
        {
            "body": base64.b64encode(payload).decode(),
            "content-encoding": "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "correlation_id": str(headers.get("id")),
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    ).encode()


ECHO_ARGS = {"value": SECRET}
CANARY = {"io": "diagnostics.echo", "cpu": "diagnostics.spin"}
CANARY_ARGS: dict[str, dict[str, Any]] = {"io": {"value": "canary"}, "cpu": {"milliseconds": 1}}
POOL = {"io": "gevent", "cpu": "prefork"}
# builds the raw message for a queue; the task id it carries, if any
Hostile = Callable[[str], tuple[bytes, str | None]]


def _with(headers: dict[str, Any], body: Any = None, **options: Any) -> Hostile:
    def build(queue: str) -> tuple[bytes, str | None]:
        return _envelope(queue, headers, body, **options), headers.get("id")

    return build


def _raw(data: bytes) -> Hostile:
    return lambda _queue: (data, None)


HOSTILE: dict[str, tuple[str, Hostile]] = {
    "string-body": ("shape", _with(_headers("diagnostics.echo"), "just a string")),
    "null-body": ("shape", _with(_headers("diagnostics.echo"), None)),
    "two-part-body": ("shape", _with(_headers("diagnostics.echo"), [[], ECHO_ARGS])),
    "no-id": (
        "headers",
        _with(
            {k: v for k, v in _headers("diagnostics.echo").items() if k != "id"},
            [[], ECHO_ARGS, {}],
        ),
    ),
    "celery-backend-cleanup": (
        "internal_task",
        _with(_headers("celery.backend_cleanup"), [[], {}, {}]),
    ),
    "celery-map": (
        "internal_task",
        _with(
            _headers("celery.map"),
            [[], {"task": {"task": "diagnostics.echo", "args": [], "kwargs": {}}, "it": [[1]]}, {}],
        ),
    ),
    "celery-chord-unlock": ("internal_task", _with(_headers("celery.chord_unlock"), [[], {}, {}])),
    "chain": (
        "shape",
        _with(_headers("diagnostics.echo"), [[], ECHO_ARGS, {"chain": [{"task": "celery.map"}]}]),
    ),
    "pickle": (
        "content_type",
        _with(
            _headers("diagnostics.echo"),
            raw_body=b"\x80\x04K\x01.",
            content_type="application/x-python-serialize",
        ),
    ),
    "relay-with-arguments": (
        "internal_task",
        _with(_headers("conveyor.relay_outbox"), [[1], {}, {}]),
    ),
    "bad-retries": ("headers", _with(_headers("diagnostics.echo", retries="many"), [[], {}, {}])),
    "not-json-envelope": ("envelope", _raw(b"this is not json " + SECRET.encode())),
    "envelope-without-properties": (
        "envelope",
        _raw(json.dumps({"body": "e30=", "headers": {}}).encode()),
    ),
}


def _rejections(client: redis.Redis) -> dict[str, int]:
    raw: dict[bytes, bytes] = client.hgetall("conveyor:messages_rejected")  # type: ignore[assignment]
    return {key.decode(): int(value) for key, value in raw.items()}


@pytest.fixture
def broker(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.mark.parametrize("queue", ["io", "cpu"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_message_is_refused_once_and_the_worker_keeps_consuming(
    stack: Stack, broker: redis.Redis, queue: str, name: str
) -> None:
    reason, build = HOSTILE[name]
    worker = stack.io if queue == "io" else stack.cpu
    log_before = len(worker.log())
    counted_before = _rejections(broker).get(reason, 0)
    raw, task_id = build(queue)

    broker.lpush(queue, raw)
    sent = time.monotonic()
    canary = stack.client.send_task(CANARY[queue], kwargs=CANARY_ARGS[queue], queue=queue)

    assert canary.get(timeout=60)["pool"] == POOL[queue]  # the worker took the next message
    took = time.monotonic() - sent
    print(f"\n{name} on {queue}: refused ({reason}); canary round trip {took:.3f} s")
    assert worker.process.poll() is None
    wait_for(lambda: _rejections(broker).get(reason, 0) > counted_before, timeout=30,
             what=f"the {reason} rejection to be counted")  # fmt: skip
    log = worker.log()[log_before:]
    refused = [line for line in log.splitlines() if '"message rejected' in line]
    assert len(refused) == 1, log[-4000:]
    entry = json.loads(refused[0])
    assert entry["level"] == "ERROR" and entry["reason"] == reason
    assert entry["error_id"].startswith("err_")
    if task_id is not None:
        assert entry["message_id"] == task_id
    assert SECRET not in log  # neither the body nor other headers are logged
    assert "Traceback" not in log
    assert "Connection to broker lost" not in log  # no reconnect, so no task was cancelled
    assert broker.llen(queue) == 0  # not requeued
    assert not any(raw == value for value in broker.hvals("unacked"))
    if task_id is not None:
        assert stack.ledger.job(task_id) is None  # nothing ran, nothing was recorded
    assert stack.ledger.job("None") is None  # celery.map once recorded a job with that id


def test_refused_messages_are_counted_in_the_apis_metrics(
    stack: Stack, broker: redis.Redis, api: ApiServer
) -> None:
    raw, _ = HOSTILE["string-body"][1]("io")
    broker.lpush("io", raw)
    wait_for(lambda: _rejections(broker).get("shape", 0) > 0, timeout=30, what="a count")

    metrics = httpx.get(f"{api.base_url}/metrics", timeout=10).text

    lines = [line for line in metrics.splitlines()
             if line.startswith('conveyor_messages_rejected_total{reason="shape"}')]  # fmt: skip
    assert lines and float(lines[0].split()[-1]) >= 1, metrics[-2000:]
