"""``http.fetch``: stream a URL into the blob store, following a few guarded redirects."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from urllib.parse import urljoin

import httpx
from pydantic import JsonValue

from tasks.arguments import FetchArguments, check_url
from tasks.base import JobContext
from tasks.declaration import conveyor_task
from tasks.errors import PermanentError
from tasks.outbound_http import (
    describe_url,
    network_errors_as_transient,
    open_http_client,
    raise_for_status,
)
from workers.blob_store import BlobStore, BlobTooLargeError, StoredBlob

MAX_REDIRECTS = 5
CHUNK_BYTES = 256 * 1024
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)  # per read: a slow but live download goes on
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def next_url(response: httpx.Response, url: str) -> str | None:
    """Where a redirect points (checked like the original URL), or ``None``."""
    if response.status_code not in _REDIRECTS:
        return None
    location = response.headers.get("Location")
    if not location:
        return None
    target = urljoin(url, location)
    try:
        return check_url(target)
    except ValueError as error:
        raise PermanentError(f"{describe_url(url)} redirects to a refused URL: {error}") from None


def cooperative(chunks: Iterator[bytes], every: int = 1 << 20) -> Iterator[bytes]:
    """``chunks`` as they are, letting other greenlets run after every ``every`` bytes.

    A fast server fills the socket faster than the task hashes and writes, so reads never
    wait and the task would keep a gevent worker's event loop to itself for the whole
    download. ``time.sleep(0)`` is gevent's yield there (and next to free in prefork).
    """
    since_yield = 0
    for chunk in chunks:
        yield chunk
        since_yield += len(chunk)
        if since_yield >= every:
            since_yield = 0
            time.sleep(0)


def decoded(raw: Iterator[bytes], encoding: str, piece: int = 1 << 20) -> Iterator[bytes]:
    """The body's bytes from its ``raw`` chunks, inflated at most ``piece`` bytes at a time.

    httpx would inflate each raw chunk in one call: a 64 KiB chunk of a gzip bomb becomes
    64 MiB in memory before ``max_bytes`` can say no. Here memory stays at one piece.
    """
    name = encoding.strip().lower()
    if name in ("", "identity"):
        yield from raw
        return
    if name in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif name == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise PermanentError(f"unsupported Content-Encoding {encoding[:40]!r}")
    try:
        for chunk in raw:
            data = chunk
            while data:
                out = inflater.decompress(data, piece)
                if out:
                    yield out
                data = inflater.unconsumed_tail
        if tail := inflater.flush():
            yield tail
    except zlib.error as error:
        raise PermanentError(f"body is not valid {name}: {error}") from None


def store_body(blobs: BlobStore, chunks: Iterator[bytes], max_bytes: int, url: str) -> StoredBlob:
    """Stream ``chunks`` into the store (sha256 on the fly, atomic rename at the end)."""
    try:
        return blobs.store(chunks, max_bytes=max_bytes)
    except BlobTooLargeError:
        raise PermanentError(
            f"{describe_url(url)}: body larger than max_bytes ({max_bytes} bytes); discarded"
        ) from None


def fetch_into(
    client: httpx.Client, blobs: BlobStore, url: str, max_bytes: int
) -> dict[str, JsonValue]:
    """GET ``url`` (following up to ``MAX_REDIRECTS``) into ``blobs``; the task's result."""
    # the server should not compress: a decoded body is what the caller asked to keep, and
    # a compressed one could inflate far beyond a chunk in one step
    headers = {"Accept-Encoding": "identity"}
    for _hop in range(MAX_REDIRECTS + 1):
        with (
            network_errors_as_transient(url),
            client.stream("GET", url, headers=headers, timeout=_TIMEOUT) as response,
        ):
            target = next_url(response, url)
            if target is not None:
                url = target
                continue
            raise_for_status(response, url)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise PermanentError(
                    f"{describe_url(url)}: Content-Length {declared} is larger than "
                    f"max_bytes ({max_bytes}); not downloaded"
                )
            encoding = response.headers.get("Content-Encoding", "")
            chunks = cooperative(decoded(response.iter_raw(CHUNK_BYTES), encoding))
            stored = store_body(blobs, chunks, max_bytes, url)
            content_type = response.headers.get("Content-Type", "application/octet-stream")
            return {"blob": stored.blob, "size": stored.size, "content_type": content_type}
    raise PermanentError(f"more than {MAX_REDIRECTS} redirects, last to {describe_url(url)}")


@conveyor_task("http.fetch")
def fetch(context: JobContext, arguments: FetchArguments) -> dict[str, JsonValue]:
    """Download ``url`` into the blob store."""
    with context.resources.get(open_http_client).client() as client:
        return fetch_into(client, context.blobs, arguments.url, arguments.max_bytes)
