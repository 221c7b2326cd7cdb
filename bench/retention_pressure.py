"""Does retention slow the jobs? Latency of jobs flowing at a steady rate before, while and
after the same workers prune a backlog of finished jobs.

One run, one machine, no restart between the windows: a fresh PostgreSQL ledger holds
``--backlog`` succeeded jobs (an attempt each), vacuumed and frozen as old rows of a real
ledger are, that cross the workers' retention (``CONVEYOR_JOB_RETENTION=1d``) 30 s after they
are written. ``--workers`` Conveyor io workers (gevent) run ``diagnostics.echo`` jobs that a
plain Celery client sends at ``--rate`` jobs/s from the workers' start. A worker looks for
expired jobs when it starts (none yet) and then once a minute, so pruning begins about a
minute into the flow, on its own, in the same processes and connections.

The windows come from what the ledger shows: the backlog's oldest job gone marks the start
of pruning, its newest gone the end (both probed by primary key five times a second). Jobs
sent in the first ``--warmup-seconds`` count in no window. A job's latency is from its send to
the ledger's ``finished_at``. Prints each window's p50/p99, the ratio of the pruning window's
p99 to the steady window's, and one JSON line.

``--control SECONDS`` runs the same timeline with nothing to prune (the backlog never crosses
the retention): the windows are cut where a pruning run's usually fall (pruning from 60 s
into the flow, for SECONDS), which shows how far the flow's own p99 wanders between windows.

    .venv/bin/python bench/retention_pressure.py --backlog 100000 --rate 500 --workers 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import psycopg
from bench_processes import conveyor_env, conveyor_worker, exit_on_sigterm
from bench_report import Row, Target, report
from bench_services import POSTGRES, celery_client, fresh_ledger, private_postgres, private_redis
from celery import Celery

TARGET_P99_RATIO = 1.2
#: The backlog crosses the retention this long after it is written, before the workers'
#: first look a minute after their start.
DUE_AFTER_SECONDS = 30

# the backlog's n-th job finished n µs after the first, so pruning (oldest first) takes
# 'old-1' first and 'old-<backlog>' last
_BACKLOG_JOBS = """
INSERT INTO jobs (id, task, queue, status, args, priority, attempts, max_attempts,
                  retry_generation, attempt_base, created_at, updated_at, started_at,
                  finished_at, result)
SELECT 'old-' || n, 'diagnostics.echo', 'io', 'succeeded', '{"value": 1}', 'normal', 1, 3,
       0, 0, due - interval '1 hour', due - interval '1 hour', due - interval '1 hour',
       due - (%(count)s - n) * interval '1 microsecond', '{"value": 1}'
FROM generate_series(1, %(count)s) AS n,
     (SELECT now() - interval '1 day' + %(due_after)s * interval '1 second' AS due) AS d
"""
_BACKLOG_ATTEMPTS = """
INSERT INTO job_attempts (job_id, number, worker, pool, pid, outcome, started_at, finished_at)
SELECT id, 1, 'io@old', 'gevent', 1, 'succeeded', started_at, finished_at
FROM jobs WHERE id LIKE 'old-%'
"""


#: Seconds between two looks at the ledger (the backlog's ends, a running vacuum).
LOOK_EVERY = 0.2
#: In a control run, where the windows are cut: pruning's usual start after the flow's.
CONTROL_PRUNING_FROM = 60.0


def setting(database: str, name: str) -> str:
    with psycopg.connect(database) as connection:
        row = connection.execute("SELECT current_setting(%s)", (name,)).fetchone()
    return str(row[0]) if row else "?"


def write_backlog(database: str, count: int, due_after: float) -> None:
    """``count`` old succeeded jobs with an attempt each, vacuumed and frozen, that cross a
    retention of one day ``due_after`` seconds from now."""
    with psycopg.connect(database) as connection:
        connection.execute(_BACKLOG_JOBS, {"count": count, "due_after": due_after})
        connection.execute(_BACKLOG_ATTEMPTS)
    with psycopg.connect(database, autocommit=True) as connection:
        for table in ("jobs", "job_attempts"):
            connection.execute(f"VACUUM (FREEZE, ANALYZE) {table}")


@dataclass
class BacklogWatch:
    """When the backlog's oldest and newest jobs left the ledger (Unix times), and when a
    vacuum (autovacuum, mostly) was seen running in the ledger's database."""

    database: str
    count: int
    started_at: float | None = None
    ended_at: float | None = None
    vacuums: list[float] = field(default_factory=list)

    def look(self) -> None:
        with psycopg.connect(self.database) as connection:
            row = connection.execute(
                "SELECT count(*) FROM pg_stat_progress_vacuum WHERE datname = current_database()"
            ).fetchone()
            if row and row[0]:
                self.vacuums.append(time.time())
            for job_id, attribute in ((f"old-{self.count}", "ended_at"), ("old-1", "started_at")):
                if getattr(self, attribute) is None:
                    row = connection.execute(
                        "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = %s)", (job_id,)
                    ).fetchone()
                    if row and not row[0]:
                        setattr(self, attribute, time.time())


