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
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

from bench_processes import (
    HOST,
    Popen,
    base_env,
    conveyor_env,
    conveyor_worker,
    exit_on_sigterm,
    plain_env,
    plain_worker,
    started,
)
from bench_report import Row, Target, report
from bench_services import celery_client, free_port, fresh_ledger, ledger_statuses, private_redis
from celery import Celery

from tasks.io.webhooks import encode_payload
from workers.settings import DEV_WEBHOOK_SIGNING_SECRET

CONVEYOR_TASK = "webhooks.deliver"
PLAIN_TASK = "plain.webhooks.deliver"


@dataclass(frozen=True)
class Fanout:
    """A fan-out benchmark: its name in the report, its target and its default sizes."""

    bench: str
    target_ratio: float
    jobs: int
    delay: float
    concurrency: int
    repeat: int


#: The webhook fan-out this module runs as a script.
WEBHOOK_FANOUT = Fanout("webhook_fanout", 1.25, jobs=2000, delay=0.2, concurrency=200, repeat=3)


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


def wait_receiver(port: int, process: Popen, log_path: Path) -> None:
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


def report_drains(
    args: argparse.Namespace, fanout: Fanout, plain: Side, conveyor: Side, load: str
) -> float:
    """The table of drains; the median per-drain ratio Conveyor / plain Celery."""
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
    verdict = "met" if ratio <= fanout.target_ratio else "MISSED"
    print(f"target Conveyor / plain <= {fanout.target_ratio}: {verdict} ({ratio:.2f}x)")
    return ratio


def report_line(
    args: argparse.Namespace, fanout: Fanout, plain: Side, conveyor: Side, started_at: float
) -> None:
    """The rows and the JSON line: median drains against plain Celery and the floor."""
    floor = args.jobs * args.delay / args.concurrency
    ratios = [c / p for p, c in zip(plain.times, conveyor.times, strict=True)]
    plain_s, conveyor_s = statistics.median(plain.times), statistics.median(conveyor.times)
    measure = (
        f"drain s, {args.jobs} webhooks answered after {args.delay:g} s, gevent -c "
        f"{args.concurrency}, median of {args.repeat}"
    )
    rows = [
        # the target holds the median of the per-drain ratios, which the row's figures approach
        Row(
            measure,
            conveyor_s,
            plain_s,
            "plain Celery gevent, same HTTP client",
            Target("<=", fanout.target_ratio, on_ratio=True),
        ),
        Row(measure, conveyor_s, floor, "floor"),
    ]
    figures = {
        "jobs": args.jobs,
        "delay_s": args.delay,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "floor_s": round(floor, 3),
        "plain_s": ",".join(f"{seconds:.2f}" for seconds in plain.times),
        "conveyor_s": ",".join(f"{seconds:.2f}" for seconds in conveyor.times),
        "median_ratio": round(statistics.median(ratios), 3),
        "peak_in_flight": max(conveyor.peaks + plain.peaks),
    }
    report(fanout.bench, rows, figures, started_at)


def run(args: argparse.Namespace, workdir: Path) -> tuple[Side, Side, str]:
    """Start the receiver and both workers, warm them up, alternate the timed drains."""
    port = free_port()
    with ExitStack() as stack:
        receiver_log = workdir / "receiver.log"
        receiver = stack.enter_context(
            started(
                [sys.executable, str(Path(__file__).parent / "receiver.py"), "--port", str(port),
                 "--delay", str(args.delay), "--secret", DEV_WEBHOOK_SIGNING_SECRET],
                base_env(), receiver_log,
            )
        )  # fmt: skip
        wait_receiver(port, receiver, receiver_log)

        plain_url = stack.enter_context(private_redis())
        pool_size = args.concurrency + 20
        stack.enter_context(
            plain_worker(
                "bench.plain_celery_webhooks", "gevent", args.concurrency,
                plain_env(plain_url, pool_size=pool_size, tuned=args.tuned_plain),
                workdir=workdir, name="plain-webhooks",
            )
        )  # fmt: skip

        conveyor_url = stack.enter_context(private_redis())
        database = stack.enter_context(fresh_ledger("webhooks"))
        env = conveyor_env(
            conveyor_url,
            database,
            io_concurrency=str(args.concurrency),
            storage_dir=str(workdir / "blobs"),
        )
        stack.enter_context(conveyor_worker("io", env, workdir, "conveyor-webhooks"))

        plain = Side("plain Celery", PLAIN_TASK, stack.enter_context(celery_client(plain_url)))
        conveyor = Side("Conveyor", CONVEYOR_TASK, stack.enter_context(celery_client(conveyor_url)))
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
    return plain, conveyor, load


def main_for(fanout: Fanout, doc: str) -> None:
    """Parse the command line (defaults from ``fanout``), run, report."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=fanout.jobs)
    parser.add_argument(
        "--delay", type=float, default=fanout.delay, help="receiver's answer delay, s"
    )
    parser.add_argument("--concurrency", type=int, default=fanout.concurrency)
    parser.add_argument("--repeat", type=int, default=fanout.repeat, help="timed drains per side")
    parser.add_argument(
        "--tuned-plain",
        action="store_true",
        help="give plain Celery the shared result backend too (result_backend_thread_safe)",
    )
    args = parser.parse_args()
    exit_on_sigterm()  # the blocks of run() stop every worker and the receiver
    started_at = time.monotonic()
    sample = payload_of(1, "check")
    assert json.loads(encode_payload(sample)) == sample  # the body both sides send
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{fanout.bench}-"))
    ok = False
    try:
        plain, conveyor, load = run(args, workdir)
        ok = True
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    report_drains(args, fanout, plain, conveyor, load)
    report_line(args, fanout, plain, conveyor, started_at)


def main() -> None:
    main_for(WEBHOOK_FANOUT, __doc__ or "")


if __name__ == "__main__":
    main()
