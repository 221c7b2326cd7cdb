"""No-op drains of Conveyor's peers: Dramatiq (2 processes x 8 threads) and RQ (a worker
pool of 2), each on the Redis it is given, for the no-op drain comparison.

Each drain enqueues N no-op jobs with no worker running, then starts the peer's workers and
reads the completion counter (``bench/completion_counter.py``: every job increments it) every
millisecond; jobs/s count from the first completion to the N-th, so start-up is left out.

    .venv/bin/python bench/peers.py --jobs 4000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

import redis
from bench_processes import base_env, exit_on_sigterm, log_directory, process_tree, started
from bench_report import Row, report
from bench_services import BIN, ROOT, private_redis
from completion_counter import drain_rate, reset
from dramatiq.brokers.redis import RedisBroker
from peer_dramatiq_app import noop
from peer_rq_jobs import QUEUE
from rq import Queue

DRAMATIQ_PROCESSES = 2
DRAMATIQ_THREADS = 8
RQ_WORKERS = 2
#: Seconds a drain may take before the benchmark gives up.
DRAIN_TIMEOUT = 300.0
#: Seconds the RQ pool may take to leave once the queue is empty.
POOL_EXIT_TIMEOUT = 30.0
#: How many jobs one round trip to Redis enqueues (RQ).
ENQUEUE_BATCH = 500


def peer_env(redis_url: str) -> dict[str, str]:
    """A peer worker's environment: the modules of bench/ importable by both their names."""
    paths = [str(ROOT), str(ROOT / "bench")]
    return {**base_env(), "BENCH_REDIS_URL": redis_url, "PYTHONPATH": os.pathsep.join(paths)}


def dramatiq_drain(redis_url: str, jobs: int) -> float:
    """Jobs/s of ``dramatiq bench.peer_dramatiq_app -p 2 -t 8`` draining ``jobs`` no-ops."""
    client = redis.Redis.from_url(redis_url)
    broker = RedisBroker(client=client)  # type: ignore[no-untyped-call]
    try:
        reset(client)
        broker.declare_queue(noop.queue_name)
        for _ in range(jobs):
            broker.enqueue(noop.message())
        command = [
            str(BIN / "dramatiq"), "bench.peer_dramatiq_app",
            "-p", str(DRAMATIQ_PROCESSES), "-t", str(DRAMATIQ_THREADS),
        ]  # fmt: skip
        with (
            log_directory("bench-peers-") as logs,
            started(command, peer_env(redis_url), logs / "dramatiq.log"),
        ):
            return drain_rate(client, jobs, DRAIN_TIMEOUT)
    finally:
        broker.close()


def rq_drain(redis_url: str, jobs: int) -> float:
    """Jobs/s of ``rq worker-pool -n 2 --burst`` (a forked work horse per job) draining
    ``jobs`` no-ops."""
    client = redis.Redis.from_url(redis_url)
    try:
        reset(client)
        queue = Queue(QUEUE, connection=client)
        for start in range(0, jobs, ENQUEUE_BATCH):
            count = min(jobs, start + ENQUEUE_BATCH) - start
            queue.enqueue_many(
                [Queue.prepare_data("bench.peer_rq_jobs.noop", result_ttl=0)] * count
            )
        # burst: each worker leaves once the queue is empty, and the pool with them (a pool
        # told to stop waits for workers blocked on an empty queue)
        command = [
            str(BIN / "rq"), "worker-pool", "-n", str(RQ_WORKERS), "--burst",
            "-l", "WARNING", "-u", redis_url, QUEUE,
        ]  # fmt: skip
        with (
            log_directory("bench-peers-") as logs,
            started(command, peer_env(redis_url), logs / "rq.log") as pool,
        ):
            rate = drain_rate(client, jobs, DRAIN_TIMEOUT)
            try:
                pool.wait(POOL_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                # the drain is measured; a pool slow to leave is stopped like any process
                for pid in reversed(process_tree(pool.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                pool.wait()
            return rate
    finally:
        client.close()


PEERS: dict[str, tuple[str, Callable[[str, int], float]]] = {
    "dramatiq": (f"Dramatiq {DRAMATIQ_PROCESSES} processes x {DRAMATIQ_THREADS} threads",
                 dramatiq_drain),
    "rq": (f"RQ worker-pool -n {RQ_WORKERS}", rq_drain),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4000)
    args = parser.parse_args()
    exit_on_sigterm()
    started_at = time.monotonic()
    rates: dict[str, float] = {}
    for name, (label, drain) in PEERS.items():
        with private_redis() as url:  # each peer on a Redis of its own
            rates[name] = drain(url, args.jobs)
        print(f"  {label}: {rates[name]:,.0f} jobs/s", flush=True)
    rows = [
        Row(f"no-op drain of {args.jobs:,} jobs, jobs/s", None, rates[name], label)
        for name, (label, _) in PEERS.items()
    ]
    figures = {
        "jobs": args.jobs,
        **{f"{name}_jobs_per_s": round(r, 1) for name, r in rates.items()},
    }
    report("peers", rows, figures, started_at)


if __name__ == "__main__":
    main()
