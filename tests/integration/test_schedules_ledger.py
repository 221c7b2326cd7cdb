"""Schedules in the ledger on PostgreSQL and SQLite: kept, paused, and fired once per tick.

The ledgers here are the tests' own: the session's workers, which fire every due schedule
of their ledger, never see them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select

from tasks.catalog import build_catalog
from workers.broker import Publisher
from workers.enqueue import Enqueuer
from workers.ledger import schedules
from workers.ledger.database import create_ledger_engine
from workers.ledger.models import JOBS, SCHEDULES
from workers.ledger.schedules import ScheduleSpec
from workers.schedule_timing import Timing
from workers.scheduler import Scheduler

START = datetime(2026, 5, 4, 12, 0, 0, tzinfo=UTC)
CATALOG = build_catalog(diagnostics=True)


class Clock:
    """The time the code under test reads, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["postgresql", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty ledger of this module's own on each backend in turn."""
    if request.param == "postgresql":
        url = request.getfixturevalue("quiet_ledger_url")
    else:
        url = request.getfixturevalue("sqlite_url")
    engine = create_ledger_engine(url, pool_size=2)
    with engine.begin() as connection:
        connection.execute(SCHEDULES.delete())
        connection.execute(JOBS.delete())
    yield engine
    engine.dispose()


@pytest.fixture
def broker(quiet_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(quiet_redis_url)
    yield client
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
def scheduler(ledger: Engine, broker: redis.Redis, clock: Clock) -> Scheduler:
    enqueuer = Enqueuer(ledger, Publisher(broker), clock=clock)
    return Scheduler(lambda: ledger, lambda: enqueuer, CATALOG, clock=clock)


def every(seconds: int, name: str = "pulse", **options: object) -> ScheduleSpec:
    return ScheduleSpec(
        name,
        "diagnostics.echo",
        {"value": name},
        Timing(every_seconds=seconds),
        **options,  # type: ignore[arg-type]
    )


def put(
    ledger: Engine, spec: ScheduleSpec, now: datetime, client: str = "alice"
) -> tuple[dict[str, object], bool]:
    with ledger.begin() as connection:
        return schedules.put_schedule(connection, client, spec, now)


def jobs_of(ledger: Engine) -> list[dict[str, object]]:
    with ledger.connect() as connection:
        query = select(JOBS).order_by(JOBS.c.scheduled_for)
        return [dict(row) for row in connection.execute(query).mappings()]


def test_a_new_schedule_waits_for_its_first_tick_and_a_replacement_keeps_it(
    ledger: Engine,
) -> None:
    row, created = put(ledger, every(60), START)
    assert created
    assert row["next_run_at"] == START + timedelta(seconds=60)
    assert row["last_run_at"] is None

    later = START + timedelta(seconds=20)
    replaced, created = put(
        ledger,
        ScheduleSpec("pulse", "diagnostics.echo", {"value": 2}, Timing(every_seconds=60)),
        later,
    )
    assert not created
    assert replaced["args"] == {"value": 2}
    assert replaced["next_run_at"] == START + timedelta(seconds=60)  # same timing, same tick
    assert replaced["created_at"] == START
    assert replaced["updated_at"] == later

    retimed, _ = put(ledger, every(30), later)
    assert retimed["next_run_at"] == later + timedelta(seconds=30)


def test_names_are_per_client(ledger: Engine) -> None:
    put(ledger, every(60), START, client="alice")
    _, created = put(ledger, every(60), START, client="bob")

    assert created
    with ledger.connect() as connection:
        assert [r["client_id"] for r in schedules.list_schedules(connection, "bob")] == ["bob"]
        assert schedules.get_schedule(connection, "carol", "pulse") is None


def test_pause_stops_the_ticks_and_resume_starts_from_now(ledger: Engine) -> None:
    put(ledger, every(10), START)
    with ledger.begin() as connection:
        paused = schedules.set_paused(connection, "alice", "pulse", paused=True, now=START)
    assert paused is not None
    assert (paused["paused"], paused["next_run_at"]) == (True, None)

    resumed_at = START + timedelta(hours=3, seconds=5)
    with ledger.begin() as connection:
        resumed = schedules.set_paused(connection, "alice", "pulse", paused=False, now=resumed_at)
        missing = schedules.set_paused(connection, "alice", "other", paused=False, now=resumed_at)
    assert resumed is not None
    assert missing is None
    assert (resumed["paused"], resumed["next_run_at"]) == (
        False,
        resumed_at + timedelta(seconds=10),
    )


def test_a_due_tick_makes_one_job_published_once(
    ledger: Engine, scheduler: Scheduler, broker: redis.Redis, clock: Clock
) -> None:
    put(ledger, every(10, priority="high"), START)
    clock.now = START + timedelta(seconds=10, milliseconds=300)

    assert scheduler.fire_due() == 1
    assert scheduler.fire_due() == 0  # the same moment again: the tick is done

    [job] = jobs_of(ledger)
    tick = START + timedelta(seconds=10)
    assert job["schedule"] == "pulse"
    assert job["client_id"] == "alice"
    assert job["idempotency_key"] == "schedule:pulse:2026-05-04T12:00:10Z"
    assert job["scheduled_for"] == tick
    assert (job["task"], job["queue"], job["priority"]) == ("diagnostics.echo", "io", "high")
    assert job["args"] == {"value": "pulse"}
    assert job["publish_after"] is None  # out of the outbox: published
    assert Publisher(broker).ids_held(at_most=100) == {job["id"]}
    with ledger.connect() as connection:
        row = schedules.get_schedule(connection, "alice", "pulse")
    assert row is not None
    assert (row["last_run_at"], row["next_run_at"]) == (tick, tick + timedelta(seconds=10))


def test_ticks_missed_while_nothing_ran_make_one_job(
    ledger: Engine, scheduler: Scheduler, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    put(ledger, every(10), START)
    clock.now = START + timedelta(seconds=10 * 7 + 4)  # ticks at +10 … +70 have all passed

    with caplog.at_level(logging.INFO, logger="workers.scheduler"):
        assert scheduler.fire_due() == 1

    [job] = jobs_of(ledger)
    assert job["scheduled_for"] == START + timedelta(seconds=70)  # the latest tick
    with ledger.connect() as connection:
        row = schedules.get_schedule(connection, "alice", "pulse")
    assert row is not None
    assert row["next_run_at"] == START + timedelta(seconds=80)  # the first after now
    assert [r.missed_ticks for r in caplog.records if hasattr(r, "missed_ticks")] == [6]


def test_a_paused_schedule_never_fires(ledger: Engine, scheduler: Scheduler, clock: Clock) -> None:
    put(ledger, every(10, paused=True), START)
    clock.now = START + timedelta(hours=1)

    assert scheduler.fire_due() == 0
    assert jobs_of(ledger) == []


def test_a_stale_claim_cannot_fire_a_tick_again(ledger: Engine) -> None:
    put(ledger, every(10), START)
    now = START + timedelta(seconds=11)
    with ledger.begin() as connection:
        [row] = schedules.claim_due(connection, now, 10)
        firing = schedules.timing_of(row).fire(row["next_run_at"], now)

        assert schedules.advance(connection, row, firing)
        assert not schedules.advance(connection, row, firing)  # what a second scheduler sees


def test_latest_jobs_are_the_newest_of_each_schedule(
    ledger: Engine, scheduler: Scheduler, clock: Clock
) -> None:
    put(ledger, every(10, "fast"), START)
    put(ledger, every(20, "slow"), START)
    for step in range(1, 8):
        clock.now = START + timedelta(seconds=10 * step)
        scheduler.fire_due()

    with ledger.connect() as connection:
        latest = schedules.latest_job_ids(connection, "alice", ["fast", "slow", "none"])
        fast = [
            r["id"]
            for r in connection.execute(
                select(JOBS.c.id)
                .where(JOBS.c.schedule == "fast")
                .order_by(JOBS.c.created_at.desc())
            ).mappings()
        ]
    assert latest["fast"] == fast[: schedules.LATEST_JOBS]
    assert len(fast) == 7
    assert len(latest["slow"]) == 3
    assert latest["none"] == []


def test_deleting_a_schedule_keeps_its_jobs(
    ledger: Engine, scheduler: Scheduler, clock: Clock
) -> None:
    put(ledger, every(10), START)
    clock.now = START + timedelta(seconds=10)
    scheduler.fire_due()

    with ledger.begin() as connection:
        assert schedules.delete_schedule(connection, "alice", "pulse")
        assert not schedules.delete_schedule(connection, "alice", "pulse")
    assert [job["schedule"] for job in jobs_of(ledger)] == ["pulse"]


def test_a_task_no_longer_in_the_catalog_skips_its_tick(
    ledger: Engine, broker: redis.Redis, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    put(ledger, every(10), START)
    enqueuer = Enqueuer(ledger, Publisher(broker), clock=clock)
    without_diagnostics = build_catalog(diagnostics=False)
    scheduler = Scheduler(lambda: ledger, lambda: enqueuer, without_diagnostics, clock=clock)
    clock.now = START + timedelta(seconds=10)

    assert scheduler.fire_due() == 0

    assert jobs_of(ledger) == []
    assert "not in the catalog" in caplog.text
    with ledger.connect() as connection:
        row = schedules.get_schedule(connection, "alice", "pulse")
    assert row is not None
    assert row["next_run_at"] == START + timedelta(seconds=20)
