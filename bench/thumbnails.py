"""Thumbnails: N ``images.thumbnail`` jobs on a Conveyor cpu worker vs the same code in a loop.

N photo-sized JPEGs (gradients, texture, shapes and grain, so decoding is realistic) are
generated once and stored in two blob stores, one per side. Then, in this run, on this
machine, one after the other:

* Conveyor: one ``conveyor worker cpu`` (prefork, ``--concurrency`` processes) drains N
  ``images.thumbnail`` jobs sent with ``send_task(queue="cpu")``; timed from the first send to
  the last result, and every job checked ``succeeded`` in the ledger.
* plain loop: ``tasks.cpu.thumbnails.store_thumbnails`` over the same N images in a
  ``multiprocessing.Pool`` of as many processes, one image per dispatch.

Both sides write their thumbnails into their own store, emptied of thumbnails before each
run (a blob already stored is not written again, which would favour the second side), and
must produce the same thumbnail blobs. Runs alternate between the sides.

    .venv/bin/python bench/thumbnails.py --images 200 --concurrency 2
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from bench_processes import conveyor_env, conveyor_worker, exit_on_sigterm
from bench_report import Row, Target
from bench_report import report as report_rows
from bench_services import celery_client, fresh_ledger, ledger_statuses, private_redis
from celery import Celery
from PIL import Image, ImageDraw

from tasks.arguments import ThumbnailFormat
from tasks.cpu.thumbnails import store_thumbnails
from workers.blob_store import BlobStore

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET_RATIO = 0.9
SIZE = (2000, 1500)
BOXES = [(320, 240), (160, 120), (64, 64)]
FORMAT: ThumbnailFormat = "webp"
WARMUP_IMAGES = 4
MAX_SOURCE_BYTES = 64 * 1024 * 1024


# --- images ---------------------------------------------------------------------------------


def make_jpeg(seed: int) -> bytes:
    """A 2000x1500 JPEG with photo-like content: nothing flat, something everywhere."""
    rng = random.Random(seed)
    width, height = SIZE
    # smooth colour gradients between a few random colours
    field = Image.frombytes("RGB", (6, 5), rng.randbytes(6 * 5 * 3)).resize(
        SIZE, Image.Resampling.BICUBIC
    )
    # texture: random noise at a quarter of the size, scaled up
    texture = Image.frombytes(
        "RGB", (width // 4, height // 4), os.urandom(width // 4 * (height // 4) * 3)
    ).resize(SIZE, Image.Resampling.BILINEAR)
    image = Image.blend(field, texture, 0.3)
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(20, 600), rng.randrange(20, 450)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = rng.choice((draw.ellipse, draw.rectangle))
        if rng.random() < 0.5:
            shape((x, y, x + w, y + h), fill=colour)
        else:
            shape((x, y, x + w, y + h), outline=colour, width=rng.randrange(2, 20))
    # fine sensor-like grain over everything
    grain = Image.effect_noise(SIZE, 40).convert("RGB")
    image = Image.blend(image, grain, 0.12)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def thumbnails_in(store: BlobStore, keep: set[str]) -> list[Path]:
    """Every blob file in ``store`` that is not one of the ``keep`` blobs."""
    return [
        path
        for path in (store.root / "sha256").rglob("*")
        if path.is_file() and f"sha256:{path.name}" not in keep
    ]


def clear_thumbnails(store: BlobStore, keep: set[str]) -> None:
    for path in thumbnails_in(store, keep):
        path.unlink()


# --- the plain loop -------------------------------------------------------------------------


def plain_thumbnails(root: str, blob: str) -> list[dict[str, Any]]:
    """What the task does, called directly: one image into its thumbnails."""
    return store_thumbnails(BlobStore(Path(root)), blob, BOXES, FORMAT)


def run_plain(pool: Any, root: Path, blobs: list[str]) -> tuple[float, list[Any]]:
    call: Callable[[str], list[dict[str, Any]]] = functools.partial(plain_thumbnails, str(root))
    started = time.monotonic()
    results = list(pool.imap_unordered(call, blobs, chunksize=1))
    return time.monotonic() - started, results


# --- Conveyor -------------------------------------------------------------------------------


def run_conveyor(client: Celery, blobs: list[str]) -> tuple[float, list[Any], list[str]]:
    sizes = [list(box) for box in BOXES]
    started = time.monotonic()
    results = [
        client.send_task(
            "images.thumbnail",
            kwargs={"blob": blob, "sizes": sizes, "format": FORMAT},
            queue="cpu",
        )
        for blob in blobs
    ]
    outputs = [result.get(timeout=600)["thumbnails"] for result in results]
    return time.monotonic() - started, outputs, [str(result.id) for result in results]


def checked_conveyor_run(
    client: Celery, images: list[str], database: str
) -> tuple[float, list[Any]]:
    """A timed drain, then the ledger's account of it: every job succeeded."""
    seconds, outputs, job_ids = run_conveyor(client, images)
    statuses = ledger_statuses(database, job_ids)
    if statuses != {"succeeded": len(images)}:
        raise SystemExit(f"ledger statuses {statuses}, expected {len(images)} succeeded")
    return seconds, outputs


