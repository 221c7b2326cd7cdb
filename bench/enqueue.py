"""Enqueue throughput and latency of POST /v1/jobs and /v1/jobs/batch against plain send_task.

Everything runs in this run, on this machine: a fresh migrated PostgreSQL ledger, the API as
a real ``conveyor api`` process (two uvicorn workers, the rate limiter's Redis round trip in
the path), and 50 keep-alive HTTP/1.1 clients on raw asyncio streams in this process. No
worker consumes the queue: only enqueueing is measured. Phases, each after a warm-up and on a
flushed Redis database: plain Celery ``send_task`` in a loop from one process (the baseline),
single ``POST /v1/jobs``, and ``POST /v1/jobs/batch`` with 100 and 1000 jobs per request.
Prints jobs/s, requests/s, p50/p99 latency, the CPU each side used, the ledger rows and queue
length each phase left (both must equal the jobs answered 202), and the ratios to send_task.

    .venv/bin/python bench/enqueue.py --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from bench_processes import (
    HOST,
    conveyor_env,
    exit_on_sigterm,
    process_tree,
    wait_healthy,
)
from bench_report import Row, Target, report
from bench_services import BIN, ROOT, free_port, fresh_ledger, private_redis, stop
from celery import Celery
from cpu_use import process_seconds, processes_named

TASK = "diagnostics.echo"
# normal priority is kombu's step 3 of the io queue; a plain send_task lands on step 0
CONVEYOR_QUEUE = "io\x06\x163"
PLAIN_QUEUE = "io"
CLIENT_ID = "bench"
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_SINGLE_JOBS_PER_S = 1500
TARGET_SINGLE_P99_MS = 50.0
TARGET_BATCH_JOBS_PER_S = 15000


# --- measurement records -----------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by this process, the API's process tree, PostgreSQL, Redis
    and the whole machine (busy and total, over every core)."""

    generator: float
    server: dict[int, float]
    postgres: dict[int, float]
    redis: dict[int, float]
    machine_busy: float
    machine_total: float


@dataclass(frozen=True)
class CpuShare:
    """Cores used during a measured window (1.0 = one core busy all the time)."""

    generator: float
    server: float
    postgres: float
    redis: float
    machine: float

    def line(self) -> str:
        other = self.machine - self.generator - self.server - self.postgres - self.redis
        return (
            f"cores busy {self.machine:.2f} of {os.cpu_count()}: load generator "
            f"{self.generator:.2f}, API {self.server:.2f}, PostgreSQL {self.postgres:.2f}, "
            f"Redis {self.redis:.2f}, other {max(other, 0.0):.2f}"
        )


@dataclass
class PhaseResult:
    """What one phase measured and what it left behind."""

    label: str
    jobs_per_request: int
    rate: float | None = None  # offered requests/s of a paced phase
    latencies: list[float] = field(default_factory=list)
    window: float = 0.0
    accepted_jobs: int = 0  # every job answered 202, warm-up and tail included
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    cpu: CpuShare | None = None
    ledger_rows: int | None = None
    queue_length: int = 0
    split: tuple[int, ...] = ()  # the clients' connections per API process

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.window if self.window else 0.0

    @property
    def jobs_per_s(self) -> float:
        return self.requests_per_s * self.jobs_per_request

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile of the measured latencies, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(fraction * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1] * 1000

    @property
    def consistent(self) -> bool:
        ledger_ok = self.ledger_rows is None or self.ledger_rows == self.accepted_jobs
        return not self.failures and ledger_ok and self.queue_length == self.accepted_jobs


# --- CPU accounting from /proc -----------------------------------------------------------


def connection_split(port: int, server_pid: int | None) -> tuple[int, ...]:
    """How many established connections to ``port`` each process of the API holds.

    Each of ``conveyor api``'s workers accepts on a socket of its own and the kernel picks
    one by a hash of the connection's addresses, so 50 connections split about evenly; on
    uvicorn's one shared socket they landed 40/10 to 50/0.
    """
    if server_pid is None:
        return ()
    local = f":{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(local) and fields[3] == "01":  # ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in process_tree(server_pid):
        held = 0
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                held += fd.readlink().as_posix() in inodes
            except OSError:
                continue
        if held:
            counts.append(held)
    return tuple(sorted(counts, reverse=True))


