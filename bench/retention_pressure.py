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

``--alternate SECONDS`` compares within the same minutes instead: once pruning has begun, the
benchmark holds the workers' retention turn (:data:`workers.retention_turns.TURN_KEY`) in
every other slot of SECONDS, so the workers delete in one slot and not in the next, until the
backlog is gone. Jobs sent in deleting slots are compared with jobs sent in held-off slots
(the first :data:`SLOT_GUARD` seconds of each slot count in neither, for a batch in flight).
Slow drift of the flow's own latency falls on both sides alike; what follows a batch for
longer than a slot (a vacuum of the deleted rows, a checkpoint) does too, so this measures
the deletes themselves. With ``--control`` it is an A/A comparison: how far two interleaved
halves of the same flow differ with nothing to prune.

    .venv/bin/python bench/retention_pressure.py --backlog 100000 --rate 500 --workers 2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory

import psycopg
import redis
from bench_processes import conveyor_env, conveyor_worker, exit_on_sigterm
from bench_report import Row, Target, report
from bench_services import POSTGRES, celery_client, fresh_ledger, private_postgres, private_redis
from celery import Celery

from workers.retention_turns import TURN_KEY

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

    def left(self) -> int:
        """How many of the backlog's jobs are still in the ledger."""
        with psycopg.connect(self.database) as connection:
            row = connection.execute("SELECT count(*) FROM jobs WHERE id LIKE 'old-%'").fetchone()
        return int(row[0]) if row else 0

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


#: The first seconds of each slot of an alternating run, whose jobs count on neither side.
SLOT_GUARD = 0.5
#: The retention turn's holder in an alternating run, and how long one hold lasts unrenewed.
_HOLDER = "retention-pressure"
_HOLD_MS = 1500
# the hold is given back only if the benchmark still holds it (a worker's may follow)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end"


@dataclass
class Alternation:
    """Pruning allowed and held off in turns of ``slot`` seconds from pruning's start to its
    end, by holding the workers' retention turn in the odd slots.

    It checks itself: the backlog's jobs left are counted once past each slot's guard, and
    again as each held-off slot ends, before the turn is given back; ``leaked`` sums what
    left the ledger in held-off slots past their guard (it should stay 0)."""

    broker: redis.Redis
    slot: float
    holding: bool = False
    leaked: int = 0
    _counted_slot: int | None = None
    _left_when_held: int | None = None

    def slot_of(self, moment: float, watch: BacklogWatch) -> tuple[int, float] | None:
        """The number of the slot ``moment`` fell in and how far into it, or None outside
        the alternation."""
        if watch.started_at is None or moment < watch.started_at:
            return None
        if watch.ended_at is not None and moment >= watch.ended_at:
            return None
        number, into = divmod(moment - watch.started_at, self.slot)
        return int(number), into

    def place(self, moment: float, watch: BacklogWatch) -> str | None:
        """Where ``moment`` fell: ``deleting`` or ``held off`` (a slot of either kind),
        ``guard`` (a slot's first seconds), or None (outside the alternation)."""
        slot = self.slot_of(moment, watch)
        if slot is None:
            return None
        number, into = slot
        if into < SLOT_GUARD:
            return "guard"
        return "deleting" if number % 2 == 0 else "held off"

    def steer(self, watch: BacklogWatch) -> None:
        """Hold or give back the turn for the slot that runs now (called every look)."""
        now = time.time()
        slot = self.slot_of(now, watch)
        if slot is not None and slot[0] % 2 == 1:
            # renewed every look: a worker whose batch ran into the slot overwrites it
            self.broker.set(TURN_KEY, _HOLDER, px=_HOLD_MS)
            self.holding = True
        elif self.holding:
            if self._left_when_held is not None:
                self.leaked += self._left_when_held - watch.left()
            self._left_when_held = None
            self.broker.eval(_RELEASE, 1, TURN_KEY, _HOLDER)
            self.holding = False
        if slot is not None and slot[1] >= SLOT_GUARD and slot[0] != self._counted_slot:
            # one count past each slot's guard, in either kind of slot alike
            self._counted_slot = slot[0]
            left = watch.left()
            if slot[0] % 2 == 1:
                self._left_when_held = left


