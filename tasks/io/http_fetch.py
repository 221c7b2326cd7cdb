"""``http.fetch``: stream a URL into the blob store, following a few guarded redirects."""

from __future__ import annotations

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
            stored = store_body(blobs, response.iter_bytes(CHUNK_BYTES), max_bytes, url)
            content_type = response.headers.get("Content-Type", "application/octet-stream")
            return {"blob": stored.blob, "size": stored.size, "content_type": content_type}
    raise PermanentError(f"more than {MAX_REDIRECTS} redirects, last to {describe_url(url)}")


@conveyor_task("http.fetch")
def fetch(context: JobContext, arguments: FetchArguments) -> dict[str, JsonValue]:
    """Download ``url`` into the blob store."""
    with context.resources.get(open_http_client).client() as client:
        return fetch_into(client, context.blobs, arguments.url, arguments.max_bytes)
