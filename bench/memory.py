"""Memory: RSS and PSS of an idle Conveyor io worker, cpu worker and API, against idle plain
Celery gevent and prefork workers; then the io worker's RSS growth over N jobs.

RSS is ``VmRSS`` of ``/proc/<pid>/status``; PSS is ``Pss`` of ``/proc/<pid>/smaps_rollup``
(pages shared between processes counted once, split between them), both summed over the
process and its children: a prefork worker is its parent and its pool processes. Idle means
ready, a warm-up of a few jobs done, and a few seconds of nothing. Growth: the io worker's
RSS after a warm-up of 1,000 ``diagnostics.echo`` jobs, then after N more (sent with
``send_task`` in batches, finished when the ledger has them all ``succeeded``); the target is
less than 10 % growth.

    .venv/bin/python bench/memory.py --jobs 20000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from bench_processes import (
    Popen,
    conveyor_api,
    conveyor_env,
    conveyor_worker,
    exit_on_sigterm,
    plain_env,
    plain_worker,
    process_tree,
)
from bench_report import Row, Target, report
from bench_services import celery_client, fresh_ledger, private_redis

TARGET_GROWTH_PERCENT = 10.0
PLAIN_APP = "bench.plain_celery_app"
IO_CONCURRENCY = 100
CPU_PROCESSES = 2
WARMUP_JOBS = 1000
BATCH = 1000
#: Seconds a process is left alone before its memory is read.
SETTLE_SECONDS = 2.0
#: Seconds the N jobs may take before the benchmark gives up.
DRAIN_TIMEOUT = 600.0


@dataclass(frozen=True)
class Memory:
    """Resident and proportional set sizes of a process tree, in MB."""

    rss_mb: float
    pss_mb: float
    processes: int


def _kilobytes(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:  # the process ended between the listing and the read
        return 0
    return 0


def memory_of(process: Popen) -> Memory:
    """RSS and PSS of ``process`` and every process under it."""
    pids = process_tree(process.pid)
    rss = sum(_kilobytes(Path(f"/proc/{pid}/status"), "VmRSS") for pid in pids)
    pss = sum(_kilobytes(Path(f"/proc/{pid}/smaps_rollup"), "Pss") for pid in pids)
    return Memory(rss / 1024, pss / 1024, len(pids))


def settled(process: Popen) -> Memory:
    time.sleep(SETTLE_SECONDS)
    return memory_of(process)


def succeeded_jobs(database: str) -> int:
    with psycopg.connect(database) as connection:
        row = connection.execute("SELECT count(*) FROM jobs WHERE status = 'succeeded'").fetchone()
    return int(row[0]) if row else 0


def push(redis_url: str, database: str, jobs: int) -> None:
    """Send ``jobs`` echo jobs in batches; return once the ledger has every job succeeded."""
    target = succeeded_jobs(database) + jobs
    deadline = time.monotonic() + DRAIN_TIMEOUT
    with celery_client(redis_url) as client:
        for start in range(0, jobs, BATCH):
            for n in range(start, min(jobs, start + BATCH)):
                client.send_task("diagnostics.echo", kwargs={"value": n}, queue="io")
            # at most two batches ahead of the worker: the queue stays short
            while succeeded_jobs(database) < target - jobs + start - BATCH:
                time.sleep(0.2)
    while succeeded_jobs(database) < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"the io worker did not finish {jobs} jobs in {DRAIN_TIMEOUT:.0f} s")
        time.sleep(0.2)


def warm_up(redis_url: str, queue: str) -> None:
    with celery_client(redis_url) as client:
        results = [
            client.send_task(name, kwargs=kwargs, queue=queue)
            for name, kwargs in [("diagnostics.echo", {"value": 0})] * 10
        ]
        for result in results:
            result.get(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs through the io worker")
    args = parser.parse_args()
    exit_on_sigterm()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        with private_redis() as redis_url, fresh_ledger("memory") as database:
            env = conveyor_env(
                redis_url,
                database,
                io_concurrency=str(IO_CONCURRENCY),
                cpu_concurrency=str(CPU_PROCESSES),
                api_keys="bench:bench-secret-not-used-0123456789",
                storage_dir=str(workdir / "blobs"),
            )
            with conveyor_api(env, workdir) as api:
                api_idle = settled(api.process)
            with conveyor_worker("cpu", env, workdir, "memory-cpu") as cpu:
                cpu_idle = settled(cpu)
            with conveyor_worker("io", env, workdir, "memory-io") as io:
                warm_up(redis_url, "io")
                io_idle = settled(io)
                push(redis_url, database, WARMUP_JOBS)
                io_warm = settled(io)
                print(f"  io worker after {WARMUP_JOBS:,} jobs: {io_warm.rss_mb:.1f} MB RSS")
                pushed = time.monotonic()
                push(redis_url, database, args.jobs)
                print(f"  {args.jobs:,} jobs in {time.monotonic() - pushed:.1f} s", flush=True)
                io_after = settled(io)
        with private_redis() as plain_url:
            plain = plain_env(plain_url, pool_size=IO_CONCURRENCY + 20)
            with plain_worker(
                PLAIN_APP, "gevent", IO_CONCURRENCY, plain, workdir=workdir, name="memory-gevent"
            ) as worker:
                warm_up(plain_url, "io")
                gevent_idle = settled(worker)
            with plain_worker(
                PLAIN_APP, "prefork", CPU_PROCESSES, plain, workdir=workdir, name="memory-prefork"
            ) as worker:
                warm_up(plain_url, "io")
                prefork_idle = settled(worker)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    growth = (io_after.rss_mb - io_warm.rss_mb) / io_warm.rss_mb * 100
    print(f"  {'process':<32} {'RSS MB':>8} {'PSS MB':>8} {'processes':>9}")
    measured = {
        "conveyor_io_idle": io_idle,
        "conveyor_io_warm": io_warm,
        "conveyor_io_after": io_after,
        "conveyor_cpu_idle": cpu_idle,
        "conveyor_api_idle": api_idle,
        "plain_gevent_idle": gevent_idle,
        "plain_prefork_idle": prefork_idle,
    }
    for name, memory in measured.items():
        print(f"  {name:<32} {memory.rss_mb:>8.1f} {memory.pss_mb:>8.1f} {memory.processes:>9}")
    gevent_label = f"plain Celery gevent -c {IO_CONCURRENCY}"
    prefork_label = f"plain Celery prefork -c {CPU_PROCESSES}"
    cpu_what = f"cpu worker (prefork -c {CPU_PROCESSES}, {cpu_idle.processes} processes)"
    rows = [
        Row(f"idle io worker RSS MB (gevent -c {IO_CONCURRENCY})", io_idle.rss_mb,
            gevent_idle.rss_mb, gevent_label),
        Row(f"idle io worker PSS MB (gevent -c {IO_CONCURRENCY})", io_idle.pss_mb,
            gevent_idle.pss_mb, gevent_label),
        Row(f"idle {cpu_what} RSS MB", cpu_idle.rss_mb, prefork_idle.rss_mb, prefork_label),
        Row(f"idle {cpu_what} PSS MB", cpu_idle.pss_mb, prefork_idle.pss_mb, prefork_label),
        Row("idle API RSS MB (conveyor api --workers 1)", api_idle.rss_mb),
        Row("idle API PSS MB (conveyor api --workers 1)", api_idle.pss_mb),
        Row(f"io worker RSS growth %, {args.jobs:,} echo jobs after {WARMUP_JOBS:,}", growth,
            target=Target("<", TARGET_GROWTH_PERCENT)),
    ]  # fmt: skip
    figures: dict[str, float | int | str | None] = {"jobs": args.jobs}
    for name, memory in measured.items():
        figures[f"{name}_rss_mb"] = round(memory.rss_mb, 1)
        figures[f"{name}_pss_mb"] = round(memory.pss_mb, 1)
        figures[f"{name}_processes"] = memory.processes
    figures["io_rss_growth_percent"] = round(growth, 2)
    report("memory", rows, figures, started)


if __name__ == "__main__":
    main()