def check_same_thumbnails(
    produced: dict[str, set[str]], conveyor_store: BlobStore, sources: set[str]
) -> None:
    if produced["plain"] != produced["conveyor"]:
        raise SystemExit("the two sides made different thumbnails")
    on_disk = {f"sha256:{path.name}" for path in thumbnails_in(conveyor_store, sources)}
    if not produced["conveyor"] <= on_disk:
        raise SystemExit("Conveyor's thumbnails are not all in its blob store")


def thumbnail_blobs(outputs: list[Any], expected: int) -> set[str]:
    blobs = {thumbnail["blob"] for output in outputs for thumbnail in output}
    if len(outputs) != expected or any(len(output) != len(BOXES) for output in outputs):
        raise SystemExit(f"expected {expected} results of {len(BOXES)} thumbnails each")
    return blobs


# --- the run --------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, plain: list[float], conveyor: list[float], mean_mb: float, load: str
) -> None:
    n = args.images
    ratios = [p / c for p, c in zip(plain, conveyor, strict=True)]  # rate ratio = time ratio^-1
    boxes = ", ".join(f"{w}x{h}" for w, h in BOXES)
    print()
    print(
        f"{n} JPEG {SIZE[0]}x{SIZE[1]} (mean {mean_mb:.2f} MB) -> {FORMAT} {boxes}; "
        f"{args.concurrency} processes each side"
    )
    print(f"{os.cpu_count()} cores shared with everything; load average {load}")
    print()
    print(f"  {'run':<7} {'plain loop (Pool)':>26} {'Conveyor cpu worker':>26} {'ratio':>7}")
    for number, (p, c, ratio) in enumerate(zip(plain, conveyor, ratios, strict=True), 1):
        print(
            f"  {number:<7} {n / p:>11.1f} img/s ({p:>6.2f} s) {n / c:>11.1f} img/s ({c:>6.2f} s)"
            f" {ratio:>6.2f}x"
        )
    if len(ratios) > 1:
        p, c = statistics.median(plain), statistics.median(conveyor)
        print(
            f"  {'median':<7} {n / p:>11.1f} img/s ({p:>6.2f} s) {n / c:>11.1f} img/s ({c:>6.2f} s)"
            f" {statistics.median(ratios):>6.2f}x"
        )
    if len(ratios) > 1:
        print("  (median row: median of each column; its ratio is the median per-run ratio)")
    print()
    print(
        f"checked: every Conveyor run has {n} succeeded jobs in the ledger; both sides stored "
        f"the same {n * len(BOXES)} thumbnail blobs"
    )
    ratio = statistics.median(ratios)
    verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
    print(f"target Conveyor / plain loop >= {TARGET_RATIO}: {verdict} ({ratio:.2f}x)")