def cpu_sample(server_pid: int | None) -> CpuSample:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    server = process_tree(server_pid) if server_pid else []
    counters = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = counters[3] + counters[4]  # idle, iowait
    total = sum(counters[:8])  # guest time is already in user
    return CpuSample(
        generator=usage.ru_utime + usage.ru_stime,
        server={pid: process_seconds(pid) for pid in server},
        postgres={pid: process_seconds(pid) for pid in processes_named("postgres")},
        redis={pid: process_seconds(pid) for pid in processes_named("redis-server")},
        machine_busy=(total - idle) / TICKS,
        machine_total=total / TICKS,
    )


def cpu_share(before: CpuSample, after: CpuSample, window: float) -> CpuShare:
    def used(start: dict[int, float], end: dict[int, float]) -> float:
        return sum(seconds - start.get(pid, 0.0) for pid, seconds in end.items()) / window

    cores = os.cpu_count() or 1
    wall = (after.machine_total - before.machine_total) / cores
    return CpuShare(
        generator=(after.generator - before.generator) / window,
        server=used(before.server, after.server),
        postgres=used(before.postgres, after.postgres),
        redis=used(before.redis, after.redis),
        machine=(after.machine_busy - before.machine_busy) / wall if wall else 0.0,
    )


# --- setup ---------------------------------------------------------------------------------


def ledger_rows(database: str) -> int:
    with psycopg.connect(database) as connection:
        row = connection.execute("SELECT count(*) FROM jobs").fetchone()
    assert row is not None
    return int(row[0])


# --- the HTTP load generator ----------------------------------------------------------------


class ProtocolError(Exception):
    """The server answered something this minimal client does not read."""


