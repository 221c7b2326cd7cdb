"""Content-addressed blob store on local disk: blobs are streamed in and out in chunks,
named by the sha256 of their content, and only ever appear under their final name whole."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: A blob id: the sha256 of the content, as ``sha256:`` and 64 lowercase hex digits.
BLOB_ID_PATTERN = r"^sha256:([0-9a-f]{64})$"
_BLOB_ID = re.compile(BLOB_ID_PATTERN)
_EXPECTED = "'sha256:' followed by 64 lowercase hex digits"


class BlobStoreError(Exception):
    """Base class of the blob store's errors."""


class InvalidBlobIdError(BlobStoreError):
    """The text is not a well-formed blob id."""


class BlobNotFoundError(BlobStoreError):
    """No blob with this id is stored."""


class BlobTooLargeError(BlobStoreError):
    """The content grew past the writer's ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        # max_bytes is the only argument so the exception pickles back intact
        # (Celery ships exceptions between processes).
        super().__init__(max_bytes)
        self.max_bytes = max_bytes

    def __str__(self) -> str:
        return f"blob is larger than the limit of {self.max_bytes} bytes"


def parse_blob_id(text: str) -> str:
    """The 64-character hex digest in ``text``, or ``InvalidBlobIdError``."""
    # fullmatch, not match with "$": "$" would also accept a trailing newline.
    match = _BLOB_ID.fullmatch(text)
    if match is None:
        raise InvalidBlobIdError(f"expected a blob id {_EXPECTED}, got {text[:100]!r}")
    return match.group(1)


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A committed blob: its id, its size in bytes and where it lives."""

    blob: str
    size: int
    path: Path


