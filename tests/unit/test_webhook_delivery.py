"""``webhooks.deliver``: the payload bytes, the headers, and the verdict on each answer."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from pydantic import JsonValue, SecretStr

from tasks.arguments import WebhookArguments
from tasks.base import JobContext
from tasks.errors import PermanentError, RateLimitedError, TransientError
from tasks.io.webhooks import deliver, delivery_headers, encode_payload, post_webhook
from tasks.outbound_http import HttpClientPool, guarded_client
from tasks.webhook_signature import verify_signature
from tests.support.http_receiver import HttpReceiver, Reply, running_receiver

SECRET = "whsec_delivery_test"
PAYLOAD: dict[str, JsonValue] = {"event": "order.paid", "amount": 12.5, "note": "café ✓"}


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with guarded_client(allow_private=True, keepalive=4) as http:
        yield http


def arguments(url: str, **extra: Any) -> WebhookArguments:
    return WebhookArguments(url=url, payload=PAYLOAD, **extra)


def send(client: httpx.Client, url: str, timeout_seconds: float = 5.0) -> dict[str, JsonValue]:
    args = arguments(url, timeout_seconds=timeout_seconds)
    body = encode_payload(args.payload)
    headers = delivery_headers(args, "job-1", 1, SECRET, body)
    return post_webhook(client, args, headers, body)


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        return int(placeholder.getsockname()[1])


# --- encode_payload ------------------------------------------------------------------------


def test_payload_is_compact_utf8_json() -> None:
    assert encode_payload(PAYLOAD) == (
        '{"event":"order.paid","amount":12.5,"note":"café ✓"}'.encode()
    )


def test_payload_encoding_is_deterministic_and_round_trips() -> None:
    nested: dict[str, JsonValue] = {"b": [1, 2, {"c": None}], "a": True, "z": "x"}
    rebuilt = json.loads(json.dumps(nested))

    assert encode_payload(nested) == encode_payload(rebuilt)
    assert encode_payload(nested) == b'{"b":[1,2,{"c":null}],"a":true,"z":"x"}'
    assert json.loads(encode_payload(nested)) == nested


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_payload_refuses_numbers_json_cannot_carry(number: float) -> None:
    with pytest.raises(PermanentError, match="not JSON compliant"):
        encode_payload({"value": number})


# --- delivery_headers ----------------------------------------------------------------------


def test_delivery_headers_are_signed_and_name_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.75)
    args = arguments("https://hooks.example.test/h", headers={"Authorization": "Bearer t"})
    body = encode_payload(args.payload)

    headers = delivery_headers(args, "job-7", 3, SECRET, body)

    assert headers["Authorization"] == "Bearer t"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Conveyor-Job-Id"] == "job-7"
    assert headers["X-Conveyor-Attempt"] == "3"
    assert headers["X-Conveyor-Timestamp"] == "1700000000"
    assert verify_signature(SECRET, headers, body, now=1_700_000_000)
    assert not verify_signature("another secret", headers, body, now=1_700_000_000)


def test_conveyor_headers_win_over_the_callers() -> None:
    # validation refuses these names; model_construct shows the merge order on its own
    forged = {
        "Content-Type": "text/plain",
        "X-Conveyor-Job-Id": "forged",
        "X-Conveyor-Attempt": "99",
        "X-Conveyor-Timestamp": "1",
        "X-Conveyor-Signature": "v1=forged",
        "X-Tenant": "kept",
    }
    args = WebhookArguments.model_construct(
        url="https://hooks.example.test/h", payload=PAYLOAD, headers=forged, timeout_seconds=10.0
    )
    body = encode_payload(PAYLOAD)

    headers = delivery_headers(args, "job-1", 1, SECRET, body)

    assert headers["Content-Type"] == "application/json"
    assert headers["X-Conveyor-Job-Id"] == "job-1"
    assert headers["X-Conveyor-Attempt"] == "1"
    assert headers["X-Conveyor-Timestamp"] != "1"
    assert headers["X-Conveyor-Signature"] != "v1=forged"
    assert headers["X-Tenant"] == "kept"
    assert verify_signature(SECRET, headers, body)


# --- post_webhook against a local receiver ----------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_success_returns_status_and_elapsed_time(
    receiver: HttpReceiver, client: httpx.Client, status: int
) -> None:
    url = receiver.answer("/hook", Reply(status, b"" if status == 204 else b"thanks"))

    result = send(client, url)

    assert result["status_code"] == status
    elapsed = result["elapsed_ms"]
    assert isinstance(elapsed, float)
    assert 0.0 <= elapsed < 5000.0


def test_receiver_gets_the_exact_signed_bytes(receiver: HttpReceiver, client: httpx.Client) -> None:
    url = receiver.answer("/hook", Reply(200))

    send(client, url)

    [request] = receiver.requests_to("/hook")
    assert request.method == "POST"
    assert request.body == encode_payload(PAYLOAD)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-conveyor-job-id"] == "job-1"
    assert verify_signature(SECRET, request.headers, request.body)


def test_a_large_answer_body_does_not_fail_the_delivery(
    receiver: HttpReceiver, client: httpx.Client
) -> None:
    url = receiver.answer("/hook", Reply(200, chunked_bytes=2 * 1024 * 1024))

    assert send(client, url)["status_code"] == 200


def test_server_error_is_transient(receiver: HttpReceiver, client: httpx.Client) -> None:
    url = receiver.answer("/hook", Reply(500, b"oops"))

    with pytest.raises(TransientError, match="answered 500") as caught:
        send(client, url)
    assert type(caught.value) is TransientError


def test_too_many_requests_with_retry_after_is_rate_limited(
    receiver: HttpReceiver, client: httpx.Client
) -> None:
    url = receiver.answer("/hook", Reply(429, headers={"Retry-After": "3"}))

    with pytest.raises(RateLimitedError) as caught:
        send(client, url)
    assert caught.value.retry_after == 3.0


def test_unavailable_without_retry_after_is_transient(
    receiver: HttpReceiver, client: httpx.Client
) -> None:
    url = receiver.answer("/hook", Reply(503))

    with pytest.raises(TransientError, match="answered 503") as caught:
        send(client, url)
    assert type(caught.value) is TransientError


def test_not_found_is_permanent(receiver: HttpReceiver, client: httpx.Client) -> None:
    url = receiver.answer("/hook", Reply(404))

    with pytest.raises(PermanentError, match="answered 404") as caught:
        send(client, url)
    assert type(caught.value) is PermanentError


def test_redirect_is_permanent_and_never_followed(
    receiver: HttpReceiver, client: httpx.Client
) -> None:
    target = receiver.answer("/moved", Reply(200))
    url = receiver.answer("/hook", Reply(301, headers={"Location": target}))

    with pytest.raises(PermanentError, match=r"redirect to .*/moved, which is not followed"):
        send(client, url)
    assert receiver.requests_to("/moved") == []
    assert len(receiver.requests_to("/hook")) == 1


def test_receiver_slower_than_the_timeout_is_transient(
    receiver: HttpReceiver, client: httpx.Client
) -> None:
    url = receiver.answer("/hook", Reply(200, hold=True))
    started = time.monotonic()

    with pytest.raises(TransientError, match="timed out"):
        send(client, url, timeout_seconds=0.3)
    assert time.monotonic() - started < 3.0


def test_answer_body_trickling_past_the_timeout_is_transient(
    receiver: HttpReceiver, client: httpx.Client
) -> None:
    # each byte comes well within the read timeout; the whole answer does not
    url = receiver.answer("/hook", Reply(200, trickle_chunks=200, trickle_pause=0.05))
    started = time.monotonic()

    with pytest.raises(TransientError, match="did not arrive within the timeout"):
        send(client, url, timeout_seconds=0.3)
    assert time.monotonic() - started < 3.0


def test_closed_port_is_transient(client: httpx.Client) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"

    with pytest.raises(TransientError, match=r"127\.0\.0\.1:\d+/hook: "):
        send(client, url)


# --- the task function -------------------------------------------------------------------


class OneClient:
    def __init__(self, client: httpx.Client) -> None:
        self.pool = HttpClientPool(lambda: client)
        self.asked: list[Callable[..., Any]] = []

    def get(self, factory: Callable[..., Any]) -> HttpClientPool:
        self.asked.append(factory)
        return self.pool


def context_for(client: httpx.Client, secret: str | None) -> JobContext:
    settings = SimpleNamespace(webhook_signing_secret=None if secret is None else SecretStr(secret))
    fake = SimpleNamespace(
        job_id="job-42", attempt=2, settings=settings, resources=OneClient(client)
    )
    return cast(JobContext, fake)


def test_deliver_signs_with_the_deployment_secret(
    receiver: HttpReceiver, client: httpx.Client
) -> None:
    url = receiver.answer("/hook", Reply(200))

    result = deliver(context_for(client, SECRET), arguments(url))

    assert result["status_code"] == 200
    [request] = receiver.requests_to("/hook")
    assert request.headers["x-conveyor-job-id"] == "job-42"
    assert request.headers["x-conveyor-attempt"] == "2"
    assert verify_signature(SECRET, request.headers, request.body)


def test_deliver_refuses_to_send_unsigned(receiver: HttpReceiver, client: httpx.Client) -> None:
    url = receiver.answer("/hook", Reply(200))

    with pytest.raises(PermanentError, match="WEBHOOK_SIGNING_SECRET is not set"):
        deliver(context_for(client, None), arguments(url))
    assert receiver.received == []
