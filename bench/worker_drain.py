"""Drain time of N sleeping io jobs: a Conveyor gevent worker against a plain Celery one.

Both workers run in this run, on this machine, one after the other, each on a private Redis,
with the same concurrency and the same task body. Prints both drain times, the floor
(N x sleep / concurrency) and the ratio Conveyor / plain Celery.

    .venv/bin/python bench/worker_drain.py --jobs 1000 --sleep 0.5 --concurrency 500
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from bench_processes import (
    Popen,
    conveyor_env,
    conveyor_worker,
    exit_on_sigterm,
    plain_env,
    plain_worker,
)
from bench_report import Row, report
from bench_services import celery_client, fresh_ledger, private_redis

WARMUP_JOBS = 50


def drain(redis_url: str, jobs: int, sleep: float) -> float:
    with celery_client(redis_url) as client:
        started = time.monotonic()
        results = [
            client.send_task(
                "diagnostics.echo", kwargs={"value": n, "sleep_seconds": sleep}, queue="io"
            )
            for n in range(jobs)
        ]
        for result in results:
            result.get(timeout=600)
        return time.monotonic() - started


def timed(
    worker: Callable[[str], AbstractContextManager[Popen]], redis_url: str, jobs: int, sleep: float
) -> float:
    """Start a worker on ``redis_url``, warm it up, time one drain, stop it (warm shutdown)."""
    with worker(redis_url):
        drain(redis_url, min(WARMUP_JOBS, jobs), 0.0)  # warm-up: connections, imports
        return drain(redis_url, jobs, sleep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument(
        "--tuned-plain",
        action="store_true",
        help="give plain Celery the shared result backend too (result_backend_thread_safe)",
    )
    args = parser.parse_args()
    exit_on_sigterm()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    try:
        with private_redis() as plain_url:

            def plain(url: str) -> AbstractContextManager[Popen]:
                env = plain_env(url, pool_size=args.concurrency + 20, tuned=args.tuned_plain)
                return plain_worker(
                    "bench.plain_celery_app",
                    "gevent",
                    args.concurrency,
                    env,
                    workdir=workdir,
                    name="plain",
                )

            plain_s = timed(plain, plain_url, args.jobs, args.sleep)
        with private_redis() as conveyor_url, fresh_ledger("drain") as database:

            def conveyor(url: str) -> AbstractContextManager[Popen]:
                env = conveyor_env(url, database, io_concurrency=str(args.concurrency))
                return conveyor_worker("io", env, workdir, "conveyor")

            conveyor_s = timed(conveyor, conveyor_url, args.jobs, args.sleep)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    floor = args.jobs * args.sleep / args.concurrency
    print(f"{args.jobs} jobs x {args.sleep} s sleep, gevent concurrency {args.concurrency}")
    print(f"  {'floor':<20} {floor:7.2f} s")
    label = "plain Celery (tuned)" if args.tuned_plain else "plain Celery"
    print(f"  {label:<20} {plain_s:7.2f} s")
    print(f"  {'Conveyor':<20} {conveyor_s:7.2f} s  (ledger on PostgreSQL)")
    print(f"  {'ratio':<20} {conveyor_s / plain_s:7.2f}x plain Celery")
    measure = f"drain s, {args.jobs} x {args.sleep:g} s sleep, gevent -c {args.concurrency}"
    rows = [
        Row(measure, conveyor_s, plain_s, f"{label} gevent"),
        Row(measure, conveyor_s, floor, "floor"),
    ]
    figures = {
        "jobs": args.jobs,
        "sleep": args.sleep,
        "concurrency": args.concurrency,
        "tuned_plain": str(args.tuned_plain),
        "floor_s": round(floor, 3),
        "plain_s": round(plain_s, 3),
        "conveyor_s": round(conveyor_s, 3),
        "ratio": round(conveyor_s / plain_s, 3),
    }
    report("worker_drain", rows, figures, started)


if __name__ == "__main__":
    main()
