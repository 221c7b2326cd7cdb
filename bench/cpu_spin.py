"""CPU-bound jobs: N ``diagnostics.spin`` jobs (a busy loop of M ms each) drained by the cpu
worker (prefork) against the floor, and by an io worker (gevent) to show why they belong on
prefork.

The floor is the CPU the jobs need spread over the cpu worker's processes: N x M ms / P
(200 x 50 ms / 2 = 5 s). One ``conveyor worker cpu`` with P processes drains the N jobs
(``send_task(queue="cpu")``), timed from the first send to the last result; then one
``conveyor worker io`` drains the same N jobs sent to ``io``: a gevent worker is one process,
so it can use one core at most and should take about P times the floor. Both on a fresh
PostgreSQL ledger and a private Redis; every job checked ``succeeded`` in the ledger.

    .venv/bin/python bench/cpu_spin.py --jobs 200 --milliseconds 50 --processes 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from bench_processes import conveyor_env, conveyor_worker, exit_on_sigterm
from bench_report import Row, Target, report
from bench_services import celery_client, fresh_ledger, ledger_statuses, private_redis

TASK = "diagnostics.spin"
TARGET_RATIO = 1.15
WARMUP_JOBS = 8
#: Seconds a drain may take before the benchmark gives up.
DRAIN_TIMEOUT = 600


def drain(redis_url: str, queue: str, jobs: int, milliseconds: int) -> tuple[float, list[str]]:
    """Seconds from the first send of ``jobs`` spins on ``queue`` to the last result; the ids."""
    with celery_client(redis_url) as client:
        started = time.monotonic()
        results = [
            client.send_task(TASK, kwargs={"milliseconds": milliseconds}, queue=queue)
            for _ in range(jobs)
        ]
        for result in results:
            result.get(timeout=DRAIN_TIMEOUT)
        return time.monotonic() - started, [str(result.id) for result in results]


def timed_worker(
    kind: Literal["io", "cpu"], env: dict[str, str], workdir: Path, args: argparse.Namespace
) -> float:
    """One worker of ``kind``: a warm-up, then one timed drain, checked in the ledger."""
    redis_url, database = env["CONVEYOR_REDIS_URL"], env["CONVEYOR_DATABASE_URL"]
    with conveyor_worker(kind, env, workdir, f"spin-{kind}"):
        drain(redis_url, kind, WARMUP_JOBS, 1)  # imports and connections in every process
        seconds, job_ids = drain(redis_url, kind, args.jobs, args.milliseconds)
    statuses = ledger_statuses(database, job_ids)
    if statuses != {"succeeded": args.jobs}:
        raise SystemExit(f"{kind} worker: ledger statuses {statuses}, expected all succeeded")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--milliseconds", type=int, default=50, help="busy loop per job")
    parser.add_argument("--processes", type=int, default=2, help="the cpu worker's processes")
    args = parser.parse_args()
    exit_on_sigterm()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cpu-spin-"))
    try:
        with private_redis() as redis_url, fresh_ledger("cpu_spin") as database:
            env = conveyor_env(
                redis_url,
                database,
                cpu_concurrency=str(args.processes),
                io_concurrency="50",
                storage_dir=str(workdir / "blobs"),
            )
            prefork = timed_worker("cpu", env, workdir, args)
            print(f"  cpu worker (prefork -c {args.processes}): {prefork:.2f} s", flush=True)
            gevent = timed_worker("io", env, workdir, args)
            print(f"  io worker (gevent): {gevent:.2f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    floor = args.jobs * args.milliseconds / 1000 / args.processes
    spins = f"{args.jobs} x {args.milliseconds} ms spin"
    floor_label = f"floor ({spins} / {args.processes} processes)"
    rows = [
        Row(
            f"drain s, {spins}, cpu worker (prefork -c {args.processes})",
            prefork,
            floor,
            floor_label,
            Target("<=", TARGET_RATIO, on_ratio=True),
        ),
        Row(f"drain s, {spins}, io worker (gevent, one process)", gevent, floor, floor_label),
    ]
    figures = {
        "jobs": args.jobs,
        "milliseconds": args.milliseconds,
        "processes": args.processes,
        "floor_s": round(floor, 3),
        "prefork_s": round(prefork, 3),
        "gevent_s": round(gevent, 3),
        "prefork_ratio": round(prefork / floor, 3),
        "gevent_ratio": round(gevent / floor, 3),
    }
    report("cpu_spin", rows, figures, started)


if __name__ == "__main__":
    main()