def report_line(
    args: argparse.Namespace, plain: list[float], conveyor: list[float], started: float
) -> None:
    """The row and the JSON line: the median run of each side, as images/s."""
    n = args.images
    plain_rate, conveyor_rate = n / statistics.median(plain), n / statistics.median(conveyor)
    row = Row(
        f"images/s, {n} JPEG {SIZE[0]}x{SIZE[1]} to {len(BOXES)} {FORMAT} thumbnails, "
        f"{args.concurrency} processes, median of {args.repeat}",
        conveyor_rate,
        plain_rate,
        f"plain loop (multiprocessing.Pool({args.concurrency}))",
        Target(">=", TARGET_RATIO, on_ratio=True),
    )
    figures = {
        "images": n,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "plain_images_per_s": round(plain_rate, 2),
        "conveyor_images_per_s": round(conveyor_rate, 2),
        "plain_s": ",".join(f"{seconds:.2f}" for seconds in plain),
        "conveyor_s": ",".join(f"{seconds:.2f}" for seconds in conveyor),
        "ratio": round(conveyor_rate / plain_rate, 3),
    }
    report_rows("thumbnails", [row], figures, started)


def main() -> None:  # noqa: PLR0915 - one run, top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2, help="processes on each side")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side")
    args = parser.parse_args()
    run_started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-thumbnails-"))
    plain_store = BlobStore(workdir / "plain")
    conveyor_store = BlobStore(workdir / "conveyor")
    plain_times: list[float] = []
    conveyor_times: list[float] = []
    ok = False
    # the plain side's processes, forked now, before this process holds any connection
    with Pool(args.concurrency) as pool:
        exit_on_sigterm()  # so no worker or pool process is left behind
        try:
            started = time.monotonic()
            count = WARMUP_IMAGES + args.images
            blobs: list[str] = []
            sizes: list[int] = []
            for data in pool.imap(make_jpeg, range(count), chunksize=4):
                stored = plain_store.store([data], max_bytes=MAX_SOURCE_BYTES)
                conveyor_store.store([data], max_bytes=MAX_SOURCE_BYTES)
                blobs.append(stored.blob)
                sizes.append(stored.size)
            warmup, images = blobs[:WARMUP_IMAGES], blobs[WARMUP_IMAGES:]
            sources = set(blobs)
            mean_mb = statistics.mean(sizes[WARMUP_IMAGES:]) / 1e6
            print(
                f"{count} images generated in {time.monotonic() - started:.1f} s "
                f"(mean {mean_mb:.2f} MB); blob stores in {workdir}",
                flush=True,
            )
            with private_redis() as redis_url, fresh_ledger("thumbnails") as database:
                env = conveyor_env(
                    redis_url,
                    database,
                    cpu_concurrency=str(args.concurrency),
                    storage_dir=str(conveyor_store.root),
                )
                with (
                    conveyor_worker("cpu", env, workdir, "thumbnails"),
                    celery_client(redis_url) as client,
                ):
                    # warm-up: imports and connections in every worker process, on other images
                    run_plain(pool, plain_store.root, warmup)
                    run_conveyor(client, warmup)
                    print("worker ready, both sides warmed up", flush=True)

                    for number in range(1, args.repeat + 1):
                        produced: dict[str, set[str]] = {}
                        # alternate who goes first, so a drift in the load hits both sides
                        order = ("plain", "conveyor") if number % 2 else ("conveyor", "plain")
                        for side in order:
                            if side == "plain":
                                clear_thumbnails(plain_store, sources)
                                seconds, outputs = run_plain(pool, plain_store.root, images)
                                plain_times.append(seconds)
                            else:
                                clear_thumbnails(conveyor_store, sources)
                                seconds, outputs = checked_conveyor_run(client, images, database)
                                conveyor_times.append(seconds)
                            produced[side] = thumbnail_blobs(outputs, args.images)
                            print(f"  run {number}: {side} {seconds:.2f} s", flush=True)
                        check_same_thumbnails(produced, conveyor_store, sources)
            load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
            ok = True
        finally:
            if ok:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"blob stores and the worker log kept in {workdir}", file=sys.stderr)
    report(args, plain_times, conveyor_times, mean_mb, load)
    report_line(args, plain_times, conveyor_times, run_started)


if __name__ == "__main__":
    main()