def flow(
    client: Celery,
    rate: float,
    watch: BacklogWatch,
    after: float,
    limit: float,
    *,
    alternation: Alternation | None = None,
) -> dict[str, float]:
    """Send at ``rate`` jobs/s until ``after`` seconds past the backlog's end (or ``limit``
    seconds in all), steering ``alternation`` if given; job id → send time (Unix)."""
    sent: dict[str, float] = {}
    started = looked = time.monotonic()
    while time.monotonic() - started < limit:
        if time.monotonic() - looked >= LOOK_EVERY:
            watch.look()
            if alternation is not None:
                alternation.steer(watch)
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


def unfinished_statuses(database: str, job_ids: list[str]) -> dict[str, int]:
    """How many of ``job_ids`` the ledger holds in each status, and how many it lacks."""
    with psycopg.connect(database) as connection:
        rows = connection.execute(
            "SELECT status, count(*) FROM jobs WHERE id = ANY(%s) GROUP BY status", (job_ids,)
        ).fetchall()
    found = {str(status): int(count) for status, count in rows}
    return {**found, "not in the ledger": len(job_ids) - sum(found.values())}


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

    @property
    def p99_ms(self) -> float | None:
        if not self.latencies:
            return None
        return round(percentile(self.latencies, 0.99) * 1000, 1)

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


def alternating_windows(
    sent: dict[str, float], finished: dict[str, float], alternation: Alternation,
    watch: BacklogWatch,
) -> list[Window]:  # fmt: skip
    """The latencies of the jobs sent in deleting slots and in held-off slots."""
    found: dict[str | None, list[float]] = {"deleting": [], "held off": []}
    for job_id, sent_at in sent.items():
        side = alternation.place(sent_at, watch)
        if side in found and job_id in finished:
            found[side].append(finished[job_id] - sent_at)
    deleting, held_off = (sorted(found[side]) for side in ("deleting", "held off"))
    return [Window("deleting", deleting), Window("held_off", held_off)]


def arguments() -> argparse.Namespace:
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
    parser.add_argument(
        "--alternate", type=float, metavar="SECONDS", help="hold pruning off in every other "
        "slot of SECONDS and compare the jobs sent in deleting and held-off slots"
    )  # fmt: skip
    return parser.parse_args()


@dataclass
class FlowRun:
    """What one run sent and saw: send and finish times, the backlog's watch, the flow's
    start (Unix), the ledger's autovacuum setting and the alternation, if any."""

    sent: dict[str, float]
    finished: dict[str, float]
    watch: BacklogWatch
    flow_started: float
    autovacuum: str
    alternation: Alternation | None
    #: the ledger's statuses of the jobs that had not succeeded when the wait ended
    unfinished: dict[str, int]


def run_flow(args: argparse.Namespace) -> FlowRun:
    """Write the backlog, start the workers and send the flow until pruning has ended."""
    control = args.control is not None
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
            broker = stack.enter_context(redis.Redis.from_url(redis_url))
            alternation = Alternation(broker, args.alternate) if args.alternate else None
            flow_started = time.time()
            if control:
                watch.started_at = flow_started + CONTROL_PRUNING_FROM
                watch.ended_at = watch.started_at + args.control
            sent = flow(client, args.rate, watch, args.after_seconds, 1800, alternation=alternation)
            # while the workers still run: a queue left at the flow's end drains into the
            # figures instead of counting as unfinished
            finished = finish_times(database, sent)
        missing = [job_id for job_id in sent if job_id not in finished]
        unfinished = unfinished_statuses(database, missing) if missing else {}
    return FlowRun(sent, finished, watch, flow_started, autovacuum, alternation, unfinished)


def print_windows(
    labelled: list[tuple[str, Window]], figures: dict[str, float | int | str | None]
) -> None:
    for label, window in labelled:
        p50 = figures.get(f"{window.name}_p50_ms")
        p99 = figures.get(f"{window.name}_p99_ms")
        print(f"  {label:<34} {len(window.latencies):>6} {p50!s:>8} {p99!s:>8}")


def p99_ratio(figures: dict[str, float | int | str | None], window: str, baseline: str) -> float:
    p99, baseline_p99 = figures[f"{window}_p99_ms"], figures[f"{baseline}_p99_ms"]
    assert isinstance(p99, float)
    assert isinstance(baseline_p99, float)
    return round(p99 / baseline_p99, 2)


