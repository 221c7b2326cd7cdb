"""End-to-end latency on an idle stack: one job at a time from ``POST /v1/jobs`` until the
ledger says ``succeeded``, against plain Celery's ``send_task`` + ``AsyncResult.get()``.

Conveyor: ``conveyor api`` (one uvicorn process), one ``conveyor worker io`` and a fresh
PostgreSQL ledger, on a private Redis. Each job is ``diagnostics.echo``; its time runs from
just before the POST is written to the first read of the ledger that finds the job
``succeeded``. The ledger is read directly with SQL (one prepared ``SELECT status`` on one
connection), every millisecond: the API's ``GET /v1/jobs/{id}`` would add its own request to
every poll. Plain Celery: a gevent worker of ``bench/plain_celery_app.py`` with a Redis
result backend, on a Redis of its own; ``send_task`` then ``get()`` (the backend's pub/sub
tells the client). One job in flight at any time on both sides, after a warm-up.

    .venv/bin/python bench/latency.py --jobs 300
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.client import HTTPConnection
from pathlib import Path

import psycopg
from bench_processes import (
    HOST,
    conveyor_api,
    conveyor_env,
    conveyor_worker,
    exit_on_sigterm,
    plain_env,
    plain_worker,
)
from bench_report import Row, Target, report
from bench_services import celery_client, fresh_ledger, private_redis
from celery import Celery

TASK = "diagnostics.echo"
PLAIN_APP = "bench.plain_celery_app"
TARGET_P50_MS = 10.0
TARGET_P99_MS = 50.0
#: Seconds between two reads of the ledger while a job runs.
POLL_INTERVAL = 0.001
#: Seconds one job may take before the benchmark gives up.
JOB_TIMEOUT = 30.0
WARMUP_JOBS = 20
CONCURRENCY = 20


def percentile_ms(seconds: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``seconds``, in milliseconds."""
    ordered = sorted(seconds)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1] * 1000


@contextmanager
def temporary_directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ConveyorProducer:
    """Jobs through ``POST /v1/jobs`` on one keep-alive connection; the ledger read with SQL."""

    def __init__(self, port: int, secret: str, ledger: psycopg.Connection[tuple[str]]) -> None:
        self.http = HTTPConnection(HOST, port, timeout=JOB_TIMEOUT)
        self.headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        self.ledger = ledger
        # job id -> wall-clock times (s) of the POST, its 202 and the read that saw it succeeded
        self.timeline: dict[str, tuple[float, float, float]] = {}

    def round_trip(self, value: int) -> float:
        """Seconds from the POST of one job to the ledger read that finds it succeeded."""
        body = json.dumps({"task": TASK, "args": {"value": value}})
        posted, started = time.time(), time.perf_counter()
        self.http.request("POST", "/v1/jobs", body, self.headers)
        response = self.http.getresponse()
        answer = response.read()
        accepted = time.time()
        if response.status != 202:
            raise SystemExit(f"POST /v1/jobs answered {response.status}: {answer[:300]!r}")
        job_id = json.loads(answer)["id"]
        deadline = started + JOB_TIMEOUT
        while True:
            row = self.ledger.execute(
                "SELECT status FROM jobs WHERE id = %s", (job_id,), prepare=True
            ).fetchone()
            now = time.perf_counter()
            if row is not None and row[0] == "succeeded":
                self.timeline[job_id] = (posted, accepted, time.time())
                return now - started
            if row is not None and row[0] == "failed":
                raise SystemExit(f"job {job_id} failed")
            if now > deadline:
                raise SystemExit(f"job {job_id} not succeeded within {JOB_TIMEOUT:.0f} s")
            time.sleep(POLL_INTERVAL)

    def close(self) -> None:
        self.http.close()


def conveyor_latencies(redis_url: str, database: str, workdir: Path, jobs: int) -> list[float]:
    secret = secrets.token_urlsafe(24)
    env = conveyor_env(
        redis_url,
        database,
        api_keys=f"bench:{secret}",
        rate_limit="off",
        io_concurrency=str(CONCURRENCY),
        storage_dir=str(workdir / "blobs"),
    )
    with (
        conveyor_api(env, workdir) as api,
        conveyor_worker("io", env, workdir, "latency-io"),
        psycopg.connect(database, autocommit=True) as ledger,
    ):
        producer = ConveyorProducer(api.port, secret, ledger)
        try:
            for n in range(WARMUP_JOBS):
                producer.round_trip(-n)
            producer.timeline.clear()
            latencies = [producer.round_trip(n) for n in range(jobs)]
            print_breakdown(producer.timeline, ledger)
            return latencies
        finally:
            producer.close()


