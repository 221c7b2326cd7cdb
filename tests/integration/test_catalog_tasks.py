"""The catalog tasks end to end: jobs go in through the API, real gevent and prefork
workers run them against receivers on 127.0.0.1, and the ledger says what happened."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from PIL import Image

from api_shim.client import ConveyorClient, Job
from tasks.webhook_signature import verify_signature
from tests.integration.conftest import RETRY_SCALE, Stack, plain_client
from tests.support.api_server import ALICE, ApiServer
from tests.support.http_receiver import HttpReceiver, Reply, running_receiver
from tests.support.polling import wait_for
from tests.support.redis_server import private_redis
from tests.support.workers import running_worker, worker_environment
from workers.settings import DEV_WEBHOOK_SIGNING_SECRET

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    with running_receiver() as server:
        yield server


@pytest.fixture(scope="module")
def conveyor(api: ApiServer) -> Iterator[ConveyorClient]:
    with ConveyorClient(api.base_url, ALICE[1], timeout=30) as client:
        yield client


def log_records(text: str) -> Iterator[dict[str, Any]]:
    """The JSON log lines of a process's output."""
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                yield json.loads(line)


def run(conveyor: ConveyorClient, task: str, args: dict[str, object], timeout: float = 60) -> Job:
    """Enqueue through the API and wait until the job has finished; with its history."""
    job = conveyor.enqueue(task, args)
    conveyor.wait(job, timeout=timeout)
    return conveyor.get(job)


# --- webhooks.deliver --------------------------------------------------------------------


def test_a_webhook_arrives_signed_with_the_contract_headers(
    conveyor: ConveyorClient, receiver: HttpReceiver
) -> None:
    url = receiver.answer("/hooks/signed", Reply(status=204))
    payload = {"order": 42, "note": "café ✓"}

    job = run(conveyor, "webhooks.deliver", {"url": url, "payload": payload})

    assert job.status == "succeeded", job.error
    assert job.result["status_code"] == 204
    assert job.result["elapsed_ms"] >= 0
    [request] = receiver.requests_to("/hooks/signed")
    assert request.method == "POST"
    assert verify_signature(DEV_WEBHOOK_SIGNING_SECRET, request.headers, request.body)
    assert not verify_signature("another-secret", request.headers, request.body)
    assert request.headers["content-type"] == "application/json"
    assert re.fullmatch(r"conveyor/\d+\.\d+\.\d+.*", request.headers["user-agent"])
    assert request.headers["x-conveyor-job-id"] == job.id
    assert request.headers["x-conveyor-attempt"] == "1"
    assert request.headers["x-conveyor-signature"].startswith("v1=")
    assert request.body.decode() == '{"order":42,"note":"café ✓"}'
    assert job.history is not None
    assert job.history[0].pool == "gevent"


def test_500_500_200_takes_exactly_three_attempts_and_succeeds(
    conveyor: ConveyorClient, receiver: HttpReceiver
) -> None:
    url = receiver.answer("/hooks/flaky", Reply(status=500), Reply(status=500), Reply(status=200))

    job = run(conveyor, "webhooks.deliver", {"url": url, "payload": {"n": 1}})

    assert job.status == "succeeded", job.error
    assert job.attempts == 3
    requests = receiver.requests_to("/hooks/flaky")
    assert [r.headers["x-conveyor-attempt"] for r in requests] == ["1", "2", "3"]
    assert job.history is not None
    assert [a.status for a in job.history] == ["retrying", "retrying", "succeeded"]
    assert job.history[0].error is not None
    assert job.history[0].error.type == "TransientError"
    assert "answered 500" in job.history[0].error.message


def test_429_with_retry_after_delays_the_next_attempt_by_the_hint(
    conveyor: ConveyorClient, receiver: HttpReceiver
) -> None:
    url = receiver.answer(
        "/hooks/limited", Reply(status=429, headers={"Retry-After": "1"}), Reply(status=200)
    )

    job = run(conveyor, "webhooks.deliver", {"url": url, "payload": {"n": 2}})

    assert job.status == "succeeded", job.error
    assert job.history is not None
    first = job.history[0]
    assert first.error is not None
    assert first.error.type == "RateLimitedError"
    assert first.retry_delay_seconds is not None
    # the hint (1 s), scaled, plus at most 10 % jitter
    assert 1.0 * RETRY_SCALE <= first.retry_delay_seconds <= 1.1 * RETRY_SCALE + 1e-6
    earlier, later = receiver.requests_to("/hooks/limited")
    assert later.at - earlier.at >= 1.0 * RETRY_SCALE


