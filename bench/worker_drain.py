"""Drain time of N sleeping io jobs: a Conveyor gevent worker against a plain Celery one.

Both workers run in this run, on this machine, one after the other, against the same Redis
(separate databases), with the same concurrency and the same task body. Prints both drain
times, the floor (N x sleep / concurrency) and the ratio Conveyor / plain Celery.

    .venv/bin/python bench/worker_drain.py --jobs 1000 --sleep 0.5 --concurrency 500
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_services import client_for, fresh_database, wait_ready
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS = "redis://127.0.0.1:6379"


def drain(client: Celery, jobs: int, sleep: float) -> float:
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


def run_worker(
    command: list[str], env: dict[str, str], node: str, url: str, *, jobs: int, sleep: float
) -> float:
    """Start a worker, warm it up, time one drain, stop it (warm shutdown)."""
    log_path = Path(tempfile.gettempdir()) / f"bench-{node.partition('@')[0]}.log"
    with (
        log_path.open("wb") as log,
        subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        ) as process,
    ):
        client = client_for(url)
        try:
            wait_ready(client, node, process)
            drain(client, min(50, jobs), 0.0)  # warm-up: connections, imports
            return drain(client, jobs, sleep)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
            client.close()


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
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}

    plain_url = f"{REDIS}/14"
    client_for(plain_url).backend.client.flushdb()
    plain = run_worker(
        [str(BIN / "celery"), "-A", "bench.plain_celery_app", "worker", "-P", "gevent",
         "-c", str(args.concurrency), "-Q", "io", "-n", "plain@bench", "--without-mingle",
         "-l", "WARNING"],
        {**base_env, "BENCH_REDIS_URL": plain_url, "PYTHONPATH": str(ROOT),
         "BENCH_POOL": str(args.concurrency + 20),
         "BENCH_TUNED": "1" if args.tuned_plain else "0"},
        "plain@bench", plain_url, jobs=args.jobs, sleep=args.sleep,
    )  # fmt: skip

    conveyor_url = f"{REDIS}/15"
    client_for(conveyor_url).backend.client.flushdb()
    database = fresh_database("conveyor_bench")
    env = {
        **base_env,
        "CONVEYOR_ENV": "test",
        "CONVEYOR_REDIS_URL": conveyor_url,
        "CONVEYOR_DATABASE_URL": database,
        "CONVEYOR_IO_CONCURRENCY": str(args.concurrency),
        "CONVEYOR_LOG_LEVEL": "WARNING",
    }
    subprocess.run([str(BIN / "conveyor"), "migrate"], env=env, check=True, cwd=ROOT)
    conveyor = run_worker(
        [str(BIN / "conveyor"), "worker", "io", "-n", "conveyor@bench"],
        env, "conveyor@bench", conveyor_url, jobs=args.jobs, sleep=args.sleep,
    )  # fmt: skip

    floor = args.jobs * args.sleep / args.concurrency
    print(f"{args.jobs} jobs x {args.sleep} s sleep, gevent concurrency {args.concurrency}")
    print(f"  {'floor':<20} {floor:7.2f} s")
    label = "plain Celery (tuned)" if args.tuned_plain else "plain Celery"
    print(f"  {label:<20} {plain:7.2f} s")
    print(f"  {'Conveyor':<20} {conveyor:7.2f} s  (ledger on PostgreSQL)")
    print(f"  {'ratio':<20} {conveyor / plain:7.2f}x plain Celery")


if __name__ == "__main__":
    main()
