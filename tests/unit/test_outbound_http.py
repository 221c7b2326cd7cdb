"""Outgoing HTTP: Retry-After, status verdicts, safe URLs, error mapping and the guarded client."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from tasks.errors import PermanentError, RateLimitedError, TransientError
from tasks.network_guard import AddressGuard, BlockedAddressError
from tasks.outbound_http import (
    USER_AGENT,
    GuardedTransport,
    HttpClientPool,
    describe_url,
    guarded_client,
    network_errors_as_transient,
    raise_for_status,
    retry_after_seconds,
)
from tests.support.http_receiver import HttpReceiver, Reply, running_receiver

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
URL = "https://hooks.example.test/orders?token=s3cret"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with running_receiver() as running:
        yield running


def response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, request=httpx.Request("GET", URL))


class FakeResolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.questions: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.questions.append((host, port))
        return list(self.answers.get(host, []))


def client_with_resolver(resolver: FakeResolver, *, allow_private: bool) -> httpx.Client:
    guard = AddressGuard(allow_private=allow_private, resolver=resolver)
    limits = httpx.Limits(max_keepalive_connections=2)
    transport = GuardedTransport(guard, limits, httpx.create_ssl_context())
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False)


# --- retry_after_seconds -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("3", 3.0), (" 120 ", 120.0), ("86400", 86_400.0), ("9999999", 86_400.0)],
)
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert retry_after_seconds(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Mon, 01 Jan 2024 12:00:30 GMT", 30.0),
        ("Mon, 01 Jan 2024 13:00:00 GMT", 3600.0),
        ("Mon, 01 Jan 2024 14:00:00 +0200", 0.0),  # 12:00 UTC: now
        ("Mon, 01 Jan 2024 12:01:00 -0000", 60.0),  # no zone: read as UTC
        ("Sun, 31 Dec 2023 12:00:00 GMT", 0.0),  # in the past: at once
        ("Fri, 01 Jan 2027 00:00:00 GMT", 86_400.0),  # capped at a day
    ],
)
def test_retry_after_http_date(value: str, expected: float) -> None:
    assert retry_after_seconds(value, now=NOW) == expected


def test_retry_after_http_date_defaults_to_the_current_time() -> None:
    assert retry_after_seconds("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0
    assert retry_after_seconds("Fri, 01 Jan 2100 00:00:00 GMT") == 86_400.0


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "-5", "1.5", "3s", "0x10", "Mon, 99 Foo 2024", "²", "٣"]
)
def test_retry_after_that_is_not_a_hint_is_none(value: str | None) -> None:
    assert retry_after_seconds(value, now=NOW) is None


# --- raise_for_status ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_success_statuses_pass(status: int) -> None:
    raise_for_status(response(status), URL)


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504, 599])
def test_retryable_statuses_are_transient(status: int) -> None:
    with pytest.raises(TransientError, match=f"answered {status}"):
        raise_for_status(response(status), URL)


def test_rate_limit_with_retry_after_carries_the_hint() -> None:
    with pytest.raises(RateLimitedError, match="Retry-After 3 s") as caught:
        raise_for_status(response(429, {"Retry-After": "3"}), URL)
    assert caught.value.retry_after == 3.0


def test_service_unavailable_with_retry_after_date_is_rate_limited() -> None:
    with pytest.raises(RateLimitedError) as caught:
        raise_for_status(response(503, {"Retry-After": "Mon, 01 Jan 2001 00:00:00 GMT"}), URL)
    assert caught.value.retry_after == 0.0


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, {}),  # no hint
        (503, {}),
        (429, {"Retry-After": "whenever"}),  # a hint that cannot be read
        (500, {"Retry-After": "3"}),  # only 429 and 503 hints are honoured
    ],
)
def test_retryable_status_without_a_usable_hint_is_plain_transient(
    status: int, headers: dict[str, str]
) -> None:
    with pytest.raises(TransientError) as caught:
        raise_for_status(response(status, headers), URL)
    assert type(caught.value) is TransientError


def test_a_retry_after_byte_outside_ascii_does_not_crash_the_verdict() -> None:
    # b"\xb2" decodes (latin-1) to "²", which str.isdigit() calls a digit
    answer = httpx.Response(
        429, headers=[(b"Retry-After", b"\xb2")], request=httpx.Request("GET", URL)
    )

    with pytest.raises(TransientError):
        raise_for_status(answer, URL)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 413, 422, 451])
def test_other_client_errors_are_permanent(status: int) -> None:
    with pytest.raises(PermanentError, match=f"answered {status}") as caught:
        raise_for_status(response(status), URL)
    assert type(caught.value) is PermanentError


def test_redirect_is_permanent_and_names_its_target_without_query() -> None:
    answer = response(302, {"Location": "https://elsewhere.test/next?sig=abc"})

    with pytest.raises(PermanentError, match="redirect") as caught:
        raise_for_status(answer, URL)
    message = str(caught.value)
    assert "to https://elsewhere.test/next?…" in message
    assert "sig=abc" not in message
    assert "not followed" in message


def test_redirect_without_location_is_permanent() -> None:
    with pytest.raises(PermanentError, match="answered 304 Not Modified: a redirect, which"):
        raise_for_status(response(304), URL)


def test_verdict_message_hides_the_query_string() -> None:
    with pytest.raises(PermanentError) as caught:
        raise_for_status(response(404), URL)
    assert str(caught.value) == "https://hooks.example.test/orders?… answered 404 Not Found"


# --- describe_url --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.test/a/b?token=s3cret", "https://example.test/a/b?…"),
        ("https://example.test/a/b", "https://example.test/a/b"),
        ("https://example.test/a#section", "https://example.test/a"),
        ("https://example.test/a?x=1#frag", "https://example.test/a?…"),
        ("http://example.test:8080/", "http://example.test:8080/"),
        ("http://example.test", "http://example.test"),
    ],
)
def test_describe_url_drops_query_and_fragment(url: str, expected: str) -> None:
    assert describe_url(url) == expected


def test_describe_url_accepts_an_httpx_url() -> None:
    assert describe_url(httpx.URL("https://example.test/p?k=v")) == "https://example.test/p?…"


# --- network_errors_as_transient ---------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectTimeout("connect"),
        httpx.ReadTimeout("read"),
        httpx.WriteTimeout("write"),
        httpx.PoolTimeout("pool"),
    ],
)
def test_timeouts_become_transient(error: httpx.TimeoutException) -> None:
    with (
        pytest.raises(TransientError, match=rf"timed out \({type(error).__name__}\)") as caught,
        network_errors_as_transient(URL),
    ):
        raise error
    assert "s3cret" not in str(caught.value)
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
def test_transport_errors_become_transient(error: httpx.TransportError) -> None:
    with (
        pytest.raises(TransientError, match=str(error)) as caught,
        network_errors_as_transient(URL),
    ):
        raise error
    assert str(caught.value).startswith("https://hooks.example.test/orders?…: ")


def test_transport_error_without_text_is_named_by_its_type() -> None:
    with (
        pytest.raises(TransientError, match=r"orders\?…: ReadError$"),
        network_errors_as_transient(URL),
    ):
        raise httpx.ReadError("")


@pytest.mark.parametrize(
    "error", [BlockedAddressError("blocked"), PermanentError("bad"), ValueError("bug")]
)
def test_other_errors_pass_through_unchanged(error: Exception) -> None:
    with pytest.raises(type(error)) as caught, network_errors_as_transient(URL):
        raise error
    assert caught.value is error


def test_no_error_means_no_change() -> None:
    reached = False
    with network_errors_as_transient(URL):
        reached = True
    assert reached


# --- guarded_client ----------------------------------------------------------------------


def test_guarded_client_refuses_a_real_loopback_server(receiver: HttpReceiver) -> None:
    url = receiver.answer("/ok", Reply(200, b"hello"))

    with (
        guarded_client(allow_private=False, keepalive=2) as client,
        pytest.raises(BlockedAddressError, match=r"127\.0\.0\.1, a loopback address"),
    ):
        client.get(url)
    assert receiver.received == []


def test_guarded_client_reaches_a_loopback_server_when_private_networks_are_allowed(
    receiver: HttpReceiver,
) -> None:
    url = receiver.answer("/ok", Reply(200, b"hello"))

    with guarded_client(allow_private=True, keepalive=2) as client:
        answer = client.get(url)

    assert answer.status_code == 200
    assert answer.content == b"hello"
    assert receiver.requests_to("/ok")[0].headers["user-agent"] == USER_AGENT


def test_guarded_client_refuses_localhost_by_name(receiver: HttpReceiver) -> None:
    receiver.answer("/ok", Reply(200))

    with (
        guarded_client(allow_private=False, keepalive=2) as client,
        pytest.raises(BlockedAddressError, match="localhost resolves to"),
    ):
        client.get(f"http://localhost:{receiver.port}/ok")
    assert receiver.received == []


def test_transport_refuses_a_host_with_one_private_address_among_public_ones() -> None:
    resolver = FakeResolver({"mixed.test": ["93.184.216.34", "10.0.0.1"]})

    with (
        client_with_resolver(resolver, allow_private=False) as client,
        pytest.raises(BlockedAddressError, match=r"10\.0\.0\.1, a private address"),
    ):
        client.get("http://mixed.test/hook")
    assert resolver.questions == [("mixed.test", 80)]


def test_transport_connects_to_the_address_the_resolver_gave(receiver: HttpReceiver) -> None:
    receiver.answer("/named", Reply(200, b"by name"))
    resolver = FakeResolver({"receiver.test": ["127.0.0.1"]})

    with client_with_resolver(resolver, allow_private=True) as client:
        answer = client.get(f"http://receiver.test:{receiver.port}/named")

    assert answer.content == b"by name"
    assert resolver.questions == [("receiver.test", receiver.port)]
    assert receiver.requests_to("/named")[0].headers["host"] == f"receiver.test:{receiver.port}"


def test_the_pool_lends_each_client_to_one_task_at_a_time_and_reuses_it() -> None:
    made: list[httpx.Client] = []

    def make() -> httpx.Client:
        made.append(guarded_client(allow_private=True, keepalive=1))
        return made[-1]

    pool = HttpClientPool(make)
    with pool.client() as first, pool.client() as second:
        assert first is not second
    with pool.client() as again:
        assert again in (first, second)
    assert pool.size == 2
    pool.close()
    assert all(client.is_closed for client in made)
    with pytest.raises(RuntimeError, match="closed"), pool.client():
        pass


def test_guarded_client_does_not_follow_redirects(receiver: HttpReceiver) -> None:
    url = receiver.answer("/old", Reply(302, headers={"Location": "/new"}))
    receiver.answer("/new", Reply(200, b"moved here"))

    with guarded_client(allow_private=True, keepalive=2) as client:
        answer = client.get(url)

    assert answer.status_code == 302
    with pytest.raises(PermanentError, match=r"a redirect .*, which is not followed"):
        raise_for_status(answer, url)
    assert receiver.requests_to("/new") == []


def test_guarded_client_ignores_proxy_variables(
    receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_proxy = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    url = receiver.answer("/direct", Reply(200, b"direct"))

    with guarded_client(allow_private=True, keepalive=2) as client:
        assert client.get(url).content == b"direct"
