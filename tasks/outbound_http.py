"""Outgoing HTTP shared by the HTTP tasks: guarded clients, status verdicts, errors.

Each worker process lends its tasks clients from one :class:`HttpClientPool`, so
connections stay alive across jobs; every new connection goes through the SSRF guard
(``tasks.network_guard``).
"""

from __future__ import annotations

import contextlib
import email.utils
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from tasks.errors import PermanentError, RateLimitedError, TransientError
from tasks.network_guard import AddressGuard, GuardedNetworkBackend
from workers.settings import Settings
from workers.version import VERSION

#: Answers that mean "try again later"; every other non-2xx answer is final.
RETRYABLE_STATUSES = frozenset({408, 425, 429, *range(500, 600)})
#: Answers whose ``Retry-After`` is honoured.
HINTING_STATUSES = frozenset({429, 503})
# a Retry-After beyond a day is a misconfigured server, not a plan
_LONGEST_HINT = 86_400.0


USER_AGENT = f"conveyor/{VERSION}"


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport, opening connections only through the guard's network backend."""

    def __init__(
        self, guard: AddressGuard, limits: httpx.Limits, ssl_context: ssl.SSLContext
    ) -> None:
        super().__init__(verify=ssl_context, limits=limits)
        # httpx has no public knob for the network backend; the pool is rebuilt with the
        # same settings and the guarded backend (tests/unit/test_outbound_http.py proves
        # the guard is on the path)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedNetworkBackend(guard),
        )


def guarded_client(
    *, allow_private: bool, keepalive: int, ssl_context: ssl.SSLContext | None = None
) -> httpx.Client:
    """An HTTP client that follows no redirect, ignores proxy variables and is guarded."""
    limits = httpx.Limits(
        max_connections=None,  # bounded by the pool's concurrency instead
        max_keepalive_connections=keepalive,
        keepalive_expiry=30.0,
    )
    context = ssl_context if ssl_context is not None else httpx.create_ssl_context()
    return httpx.Client(
        transport=GuardedTransport(AddressGuard(allow_private=allow_private), limits, context),
        follow_redirects=False,
        trust_env=False,  # HTTP(S)_PROXY would send requests around the guard
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(10.0),
    )


class HttpClientPool:
    """Guarded clients lent to one task at a time, made as needed and kept for reuse.

    One client shared by hundreds of greenlets would be simpler, but httpcore's connection
    pool does work proportional to its connections times its waiting requests on every
    request (encode/httpcore#1035): at 200 concurrent requests that costs about 17 ms of
    CPU each, against 0.6 ms for a client of its own. Each client here keeps a few
    connections alive, so a task sending to the same host as an earlier one reuses one.
    """

    def __init__(self, make_client: Callable[[], httpx.Client]) -> None:
        self._make_client = make_client
        self._lock = threading.Lock()
        self._idle: list[httpx.Client] = []
        self._made: list[httpx.Client] = []
        self._closed = False

    @contextlib.contextmanager
    def client(self) -> Iterator[httpx.Client]:
        """A client for this task alone, returned to the pool after the block."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the HTTP client pool is closed")
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._make_client()
            with self._lock:
                self._made.append(client)
        try:
            yield client
        finally:
            with self._lock:
                # last in, first out: the most recently used connections are the warmest
                self._idle.append(client)

    @property
    def size(self) -> int:
        """Clients made so far."""
        return len(self._made)

    def close(self) -> None:
        """Close every client and its connections."""
        with self._lock:
            self._closed = True
            made, self._made, self._idle = self._made, [], []
        for client in made:
            client.close()


#: Connections each lent client keeps alive (per host it has talked to).
KEEPALIVE_PER_CLIENT = 4


@contextlib.contextmanager
def open_http_client(settings: Settings) -> Iterator[HttpClientPool]:
    """The worker process's pool of outgoing HTTP clients (a ``ProcessResources`` factory)."""
    # one TLS context for every client: loading the CA bundle costs milliseconds and memory
    ssl_context = httpx.create_ssl_context()
    allow_private = bool(settings.allow_private_networks)
    pool = HttpClientPool(
        lambda: guarded_client(
            allow_private=allow_private,
            keepalive=KEEPALIVE_PER_CLIENT,
            ssl_context=ssl_context,
        )
    )
    try:
        yield pool
    finally:
        pool.close()


def describe_url(url: str | httpx.URL) -> str:
    """``url`` without credentials, query and fragment, which may carry secrets: safe to log."""
    parts = urlsplit(str(url))
    query = "?…" if parts.query else ""
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}{query}"


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta or HTTP date), or ``None``."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), _LONGEST_HINT)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), _LONGEST_HINT)


def raise_for_status(response: httpx.Response, url: str) -> None:
    """Nothing for a 2xx answer; otherwise the error the retry-policy table should judge."""
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"{describe_url(url)} answered {status} {response.reason_phrase}".rstrip()
    if status in HINTING_STATUSES:
        hint = retry_after_seconds(response.headers.get("Retry-After"))
        if hint is not None:
            raise RateLimitedError(f"{message}; Retry-After {hint:g} s", retry_after=hint)
    if status in RETRYABLE_STATUSES:
        raise TransientError(message)
    if 300 <= status < 400:
        location = response.headers.get("Location")
        where = f" to {describe_url(urljoin(url, location))}" if location else ""
        raise PermanentError(f"{message}: a redirect{where}, which is not followed")
    raise PermanentError(message)


@contextlib.contextmanager
def network_errors_as_transient(url: str) -> Iterator[None]:
    """Turn httpx's timeouts and transport errors into ``TransientError``."""
    try:
        yield
    except httpx.TimeoutException as error:
        raise TransientError(f"{describe_url(url)}: timed out ({type(error).__name__})") from None
    except httpx.TransportError as error:
        detail = str(error) or type(error).__name__
        raise TransientError(f"{describe_url(url)}: {detail}") from None


def drain(response: httpx.Response, *, limit: int, deadline: float) -> int:
    """Read and drop up to ``limit`` bytes of the body; ``TransientError`` past ``deadline``."""
    received = 0
    for chunk in response.iter_raw():
        received += len(chunk)
        if time.monotonic() > deadline:
            raise TransientError("the response body did not arrive within the timeout")
        if received >= limit:
            break
    return received
