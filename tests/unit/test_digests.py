"""``files.digest``: one streaming pass, every algorithm, constant memory."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast, get_args

import pytest

from tasks.arguments import DigestAlgorithm, DigestArguments
from tasks.base import JobContext
from tasks.cpu.digests import digest, digest_chunks
from tasks.errors import PermanentError
from workers.blob_store import BlobStore

ALGORITHMS: list[str] = list(get_args(DigestAlgorithm))
DATA = bytes(range(256)) * 997 + b"tail"
MIB = 1 << 20


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def generated_chunks(count: int) -> Iterator[bytes]:
    """``count`` fresh 1 MiB chunks, each made when asked for."""
    for index in range(count):
        yield bytes([index % 251]) * MIB


def test_the_catalog_offers_five_algorithms() -> None:
    assert sorted(ALGORITHMS) == ["blake2b", "md5", "sha1", "sha256", "sha512"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_matches_hashlib(algorithm: str) -> None:
    size, digests = digest_chunks(split(DATA, 4096), [algorithm])

    assert size == len(DATA)
    assert digests == {algorithm: hashlib.new(algorithm, DATA).hexdigest()}


def test_all_algorithms_in_one_pass_in_the_order_asked() -> None:
    order = list(reversed(ALGORITHMS))
    chunks = iter(split(DATA, 1000))  # an iterator: it can be read only once

    size, digests = digest_chunks(chunks, order)

    assert size == len(DATA)
    assert list(digests) == order
    assert digests == {name: hashlib.new(name, DATA).hexdigest() for name in ALGORITHMS}


@pytest.mark.parametrize("chunk_size", [1, 7, 255, 256, 65_536, len(DATA), len(DATA) * 2])
def test_chunk_boundaries_do_not_change_the_digests(chunk_size: int) -> None:
    expected = digest_chunks([DATA], ALGORITHMS)

    assert digest_chunks(split(DATA, chunk_size), ALGORITHMS) == expected


@pytest.mark.parametrize("chunks", [[], [b""], [b"", b"", b""]])
def test_empty_input(chunks: list[bytes]) -> None:
    size, digests = digest_chunks(chunks, ALGORITHMS)

    assert size == 0
    assert digests == {name: hashlib.new(name, b"").hexdigest() for name in ALGORITHMS}
    assert digests["sha256"] == ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


def test_empty_chunks_between_data_are_harmless() -> None:
    chunks = [b"", DATA[:10], b"", DATA[10:], b""]

    assert digest_chunks(chunks, ["sha256"]) == digest_chunks([DATA], ["sha256"])


def test_memory_stays_constant_for_a_64_mib_stream() -> None:
    expected = hashlib.sha256()
    for chunk in generated_chunks(64):
        expected.update(chunk)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        size, digests = digest_chunks(generated_chunks(64), ["sha256", "sha512", "md5", "sha1"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(f"digest of 64 MiB: traced peak {peak / MIB:.2f} MiB")
    assert size == 64 * MIB
    assert digests["sha256"] == expected.hexdigest()
    assert peak < 4 * MIB


# --- the task function -------------------------------------------------------------------


def context_with(blobs: BlobStore) -> JobContext:
    return cast(JobContext, SimpleNamespace(blobs=blobs))


def test_digest_task_hashes_a_stored_blob(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    stored = blobs.store(split(DATA, 999), max_bytes=len(DATA))

    result = digest(
        context_with(blobs), DigestArguments(blob=stored.blob, algorithms=["md5", "blake2b"])
    )

    assert result == {
        "size": len(DATA),
        "digests": {
            "md5": hashlib.md5(DATA, usedforsecurity=False).hexdigest(),
            "blake2b": hashlib.blake2b(DATA).hexdigest(),
        },
    }


def test_digest_task_on_a_missing_blob_is_permanent(tmp_path: Path) -> None:
    missing = f"sha256:{hashlib.sha256(b'never stored').hexdigest()}"

    with pytest.raises(PermanentError, match=f"no blob {missing}"):
        digest(context_with(BlobStore(tmp_path / "blobs")), DigestArguments(blob=missing))
