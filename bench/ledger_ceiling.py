"""The ledger's own ceiling: job transitions per second PostgreSQL sustains through group commit.

No broker and no Celery: ``--processes`` processes, each with ``--greenlets`` gevent
greenlets sharing one :class:`workers.ledger.group_commit.GroupCommit`, claim and then
succeed queued jobs as fast as the ledger answers (each job: one claim and one success, the
two transitions a worker writes for a job that succeeds at once). The jobs are recorded
first, as the producer records them. Prints jobs/s, transitions/s, the average round size,
and the CPU PostgreSQL spent per job.

    .venv/bin/python bench/ledger_ceiling.py --jobs 20000 --processes 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench_services import drop_database, fresh_database
from cpu_use import ProcessesMeter

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def record_jobs(database: str, count: int) -> list[str]:
    """``count`` queued jobs, recorded as the producer records them; their ids."""
    from sqlalchemy import create_engine  # noqa: PLC0415 - the parent only

    from workers.enqueue import JobRequest  # noqa: PLC0415
    from workers.ledger import outbox  # noqa: PLC0415

    engine = create_engine(database.replace("postgresql://", "postgresql+psycopg://"))
    now = datetime.now(UTC)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with engine.begin() as connection:
        for start in range(0, count, 5000):
            rows = [
                JobRequest(
                    job_id=job_id,
                    client_id="bench",
                    task="diagnostics.echo",
                    queue="io",
                    args={"value": 0},
                    priority="normal",
                    max_attempts=5,
                    fingerprint=job_id,
                ).row(now, now)
                for job_id in ids[start : start + 5000]
            ]
            outbox.insert_new_jobs(connection, rows)
        connection.exec_driver_sql("ANALYZE jobs")
    engine.dispose()
    return ids


def drive(database: str, ids_file: str, greenlets: int) -> None:
    """One process: claim and succeed every job listed in ``ids_file``; print its counters."""
    from gevent import monkey  # noqa: PLC0415 - patched before anything else loads

    monkey.patch_all()
    import gevent  # noqa: PLC0415

    from workers.ledger.attempts import Delivery, Runner  # noqa: PLC0415
    from workers.ledger.database import create_ledger_engine  # noqa: PLC0415
    from workers.ledger.group_commit import GroupCommit  # noqa: PLC0415

    ids = Path(ids_file).read_text().split()
    url = database.replace("postgresql://", "postgresql+psycopg://")
    engine = create_ledger_engine(url, pool_size=2, pre_ping=False).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    group = GroupCommit(lambda: engine)
    runner = Runner(worker="ceiling@bench", pool="gevent", pid=os.getpid())
    pending = iter(ids)

    def work() -> None:
        for job_id in pending:
            delivery = Delivery(job_id, "diagnostics.echo", "io", {"value": 0}, 5, None)
            start = group.claim(delivery, generation=0, runner=runner)
            if start is None or not group.succeed(job_id, start.attempt, {"value": 0}):
                raise SystemExit(f"job {job_id} was not claimed and finished")

    gevent.joinall([gevent.spawn(work) for _ in range(greenlets)], raise_error=True)
    print(json.dumps({"flushes": group.flushes, "transitions": group.transitions}))


def run(jobs: int, processes: int, greenlets: int) -> dict[str, float]:
    name = f"conveyor_bench_ceiling_{os.getpid()}"
    database = fresh_database(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(CONVEYOR_DATABASE_URL=database, CONVEYOR_ENV="test")
    try:
        subprocess.run(
            [str(BIN / "conveyor"), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        ids = record_jobs(database, jobs)
        files = []
        for n in range(processes):
            path = Path(f"/tmp/ledger-ceiling-{os.getpid()}-{n}.ids")  # noqa: S108 - a scratch list
            path.write_text("\n".join(ids[n::processes]))
            files.append(path)
        with ProcessesMeter("postgres") as postgres:
            started = time.monotonic()
            children = [
                subprocess.Popen(
                    [sys.executable, __file__, "--drive", database, str(path), str(greenlets)],
                    stdout=subprocess.PIPE,
                    env={**env, "PYTHONPATH": str(ROOT)},
                )
                for path in files
            ]
            outputs = [child.communicate(timeout=600)[0] for child in children]
            elapsed = time.monotonic() - started
        postgres_cpu = postgres.seconds
        if any(child.returncode for child in children):
            raise SystemExit("a driving process failed")
        counters = [json.loads(out.decode().strip().splitlines()[-1]) for out in outputs]
        for path in files:
            path.unlink()
    finally:
        drop_database(name)
    flushes = sum(c["flushes"] for c in counters)
    transitions = sum(c["transitions"] for c in counters)
    return {
        "processes": processes,
        "greenlets": greenlets,
        "jobs": jobs,
        "jobs_per_s": round(jobs / elapsed),
        "transitions_per_s": round(transitions / elapsed),
        "transitions_per_round": round(transitions / flushes, 1),
        "postgres_cpu_us_per_job": round(postgres_cpu / jobs * 1e6),
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--drive":
        drive(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--greenlets", type=int, default=50)
    args = parser.parse_args()
    print("| processes x greenlets | jobs/s | transitions/s | per round | PG CPU per job |")
    print("|---|---|---|---|---|")
    for processes in (int(p) for p in args.processes.split(",")):
        figures = run(args.jobs, processes, args.greenlets)
        print(
            f"| {processes} x {args.greenlets} | {figures['jobs_per_s']} | "
            f"{figures['transitions_per_s']} | {figures['transitions_per_round']} | "
            f"{figures['postgres_cpu_us_per_job']} us |",
            flush=True,
        )
        print(json.dumps({"bench": "ledger_ceiling", **figures}), flush=True)


if __name__ == "__main__":
    main()
