"""The broker's ceiling: LPUSH and RPOP per second on a private Redis, measured with
``redis-benchmark`` on this machine, the most any queue on this Redis could move.

``redis-benchmark -t lpush,rpop -n <requests> -c <clients> -q --csv`` against a Redis server
started for this run (no persistence, loopback only). Conveyor needs at least one LPUSH and
one RPOP-like pop per job, so these bound every drain and enqueue figure of the other
benchmarks; there is no target and no baseline.

    .venv/bin/python bench/broker_ceiling.py --requests 200000 --clients 50
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import time
from urllib.parse import urlsplit

from bench_processes import exit_on_sigterm
from bench_report import Row, report
from bench_services import private_redis

TESTS = ("LPUSH", "RPOP")


def ceiling(url: str, requests: int, clients: int, pipeline: int) -> dict[str, float]:
    """Operations per second of each of ``TESTS``, as redis-benchmark reports them."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is not on PATH (Debian: apt-get install redis-tools)")
    address = urlsplit(url)
    output = subprocess.run(
        [binary, "-h", str(address.hostname), "-p", str(address.port),
         "-t", ",".join(test.lower() for test in TESTS), "-n", str(requests),
         "-c", str(clients), "-P", str(pipeline), "-q", "--csv"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rates = {row["test"]: float(row["rps"]) for row in csv.DictReader(output.splitlines())}
    missing = set(TESTS) - set(rates)
    if missing:
        raise SystemExit(f"redis-benchmark printed no {', '.join(sorted(missing))}:\n{output}")
    return {test: rates[test] for test in TESTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="operations per test")
    parser.add_argument("--clients", type=int, default=50, help="parallel connections")
    parser.add_argument("--pipeline", type=int, default=1, help="requests per round trip")
    args = parser.parse_args()
    exit_on_sigterm()
    started = time.monotonic()
    with private_redis() as url:
        rates = ceiling(url, args.requests, args.clients, args.pipeline)
    setup = f"{args.requests:,} requests, {args.clients} clients, pipeline {args.pipeline}"
    print(f"redis-benchmark on a private redis-server: {setup}")
    for test, rate in rates.items():
        print(f"  {test:<6} {rate:>12,.0f} ops/s")
    rows = [Row(f"{test} ops/s (redis-benchmark, {setup})", rate) for test, rate in rates.items()]
    figures = {
        "requests": args.requests,
        "clients": args.clients,
        "pipeline": args.pipeline,
        **{f"{test.lower()}_ops_per_s": rate for test, rate in rates.items()},
    }
    report("broker_ceiling", rows, figures, started)


if __name__ == "__main__":
    main()
