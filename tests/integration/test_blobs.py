"""Blobs stream through the API: a 50 MiB round trip leaves the server's memory flat."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.support.api_server import ApiServer
from tests.support.workers import children_of

SIZE = 50 * 1024 * 1024
CHUNK = 256 * 1024


def _peak_rss_kib(pid: int) -> int:
    """The highest resident set size ``pid`` has had (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def _server_processes(api: ApiServer) -> list[int]:
    return [api.process.pid, *children_of(api.process.pid)]


def _chunks(seed: bytes) -> Iterator[bytes]:
    block = hashlib.sha256(seed).digest() * (CHUNK // 32)
    for index in range(SIZE // CHUNK):
        yield index.to_bytes(8, "big") + block[8:]


def test_a_50_mib_blob_round_trip_keeps_server_memory_flat(api: ApiServer) -> None:
    seed = os.urandom(16)
    expected = hashlib.sha256()
    for chunk in _chunks(seed):
        expected.update(chunk)
    with api.client() as client:
        client.get("/healthz")  # every server process has started and settled
        before = {pid: _peak_rss_kib(pid) for pid in _server_processes(api)}

        stored = client.post(
            "/v1/blobs",
            content=_chunks(seed),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert stored.status_code == 201, stored.text
        blob = stored.json()
        assert blob == {"blob": f"sha256:{expected.hexdigest()}", "size": SIZE}

        received = hashlib.sha256()
        size = 0
        with client.stream("GET", f"/v1/blobs/{blob['blob']}") as answer:
            assert answer.status_code == 200
            assert int(answer.headers["Content-Length"]) == SIZE
            for chunk in answer.iter_bytes():
                received.update(chunk)
                size += len(chunk)
        after = {pid: _peak_rss_kib(pid) for pid in before}

    assert size == SIZE
    assert received.hexdigest() == expected.hexdigest()
    growth_mib = max(after[pid] - before[pid] for pid in before) / 1024
    print(f"\n50 MiB blob round trip: server peak RSS growth {growth_mib:.1f} MiB")
    assert growth_mib < 20, f"a server process grew by {growth_mib:.1f} MiB"