def test_404_fails_after_one_attempt(conveyor: ConveyorClient, receiver: HttpReceiver) -> None:
    url = receiver.answer("/hooks/gone", Reply(status=404))

    job = run(conveyor, "webhooks.deliver", {"url": url, "payload": {}})

    assert job.status == "failed"
    assert job.attempts == 1
    assert job.error is not None
    assert job.error.type == "PermanentError"
    assert "answered 404" in job.error.message
    assert len(receiver.requests_to("/hooks/gone")) == 1


def test_a_redirect_is_not_followed_and_fails_the_delivery(
    conveyor: ConveyorClient, receiver: HttpReceiver
) -> None:
    receiver.answer("/hooks/elsewhere", Reply(status=200))
    url = receiver.answer(
        "/hooks/moved", Reply(status=307, headers={"Location": "/hooks/elsewhere"})
    )

    job = run(conveyor, "webhooks.deliver", {"url": url, "payload": {}})

    assert job.status == "failed"
    assert job.attempts == 1
    assert job.error is not None
    assert "redirect" in job.error.message
    assert receiver.requests_to("/hooks/elsewhere") == []


def test_a_slow_receiver_hits_the_timeout_and_the_delivery_is_retried(
    conveyor: ConveyorClient, receiver: HttpReceiver
) -> None:
    url = receiver.answer("/hooks/slow", Reply(status=200, delay=3.0), Reply(status=200))

    job = run(conveyor, "webhooks.deliver", {"url": url, "payload": {}, "timeout_seconds": 0.5})

    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert job.history is not None
    first = job.history[0]
    assert first.error is not None
    assert first.error.type == "TransientError"
    assert "timed out" in first.error.message
    assert first.finished_at is not None
    assert (first.finished_at - first.started_at).total_seconds() < 2.5


# --- http.fetch → files.digest → images.thumbnail ------------------------------------------


def photo_with_orientation(width: int, height: int, orientation: int) -> bytes:
    """A noisy JPEG whose EXIF says it must be turned (6: a quarter turn clockwise)."""
    image = Image.effect_noise((width, height), 64).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def test_fetch_digest_thumbnail_pipeline_runs_through_both_pools(
    conveyor: ConveyorClient, receiver: HttpReceiver
) -> None:
    photo = photo_with_orientation(2000, 1500, orientation=6)
    url = receiver.answer(
        "/photos/1.jpg", Reply(body=photo, headers={"Content-Type": "image/jpeg"})
    )

    fetched = run(conveyor, "http.fetch", {"url": url})
    assert fetched.status == "succeeded", fetched.error
    blob = fetched.result["blob"]
    assert fetched.result == {
        "blob": "sha256:" + hashlib.sha256(photo).hexdigest(),
        "size": len(photo),
        "content_type": "image/jpeg",
    }

    digested = run(
        conveyor, "files.digest", {"blob": blob, "algorithms": ["sha256", "blake2b", "md5"]}
    )
    assert digested.status == "succeeded", digested.error
    assert digested.result == {
        "size": len(photo),
        "digests": {
            "sha256": hashlib.sha256(photo).hexdigest(),
            "blake2b": hashlib.blake2b(photo).hexdigest(),
            "md5": hashlib.md5(photo, usedforsecurity=False).hexdigest(),
        },
    }

    thumbnailed = run(
        conveyor,
        "images.thumbnail",
        {"blob": blob, "sizes": [[400, 400], [64, 64]], "format": "png"},
    )
    assert thumbnailed.status == "succeeded", thumbnailed.error
    # upright the photo is 1500 x 2000, so each box is filled by its height
    sizes = [(t["width"], t["height"]) for t in thumbnailed.result["thumbnails"]]
    assert sizes == [(300, 400), (48, 64)]
    for thumbnail in thumbnailed.result["thumbnails"]:
        with conveyor.download_blob(thumbnail["blob"]) as download:
            data = b"".join(download)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            assert image.size == (thumbnail["width"], thumbnail["height"])

    pools = [
        job.history[0].pool if job.history else None for job in (fetched, digested, thumbnailed)
    ]
    assert pools == ["gevent", "prefork", "prefork"]


