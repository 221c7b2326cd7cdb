"""The content-addressed blob store: ids, round trips, dedupe, limits, cleanup and memory."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.blob_store import (
    BlobNotFoundError,
    BlobStore,
    BlobStoreError,
    BlobTooLargeError,
    InvalidBlobIdError,
    StoredBlob,
    parse_blob_id,
)

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
HEX = hashlib.sha256(b"hello").hexdigest()


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_round_trip_of_several_chunks(store: BlobStore) -> None:
    chunks = [b"alpha-", b"", b"beta-", b"gamma" * 1000]
    content = b"".join(chunks)

    stored = store.store(chunks, max_bytes=len(content))

    assert stored.size == len(content)
    assert store.exists(stored.blob)
    assert store.size_of(stored.blob) == len(content)
    assert b"".join(store.read_chunks(stored.blob)) == content
    with store.open(stored.blob) as file:
        assert file.read() == content
    assert files_under(store.root / "tmp") == []


def test_id_is_the_sha256_of_the_content_and_names_the_file(store: BlobStore) -> None:
    content = b"some content\n"
    digest = hashlib.sha256(content).hexdigest()

    stored = store.store([content], max_bytes=100)

    assert stored == StoredBlob(
        blob=f"sha256:{digest}",
        size=len(content),
        path=store.root / "sha256" / digest[:2] / digest[2:4] / digest,
    )
    assert store.path_of(stored.blob) == stored.path
    assert stored.path.read_bytes() == content


def test_empty_blob_is_a_blob(store: BlobStore) -> None:
    stored = store.store([], max_bytes=0)

    assert stored.blob == f"sha256:{hashlib.sha256(b'').hexdigest()}"
    assert stored.size == 0
    assert list(store.read_chunks(stored.blob)) == []


def test_identical_content_is_stored_once(store: BlobStore) -> None:
    first = store.store([b"same ", b"bytes"], max_bytes=100)
    inode = first.path.stat().st_ino
    second = store.store([b"same bytes"], max_bytes=100)

    assert second == first
    # The second commit discarded its own copy rather than replacing the first.
    assert first.path.stat().st_ino == inode
    assert files_under(store.root) == [first.path]


def test_writer_reports_its_size_and_commits_once(store: BlobStore) -> None:
    with store.writer(max_bytes=10) as writer:
        writer.write(b"abc")
        writer.write(b"de")
        assert writer.size == 5
        stored = writer.commit()
        with pytest.raises(BlobStoreError, match="already committed"):
            writer.write(b"f")
        with pytest.raises(BlobStoreError, match="already committed"):
            writer.commit()

    assert stored.size == 5
    assert store.path_of(stored.blob).read_bytes() == b"abcde"


def test_content_exactly_at_the_limit_is_accepted(store: BlobStore) -> None:
    stored = store.store([b"12345", b"67890"], max_bytes=10)

    assert stored.size == 10


def test_too_large_raises_and_leaves_no_file(store: BlobStore) -> None:
    with pytest.raises(BlobTooLargeError) as raised:
        store.store([b"12345", b"67890", b"x"], max_bytes=10)

    assert raised.value.max_bytes == 10
    assert "10 bytes" in str(raised.value)
    assert isinstance(raised.value, BlobStoreError)
    assert files_under(store.root) == []
    assert not (store.root / "sha256").exists()


def test_a_writer_that_refused_a_chunk_cannot_commit(store: BlobStore) -> None:
    with store.writer(max_bytes=4) as writer:
        writer.write(b"abc")
        with pytest.raises(BlobTooLargeError):
            writer.write(b"de")
        with pytest.raises(BlobStoreError, match="refused a chunk"):
            writer.commit()

    assert files_under(store.root) == []


def test_too_large_error_survives_pickling() -> None:
    # Celery ships a task's exception to the result backend by pickling it.
    copy = pickle.loads(pickle.dumps(BlobTooLargeError(1234)))  # noqa: S301 - our own bytes

    assert isinstance(copy, BlobTooLargeError)
    assert copy.max_bytes == 1234
    assert str(copy) == str(BlobTooLargeError(1234))


def test_exception_inside_the_writer_leaves_nothing(store: BlobStore) -> None:
    def interrupted_upload() -> None:
        with store.writer(100) as writer:
            writer.write(b"partial")
            assert len(files_under(store.root / "tmp")) == 1
            raise RuntimeError("upload interrupted")

    with pytest.raises(RuntimeError, match="upload interrupted"):
        interrupted_upload()

    assert files_under(store.root) == []


def test_leaving_the_writer_without_commit_leaves_nothing(store: BlobStore) -> None:
    with store.writer(100) as writer:
        writer.write(b"never committed")

    assert files_under(store.root) == []


def test_a_killed_writer_leaves_nothing_under_a_final_name(store: BlobStore) -> None:
    # The child writes part of a blob, says so, then waits on stdin until it is killed.
    child = (
        "import sys\n"
        "from pathlib import Path\n"
        "from workers.blob_store import BlobStore\n"
        "with BlobStore(Path(sys.argv[1])).writer(max_bytes=1 << 20) as writer:\n"
        "    writer.write(b'x' * 4096)\n"
        "    print('written', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", child, str(store.root)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == b"written\n"
        process.kill()
        process.wait(timeout=30)

    # The partial upload stays in tmp/ (nothing ran to remove it), never under sha256/.
    assert len(files_under(store.root / "tmp")) == 1
    assert not (store.root / "sha256").exists()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(HEX, id="no prefix"),
        pytest.param(f"md5:{HEX}", id="wrong prefix"),
        pytest.param(f"SHA256:{HEX}", id="uppercase prefix"),
        pytest.param(f"sha256:{HEX.upper()}", id="uppercase hex"),
        pytest.param(f"sha256:{HEX[:-1]}", id="63 digits"),
        pytest.param(f"sha256:{HEX}0", id="65 digits"),
        pytest.param(f"sha256:{HEX}\n", id="trailing newline"),
        pytest.param(f" sha256:{HEX}", id="leading space"),
        pytest.param(f"sha256:{HEX[:-1]}g", id="non-hex digit"),
        pytest.param("sha256:", id="empty digest"),
        pytest.param("", id="empty"),
        pytest.param("sha256:../../../../etc/passwd", id="dot-dot"),
        pytest.param("sha256:" + "../" * 21 + "a", id="dot-dot of the right length"),
        pytest.param(f"sha256:{HEX}/../../x", id="dot-dot after the digest"),
        pytest.param(f"sha256:{HEX[:-1]}/", id="slash"),
        pytest.param(f"sha256:{HEX[:-1]}\x00", id="nul byte"),
    ],
)
def test_invalid_ids_are_refused_everywhere(store: BlobStore, text: str) -> None:
    with pytest.raises(InvalidBlobIdError, match="sha256:' followed by 64 lowercase hex"):
        parse_blob_id(text)
    with pytest.raises(InvalidBlobIdError):
        store.path_of(text)
    with pytest.raises(InvalidBlobIdError):
        store.exists(text)
    with pytest.raises(InvalidBlobIdError):
        store.size_of(text)
    with pytest.raises(InvalidBlobIdError):
        store.read_chunks(text)
    with pytest.raises(InvalidBlobIdError), store.open(text):
        pass


def test_parse_blob_id_returns_the_hex() -> None:
    assert parse_blob_id(f"sha256:{HEX}") == HEX


def test_missing_blob_raises_not_found(store: BlobStore) -> None:
    blob = f"sha256:{HEX}"

    assert not store.exists(blob)
    with pytest.raises(BlobNotFoundError, match=HEX):
        store.size_of(blob)
    with pytest.raises(BlobNotFoundError, match=HEX):
        store.read_chunks(blob)
    with pytest.raises(BlobNotFoundError, match=HEX), store.open(blob):
        pass


def test_blob_deleted_between_read_chunks_and_iteration_raises_not_found(
    store: BlobStore,
) -> None:
    stored = store.store([b"short-lived"], max_bytes=100)
    chunks = store.read_chunks(stored.blob)
    stored.path.unlink()

    with pytest.raises(BlobNotFoundError):
        next(chunks)


@pytest.mark.parametrize(
    ("size", "chunk_size", "expected"),
    [
        (10, 4, [4, 4, 2]),
        (12, 4, [4, 4, 4]),
        (3, 4, [3]),
        (5, 1, [1, 1, 1, 1, 1]),
    ],
)
def test_read_chunks_yields_chunks_of_the_requested_size(
    store: BlobStore, size: int, chunk_size: int, expected: list[int]
) -> None:
    content = bytes(range(size))
    stored = store.store([content], max_bytes=size)

    chunks = list(store.read_chunks(stored.blob, chunk_size=chunk_size))

    assert [len(chunk) for chunk in chunks] == expected
    assert b"".join(chunks) == content


def test_read_chunks_refuses_a_chunk_size_below_one(store: BlobStore) -> None:
    stored = store.store([b"x"], max_bytes=1)

    with pytest.raises(ValueError, match="chunk_size"):
        store.read_chunks(stored.blob, chunk_size=0)


def test_a_64_mib_blob_streams_through_less_than_8_mib(store: BlobStore) -> None:
    count = 64
    expected = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        # Each chunk is made on demand, so the test itself holds one at a time.
        for index in range(count):
            chunk = index.to_bytes(1, "big") * MIB
            expected.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        stored = store.store(chunks(), max_bytes=count * MIB)
        _, write_peak = tracemalloc.get_traced_memory()

        tracemalloc.reset_peak()
        actual = hashlib.sha256()
        read_size = 0
        for chunk in store.read_chunks(stored.blob, chunk_size=MIB):
            actual.update(chunk)
            read_size += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(f"64 MiB blob, peak traced MiB: write {write_peak / MIB:.2f}, read {read_peak / MIB:.2f}")
    assert stored.size == count * MIB
    assert stored.blob == f"sha256:{expected.hexdigest()}"
    assert read_size == count * MIB
    assert actual.hexdigest() == expected.hexdigest()
    assert write_peak < 8 * MIB
    assert read_peak < 8 * MIB


def test_sweep_removes_only_abandoned_temporary_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    stored = store.store([b"kept"], max_bytes=100)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    abandoned = tmp_path / "tmp" / "upload-abandoned"
    abandoned.write_bytes(b"half a blob")
    os.utime(abandoned, (1_000, 1_000))
    fresh = tmp_path / "tmp" / "upload-fresh"
    fresh.write_bytes(b"still being written")

    removed = store.sweep_temporary(older_than=3600)

    assert removed == 1
    assert not abandoned.exists()
    assert fresh.exists()
    assert store.exists(stored.blob)
