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
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from bench_processes import conveyor_env, conveyor_worker, exit_on_sigterm
from bench_report import Row, Target, report
from bench_services import celery_client, fresh_ledger, private_redis
from celery import Celery

TARGET_P99_RATIO = 1.2

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


def flow(client: Celery, rate: float, until: Callable[[float], bool]) -> dict[str, float]:
    """Send at ``rate`` jobs/s until ``until(seconds since the first send)`` is true;
    job id → send time (Unix)."""
    sent: dict[str, float] = {}
    started = checked = time.monotonic()
    while True:
        if time.monotonic() - checked >= 0.5:  # the check reads the ledger: twice a second
            if until(time.monotonic() - started):
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


def run_phase(
    env: dict[str, str],
    workdir: Path,
    retention: str,
    rate: float,
    until: Callable[[float], bool],
) -> list[float]:
    phase_env = {**env, "CONVEYOR_JOB_RETENTION": retention}
    with (
        conveyor_worker("io", phase_env, workdir, f"retention-{retention}"),
        celery_client(env["CONVEYOR_REDIS_URL"]) as client,
    ):
        sent = flow(client, rate, until)
        return latencies(env["CONVEYOR_DATABASE_URL"], sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    exit_on_sigterm()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-retention-"))
    try:
        with private_redis() as redis_url, fresh_ledger("retention") as database:
            env = conveyor_env(
                redis_url,
                database,
                io_concurrency=str(args.concurrency),
                storage_dir=str(workdir / "blobs"),
            )
            with psycopg.connect(database) as connection:
                for statement in (_BACKLOG_JOBS, _BACKLOG_ATTEMPTS):
                    connection.execute(statement, {"count": args.backlog})
            # the steady phase's time counts from its first send, not from the worker's start
            steady = run_phase(
                env, workdir, "14d", args.rate, lambda seconds: seconds > args.steady_seconds
            )
            assert backlog_left(database), "nothing is due in the steady phase"
            pruning_started = time.monotonic()
            pruning = run_phase(env, workdir, "1d", args.rate, lambda _: not backlog_left(database))
            pruned_in = time.monotonic() - pruning_started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    figures: dict[str, float | int | str | None] = {
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
    steady_p99, pruning_p99 = figures["steady_p99_ms"], figures["pruning_p99_ms"]
    assert isinstance(steady_p99, float)
    assert isinstance(pruning_p99, float)
    figures["p99_ratio"] = round(pruning_p99 / steady_p99, 2)
    print(
        f"{args.backlog} finished jobs pruned while {args.rate:.0f} jobs/s flow "
        f"(io worker, -c {args.concurrency})"
    )
    print(f"  {'phase':<22} {'jobs':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for label, phase in (("nothing to prune", "steady"), ("pruning the backlog", "pruning")):
        jobs, p50, p99 = (figures[f"{phase}_{name}"] for name in ("jobs", "p50_ms", "p99_ms"))
        print(f"  {label:<22} {jobs:>6} {p50:>8} {p99:>8}")
    print(f"  backlog gone in {pruned_in:.1f} s; p99 ratio {figures['p99_ratio']}x")
    row = Row(
        f"p99 ms, send to finished, {args.rate:g} jobs/s while {args.backlog:,} old jobs "
        "are pruned",
        pruning_p99,
        steady_p99,
        "same flow, nothing to prune",
        Target("<=", TARGET_P99_RATIO, on_ratio=True),
    )
    report("retention_pressure", [row], figures, started)


if __name__ == "__main__":
    main()