def _peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def test_a_200_mib_fetch_streams_without_growing_the_worker(
    conveyor: ConveyorClient, receiver: HttpReceiver, stack: Stack
) -> None:
    size = 200 * MiB
    url = receiver.answer("/big.bin", Reply(chunked_bytes=size))
    pid = stack.io.process.pid
    baseline = _rss_bytes(pid)
    # reset the peak ("high water mark") so it measures this fetch only
    Path(f"/proc/{pid}/clear_refs").write_text("5")

    job = run(conveyor, "http.fetch", {"url": url, "max_bytes": 300 * MiB}, timeout=120)

    assert job.status == "succeeded", job.error
    assert job.result["size"] == size
    growth = _peak_rss_bytes(pid) - baseline
    assert growth < 50 * MiB, f"worker peak RSS grew by {growth / MiB:.1f} MiB"
    # the download yields to other greenlets as it goes: no event-loop block is reported
    blocks = [
        record
        for record in log_records(stack.io.log())
        if record.get("blocked_seconds") is not None and record.get("job_id") == job.id
    ]
    assert blocks == []


def test_a_fetch_past_max_bytes_fails_at_once_and_leaves_no_blob(
    conveyor: ConveyorClient, receiver: HttpReceiver, stack: Stack
) -> None:
    url = receiver.answer("/too-big.bin", Reply(chunked_bytes=3 * MiB))

    job = run(conveyor, "http.fetch", {"url": url, "max_bytes": MiB})

    assert job.status == "failed"
    assert job.attempts == 1
    assert job.error is not None
    assert "larger than max_bytes" in job.error.message
    leftovers = list((Path(stack.env["CONVEYOR_STORAGE_DIR"]) / "tmp").glob("*"))
    assert leftovers == []


def test_a_gzip_bomb_is_cut_off_at_max_bytes(
    conveyor: ConveyorClient, receiver: HttpReceiver
) -> None:
    bomb = gzip.compress(bytes(256 * MiB), compresslevel=9)  # about 250 KiB on the wire
    url = receiver.answer("/bomb.bin", Reply(body=bomb, headers={"Content-Encoding": "gzip"}))

    job = run(conveyor, "http.fetch", {"url": url, "max_bytes": 4 * MiB})

    assert len(bomb) < MiB
    assert job.status == "failed"
    assert job.attempts == 1
    assert job.error is not None
    assert "larger than max_bytes" in job.error.message


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_image_fails_permanently(conveyor: ConveyorClient) -> None:
    blob = conveyor.upload_blob(_png_claiming(100_000, 100_000))

    job = run(conveyor, "images.thumbnail", {"blob": blob.id, "sizes": [[100, 100]]})

    assert job.status == "failed"
    assert job.attempts == 1
    assert job.error is not None
    assert job.error.type == "PermanentError"
    assert "decompression bomb" in job.error.message


def test_a_blob_that_is_not_an_image_fails_permanently(conveyor: ConveyorClient) -> None:
    blob = conveyor.upload_blob(b"%PDF-1.7 definitely not a picture\n")

    job = run(conveyor, "images.thumbnail", {"blob": blob.id, "sizes": [[100, 100]]})

    assert job.status == "failed"
    assert job.attempts == 1
    assert job.error is not None
    assert "not an image" in job.error.message


def test_task_arguments_are_checked_by_the_api_before_anything_is_queued(
    conveyor: ConveyorClient, api: ApiServer
) -> None:
    with api.client() as http:
        answer = http.post(
            "/v1/jobs",
            json={"task": "webhooks.deliver", "args": {"url": "file:///etc/passwd", "payload": {}}},
        )
    assert answer.status_code == 422
    assert "http" in answer.json()["error"]["message"]