def main() -> None:
    args = arguments()
    control = args.control is not None
    exit_on_sigterm()
    started = time.monotonic()
    run = run_flow(args)
    sent, finished, watch = run.sent, run.finished, run.watch
    assert watch.started_at is not None, "pruning never began"
    assert watch.ended_at is not None, "pruning never ended"
    steady_from = run.flow_started + args.warmup_seconds
    assert watch.started_at > steady_from, "pruning began before the steady window"
    steady, pruning, after = windows(
        sent, finished, (steady_from, watch.started_at, watch.ended_at)
    )
    sides = alternating_windows(sent, finished, run.alternation, watch) if run.alternation else []

    figures: dict[str, float | int | str | None] = {
        "control": control,
        "autovacuum": run.autovacuum,
        "backlog": args.backlog,
        "rate": args.rate,
        "workers": args.workers,
        "unfinished_jobs": len(sent) - len(finished),
        "steady_seconds": round(watch.started_at - steady_from, 1),
        "pruned_in_seconds": round(watch.ended_at - watch.started_at, 1),
        "vacuum_seen_seconds": round(len(watch.vacuums) * LOOK_EVERY, 1),
    }
    for window in (steady, pruning, after, *sides):
        figures.update(window.figures())
    figures["p99_ratio"] = p99_ratio(figures, "pruning", "steady")
    if sides:
        figures["alternate_seconds"] = args.alternate
        figures["alternation_p99_ratio"] = p99_ratio(figures, "deleting", "held_off")
    print(
        f"{args.backlog} finished jobs "
        f"{'kept (control: nothing to prune)' if control else 'pruned'} while {args.rate:g}"
        f" jobs/s flow ({args.workers} io worker(s), -c {args.concurrency}; PostgreSQL"
        f" {'shared' if args.shared_postgres else 'private'}, autovacuum {run.autovacuum})"
    )
    print(f"  {'window':<34} {'jobs':>6} {'p50 ms':>8} {'p99 ms':>8}")
    pruning_label = "control window" if control else "pruning the backlog"
    print_windows(
        [
            (f"nothing to prune ({figures['steady_seconds']} s)", steady),
            (f"{pruning_label} ({figures['pruned_in_seconds']} s)", pruning),
            ("after it", after),
        ],
        figures,
    )
    print(f"  p99 ratio {figures['p99_ratio']}x; unfinished jobs {figures['unfinished_jobs']}")
    if run.unfinished:
        print(f"  the unfinished jobs in the ledger: {run.unfinished}")
        figures["unfinished_by_status"] = json.dumps(run.unfinished)
    if run.alternation is not None:
        print(f"  in alternating slots of {args.alternate:g} s from pruning's start to its end:")
        print_windows(list(zip(("deleting", "held off"), sides, strict=True)), figures)
        print(f"  p99 ratio, deleting to held off {figures['alternation_p99_ratio']}x")
        figures["deleted_while_held_off"] = run.alternation.leaked
        print(
            f"  backlog jobs that left the ledger in held-off slots past their first"
            f" {SLOT_GUARD:g} s: {run.alternation.leaked}"
        )
    print(
        "  each 5 s of the flow (< marks the warm-up's end, pruning's start and end;"
        " v a vacuum running in the ledger):"
    )
    print_series(sent, finished, [steady_from, watch.started_at, watch.ended_at], watch.vacuums)
    kept = "kept (control)" if control else "pruned"
    target = Target("<=", TARGET_P99_RATIO, on_ratio=True)
    rows = [
        Row(
            f"p99 ms, send to finished, {args.rate:g} jobs/s while {args.backlog:,} old jobs "
            f"are {kept}",
            pruning.p99_ms,
            steady.p99_ms,
            "same flow and workers, nothing to prune",
            target,
        )
    ]
    if sides:
        deleting, held_off = sides
        rows.append(
            Row(
                f"p99 ms, the same, jobs sent in the {args.alternate:g} s slots in which the "
                f"workers {'may delete (nothing is due)' if control else 'delete'}",
                deleting.p99_ms,
                held_off.p99_ms,
                "jobs of the slots between them, pruning held off",
                target,
            )
        )
    report("retention_pressure", rows, figures, started)


if __name__ == "__main__":
    main()