def post_request(port: int, path: str, body: bytes, secret: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        f"Authorization: Bearer {secret}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        raise ProtocolError(f"no Content-Length in {head[:200]!r}")
    start += len(b"\r\ncontent-length:")
    length = int(head[start : lower.index(b"\r\n", start)])
    return status, await reader.readexactly(length)


@dataclass
class LoadState:
    measure_from: float = float("inf")
    measure_until: float = float("inf")
    stopping: bool = False
    count: int | None = None
    counted: asyncio.Event = field(default_factory=asyncio.Event)
    rate: float | None = None
    clients: int = 1
    _offset: int = 0

    def next_offset(self) -> float:
        """Where in the schedule the next client starts, so sends spread evenly."""
        self._offset += 1
        return self._offset / self.clients


async def http_client(
    port: int, request: bytes, state: LoadState, result: PhaseResult, ready: asyncio.Event
) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    await ready.wait()
    clock = time.perf_counter
    jobs = result.jobs_per_request
    # paced phases: this client's share of the offered rate, on a fixed schedule; latency
    # counts from the scheduled time, so a stall is not hidden by sending later
    interval = state.clients / state.rate if state.rate else 0.0
    scheduled = clock() + interval * state.next_offset()
    try:
        while not state.stopping:
            if interval:
                delay = scheduled - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                started = scheduled
                scheduled += interval
            else:
                started = clock()
            writer.write(request)
            status, body = await read_response(reader)
            ended = clock()
            result.statuses[status] += 1
            if status == 202:
                answered = body.count(b'"id":')
                result.accepted_jobs += answered
                if answered != jobs:
                    result.failures.append(f"202 with {answered} jobs instead of {jobs}")
            elif not 200 <= status < 300:
                result.failures.append(f"{status}: {body[:300].decode(errors='replace')}")
            if state.measure_from <= ended <= state.measure_until:
                result.latencies.append(ended - started)
                if state.count is not None and len(result.latencies) >= state.count:
                    state.measure_until = ended
                    state.counted.set()
    finally:
        writer.close()
        await writer.wait_closed()


async def http_phase(
    port: int,
    request: bytes,
    result: PhaseResult,
    *,
    clients: int,
    warmup: float,
    duration: float,
    count: int | None,
    server_pid: int | None,
    rate: float | None = None,
) -> None:
    state = LoadState(count=count, rate=rate, clients=clients)
    ready = asyncio.Event()
    tasks = [
        asyncio.create_task(http_client(port, request, state, result, ready))
        for _ in range(clients)
    ]
    await asyncio.sleep(0.2)  # every connection open before the first request
    result.split = connection_split(port, server_pid)
    ready.set()
    await asyncio.sleep(warmup)
    before = cpu_sample(server_pid)
    state.measure_from = time.perf_counter()
    if count is None:
        await asyncio.sleep(duration)
        state.measure_until = time.perf_counter()
    else:
        await state.counted.wait()
    after = cpu_sample(server_pid)
    state.stopping = True
    await asyncio.gather(*tasks)  # every request in flight is answered and counted
    result.window = state.measure_until - state.measure_from
    result.cpu = cpu_share(before, after, result.window)


def run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


# cProfile sees only the thread that enables it: the enqueue writer thread (ledger insert,
# Redis publish) gets a profiler of its own, dumped when the thread ends at shutdown (SIGINT)
PROFILED_SERVER = """
import cProfile, sys, threading
import uvicorn

out, port = sys.argv[1], int(sys.argv[2])
thread_run = threading.Thread.run

def profiled_run(self):
    profile = cProfile.Profile()
    profile.enable()
    try:
        thread_run(self)
    finally:
        profile.disable()
        profile.dump_stats(f"{out}/thread-{self.name}.prof")

threading.Thread.run = profiled_run
profile = cProfile.Profile()
profile.enable()
try:
    uvicorn.run("api_shim.app:build", factory=True, host="127.0.0.1", port=port, workers=1,
                log_config=None, log_level="warning", access_log=False, server_header=False)
finally:
    profile.disable()
    profile.dump_stats(f"{out}/main.prof")
"""


# --- plain Celery ---------------------------------------------------------------------------


def plain_send_task(
    url: str, *, warmup: float, duration: float, count: int | None, server_pid: int | None
) -> PhaseResult:
    """``send_task`` in a loop from this process, as a producer would call it."""
    app = Celery("plain", broker=url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)
    result = PhaseResult("plain send_task, 1 process", 1)
    clock = time.perf_counter
    kwargs = {"value": "x"}
    try:
        end_warmup = clock() + warmup
        while clock() < end_warmup:
            app.send_task(TASK, kwargs=kwargs, queue=PLAIN_QUEUE)
            result.accepted_jobs += 1
        before = cpu_sample(server_pid)
        latencies = result.latencies
        started_at = clock()
        until = started_at + duration
        ended = started_at
        while (ended < until) if count is None else (len(latencies) < count):
            started = clock()
            app.send_task(TASK, kwargs=kwargs, queue=PLAIN_QUEUE)
            ended = clock()
            latencies.append(ended - started)
        result.accepted_jobs += len(latencies)
        result.window = ended - started_at
        result.cpu = cpu_share(before, cpu_sample(server_pid), result.window)
    finally:
        app.close()
    return result


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpPhase:
    label: str
    path: str
    jobs_per_request: int
    rate: float | None = None  # offered requests/s over all clients; None: as fast as answered


JOB = {"task": TASK, "args": {"value": "x"}}
PHASES = {
    "single": HttpPhase("POST /v1/jobs", "/v1/jobs", 1),
    "single1500": HttpPhase("POST /v1/jobs at 1,500/s offered", "/v1/jobs", 1, rate=1500.0),
    "batch100": HttpPhase("POST /v1/jobs/batch x100", "/v1/jobs/batch", 100),
    "batch1000": HttpPhase("POST /v1/jobs/batch x1000", "/v1/jobs/batch", 1000),
}


def body_of(phase: HttpPhase) -> bytes:
    document: Any = JOB if phase.jobs_per_request == 1 else {"jobs": [JOB] * phase.jobs_per_request}
    return json.dumps(document, separators=(",", ":")).encode()


def report_table(results: Sequence[PhaseResult]) -> None:
    print()
    print(
        f"{'phase':<28} {'jobs/s':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'non-2xx':>7} {'202 jobs':>9} {'ledger':>9} {'queue':>9}  connections/process"
    )
    for r in results:
        rows = "-" if r.ledger_rows is None else f"{r.ledger_rows:,}"
        print(
            f"{r.label:<28} {r.jobs_per_s:>9,.0f} {r.requests_per_s:>8,.0f} "
            f"{r.percentile_ms(0.50):>8.2f} {r.percentile_ms(0.99):>8.2f} "
            f"{sum(n for s, n in r.statuses.items() if not 200 <= s < 300):>7} "
            f"{r.accepted_jobs:>9,} {rows:>9} {r.queue_length:>9,}  " + "/".join(map(str, r.split))
        )
    print()
    for r in results:
        if r.cpu is not None:
            print(f"{r.label:<28} {r.cpu.line()}")


def report_problems(results: Sequence[PhaseResult]) -> None:
    for r in results:
        for failure in r.failures[:10]:
            print(f"{r.label}: FAILED {failure}")
        if len(r.failures) > 10:
            print(f"{r.label}: ... and {len(r.failures) - 10} more failures")
        if not r.consistent:
            print(
                f"{r.label}: MISMATCH: {r.accepted_jobs} jobs answered, "
                f"{r.ledger_rows} ledger rows, {r.queue_length} queued"
            )


def report_ratios(results: Sequence[PhaseResult], plain: PhaseResult | None) -> None:
    conveyor = [r for r in results if r is not plain]
    if plain is not None:
        print()
        for r in conveyor:
            print(
                f"{r.label}: {r.jobs_per_s:,.0f} jobs/s = {r.jobs_per_s / plain.jobs_per_s:.2f}x "
                f"send_task ({plain.jobs_per_s:,.0f} jobs/s); p99 {r.percentile_ms(0.99):.1f} ms "
                f"vs {plain.percentile_ms(0.99):.2f} ms per send_task call"
            )
    print()
    for r in conveyor:
        if r.jobs_per_request == 1:
            # a paced phase offers exactly the target rate; 1 % is measurement-window slack
            met = (
                r.jobs_per_s >= TARGET_SINGLE_JOBS_PER_S * 0.99
                and r.percentile_ms(0.99) < TARGET_SINGLE_P99_MS
            )
            target = (
                f"{r.label}: >= {TARGET_SINGLE_JOBS_PER_S:,} jobs/s with p99 < "
                f"{TARGET_SINGLE_P99_MS:.0f} ms"
            )
        else:
            met = r.jobs_per_s >= TARGET_BATCH_JOBS_PER_S
            target = f"batch of {r.jobs_per_request} >= {TARGET_BATCH_JOBS_PER_S:,} jobs/s"
        print(f"target {target}: {'met' if met else 'MISSED'}")


def report_line(
    results: Sequence[PhaseResult],
    plain: PhaseResult | None,
    args: argparse.Namespace,
    started: float,
) -> None:
    """The rows and the JSON line: each Conveyor phase against send_task from one process."""
    rows: list[Row] = []
    figures: dict[str, float | int | str | None] = {
        "clients": args.clients,
        "api_workers": args.api_workers,
        "duration_s": args.duration,
        "consistent": str(all(r.consistent for r in results)),
    }
    for r in results:
        key = r.label.split(" (")[0]
        figures[f"{key} jobs/s"] = round(r.jobs_per_s, 1)
        figures[f"{key} p50 ms"] = round(r.percentile_ms(0.50), 2)
        figures[f"{key} p99 ms"] = round(r.percentile_ms(0.99), 2)
        figures[f"{key} jobs answered"] = r.accepted_jobs
    plain_label = "plain send_task, 1 process"
    plain_rate = plain.jobs_per_s if plain is not None else None
    for r in results:
        if r is plain:
            continue
        if r.rate is not None:
            rows.append(
                Row(
                    f"p99 ms from scheduled time, {r.label} ({r.jobs_per_s:,.0f} jobs/s served)",
                    r.percentile_ms(0.99),
                    plain.percentile_ms(0.99) if plain is not None else None,
                    f"{plain_label}, per call",
                    Target("<", TARGET_SINGLE_P99_MS),
                )
            )
        elif r.jobs_per_request == 1:
            rows.append(Row(f"jobs/s, {r.label}, unpaced", r.jobs_per_s, plain_rate, plain_label))
        else:
            rows.append(
                Row(
                    f"jobs/s, {r.label}",
                    r.jobs_per_s,
                    plain_rate,
                    plain_label,
                    Target(">=", TARGET_BATCH_JOBS_PER_S),
                )
            )
    report("enqueue", rows, figures, started)


def run(
    args: argparse.Namespace, phases: list[str], redis_url: str, database: str, workdir: Path
) -> tuple[list[PhaseResult], PhaseResult | None, subprocess.Popen[bytes], Path]:
    """Start the API on this run's services and measure every phase; the results, the plain
    phase's among them, the API's process (ended) and its log."""
    plain: PhaseResult | None = None
    broker = redis.Redis.from_url(redis_url)
    secret = secrets.token_urlsafe(24)
    env = {
        **conveyor_env(
            redis_url,
            database,
            api_keys=f"{CLIENT_ID}:{secret}",
            rate_limit="1000000/second",
            storage_dir=str(workdir / "blobs"),
        ),
        "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
    }
    (workdir / "metrics").mkdir()
    port = free_port()
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-c", PROFILED_SERVER, args.profile, str(port)]
    else:
        command = [
            str(BIN / "conveyor"), "api", "--host", HOST, "--port", str(port),
            "--workers", str(args.api_workers),
        ]  # fmt: skip
    server = (
        "uvicorn, 1 worker, under cProfile"
        if args.profile
        else f"conveyor api --workers {args.api_workers}"
    )
    log_path = workdir / "api.log"
    results: list[PhaseResult] = []
    print(
        f"{args.clients} clients, {args.warmup:g} s warm-up, "
        + (f"{args.count} requests" if args.count else f"{args.duration:g} s")
        + f" measured per phase; API: {server}; {os.cpu_count()} cores shared by everything",
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_healthy(port, process, log_path)
            for name in phases:
                broker.flushdb()
                if name == "plain":
                    plain = plain_send_task(
                        redis_url,
                        warmup=args.warmup,
                        duration=args.duration,
                        count=args.count,
                        server_pid=process.pid,
                    )
                    plain.queue_length = int(broker.llen(PLAIN_QUEUE))
                    results.append(plain)
                else:
                    phase = PHASES[name]
                    result = PhaseResult(phase.label, phase.jobs_per_request, phase.rate)
                    rows_before = ledger_rows(database)
                    request = post_request(port, phase.path, body_of(phase), secret)

                    async def load(
                        request: bytes = request,
                        result: PhaseResult = result,
                        rate: float | None = phase.rate,
                    ) -> None:
                        await http_phase(
                            port,
                            request,
                            result,
                            clients=args.clients,
                            warmup=args.warmup,
                            duration=args.duration,
                            count=args.count,
                            server_pid=process.pid,
                            rate=rate,
                        )

                    run_loop(load)
                    result.ledger_rows = ledger_rows(database) - rows_before
                    result.queue_length = int(broker.llen(CONVEYOR_QUEUE))
                    results.append(result)
                last = results[-1]
                split = f", connections per API process {'/'.join(map(str, last.split))}"
                print(
                    f"  {last.label}: {last.jobs_per_s:,.0f} jobs/s, "
                    f"p99 {last.percentile_ms(0.99):.2f} ms" + (split if last.split else ""),
                    flush=True,
                )
        finally:
            stop(process, signal.SIGINT if args.profile else signal.SIGTERM)
            broker.close()
    return results, plain, process, log_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--count", type=int, help="measured requests per phase instead")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--clients", type=int, default=50, help="concurrent HTTP connections")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument(
        "--phases",
        default="plain,single1500,single,batch100,batch1000",
        help="comma-separated: plain, " + ", ".join(PHASES),
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="serve with one uvicorn worker under cProfile, every thread profiled, and write "
        "DIR/main.prof and DIR/thread-<name>.prof (figures then describe the profiled server)",
    )
    args = parser.parse_args()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - {"plain", *PHASES}
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    exit_on_sigterm()
    before = cpu_sample(None)
    time.sleep(2)
    idle_load = cpu_share(before, cpu_sample(None), 2.0)
    print(
        f"before the run, other processes kept {idle_load.machine:.2f} cores busy "
        f"(PostgreSQL {idle_load.postgres:.2f}, Redis {idle_load.redis:.2f})",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-enqueue-"))
    with private_redis() as redis_url, fresh_ledger("enqueue") as database:
        results, plain, process, log_path = run(args, phases, redis_url, database, workdir)
    if process.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
        print(f"the API exited with {process.returncode}; its log: {log_path}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    report_table(results)
    print()
    report_problems(results)
    report_ratios(results, plain)
    report_line(results, plain, args, started)
    if any(not r.consistent for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