def flow(
    client: Celery, rate: float, watch: BacklogWatch, after: float, limit: float
) -> dict[str, float]:
    """Send at ``rate`` jobs/s until ``after`` seconds past the backlog's end (or ``limit``
    seconds in all); job id → send time (Unix)."""
    sent: dict[str, float] = {}
    started = looked = time.monotonic()
    while time.monotonic() - started < limit:
        if time.monotonic() - looked >= LOOK_EVERY:
            watch.look()
            looked = time.monotonic()
            if watch.ended_at is not None and time.time() > watch.ended_at + after:
                break
        pause = started + len(sent) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        result = client.send_task("diagnostics.echo", kwargs={"value": len(sent)}, queue="io")
        sent[result.id] = time.time()
    return sent


def finish_times(database: str, sent: dict[str, float], timeout: float = 300) -> dict[str, float]:
    """Each sent job's ``finished_at`` (Unix), once all have finished or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(database) as connection:
            rows = connection.execute(
                "SELECT id, extract(epoch FROM finished_at) FROM jobs "
                "WHERE id = ANY(%s) AND status = 'succeeded'",
                (list(sent),),
            ).fetchall()
        if len(rows) == len(sent) or time.monotonic() > deadline:
            return {job_id: float(finished) for job_id, finished in rows}
        time.sleep(0.5)


def print_series(
    sent: dict[str, float], finished: dict[str, float], marks: list[float], vacuums: list[float]
) -> None:
    """p50/p99 of the jobs sent in each 5 s of the flow; ``<`` flags the seconds of
    ``marks``, ``v`` those in which a vacuum was seen."""
    first = min(sent.values())
    slices: dict[int, list[float]] = {}
    for job_id, sent_at in sent.items():
        if job_id in finished:
            slices.setdefault(int((sent_at - first) // 5), []).append(finished[job_id] - sent_at)
    flagged = {int((mark - first) // 5) for mark in marks}
    vacuumed = {int((seen - first) // 5) for seen in vacuums}
    print(f"  {'sent at':>8} {'jobs':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for number, values in sorted(slices.items()):
        values.sort()
        p50, p99 = (percentile(values, f) * 1000 for f in (0.5, 0.99))
        mark = (" v" if number in vacuumed else "  ") + (" <" if number in flagged else "")
        print(f"  {number * 5:>6} s {len(values):>6} {p50:>8.1f} {p99:>8.1f}{mark}")


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))]


@dataclass(frozen=True)
class Window:
    name: str
    latencies: list[float]

    def figures(self) -> Iterator[tuple[str, float | int]]:
        yield f"{self.name}_jobs", len(self.latencies)
        if self.latencies:
            yield f"{self.name}_p50_ms", round(percentile(self.latencies, 0.5) * 1000, 1)
            yield f"{self.name}_p99_ms", round(percentile(self.latencies, 0.99) * 1000, 1)


def windows(
    sent: dict[str, float], finished: dict[str, float], bounds: tuple[float, float, float]
) -> list[Window]:
    """The latencies of the jobs sent in each window: steady (from ``bounds[0]`` to the
    start of pruning), pruning (to its end), after (the rest)."""
    steady_from, pruning_from, pruning_to = bounds
    found: dict[str, list[float]] = {"steady": [], "pruning": [], "after": []}
    for job_id, sent_at in sent.items():
        if sent_at < steady_from or job_id not in finished:
            continue
        name = (
            "steady" if sent_at < pruning_from else "pruning" if sent_at <= pruning_to else "after"
        )
        found[name].append(finished[job_id] - sent_at)
    return [Window(name, sorted(values)) for name, values in found.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--workers", type=int, default=1, help="io worker processes")
    parser.add_argument("--concurrency", type=int, default=50, help="greenlets per worker")
    parser.add_argument("--warmup-seconds", type=float, default=10.0)
    parser.add_argument("--after-seconds", type=float, default=10.0)
    parser.add_argument(
        "--shared-postgres", action="store_true",
        help=f"use {POSTGRES} as configured instead of a private server with PostgreSQL's "
        "defaults (autovacuum on)",
    )  # fmt: skip
    parser.add_argument(
        "--control", type=float, metavar="SECONDS", help="nothing to prune; cut the windows "
        f"at {CONTROL_PRUNING_FROM:g} s and {CONTROL_PRUNING_FROM:g} + SECONDS"
    )  # fmt: skip
    args = parser.parse_args()
    control = args.control is not None
    exit_on_sigterm()
    started = time.monotonic()
    with (
        TemporaryDirectory(prefix="bench-retention-") as workdir,
        private_redis() as redis_url,
        nullcontext(POSTGRES) if args.shared_postgres else private_postgres() as server,
        fresh_ledger("retention", server) as database,
    ):
        autovacuum = setting(database, "autovacuum")
        env = conveyor_env(
            redis_url,
            database,
            io_concurrency=str(args.concurrency),
            storage_dir=str(Path(workdir) / "blobs"),
            job_retention="1d",
        )
        write_backlog(database, args.backlog, 10 * 86_400 if control else DUE_AFTER_SECONDS)
        watch = BacklogWatch(database, args.backlog)
        with ExitStack() as stack:
            for number in range(args.workers):
                stack.enter_context(
                    conveyor_worker("io", env, Path(workdir), f"retention-{number}")
                )
            client = stack.enter_context(celery_client(redis_url))
            flow_started = time.time()
            if control:
                watch.started_at = flow_started + CONTROL_PRUNING_FROM
                watch.ended_at = watch.started_at + args.control
            sent = flow(client, args.rate, watch, args.after_seconds, limit=900)
        finished = finish_times(database, sent)
    assert watch.started_at is not None, "pruning never began"
    assert watch.ended_at is not None, "pruning never ended"
    steady_from = flow_started + args.warmup_seconds
    assert watch.started_at > steady_from, "pruning began before the steady window"
    steady, pruning, after = windows(
        sent, finished, (steady_from, watch.started_at, watch.ended_at)
    )

    figures: dict[str, float | int | str | None] = {
        "control": control,
        "autovacuum": autovacuum,
        "backlog": args.backlog,
        "rate": args.rate,
        "workers": args.workers,
        "unfinished_jobs": len(sent) - len(finished),
        "steady_seconds": round(watch.started_at - steady_from, 1),
        "pruned_in_seconds": round(watch.ended_at - watch.started_at, 1),
        "vacuum_seen_seconds": round(len(watch.vacuums) * LOOK_EVERY, 1),
    }
    for window in (steady, pruning, after):
        figures.update(window.figures())
    steady_p99, pruning_p99 = figures["steady_p99_ms"], figures["pruning_p99_ms"]
    assert isinstance(steady_p99, float)
    assert isinstance(pruning_p99, float)
    figures["p99_ratio"] = round(pruning_p99 / steady_p99, 2)
    print(
        f"{args.backlog} finished jobs "
        f"{'kept (control: nothing to prune)' if control else 'pruned'} while {args.rate:g}"
        f" jobs/s flow ({args.workers} io worker(s), -c {args.concurrency};"
        f" PostgreSQL {'shared' if args.shared_postgres else 'private'}, autovacuum {autovacuum})"
    )
    print(f"  {'window':<34} {'jobs':>6} {'p50 ms':>8} {'p99 ms':>8}")
    labels = {
        "steady": f"nothing to prune ({figures['steady_seconds']} s)",
        "pruning": f"{'control window' if control else 'pruning the backlog'}"
        f" ({figures['pruned_in_seconds']} s)",
        "after": "after it",
    }
    for window in (steady, pruning, after):
        p50 = figures.get(f"{window.name}_p50_ms")
        p99 = figures.get(f"{window.name}_p99_ms")
        print(f"  {labels[window.name]:<34} {len(window.latencies):>6} {p50!s:>8} {p99!s:>8}")
    print(f"  p99 ratio {figures['p99_ratio']}x; unfinished jobs {figures['unfinished_jobs']}")
    print(
        "  each 5 s of the flow (< marks the warm-up's end, pruning's start and end;"
        " v a vacuum running in the ledger):"
    )
    print_series(sent, finished, [steady_from, watch.started_at, watch.ended_at], watch.vacuums)
    row = Row(
        f"p99 ms, send to finished, {args.rate:g} jobs/s while {args.backlog:,} old jobs "
        f"are {'kept (control)' if control else 'pruned'}",
        pruning_p99,
        steady_p99,
        "same flow and workers, nothing to prune",
        Target("<=", TARGET_P99_RATIO, on_ratio=True),
    )
    report("retention_pressure", [row], figures, started)


if __name__ == "__main__":
    main()
