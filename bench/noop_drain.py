"""Drain of N no-op jobs queued before the workers consume: Conveyor against plain Celery.

For each pool (io: gevent -c 50, cpu: prefork -c 2) this run drains, one after the other on
the same private Redis server: plain Celery without results, plain Celery with a Redis
result backend, and Conveyor (PostgreSQL ledger, jobs recorded by the producer's code path
exactly as ``POST /v1/jobs/batch`` records them). Each worker is started and answers a ping,
drains a warm-up of ``WARMUP`` jobs, untimed (its first connections, lazy imports), stops
consuming its queue, N jobs are queued, and it consumes again. The rate is taken over the
steady part of the drain (:func:`steady_seconds`); the time from resuming until the queue and
kombu's unacknowledged hash are both empty is printed beside it. Conveyor's drain is then
checked against the ledger: every job ``succeeded``.

    .venv/bin/python bench/noop_drain.py --jobs 4000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import redis
from bench_processes import log_directory
from bench_services import (
    client_for,
    drop_database,
    fresh_database,
    ledger_statuses,
    private_redis,
    stop,
    wait_ready,
)
from cpu_use import CpuUse
from sqlalchemy import create_engine

from workers.broker import UNACKED_KEY, Publisher, queue_keys
from workers.enqueue import Enqueuer, JobRequest, Submission

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STALL_SECONDS = 60  # no job finished for this long: the drain is stuck
TARGET = 0.8  # Conveyor / plain Celery without results, jobs per second
WARMUP = 200  # jobs drained, untimed, before the clock starts


@dataclass(frozen=True)
class Pool:
    queue: str
    pool: str
    concurrency: int
    task: str
    args: dict[str, object]


POOLS = {
    "io": Pool("io", "gevent", 50, "diagnostics.echo", {"value": 0}),
    "cpu": Pool("cpu", "prefork", 2, "diagnostics.spin", {"milliseconds": 0}),
}


#: seconds from resuming the consumers to an empty queue, by label (the drain's figure is
#: its steady part, see steady_seconds)
WALL_SECONDS: dict[str, float] = {}
#: CPU microseconds per job of each drain, by label
CPU_PER_JOB: dict[str, CpuUse] = {}


def pending(client: redis.Redis, queue: str) -> int:
    """Messages still waiting in ``queue`` or delivered and not yet acknowledged."""
    with client.pipeline(transaction=False) as pipe:
        for key in queue_keys(queue):
            pipe.llen(key)
        pipe.hlen(UNACKED_KEY)
        return sum(int(n) for n in pipe.execute())


def wait_drained(
    broker: redis.Redis, queue: str, processes: list[subprocess.Popen[bytes]], label: str
) -> Iterator[tuple[float, int]]:
    """(moment, jobs left) until ``queue`` and the unacknowledged hash are empty; a stall or
    a dead worker ends the run."""
    left, progressed = pending(broker, queue), time.monotonic()
    yield progressed, left
    while left:
        if any(p.poll() is not None for p in processes):
            raise SystemExit(f"a worker of {label} exited; see its log")
        if time.monotonic() - progressed > STALL_SECONDS:
            raise SystemExit(f"{label} stalled with {left} jobs left")
        time.sleep(0.005)
        now_left = pending(broker, queue)
        if now_left < left:
            progressed = time.monotonic()
            yield progressed, now_left
        left = now_left


def steady_seconds(progress: Iterable[tuple[float, int]], jobs: int) -> float:
    """Seconds from the moment 5 % of ``jobs`` were done to the moment 95 % were.

    The first and the last jobs are left out: a consumer that resumes waits up to a second
    in kombu's poll before its first BRPOP, and the last few jobs wait for whichever
    message is slowest; either would swing a 4,000-job figure by a quarter.
    """
    start = end = None
    for moment, left in progress:
        if start is None and left <= jobs * 0.95:
            start = moment
        if end is None and left <= jobs * 0.05:
            end = moment
    if start is None or end is None:
        raise SystemExit("the drain ended before it was measured")
    return (end - start) / 0.9


def timed_drain(  # noqa: PLR0917 - one call site, each argument named there
    url: str,
    queue: str,
    commands: dict[str, list[str]],
    env: dict[str, str],
    fill: Callable[[int], None],
    jobs: int,
) -> float:
    """Start the workers (node name -> command), let them drain a warm-up, pause their
    consumers, queue ``jobs``, time the drain, stop the workers."""
    client = client_for(url)
    broker = redis.Redis.from_url(url)
    label = "+".join(node.partition("@")[0] for node in commands)
    with ExitStack() as stack:
        logs = stack.enter_context(log_directory("bench-noop-"))  # left last, once all stopped
        processes: dict[str, subprocess.Popen[bytes]] = {}
        for node, command in commands.items():
            log_path = logs / f"{node.partition('@')[0]}.log"
            log = stack.enter_context(log_path.open("wb"))
            process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
            stack.callback(stop, process)
            processes[node] = process
            wait_ready(client, node, process, log_path)
        stack.callback(client.close)
        stack.callback(broker.close)
        nodes = list(processes)
        fill(WARMUP * len(nodes))
        for _ in wait_drained(broker, queue, list(processes.values()), label):
            pass
        client.control.cancel_consumer(queue, destination=nodes, reply=True)
        fill(jobs)
        started = time.monotonic()
        cpu_before = [CpuUse.of(p.pid) for p in processes.values()]
        client.control.add_consumer(queue, destination=nodes, reply=True)
        steady = steady_seconds(wait_drained(broker, queue, list(processes.values()), label), jobs)
        WALL_SECONDS[label] = time.monotonic() - started
        used = [
            CpuUse.of(p.pid).since(b) for p, b in zip(processes.values(), cpu_before, strict=True)
        ]
        CPU_PER_JOB[label] = CpuUse(sum(u.worker for u in used), used[0].postgres, used[0].redis)
        return steady


def plain_drain(url: str, spec: Pool, jobs: int, *, results: bool, workers: int = 1) -> float:
    redis.Redis.from_url(url).flushall()
    base = f"plain-{spec.queue}-{'r' if results else 'n'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(BENCH_REDIS_URL=url, BENCH_RESULTS="1" if results else "0", PYTHONPATH=str(ROOT))
    commands = {
        f"{base}{n}@bench": [
            str(BIN / "celery"),
            "-A",
            "bench.plain_noop_app",
            "worker",
            "-P",
            spec.pool,
            "-c",
            str(spec.concurrency),
            "-Q",
            spec.queue,
            "-n",
            f"{base}{n}@bench",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ]
        for n in range(workers)
    }
    sender = client_for(url)

    def fill(count: int) -> None:
        with sender.producer_or_acquire() as producer:
            for _n in range(count):
                sender.send_task(spec.task, kwargs=spec.args, queue=spec.queue, producer=producer)

    try:
        return timed_drain(url, spec.queue, commands, env, fill, jobs)
    finally:
        sender.close()


def conveyor_drain(url: str, spec: Pool, jobs: int, *, workers: int = 1) -> float:
    redis.Redis.from_url(url).flushall()
    name = f"conveyor_bench_noop_{os.getpid()}"
    database = fresh_database(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CONVEYOR_ENV="test",
        CONVEYOR_REDIS_URL=url,
        CONVEYOR_DATABASE_URL=database,
        CONVEYOR_IO_CONCURRENCY=str(POOLS["io"].concurrency),
        CONVEYOR_CPU_CONCURRENCY=str(POOLS["cpu"].concurrency),
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_DIAGNOSTICS="1",
    )
    subprocess.run(
        [str(BIN / "conveyor"), "migrate"], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    commands = {
        f"conveyor-{spec.queue}{n}@bench": [
            str(BIN / "conveyor"),
            "worker",
            spec.queue,
            "-n",
            f"conveyor-{spec.queue}{n}@bench",
        ]
        for n in range(workers)
    }
    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    broker = redis.Redis.from_url(url)
    ids: list[str] = []

    def fill(count: int) -> None:
        enqueuer = Enqueuer(engine, Publisher(broker))
        new = [str(uuid.uuid4()) for _ in range(count)]
        ids.extend(new)
        for start in range(0, count, 1000):
            batch = tuple(
                JobRequest(
                    job_id=job_id,
                    client_id="bench",
                    task=spec.task,
                    queue=spec.queue,
                    args=dict(spec.args),
                    priority="normal",
                    max_attempts=5,
                    fingerprint=job_id,
                )
                for job_id in new[start : start + 1000]
            )
            recorded = enqueuer.record_and_publish([Submission(batch)])
            enqueuer.mark_published(recorded.published)

    try:
        elapsed = timed_drain(url, spec.queue, commands, env, fill, jobs)
        statuses = ledger_statuses(database, ids)
        if statuses != {"succeeded": len(ids)}:
            raise SystemExit(f"ledger after the drain: {statuses}")
        return elapsed
    finally:
        engine.dispose()
        broker.close()
        drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--pools", default="io,cpu")
    parser.add_argument("--only-conveyor", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="worker processes per side")
    args = parser.parse_args()
    w = args.workers
    print("| pool | plain Celery, no results | plain Celery, Redis results | Conveyor | ratio |")
    print("|---|---|---|---|---|")
    with private_redis() as url:
        for name in args.pools.split(","):
            spec = POOLS[name]
            only = args.only_conveyor
            plain = 0.0 if only else plain_drain(url, spec, args.jobs, results=False, workers=w)
            with_results = (
                0.0 if only else plain_drain(url, spec, args.jobs, results=True, workers=w)
            )
            conveyor = conveyor_drain(url, spec, args.jobs, workers=w)
            rate = {
                k: (args.jobs / v if v else 0.0)
                for k, v in {
                    "plain": plain,
                    "plain_results": with_results,
                    "conveyor": conveyor,
                }.items()
            }
            ratio = rate["conveyor"] / rate["plain"] if rate["plain"] else 0.0
            label = f"{w} x {spec.pool} -c {spec.concurrency}"
            print(
                f"| {label} | {rate['plain']:.0f}/s | {rate['plain_results']:.0f}/s | "
                f"{rate['conveyor']:.0f}/s | {ratio:.2f}x |",
                flush=True,
            )
            for label, seconds in WALL_SECONDS.items():
                print(
                    f"  {label}: {args.jobs / seconds:.0f} jobs/s from resume to empty "
                    f"({seconds:.2f} s)"
                )
            for label, used in CPU_PER_JOB.items():
                print(
                    f"  CPU per job, {label}: worker {used.worker / args.jobs * 1e6:.0f} us, "
                    f"PostgreSQL {used.postgres / args.jobs * 1e6:.0f} us, "
                    f"Redis {used.redis / args.jobs * 1e6:.0f} us"
                )
            wall = {label: round(args.jobs / seconds) for label, seconds in WALL_SECONDS.items()}
            CPU_PER_JOB.clear()
            WALL_SECONDS.clear()
            print(
                json.dumps(
                    {
                        "bench": "noop_drain",
                        "pool": spec.pool,
                        "concurrency": spec.concurrency,
                        "workers": w,
                        "jobs": args.jobs,
                        "jobs_per_s": {k: round(v) for k, v in rate.items()},
                        "jobs_per_s_resume_to_empty": wall,
                        "ratio": round(ratio, 3),
                        "target": TARGET,
                        "met": ratio >= TARGET,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
