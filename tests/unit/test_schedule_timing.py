"""When schedules tick: cron in a time zone across DST, fixed periods, coalesced misses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workers.schedule_timing import MAX_EVERY_SECONDS, ScheduleTimingError, Timing
from workers.scheduler import tick_key


def utc(  # noqa: PLR0917 - datetime's own positional fields
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def ticks(timing: Timing, start: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    moment = start
    for _ in range(count):
        moment = timing.first_after(moment)
        found.append(moment)
    return found


def test_every_seconds_counts_from_the_whole_second_it_starts() -> None:
    timing = Timing(every_seconds=30)

    assert timing.first_after(utc(2026, 1, 1, 12, 0, 7) + timedelta(microseconds=400)) == utc(
        2026, 1, 1, 12, 0, 37
    )


def test_cron_ticks_are_utc_and_strictly_after() -> None:
    timing = Timing(cron="*/5 * * * *")

    assert timing.first_after(utc(2026, 1, 1, 12, 0)) == utc(2026, 1, 1, 12, 5)
    assert timing.first_after(utc(2026, 1, 1, 12, 3, 59)) == utc(2026, 1, 1, 12, 5)
    assert timing.first_after(utc(2026, 1, 1, 12, 3)).tzinfo == UTC


def test_six_fields_put_the_seconds_first() -> None:
    assert ticks(Timing(cron="*/20 * * * * *"), utc(2026, 1, 1, 12, 0, 0), 3) == [
        utc(2026, 1, 1, 12, 0, 20),
        utc(2026, 1, 1, 12, 0, 40),
        utc(2026, 1, 1, 12, 1, 0),
    ]


def test_cron_is_read_in_the_schedules_zone_summer_and_winter() -> None:
    nine_in_berlin = Timing(cron="0 9 * * *", timezone="Europe/Berlin")

    assert nine_in_berlin.first_after(utc(2026, 7, 1)) == utc(2026, 7, 1, 7)  # UTC+2
    assert nine_in_berlin.first_after(utc(2026, 1, 10)) == utc(2026, 1, 10, 8)  # UTC+1


def test_a_daily_tick_in_the_hour_clocks_go_back_over_runs_once() -> None:
    # Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice
    timing = Timing(cron="30 2 * * *", timezone="Europe/Berlin")

    assert ticks(timing, utc(2026, 10, 24, 12), 3) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first occurrence only
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]


def test_an_hourly_expression_follows_real_time_through_the_repeated_hour() -> None:
    timing = Timing(cron="30 * * * *", timezone="Europe/Berlin")

    assert ticks(timing, utc(2026, 10, 24, 23, 45), 4) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 1, 30),  # 02:30 CET: an hour later, a tick of its own
        utc(2026, 10, 25, 2, 30),
        utc(2026, 10, 25, 3, 30),
    ]


def test_a_tick_in_the_hour_clocks_skip_runs_when_the_gap_ends() -> None:
    # Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day
    timing = Timing(cron="30 2 * * *", timezone="Europe/Berlin")

    assert ticks(timing, utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_new_york_dst_keeps_nine_oclock() -> None:
    timing = Timing(cron="0 9 * * *", timezone="America/New_York")

    # 2026-03-08 clocks go forward in New York: 09:00 is UTC-5 the day before, UTC-4 after
    assert ticks(timing, utc(2026, 3, 7, 0), 2) == [utc(2026, 3, 7, 14), utc(2026, 3, 8, 13)]


def test_a_due_tick_fires_once_and_the_next_is_the_following_one() -> None:
    firing = Timing(every_seconds=10).fire(utc(2026, 1, 1, 12, 0, 0), utc(2026, 1, 1, 12, 0, 3))

    assert (firing.tick, firing.next_run_at, firing.missed) == (
        utc(2026, 1, 1, 12, 0, 0),
        utc(2026, 1, 1, 12, 0, 10),
        0,
    )


def test_missed_periods_coalesce_into_the_latest_tick() -> None:
    due = utc(2026, 1, 1, 12, 0, 0)

    firing = Timing(every_seconds=10).fire(due, due + timedelta(seconds=65))

    assert firing.tick == utc(2026, 1, 1, 12, 1, 0)
    assert firing.next_run_at == utc(2026, 1, 1, 12, 1, 10)
    assert firing.missed == 6  # 12:00:00 … 12:00:50 get no job of their own


def test_missed_cron_ticks_coalesce_into_the_latest_tick() -> None:
    timing = Timing(cron="0 * * * *", timezone="Europe/Berlin")
    due = utc(2026, 1, 1, 0)

    firing = timing.fire(due, utc(2026, 1, 1, 5, 20))

    assert firing.tick == utc(2026, 1, 1, 5)
    assert firing.next_run_at == utc(2026, 1, 1, 6)
    assert firing.missed == 5


def test_a_tick_exactly_now_is_the_one_fired() -> None:
    now = utc(2026, 1, 1, 12, 5)

    firing = Timing(cron="*/5 * * * *").fire(utc(2026, 1, 1, 12, 0), now)

    assert (firing.tick, firing.next_run_at, firing.missed) == (now, utc(2026, 1, 1, 12, 10), 1)


def test_the_tick_key_names_the_schedule_and_the_whole_second() -> None:
    tick = utc(2026, 1, 1, 12, 5) + timedelta(microseconds=1)

    assert tick_key("nightly", tick) == "schedule:nightly:2026-01-01T12:05:00Z"


@pytest.mark.parametrize(
    ("timing", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"cron": "* * * * * * *"}, "cron"),
        ({"cron": "H * * * *"}, "cron"),
        ({"cron": "*/5 * * * *", "every_seconds": 5}, "cron"),
        ({}, "cron"),
        ({"every_seconds": 0}, "every_seconds"),
        ({"every_seconds": MAX_EVERY_SECONDS + 1}, "every_seconds"),
        ({"every_seconds": 5, "timezone": "Mars/Olympus"}, "timezone"),
        ({"every_seconds": 5, "timezone": "../../etc/passwd"}, "timezone"),
        ({"every_seconds": 5, "timezone": ""}, "timezone"),
    ],
)
def test_invalid_timings_name_their_field(timing: dict[str, object], field: str) -> None:
    with pytest.raises(ScheduleTimingError) as refused:
        Timing(**timing)  # type: ignore[arg-type]

    assert refused.value.field == field