class BlobWriter:
    """Streams one blob into a temporary file; ``commit`` gives it its final name."""

    def __init__(self, store: BlobStore, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._store = store
        self._max_bytes = max_bytes
        self._digest = hashlib.sha256()
        self._size = 0
        self._failed = False
        self._committed = False
        tmp_dir = store.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-")
        self._tmp_path = Path(name)
        self._file: io.BufferedWriter | None = os.fdopen(fd, "wb")

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; ``BlobTooLargeError`` once the total would exceed ``max_bytes``."""
        file = self._open_file()
        if self._size + len(chunk) > self._max_bytes:
            # A writer that refused a chunk holds a truncated blob: never let it commit.
            self._failed = True
            raise BlobTooLargeError(self._max_bytes)
        file.write(chunk)
        self._digest.update(chunk)
        self._size += len(chunk)

    def commit(self) -> StoredBlob:
        """Durably store the content written so far under its sha256 name."""
        file = self._open_file()
        hex_digest = self._digest.hexdigest()
        final = self._store.root / "sha256" / hex_digest[0:2] / hex_digest[2:4] / hex_digest
        file.flush()
        if _refreshed(final):
            # Same name, same content: keep the existing copy, now counted as just written,
            # so that retention does not delete it under the uploader.
            self._close_and_remove()
        else:
            # fsync before the rename, or a crash could leave the final name pointing
            # at a file whose data never reached the disk.
            self._store.sync(file.fileno())
            file.close()
            self._file = None
            final.parent.mkdir(parents=True, exist_ok=True)
            # Path.replace is os.replace: an atomic rename, since tmp/ and sha256/ share a
            # filesystem under root. Readers see no file or the whole file, never a part.
            self._tmp_path.replace(final)
            _fsync_directory(final.parent, self._store.sync)
        self._committed = True
        return StoredBlob(blob=f"sha256:{hex_digest}", size=self._size, path=final)

    def _open_file(self) -> io.BufferedWriter:
        if self._committed:
            raise BlobStoreError("this blob writer has already committed")
        if self._failed:
            raise BlobStoreError("this blob writer refused a chunk and cannot be used")
        if self._file is None:
            raise BlobStoreError("this blob writer is closed")
        return self._file

    def _close_and_remove(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp_path.unlink(missing_ok=True)


def _refreshed(path: Path) -> bool:
    """Set ``path``'s modification time to now; whether the file was there."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def _fsync_directory(directory: Path, sync: Callable[[int], None]) -> None:
    # The rename itself is only durable once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        sync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs under ``root/sha256/<hex[0:2]>/<hex[2:4]>/<hex>``, uploads in ``root/tmp/``."""

    def __init__(self, root: Path, *, sync: Callable[[int], None] = os.fsync) -> None:
        self.root = root
        # how a file descriptor reaches the disk: a gevent worker runs fsync on a thread,
        # so that the event loop keeps running while a large blob is flushed
        self.sync = sync

    @contextlib.contextmanager
    def writer(self, max_bytes: int) -> Iterator[BlobWriter]:
        """A ``BlobWriter``; its temporary file is removed unless it was committed."""
        blob_writer = BlobWriter(self, max_bytes)
        try:
            yield blob_writer
        finally:
            if not blob_writer._committed:
                blob_writer._close_and_remove()

    def store(self, chunks: Iterable[bytes], *, max_bytes: int) -> StoredBlob:
        """Write all ``chunks`` as one blob and commit it."""
        with self.writer(max_bytes) as blob_writer:
            for chunk in chunks:
                blob_writer.write(chunk)
            return blob_writer.commit()

    def path_of(self, blob_id: str) -> Path:
        """Where the blob ``blob_id`` lives (whether or not it exists)."""
        hex_digest = parse_blob_id(blob_id)
        return self.root / "sha256" / hex_digest[0:2] / hex_digest[2:4] / hex_digest

    def exists(self, blob_id: str) -> bool:
        """Whether the blob ``blob_id`` is stored."""
        return self.path_of(blob_id).is_file()

    def size_of(self, blob_id: str) -> int:
        """The blob's size in bytes, or ``BlobNotFoundError``."""
        path = self.path_of(blob_id)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {blob_id}") from None

    def read_chunks(self, blob_id: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The blob's content in chunks of ``chunk_size`` bytes (the last may be shorter).

        The id and chunk size are checked at the call, not at the first ``next()``, so
        a caller can fail before it starts streaming a response.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        path = self.path_of(blob_id)
        if not path.is_file():
            raise BlobNotFoundError(f"no blob {blob_id}")
        return _chunks_of(path, blob_id, chunk_size)

    def sweep_temporary(self, older_than: float, now: float | None = None) -> int:
        """Remove temporary files untouched for ``older_than`` seconds; how many went.

        A writer killed mid-blob (SIGKILL, OOM) leaves its temporary file behind; it
        never reaches a final name, but it takes disk space until swept.
        """
        cutoff = (time.time() if now is None else now) - older_than
        removed = 0
        for path in (self.root / "tmp").glob("upload-*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    def written_before(self, cutoff: float) -> Iterator[str]:
        """The ids of blobs last written before ``cutoff`` (a Unix time), as a stream."""
        for path in (self.root / "sha256").glob("??/??/*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    yield f"sha256:{path.name}"

    def remove_if_written_before(self, blob_id: str, cutoff: float) -> bool:
        """Delete the blob if it was last written before ``cutoff``; whether it went.

        The time is read again here: an upload of the same content since the listing
        refreshed it, and it stays."""
        path = self.path_of(blob_id)
        try:
            if path.stat().st_mtime >= cutoff:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def open(self, blob_id: str) -> Iterator[BinaryIO]:
        """The blob opened for binary reading, or ``BlobNotFoundError``."""
        path = self.path_of(blob_id)
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {blob_id}") from None
        with file:
            yield file


def _chunks_of(path: Path, blob_id: str, chunk_size: int) -> Iterator[bytes]:
    try:
        file = path.open("rb")
    except FileNotFoundError:
        # Checked by read_chunks, but a blob could be deleted before the first next().
        raise BlobNotFoundError(f"no blob {blob_id}") from None
    with file:
        while chunk := file.read(chunk_size):
            yield chunk
