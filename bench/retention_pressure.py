"""Does retention slow the jobs? Latency of jobs flowing at a steady rate, first with nothing
to prune, then while the same io worker prunes a backlog of finished jobs.

One run, one machine: a fresh PostgreSQL ledger with ``--backlog`` succeeded jobs (an attempt
each) that finished three days ago; a Conveyor io worker (gevent); a plain Celery client
sending ``diagnostics.echo`` at ``--rate`` jobs/s. Phase 1: the worker keeps jobs 14 days, so
nothing is due. Phase 2: the worker restarts keeping jobs 1 day, and prunes the backlog while
the same flow goes on, until the backlog is gone. A job's latency is from its send to the
ledger's ``finished_at``. Prints both phases' p50/p99, the ratio and one JSON line.

    .venv/bin/python bench/retention_pressure.py --backlog 100000 --rate 500
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from bench_services import client_for, drop_database, fresh_database, stop, wait_ready
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS = "redis://127.0.0.1:6379/13"
DATABASE = "conveyor_bench_retention"

_BACKLOG_JOBS = """
INSERT INTO jobs (id, task, queue, status, args, priority, attempts, max_attempts,
                  retry_generation, attempt_base, created_at, updated_at, started_at,
                  finished_at, result)
SELECT 'old-' || n, 'diagnostics.echo', 'io', 'succeeded', '{"value": 1}', 'normal', 1, 3,
       0, 0, now() - interval '3 days', now() - interval '3 days',
       now() - interval '3 days', now() - interval '3 days', '{"value": 1}'
FROM generate_series(1, %(count)s) AS n
"""
_BACKLOG_ATTEMPTS = """
INSERT INTO job_attempts (job_id, number, worker, pool, pid, outcome, started_at, finished_at)
SELECT 'old-' || n, 1, 'io@old', 'gevent', 1, 'succeeded',
       now() - interval '3 days', now() - interval '3 days'
FROM generate_series(1, %(count)s) AS n
"""


def backlog_left(database: str) -> bool:
    """Whether any of the backlog is left (one probe of the status/finish-time index)."""
    with psycopg.connect(database) as connection:
        row = connection.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'succeeded'"
            " AND finished_at < now() - interval '2 days')"
        ).fetchone()
    return bool(row and row[0])


def flow(client: Celery, rate: float, until: object) -> dict[str, float]:
    """Send at ``rate`` jobs/s until ``until()`` is true; job id → send time (Unix)."""
    sent: dict[str, float] = {}
    started = checked = time.monotonic()
    while True:
        if time.monotonic() - checked >= 0.5:  # the check reads the ledger: twice a second
            if until():  # type: ignore[operator]
                break
            checked = time.monotonic()
        due = started + len(sent) / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        result = client.send_task("diagnostics.echo", kwargs={"value": len(sent)}, queue="io")
        sent[result.id] = time.time()
    return sent


def latencies(database: str, sent: dict[str, float], timeout: float = 120) -> list[float]:
    """Each sent job's seconds from send to finish, once all have finished."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(database) as connection:
            rows = connection.execute(
                "SELECT id, extract(epoch FROM finished_at) FROM jobs "
                "WHERE id = ANY(%s) AND status = 'succeeded'",
                (list(sent),),
            ).fetchall()
        if len(rows) == len(sent) or time.monotonic() > deadline:
            return sorted(float(finished) - sent[job_id] for job_id, finished in rows)
        time.sleep(0.5)


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))]


def run_phase(env: dict[str, str], retention: str, rate: float, until: object) -> list[float]:
    log_path = Path(tempfile.gettempdir()) / f"bench-retention-{retention}.log"
    node = f"retention-{retention}@bench"
    command = [str(BIN / "conveyor"), "worker", "io", "-n", node]
    phase_env = {**env, "CONVEYOR_JOB_RETENTION": retention}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=phase_env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
    client = client_for(env["CONVEYOR_REDIS_URL"])
    try:
        wait_ready(client, node, process, log_path)
        sent = flow(client, rate, until)
        return latencies(env["CONVEYOR_DATABASE_URL"], sent)
    finally:
        stop(process)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()

    client_for(REDIS).backend.client.flushdb()
    database = fresh_database(DATABASE)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        "CONVEYOR_ENV": "test",
        "CONVEYOR_REDIS_URL": REDIS,
        "CONVEYOR_DATABASE_URL": database,
        "CONVEYOR_IO_CONCURRENCY": str(args.concurrency),
        "CONVEYOR_LOG_LEVEL": "INFO",
    }
    try:
        subprocess.run([str(BIN / "conveyor"), "migrate"], env=env, check=True, cwd=ROOT)
        with psycopg.connect(database) as connection:
            for statement in (_BACKLOG_JOBS, _BACKLOG_ATTEMPTS):
                connection.execute(statement, {"count": args.backlog})
        steady_until = time.monotonic() + args.steady_seconds
        steady = run_phase(env, "14d", args.rate, lambda: time.monotonic() > steady_until)
        assert backlog_left(database), "nothing is due in the steady phase"
        pruning_started = time.monotonic()
        pruning = run_phase(env, "1d", args.rate, lambda: not backlog_left(database))
        pruned_in = time.monotonic() - pruning_started
    finally:
        drop_database(DATABASE)

    figures = {
        "benchmark": "retention_pressure",
        "backlog": args.backlog,
        "rate": args.rate,
        "steady_jobs": len(steady),
        "steady_p50_ms": round(percentile(steady, 0.5) * 1000, 1),
        "steady_p99_ms": round(percentile(steady, 0.99) * 1000, 1),
        "pruning_jobs": len(pruning),
        "pruning_p50_ms": round(percentile(pruning, 0.5) * 1000, 1),
        "pruning_p99_ms": round(percentile(pruning, 0.99) * 1000, 1),
        "pruned_in_seconds": round(pruned_in, 1),
    }
    figures["p99_ratio"] = round(figures["pruning_p99_ms"] / figures["steady_p99_ms"], 2)
    print(f"{args.backlog} finished jobs pruned while {args.rate:.0f} jobs/s flow (io worker, -c {args.concurrency})")  # noqa: E501
    print(f"  {'phase':<22} {'jobs':>6} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"  {'nothing to prune':<22} {len(steady):>6} {figures['steady_p50_ms']:>8} {figures['steady_p99_ms']:>8}")  # noqa: E501
    print(f"  {'pruning the backlog':<22} {len(pruning):>6} {figures['pruning_p50_ms']:>8} {figures['pruning_p99_ms']:>8}")  # noqa: E501
    print(f"  backlog gone in {pruned_in:.1f} s; p99 ratio {figures['p99_ratio']}x (target 1.2x)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
