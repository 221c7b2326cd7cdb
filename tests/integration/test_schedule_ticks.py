"""Schedulers side by side: two ``conveyor beat`` processes fire every tick exactly once.

They share a ledger and a Redis of the test's own, where no worker takes the messages, so
the queues show how often each job was published.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select

from tests.support.api_server import running_beat
from tests.support.polling import wait_for
from tests.support.workers import worker_environment
from workers.broker import queue_keys
from workers.ledger import schedules
from workers.ledger.database import create_ledger_engine
from workers.ledger.models import JOBS, SCHEDULES
from workers.ledger.schedules import ScheduleSpec
from workers.schedule_timing import Timing

#: How long the two schedulers run side by side.
WINDOW = timedelta(seconds=60)
CLIENT = "alice"
TIMINGS = {
    # a seconds field: a tick every 2 s, read by croniter
    "even-seconds": (Timing(cron="*/2 * * * * *"), timedelta(seconds=2)),
    "every-3s": (Timing(every_seconds=3), timedelta(seconds=3)),
}


def published_ids(broker_url: str) -> Counter[str]:
    """How many times each job id is in the io queue."""
    client = redis.Redis.from_url(broker_url)
    try:
        raw = [entry for key in queue_keys("io") for entry in client.lrange(key, 0, -1)]
    finally:
        client.close()
    return Counter(json.loads(entry)["headers"]["id"] for entry in raw)


def coalesced_ticks(logs: list[Path], name: str, after: datetime) -> int:
    """Ticks of schedule ``name`` after ``after`` that the schedulers reported coalesced into
    a later one (they lie between that one and the job before it)."""
    missed = 0
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"missed_ticks"' not in line:
                continue
            record = json.loads(line)
            tick = datetime.fromisoformat(record["tick"])
            if record["schedule"] == name and tick > after:
                missed += int(record["missed_ticks"])
    return missed


def ticks_of(engine: Engine, name: str) -> list[datetime]:
    with engine.connect() as connection:
        query = select(JOBS.c.scheduled_for).where(JOBS.c.schedule == name)
        return sorted(connection.execute(query).scalars())


@pytest.mark.timeout(240)
def test_two_schedulers_make_exactly_one_job_per_tick(
    quiet_ledger_url: str, quiet_redis_url: str, tmp_path: Path
) -> None:
    ledger_url, broker_url = quiet_ledger_url, quiet_redis_url
    env = worker_environment(
        env="test", redis_url=broker_url, database_url=ledger_url, log_level="INFO",
        storage_dir=str(tmp_path / "blobs"), visibility_timeout="300",
    )  # fmt: skip
    engine = create_ledger_engine(ledger_url, pool_size=2)
    with engine.begin() as connection:  # the ledger is the session's: start from nothing
        connection.execute(SCHEDULES.delete())
        connection.execute(JOBS.delete())
    logs = [tmp_path / "beat-1.log", tmp_path / "beat-2.log"]
    with (
        running_beat(env, logs[0], "--schedule", str(tmp_path / "beat-1")),
        running_beat(env, logs[1], "--schedule", str(tmp_path / "beat-2")),
    ):
        with engine.begin() as connection:
            for name, (timing, _period) in TIMINGS.items():
                spec = ScheduleSpec(name, "diagnostics.echo", {"value": name}, timing)
                schedules.put_schedule(connection, CLIENT, spec, datetime.now(UTC))
        first = wait_for(
            lambda: ticks_of(engine, "even-seconds"), timeout=60, what="the first tick's job"
        )[0]
        wait_for(
            lambda: all(
                ticks and ticks[-1] >= first + WINDOW
                for ticks in (ticks_of(engine, name) for name in TIMINGS)
            ),
            timeout=WINDOW.total_seconds() + 90,
            interval=0.5,
            what=f"{WINDOW.total_seconds():g} s of ticks",
        )
        with engine.begin() as connection:
            for name in TIMINGS:
                schedules.set_paused(connection, CLIENT, name, paused=True, now=datetime.now(UTC))

    with engine.connect() as connection:
        jobs = [dict(row) for row in connection.execute(select(JOBS)).mappings()]
    engine.dispose()
    published = published_ids(broker_url)
    for name, (_timing, period) in TIMINGS.items():
        mine = [job for job in jobs if job["schedule"] == name]
        ticks = sorted(job["scheduled_for"] for job in mine)
        span = int((ticks[-1] - ticks[0]) / period) + 1
        duplicates = len(ticks) - len(set(ticks))
        missed = coalesced_ticks(logs, name, ticks[0])
        print(
            f"\n{name}: {span} ticks over {ticks[-1] - ticks[0]}, {len(mine)} jobs, "
            f"{duplicates} duplicate ticks, {missed} coalesced"
        )
        assert duplicates == 0
        assert all((tick - ticks[0]) % period == timedelta(0) for tick in ticks)
        # every tick of the span made a job, or was reported coalesced into a later one
        assert len(ticks) + missed == span
        assert len(mine) >= 0.9 * span
        assert {job["idempotency_key"] for job in mine} == {
            f"schedule:{name}:{tick.isoformat().replace('+00:00', 'Z')}" for tick in ticks
        }
    # both schedulers took part, and neither failed
    for path in logs:
        text = path.read_text(errors="replace")
        assert "schedules fired" in text, path.name
        assert "could not fire" not in text, path.name
    # each job published exactly once, none still waiting in the outbox
    assert set(published) == {job["id"] for job in jobs}
    assert set(published.values()) == {1}
    assert all(job["publish_after"] is None for job in jobs)