def print_breakdown(
    timeline: dict[str, tuple[float, float, float]], ledger: psycopg.Connection[tuple[str]]
) -> None:
    """Where a job's time goes, medians over the run, from the client's clock and the ledger's
    timestamps (one machine, one clock): the API's answer, the wait until the worker's claim
    round, the claim and the run until the success round, and the success round until the
    client's read saw it."""
    rows: Sequence[tuple[str, ...]] = ledger.execute(  # the connection reads text rows
        "SELECT id, extract(epoch FROM created_at)::text, extract(epoch FROM started_at)::text,"
        " extract(epoch FROM finished_at)::text FROM jobs WHERE id = ANY(%s)",
        (list(timeline),),
    ).fetchall()
    spans: dict[str, list[float]] = {
        "POST to 202": [], "POST to recorded": [], "recorded to claim round": [],
        "claim round to success round": [], "success round to seen": [],
    }  # fmt: skip
    for row in rows:
        posted, accepted, seen = timeline[str(row[0])]
        created, claimed, finished = (float(stamp) for stamp in row[1:])
        spans["POST to 202"].append(accepted - posted)
        spans["POST to recorded"].append(created - posted)
        spans["recorded to claim round"].append(claimed - created)
        spans["claim round to success round"].append(finished - claimed)
        spans["success round to seen"].append(seen - finished)
    print(
        "  where the time goes (medians): "
        + ", ".join(f"{name} {percentile_ms(values, 0.5):.1f} ms" for name, values in spans.items())
    )


def plain_round_trip(client: Celery, value: int) -> float:
    started = time.perf_counter()
    client.send_task(TASK, kwargs={"value": value}, queue="io").get(timeout=JOB_TIMEOUT)
    return time.perf_counter() - started


def plain_latencies(redis_url: str, workdir: Path, jobs: int) -> list[float]:
    env = plain_env(redis_url, pool_size=CONCURRENCY + 20)
    with (
        plain_worker(
            "bench.plain_celery_app",
            "gevent",
            CONCURRENCY,
            env,
            workdir=workdir,
            name="latency-plain",
        ),
        celery_client(redis_url) as client,
    ):
        for n in range(WARMUP_JOBS):
            plain_round_trip(client, -n)
        return [plain_round_trip(client, n) for n in range(jobs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="timed jobs on each side")
    args = parser.parse_args()
    exit_on_sigterm()
    started = time.monotonic()
    with temporary_directory() as workdir:
        with private_redis() as redis_url, fresh_ledger("latency") as database:
            conveyor = conveyor_latencies(redis_url, database, workdir, args.jobs)
        print(f"  Conveyor: {args.jobs} jobs, p50 {percentile_ms(conveyor, 0.5):.1f} ms")
        with private_redis() as redis_url:
            plain = plain_latencies(redis_url, workdir, args.jobs)
        print(f"  plain Celery: {args.jobs} jobs, p50 {percentile_ms(plain, 0.5):.1f} ms")

    figures: dict[str, float | int | str | None] = {
        "jobs": args.jobs,
        "poll": "SQL on the ledger every 1 ms",
    }
    rows = []
    for name, fraction, target in (("p50", 0.5, TARGET_P50_MS), ("p99", 0.99, TARGET_P99_MS)):
        conveyor_ms = percentile_ms(conveyor, fraction)
        plain_ms = percentile_ms(plain, fraction)
        figures[f"conveyor_{name}_ms"] = round(conveyor_ms, 2)
        figures[f"plain_{name}_ms"] = round(plain_ms, 2)
        rows.append(
            Row(
                f"{name} ms, POST /v1/jobs to ledger succeeded ({args.jobs} jobs, one at a time)",
                conveyor_ms,
                plain_ms,
                "plain send_task + get()",
                Target("<", target),
            )
        )
    figures["conveyor_max_ms"] = round(max(conveyor) * 1000, 2)
    figures["plain_max_ms"] = round(max(plain) * 1000, 2)
    report("latency", rows, figures, started)


if __name__ == "__main__":
    main()
