"""Upload bodies: blob data streamed to the API chunk by chunk, rewound for a retry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import IO, Final, cast

CHUNK_SIZE: Final = 64 * 1024


def _read_file(file: IO[bytes], chunk_size: int) -> Iterator[bytes]:
    while chunk := file.read(chunk_size):
        yield chunk


async def _aread_file(file: IO[bytes], chunk_size: int) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(file.read, chunk_size):
        yield chunk


async def _aiterate(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


BlobData = bytes | bytearray | memoryview | IO[bytes] | Iterable[bytes]
AsyncBlobData = BlobData | AsyncIterable[bytes]


class _Body:
    """An upload body, streamed chunk by chunk; never read into memory as a whole.

    Bytes and seekable files can be sent again (so a 429 or 503 can be retried); an
    iterator or a pipe is sent once.
    """

    def __init__(self, data: AsyncBlobData) -> None:
        if isinstance(data, str):
            raise TypeError("upload bytes, a binary file or an iterable of bytes, not str")
        self._data = data
        self._start: int | None = None
        self.length: int | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            self.length = len(data)
        elif hasattr(data, "read"):
            file = cast(IO[bytes], data)
            try:
                if file.seekable():
                    self._start = file.tell()
                    self.length = file.seek(0, 2) - self._start
                    file.seek(self._start)
            except (AttributeError, OSError):
                self._start, self.length = None, None
        self.replayable = self.length is not None
        self._used = False

    def _file(self) -> IO[bytes] | None:
        if isinstance(self._data, bytes | bytearray | memoryview):
            return None
        if hasattr(self._data, "read"):
            file = cast(IO[bytes], self._data)
            if self._start is not None:
                file.seek(self._start)
            return file
        return None

    def _claim(self) -> None:
        if self._used and not self.replayable:
            raise RuntimeError("this upload body is a one-shot stream and was already sent")
        self._used = True

    def headers(self) -> dict[str, str]:
        """``Content-Type``, and ``Content-Length`` when known (a file's remaining size)."""
        headers = {"Content-Type": "application/octet-stream"}
        if self.length is not None:
            headers["Content-Length"] = str(self.length)
        return headers

    def sync_content(self) -> bytes | Iterator[bytes]:
        """The body for ``httpx.Client``."""
        self._claim()
        if isinstance(self._data, bytes | bytearray | memoryview):
            return bytes(self._data)
        file = self._file()
        if file is not None:
            return _read_file(file, CHUNK_SIZE)
        if isinstance(self._data, AsyncIterable):
            raise TypeError("the blocking client cannot send an async iterable")
        return iter(self._data)

    def async_content(self) -> bytes | AsyncIterator[bytes]:
        """The body for ``httpx.AsyncClient`` (file reads run in a thread)."""
        self._claim()
        if isinstance(self._data, bytes | bytearray | memoryview):
            return bytes(self._data)
        file = self._file()
        if file is not None:
            return _aread_file(file, CHUNK_SIZE)
        if isinstance(self._data, AsyncIterable):
            return aiter(self._data)
        return _aiterate(self._data)
