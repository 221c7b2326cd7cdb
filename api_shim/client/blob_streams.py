"""Downloads: a blob's bytes as a sync or async stream, checked against its sha256 at the end."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Self

import httpx

from api_shim.client.closing import AsyncClosesOnExit, ClosesOnExit
from api_shim.client.errors import ConveyorConnectionError, ConveyorError
from api_shim.client.models import Blob


class _Digest:
    """Checks downloaded bytes against a ``sha256:<hex>`` blob id."""

    def __init__(self, blob: Blob | str, response: httpx.Response) -> None:
        blob_id = blob.id if isinstance(blob, Blob) else blob
        self._expected = blob_id.removeprefix("sha256:") if blob_id.startswith("sha256:") else None
        self._hash = hashlib.sha256()
        self._response = response

    def update(self, chunk: bytes) -> bytes:
        self._hash.update(chunk)
        return chunk

    def check(self) -> None:
        if self._expected is not None and self._hash.hexdigest() != self._expected:
            raise ConveyorError(
                f"downloaded bytes do not match sha256:{self._expected}",
                status=self._response.status_code,
                code="integrity_error",
                request_id=self._response.headers.get("x-request-id"),
            )


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


class BlobStream(Iterator[bytes], ClosesOnExit):
    """A blob's bytes as they arrive; closes its response when exhausted or closed.

    Use it as a context manager (or exhaust it) so that the connection is released. At the
    end the bytes are checked against the blob's sha256.
    """

    def __init__(self, response: httpx.Response, blob: Blob | str, chunk_size: int) -> None:
        self._response = response
        self._chunks = response.iter_bytes(chunk_size)
        self._digest = _Digest(blob, response)
        self.size = _content_length(response)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> bytes:
        try:
            return self._digest.update(next(self._chunks))
        except StopIteration:
            self.close()
            self._digest.check()
            raise
        except httpx.TransportError as error:
            self.close()
            raise ConveyorConnectionError(
                f"download interrupted: {error}", code="connection_error"
            ) from error

    def close(self) -> None:
        """Release the connection (idempotent)."""
        if isinstance(self._chunks, Generator):
            self._chunks.close()
        self._response.close()


class AsyncBlobStream(AsyncIterator[bytes], AsyncClosesOnExit):
    """:class:`BlobStream` for the async client (``async for`` / ``async with``)."""

    def __init__(self, response: httpx.Response, blob: Blob | str, chunk_size: int) -> None:
        self._response = response
        self._chunks = response.aiter_bytes(chunk_size)
        self._digest = _Digest(blob, response)
        self.size = _content_length(response)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return self._digest.update(await anext(self._chunks))
        except StopAsyncIteration:
            await self.aclose()
            self._digest.check()
            raise
        except httpx.TransportError as error:
            await self.aclose()
            raise ConveyorConnectionError(
                f"download interrupted: {error}", code="connection_error"
            ) from error

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        if isinstance(self._chunks, AsyncGenerator):
            await self._chunks.aclose()
        await self._response.aclose()
