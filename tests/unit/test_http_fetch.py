"""``http.fetch``: streaming into the blob store, guarded redirects, limits and verdicts."""

from __future__ import annotations

import gzip
import hashlib
import socket
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpcore
import httpx
import pytest
from pydantic import JsonValue

from tasks.arguments import FetchArguments
from tasks.base import JobContext
from tasks.errors import PermanentError, RateLimitedError, TransientError
from tasks.io.http_fetch import MAX_REDIRECTS, fetch, fetch_into
from tasks.network_guard import AddressGuard, BlockedAddressError, GuardedNetworkBackend
from tasks.outbound_http import HttpClientPool, guarded_client
from tests.support.http_receiver import HttpReceiver, Reply, generated_bytes, running_receiver
from workers.blob_store import BlobStore, StoredBlob

BODY = bytes(range(256)) * 2400  # 600 KiB: more than one read chunk
MIB = 1024 * 1024


class SpyStore(BlobStore):
    """A blob store that counts the blobs it was asked to store."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.store_calls = 0

    def store(self, chunks: Iterable[bytes], *, max_bytes: int) -> StoredBlob:
        self.store_calls += 1
        return super().store(chunks, max_bytes=max_bytes)


class LoopbackInternet(httpcore.NetworkBackend):
    """Stands in for the internet: every approved address is served by the local receiver."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.addresses: list[str] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        self.addresses.append(host)
        return self.inner.connect_tcp("127.0.0.1", port, timeout, local_address, socket_options)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with running_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with guarded_client(allow_private=True, keepalive=4) as http:
        yield http


@pytest.fixture
def blobs(tmp_path: Path) -> SpyStore:
    return SpyStore(tmp_path / "blobs")


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def assert_nothing_stored(blobs: BlobStore) -> None:
    assert files_under(blobs.root / "tmp") == []
    assert files_under(blobs.root / "sha256") == []


def blob_content(blobs: BlobStore, result: dict[str, JsonValue]) -> bytes:
    blob = result["blob"]
    assert isinstance(blob, str)
    with blobs.open(blob) as file:
        return file.read()


# --- success -----------------------------------------------------------------------------