# --- pool fitness ----------------------------------------------------------------------------


def test_cpu_work_sent_to_the_io_pool_is_reported_in_logs_and_metrics(
    stack: Stack, api: ApiServer
) -> None:
    result = stack.client.send_task("diagnostics.spin", kwargs={"milliseconds": 600}, queue="io")
    assert result.get(timeout=30)["pool"] == "gevent"

    def block_logged() -> dict[str, Any] | None:
        return next(
            (
                record
                for record in log_records(stack.io.log())
                if record.get("blocked_seconds") is not None and record.get("job_id") == result.id
            ),
            None,
        )

    record = wait_for(block_logged, timeout=10, what="the hub-block warning")
    assert record["task"] == "diagnostics.spin"
    assert record["level"] == "WARNING"
    assert "blocked the gevent event loop" in record["message"]
    assert 0.3 <= record["blocked_seconds"] <= 1.2  # 0.6 s, known to about one period

    with api.client() as http:
        metrics = http.get("/metrics").text
    assert re.search(
        r'conveyor_hub_blocked_total\{pool="gevent",task="diagnostics.spin"\} [1-9]', metrics
    ), metrics
    assert re.search(
        r'conveyor_pool_mismatch_total\{pool="gevent",task="diagnostics.spin"\} [1-9]', metrics
    )


def test_io_work_in_the_io_pool_does_not_block_the_event_loop(
    stack: Stack, receiver: HttpReceiver
) -> None:
    url = receiver.answer("/hooks/quiet", Reply(status=200, delay=0.3))
    results = [
        stack.client.send_task(
            "webhooks.deliver", kwargs={"url": url, "payload": {"n": n}}, queue="io"
        )
        for n in range(20)
    ]
    for result in results:
        assert result.get(timeout=30)["status_code"] == 200
    ids = {result.id for result in results}
    blocked = [
        record
        for record in log_records(stack.io.log())
        if record.get("blocked_seconds") is not None and record.get("job_id") in ids
    ]
    assert blocked == []


def test_metrics_endpoint_is_plain_prometheus_text(api: ApiServer) -> None:
    with httpx.Client(base_url=api.base_url) as http:
        answer = http.get("/metrics")
    assert answer.status_code == 200
    assert "# TYPE conveyor_hub_blocked_total counter" in answer.text


# --- the SSRF guard in a worker that may not reach private networks ----------------------------


@pytest.fixture(scope="module")
def guarded_stack(
    worker_settings: dict[str, str], tmp_path_factory: pytest.TempPathFactory, stack: Stack
) -> Iterator[tuple[Celery, Stack]]:
    """An io worker with private networks disallowed, on a Redis of its own."""
    directory = tmp_path_factory.mktemp("guarded")
    with private_redis(directory) as broker:
        settings = {**worker_settings, "redis_url": broker.url, "allow_private_networks": "false"}
        client = plain_client(broker.url)
        env = worker_environment(**settings)
        with running_worker(client, "io", "guarded@test", directory / "io.log", env):
            yield client, stack
        client.close()


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[::1]", "localhost", "127.1.2.3", "[::ffff:127.0.0.1]"]
)
def test_the_ssrf_guard_refuses_loopback_when_private_networks_are_disallowed(
    guarded_stack: tuple[Celery, Stack], receiver: HttpReceiver, host: str
) -> None:
    client, stack = guarded_stack
    path = f"/ssrf/{host.strip('[]')}"
    port = receiver.base_url.rsplit(":", 1)[1]
    receiver.answer(path, Reply(status=200))
    url = f"http://{host}:{port}{path}"

    deliver = client.send_task("webhooks.deliver", kwargs={"url": url, "payload": {}}, queue="io")
    fetch = client.send_task("http.fetch", kwargs={"url": url}, queue="io")

    for result in (deliver, fetch):
        job = stack.ledger.wait_finished(result.id)
        assert job.status == "failed"
        assert job.attempts == 1
        assert job.error is not None
        assert job.error["type"] == "BlockedAddressError"
        assert "private networks are not allowed" in job.error["message"]
    assert receiver.requests_to(path) == []
