"""Webhook fan-out: N ``webhooks.deliver`` jobs to a slow local receiver, Conveyor vs plain Celery.

One Conveyor io worker (gevent) and one plain Celery gevent worker, at the same concurrency,
each drain N deliveries to a receiver on 127.0.0.1 (``bench/receiver.py``) that answers 200
after ``--delay`` seconds. The plain task posts the same bytes with the same headers through
the same HTTP client (``bench/plain_celery_webhooks.py``). Both workers run in this run, on
this machine, against the same Redis (separate databases); drains alternate between them,
one at a time. A drain is timed from the first ``send_task`` to the last result.

Every drain is checked: the receiver got exactly N requests on that drain's path, all with a
valid signature, and (Conveyor) the ledger holds N succeeded jobs for the ids sent.

    .venv/bin/python bench/webhook_fanout.py --jobs 2000 --delay 0.2 --concurrency 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from bench_services import (
    client_for,
    drop_database,
    fresh_database,
    ledger_statuses,
    stop,
    wait_ready,
)
from celery import Celery

from tasks.io.webhooks import encode_payload
from workers.settings import DEV_WEBHOOK_SIGNING_SECRET

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
REDIS = f"redis://{HOST}:6379"
DATABASE = "conveyor_bench_webhooks"
TARGET_RATIO = 1.25
CONVEYOR_TASK = "webhooks.deliver"
PLAIN_TASK = "plain.webhooks.deliver"


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


# --- the receiver ---------------------------------------------------------------------------


def receiver_call(port: int, method: str, path: str) -> dict[str, Any]:
    connection = HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"receiver answered {response.status} to {method} {path}")
        answer: dict[str, Any] = json.loads(body)
        return answer
    finally:
        connection.close()


def wait_receiver(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the receiver exited early:\n{log_path.read_text()[-3000:]}")
        try:
            receiver_call(port, "GET", "/count")
        except OSError:
            time.sleep(0.1)
        else:
            return
    raise SystemExit("the receiver did not answer within 30 s")


# --- workers --------------------------------------------------------------------------------


def payload_of(n: int, tag: str) -> dict[str, Any]:
    """A small order event, different for every job."""
    return {
        "event": "order.paid",
        "id": f"evt_{tag}_{n:06d}",
        "data": {"order": n, "amount_cents": 1299 + n, "currency": "EUR", "items": [1, 2, 3]},
    }


@dataclass
class Side:
    label: str
    task: str
    node: str
    client: Celery
    times: list[float] = field(default_factory=list)
    sends: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)

    def drain(self, url: str, jobs: int, tag: str) -> tuple[float, list[str]]:
        """Send ``jobs`` deliveries to ``url``; seconds until the last result, and the ids."""
        started = time.monotonic()
        results = [
            self.client.send_task(
                self.task, kwargs={"url": url, "payload": payload_of(n, tag)}, queue="io"
            )
            for n in range(jobs)
        ]
        self.sends.append(time.monotonic() - started)
        for result in results:
            result.get(timeout=600)
        return time.monotonic() - started, [str(result.id) for result in results]


def checked_drain(
    side: Side, port: int, jobs: int, tag: str, database: str | None
) -> tuple[float, list[str]]:
    """One timed drain, then the receiver's (and the ledger's) account of it."""
    path = f"/hooks/{tag}"
    receiver_call(port, "POST", "/reset")
    seconds, job_ids = side.drain(f"http://{HOST}:{port}{path}", jobs, tag)
    counts = receiver_call(port, "GET", "/count")
    problems: list[str] = []
    received = counts["received"]
    if received.get(path, 0) != jobs or sum(received.values()) != jobs:
        problems.append(f"receiver got {received}, expected {jobs} on {path} only")
    if counts["bad_signatures"]:
        problems.append(f"bad signatures: {counts['bad_signatures']}")
    if database is not None:
        statuses = ledger_statuses(database, job_ids)
        if statuses != {"succeeded": jobs}:
            problems.append(f"ledger statuses {statuses}, expected {{'succeeded': {jobs}}}")
    if problems:
        raise SystemExit(f"{side.label}, drain {tag}: " + "; ".join(problems))
    side.peaks.append(int(counts["peak_in_flight"]))
    return seconds, job_ids


# --- the run --------------------------------------------------------------------------------


def report(args: argparse.Namespace, plain: Side, conveyor: Side, load: str) -> None:
    floor = args.jobs * args.delay / args.concurrency
    ratios = [c / p for p, c in zip(plain.times, conveyor.times, strict=True)]
    plain_label = "plain Celery (tuned)" if args.tuned_plain else "plain Celery"
    print()
    print(
        f"{args.jobs} x webhooks.deliver, receiver answers after {args.delay:g} s, "
        f"gevent concurrency {args.concurrency}"
    )
    print(f"{os.cpu_count()} cores shared with everything; load average {load}")
    print()
    print(
        f"  {'drain':<7} {plain_label:>20} {'Conveyor':>10} {'ratio':>7}"
        "   sending took (plain / Conveyor)   peak in flight"
    )
    for n, (p, c, ratio) in enumerate(zip(plain.times, conveyor.times, ratios, strict=True), 1):
        sends = f"{plain.sends[n - 1]:.2f} s / {conveyor.sends[n - 1]:.2f} s"
        peaks = f"{plain.peaks[n - 1]} / {conveyor.peaks[n - 1]}"
        print(f"  {n:<7} {p:>18.2f} s {c:>8.2f} s {ratio:>6.2f}x   {sends:<33} {peaks}")
    if len(ratios) > 1:
        print(
            f"  {'median':<7} {statistics.median(plain.times):>18.2f} s "
            f"{statistics.median(conveyor.times):>8.2f} s {statistics.median(ratios):>6.2f}x"
        )
    print(f"  {'floor':<7} {floor:>18.2f} s  ({args.jobs} x {args.delay:g} s / {args.concurrency})")
    if len(ratios) > 1:
        print("  (median row: median of each column; its ratio is the median per-drain ratio)")
    print()
    print(
        f"checked: every drain delivered exactly {args.jobs} signed requests; "
        f"Conveyor's ledger has {args.jobs} succeeded jobs per drain"
    )
    ratio = statistics.median(ratios)
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"target Conveyor / plain <= {TARGET_RATIO}: {verdict} ({ratio:.2f}x)")


def main() -> None:  # noqa: PLR0915 - one run, top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--delay", type=float, default=0.2, help="receiver's answer delay, s")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="timed drains per side")
    parser.add_argument(
        "--tuned-plain",
        action="store_true",
        help="give plain Celery the shared result backend too (result_backend_thread_safe)",
    )
    parser.add_argument("--conveyor-redis-db", type=int, default=13)
    parser.add_argument("--plain-redis-db", type=int, default=14)
    args = parser.parse_args()
    # SIGTERM runs the finally below too, so no worker or receiver is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    sample = payload_of(1, "check")
    assert json.loads(encode_payload(sample)) == sample  # the body both sides send
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    workdir = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    port = free_port()
    conveyor_url = f"{REDIS}/{args.conveyor_redis_db}"
    plain_url = f"{REDIS}/{args.plain_redis_db}"
    processes: list[subprocess.Popen[bytes]] = []
    clients: list[Celery] = []
    ok = False
    try:
        receiver_log = workdir / "receiver.log"
        receiver = start(
            [sys.executable, str(ROOT / "bench" / "receiver.py"), "--port", str(port),
             "--delay", str(args.delay), "--secret", DEV_WEBHOOK_SIGNING_SECRET],
            base_env, receiver_log,
        )  # fmt: skip
        processes.append(receiver)
        wait_receiver(port, receiver, receiver_log)

        plain_client = client_for(plain_url)
        clients.append(plain_client)
        plain_client.backend.client.flushdb()
        plain_log = workdir / "plain.log"
        plain_node = "plain@bench-webhooks"
        plain_worker = start(
            [str(BIN / "celery"), "-A", "bench.plain_celery_webhooks", "worker", "-P", "gevent",
             "-c", str(args.concurrency), "-Q", "io", "-n", plain_node, "--without-mingle",
             "--prefetch-multiplier", "1", "-l", "WARNING"],
            {**base_env, "BENCH_REDIS_URL": plain_url, "PYTHONPATH": str(ROOT),
             "BENCH_POOL": str(args.concurrency + 20),
             "BENCH_TUNED": "1" if args.tuned_plain else "0"},
            plain_log,
        )  # fmt: skip
        processes.append(plain_worker)

        conveyor_client = client_for(conveyor_url)
        clients.append(conveyor_client)
        conveyor_client.backend.client.flushdb()
        database = fresh_database(DATABASE)
        env = {
            **base_env,
            "CONVEYOR_ENV": "test",  # private networks allowed, the dev signing secret
            "CONVEYOR_REDIS_URL": conveyor_url,
            "CONVEYOR_DATABASE_URL": database,
            "CONVEYOR_IO_CONCURRENCY": str(args.concurrency),
            "CONVEYOR_STORAGE_DIR": str(workdir / "blobs"),
            "CONVEYOR_LOG_LEVEL": "WARNING",
        }
        subprocess.run(
            [str(BIN / "conveyor"), "migrate"],
            env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        conveyor_log = workdir / "conveyor.log"
        conveyor_node = "conveyor@bench-webhooks"
        conveyor_worker = start(
            [str(BIN / "conveyor"), "worker", "io", "-n", conveyor_node], env, conveyor_log
        )
        processes.append(conveyor_worker)

        plain = Side("plain Celery", PLAIN_TASK, plain_node, plain_client)
        conveyor = Side("Conveyor", CONVEYOR_TASK, conveyor_node, conveyor_client)
        wait_ready(plain_client, plain_node, plain_worker, plain_log)
        wait_ready(conveyor_client, conveyor_node, conveyor_worker, conveyor_log)
        warmup = min(args.jobs, args.concurrency)
        for side, name in ((plain, "plain"), (conveyor, "conveyor")):
            # warm-up: imports, the Redis pools, one keep-alive connection per greenlet
            checked_drain(side, port, warmup, f"warmup-{name}", None)
            side.peaks.clear()
            side.sends.clear()
        print(
            f"workers ready and warmed up ({warmup} deliveries each); logs in {workdir}",
            flush=True,
        )
        for n in range(1, args.repeat + 1):
            # alternate who goes first, so a drift in the machine's load hits both sides
            order = (plain, conveyor) if n % 2 else (conveyor, plain)
            for side in order:
                name = "plain" if side is plain else "conveyor"
                seconds, _ = checked_drain(
                    side, port, args.jobs, f"{name}-{n}", database if side is conveyor else None
                )
                side.times.append(seconds)
                print(f"  drain {n}: {side.label} {seconds:.2f} s", flush=True)
        load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
        ok = True
    finally:
        for process in reversed(processes):
            stop(process)
        for client in clients:
            client.backend.client.flushdb()
            client.close()
        if ok:
            drop_database(DATABASE)
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    report(args, plain, conveyor, load)


if __name__ == "__main__":
    main()