def test_body_is_stored_and_described(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer(
        "/file.csv", Reply(200, BODY, {"Content-Type": "text/csv; charset=utf-8"})
    )

    result = fetch_into(client, blobs, url, max_bytes=10 * MIB)

    assert result == {
        "blob": f"sha256:{hashlib.sha256(BODY).hexdigest()}",
        "size": len(BODY),
        "content_type": "text/csv; charset=utf-8",
    }
    assert blob_content(blobs, result) == BODY
    assert files_under(blobs.root / "tmp") == []


def test_request_asks_for_an_uncompressed_body(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/file", Reply(200, b"x"))

    fetch_into(client, blobs, url, max_bytes=10)

    [request] = receiver.requests_to("/file")
    assert request.method == "GET"
    assert request.headers["accept-encoding"] == "identity"


def test_missing_content_type_defaults_to_octet_stream(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/raw", Reply(200, b"\x00\x01\x02"))

    result = fetch_into(client, blobs, url, max_bytes=10)

    assert result["content_type"] == "application/octet-stream"
    assert result["size"] == 3


def test_chunked_body_within_the_limit_is_stored(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/stream", Reply(200, chunked_bytes=MIB + 17))

    result = fetch_into(client, blobs, url, max_bytes=MIB + 17)

    assert result["size"] == MIB + 17
    assert blob_content(blobs, result) == generated_bytes(MIB + 17)


def test_empty_body_is_stored(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/empty", Reply(200, b""))

    result = fetch_into(client, blobs, url, max_bytes=1)

    assert result["size"] == 0
    assert result["blob"] == f"sha256:{hashlib.sha256(b'').hexdigest()}"


# --- redirects -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_relative_redirect_is_followed(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore, status: int
) -> None:
    url = receiver.answer("/dir/start", Reply(status, headers={"Location": "final?v=2"}))
    receiver.answer("/dir/final?v=2", Reply(200, b"arrived"))

    result = fetch_into(client, blobs, url, max_bytes=100)

    assert blob_content(blobs, result) == b"arrived"
    assert [r.path for r in receiver.received] == ["/dir/start", "/dir/final?v=2"]


def test_absolute_path_and_absolute_url_redirects_are_followed(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/a", Reply(302, headers={"Location": "/b/c"}))
    receiver.answer("/b/c", Reply(302, headers={"Location": receiver.url("/d")}))
    receiver.answer("/d", Reply(200, b"done"))

    result = fetch_into(client, blobs, url, max_bytes=100)

    assert blob_content(blobs, result) == b"done"


def redirect_chain(receiver: HttpReceiver, hops: int) -> str:
    for hop in range(hops):
        receiver.answer(f"/r{hop}", Reply(302, headers={"Location": f"/r{hop + 1}"}))
    receiver.answer(f"/r{hops}", Reply(200, b"end of chain"))
    return receiver.url("/r0")


def test_five_redirects_are_followed(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = redirect_chain(receiver, MAX_REDIRECTS)

    result = fetch_into(client, blobs, url, max_bytes=100)

    assert blob_content(blobs, result) == b"end of chain"
    assert MAX_REDIRECTS == 5


def test_more_than_five_redirects_is_permanent(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = redirect_chain(receiver, MAX_REDIRECTS + 1)

    with pytest.raises(PermanentError, match=r"more than 5 redirects, last to .*/r6$"):
        fetch_into(client, blobs, url, max_bytes=100)
    assert len(receiver.received) == 6
    assert receiver.requests_to("/r6") == []
    assert_nothing_stored(blobs)


def test_redirect_loop_is_permanent(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/loop", Reply(307, headers={"Location": "/loop"}))

    with pytest.raises(PermanentError, match="more than 5 redirects"):
        fetch_into(client, blobs, url, max_bytes=100)
    assert len(receiver.requests_to("/loop")) == MAX_REDIRECTS + 1


@pytest.mark.parametrize(
    "location",
    ["ftp://files.example.test/x", "http://user:pw@files.example.test/x", "file:///etc/passwd"],
)
def test_redirect_to_a_refused_url_is_permanent(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore, location: str
) -> None:
    url = receiver.answer("/start", Reply(302, headers={"Location": location}))

    with pytest.raises(PermanentError, match="redirects to a refused URL"):
        fetch_into(client, blobs, url, max_bytes=100)
    assert len(receiver.received) == 1


def test_redirect_without_location_is_permanent(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/start", Reply(302))

    with pytest.raises(PermanentError, match="answered 302 Found: a redirect, which"):
        fetch_into(client, blobs, url, max_bytes=100)


def test_not_modified_is_not_a_redirect_to_follow(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/start", Reply(304, headers={"Location": "/elsewhere"}))

    with pytest.raises(PermanentError, match="answered 304"):
        fetch_into(client, blobs, url, max_bytes=100)
    assert receiver.requests_to("/elsewhere") == []


@pytest.mark.parametrize("private_host", ["internal.test", "127.0.0.1", "[::ffff:10.0.0.1]"])
def test_redirect_to_a_private_address_is_blocked(
    receiver: HttpReceiver, blobs: SpyStore, private_host: str
) -> None:
    resolver_answers = {"public.test": ["93.184.216.34"], "internal.test": ["10.0.0.1"]}
    guard = AddressGuard(allow_private=False, resolver=lambda host, _: resolver_answers[host])
    internet = LoopbackInternet()
    transport = httpx.HTTPTransport()
    transport._pool = httpcore.ConnectionPool(
        network_backend=GuardedNetworkBackend(guard, internet)
    )
    receiver.answer(
        "/start", Reply(302, headers={"Location": f"http://{private_host}:{receiver.port}/admin"})
    )
    receiver.answer("/admin", Reply(200, b"secrets"))

    start = f"http://public.test:{receiver.port}/start"
    with (
        httpx.Client(transport=transport, trust_env=False) as guarded,
        pytest.raises(BlockedAddressError),
    ):
        fetch_into(guarded, blobs, start, max_bytes=100)

    assert internet.addresses == ["93.184.216.34"]
    assert [r.path for r in receiver.received] == ["/start"]
    assert_nothing_stored(blobs)


# --- limits ------------------------------------------------------------------------------


def test_body_of_exactly_max_bytes_is_accepted(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/file", Reply(200, b"x" * 1000))

    assert fetch_into(client, blobs, url, max_bytes=1000)["size"] == 1000


def test_declared_length_above_max_bytes_is_refused_before_download(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/big?sig=s3cret", Reply(200, b"x" * 1001))

    with pytest.raises(PermanentError, match="Content-Length 1001 is larger") as caught:
        fetch_into(client, blobs, url, max_bytes=1000)
    assert "not downloaded" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert blobs.store_calls == 0
    assert_nothing_stored(blobs)


def test_chunked_body_above_max_bytes_is_refused_and_leaves_no_file(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/stream", Reply(200, chunked_bytes=3 * MIB))

    with pytest.raises(PermanentError, match=r"body larger than max_bytes \(1048576 bytes\)"):
        fetch_into(client, blobs, url, max_bytes=MIB)
    assert blobs.store_calls == 1
    assert_nothing_stored(blobs)


def test_chunked_body_one_byte_above_max_bytes_is_refused(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/stream", Reply(200, chunked_bytes=1001))

    with pytest.raises(PermanentError, match="body larger than max_bytes"):
        fetch_into(client, blobs, url, max_bytes=1000)
    assert_nothing_stored(blobs)


# --- verdicts ----------------------------------------------------------------------------


def test_not_found_is_permanent(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/missing", Reply(404, b"no such file"))

    with pytest.raises(PermanentError, match="answered 404") as caught:
        fetch_into(client, blobs, url, max_bytes=100)
    assert type(caught.value) is PermanentError
    assert_nothing_stored(blobs)


def test_server_error_is_transient(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/file", Reply(500, b"oops"))

    with pytest.raises(TransientError, match="answered 500"):
        fetch_into(client, blobs, url, max_bytes=100)
    assert_nothing_stored(blobs)


def test_rate_limit_after_a_redirect_is_judged_on_the_final_url(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/start", Reply(302, headers={"Location": "/limited"}))
    receiver.answer("/limited", Reply(429, headers={"Retry-After": "7"}))

    with pytest.raises(RateLimitedError, match="/limited answered 429") as caught:
        fetch_into(client, blobs, url, max_bytes=100)
    assert caught.value.retry_after == 7.0


def test_closed_port_is_transient(client: httpx.Client, blobs: SpyStore) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]

    with pytest.raises(TransientError):
        fetch_into(client, blobs, f"http://127.0.0.1:{port}/file", max_bytes=100)


# --- the task function -------------------------------------------------------------------


def test_fetch_task_stores_into_the_jobs_blob_store(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/file", Reply(200, b"task body", {"Content-Type": "text/plain"}))
    pool = HttpClientPool(lambda: client)
    resources = SimpleNamespace(get=lambda factory: pool)
    context = cast(JobContext, SimpleNamespace(blobs=blobs, resources=resources))

    result = fetch(context, FetchArguments(url=url, max_bytes=100))

    assert result["size"] == 9
    assert result["content_type"] == "text/plain"
    assert blob_content(blobs, result) == b"task body"


# --- compressed bodies ----------------------------------------------------------------------


def test_a_gzip_body_is_stored_inflated(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    body = b"conveyor " * 10_000
    url = receiver.answer(
        "/gzipped", Reply(200, gzip.compress(body), headers={"Content-Encoding": "gzip"})
    )

    result = fetch_into(client, blobs, url, max_bytes=len(body))

    assert blob_content(blobs, result) == body


def test_a_gzip_bomb_is_refused_without_inflating_it_in_memory(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    bomb = gzip.compress(bytes(64 * 1024 * 1024), compresslevel=9)
    url = receiver.answer("/bomb", Reply(200, bomb, headers={"Content-Encoding": "gzip"}))

    tracemalloc.start()
    try:
        with pytest.raises(PermanentError, match="larger than max_bytes"):
            fetch_into(client, blobs, url, max_bytes=2 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"
    assert_nothing_stored(blobs)


def test_an_unknown_content_encoding_fails_at_once(
    receiver: HttpReceiver, client: httpx.Client, blobs: SpyStore
) -> None:
    url = receiver.answer("/br", Reply(200, b"\x00\x01", headers={"Content-Encoding": "br"}))

    with pytest.raises(PermanentError, match="unsupported Content-Encoding"):
        fetch_into(client, blobs, url, max_bytes=1024)
    assert_nothing_stored(blobs)
