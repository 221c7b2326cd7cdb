"""When a schedule's ticks fall: a cron expression in an IANA time zone, or a fixed period.

Pure time arithmetic, no I/O. Ticks fall on whole seconds and are handed out in UTC. A
cron expression has five fields (minute to weekday) or six, the first then being the
second; it is read in the schedule's zone, so ``0 9 * * *`` is 09:00 there in summer and in
winter. When clocks go back, a wall-clock time that happens twice ticks once (the first
time), unless the expression's hour field is ``*``: then it follows real time and ticks in
both hours. A time skipped when clocks go forward ticks when the gap ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from croniter import croniter

#: The longest period of an ``every_seconds`` schedule: one year.
MAX_EVERY_SECONDS = 365 * 24 * 3600
MAX_CRON_LENGTH = 200
_HOUR_FIELD = 1  # croniter's index of the hour, whatever the expression's length
#: Coalesced cron ticks are counted (for the log) up to this many: counting costs CPU time
#: in the loop that relays and fires, an event loop's in a gevent worker.
MISSED_COUNTED_AT_MOST = 1000
# a run of consecutive repeated wall times to step over can only be an hour long or so
_MAX_SKIPS = 7200


class ScheduleTimingError(ValueError):
    """A schedule's timing is not valid; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(problem)


def time_zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Berlin``, ``UTC``)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleTimingError("timezone", f"unknown IANA time zone {name!r}") from None


def _cron(expression: str, start: datetime | None = None) -> croniter:
    """croniter's reading of ``expression`` from ``start``. croniter is imported here, on
    first use: its import runs ``file`` on the interpreter (``platform.architecture()``) and
    takes about 80 ms, which every CLI command and the demo would otherwise pay."""
    from croniter import croniter  # noqa: PLC0415 - see above

    return croniter(expression, start, second_at_beginning=True)


def check_cron(expression: str) -> str:
    """``expression`` if it is a cron expression Conveyor can run, else the reason why not."""
    if len(expression) > MAX_CRON_LENGTH or not expression.isascii():
        raise ScheduleTimingError("cron", "not a cron expression")
    try:
        _cron(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except (ValueError, TypeError, KeyError) as error:  # croniter's errors are ValueErrors
        raise ScheduleTimingError("cron", f"not a cron expression: {error}") from None
    if len(expression.split()) > 6:
        raise ScheduleTimingError("cron", "a cron expression has 5 fields, or 6 with seconds")
    return expression


def _whole_second(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Firing:
    """What one firing of a due schedule does: the tick its job is for, and the next tick."""

    tick: datetime
    next_run_at: datetime
    missed: int  # ticks before ``tick`` that were due and get no job of their own (capped)


@dataclass(frozen=True)
class Timing:
    """A schedule's ticks: ``cron`` read in ``timezone``, or every ``every_seconds``."""

    cron: str | None = None
    every_seconds: int | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every_seconds is None):
            raise ScheduleTimingError("cron", "give exactly one of cron and every_seconds")
        if self.cron is not None:
            check_cron(self.cron)
        elif self.every_seconds is not None and not 1 <= self.every_seconds <= MAX_EVERY_SECONDS:
            raise ScheduleTimingError(
                "every_seconds", f"from 1 to {MAX_EVERY_SECONDS} (a year) seconds"
            )
        time_zone(self.timezone)

    def first_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` of a schedule starting at ``moment``.

        A period counts from ``moment`` (its whole second); a cron expression has its own
        ticks.
        """
        if self.every_seconds is not None:
            return _whole_second(moment) + timedelta(seconds=self.every_seconds)
        return self._cron_after(moment)

    def fire(self, due: datetime, now: datetime) -> Firing:
        """Fire a schedule whose tick ``due`` has come (``due <= now``).

        The job is for the latest tick at or before ``now``; earlier ticks missed meanwhile
        are coalesced into it. The next tick is the first strictly after ``now``.
        """
        if self.every_seconds is not None:
            period = timedelta(seconds=self.every_seconds)
            missed = max(0, (now - due) // period)
            tick = due + missed * period
            return Firing(tick, tick + period, missed)
        next_run_at = self._cron_after(now)
        tick = max(due, self._cron_before(next_run_at))
        return Firing(tick, next_run_at, self._ticks_from(due, tick))

    def _ticks_from(self, first: datetime, end: datetime) -> int:
        """How many ticks fall from ``first`` (a tick) up to ``end`` excluded, counted up
        to :data:`MISSED_COUNTED_AT_MOST`."""
        count = 0
        iterator = self._iterator(_whole_second(first))
        moment = first
        while moment < end and count < MISSED_COUNTED_AT_MOST:
            if not self._repeated(moment):
                count += 1
            moment = iterator.get_next(datetime).astimezone(UTC)
        return count

    @property
    def _expression(self) -> str:
        if self.cron is None:
            raise ScheduleTimingError("cron", "a fixed period has no cron ticks")
        return self.cron

    def _iterator(self, start: datetime) -> croniter:
        zone = time_zone(self.timezone)
        return _cron(self._expression, start.astimezone(zone))

    def _cron_after(self, moment: datetime) -> datetime:
        return self._cron_step(moment, forward=True)

    def _cron_before(self, moment: datetime) -> datetime:
        return self._cron_step(moment, forward=False)

    def _cron_step(self, moment: datetime, *, forward: bool) -> datetime:
        """The first tick strictly after (or before) ``moment``, in UTC."""
        iterator = self._iterator(_whole_second(moment))
        step = iterator.get_next if forward else iterator.get_prev
        for _ in range(_MAX_SKIPS):
            tick: datetime = step(datetime)
            if not self._repeated(tick):
                return tick.astimezone(UTC)
        raise ScheduleTimingError("cron", "no tick found")

    def _repeated(self, tick: datetime) -> bool:
        """Whether ``tick`` is the second occurrence of a wall time clocks went back over,
        for an expression that names its hours (one that runs every hour ticks in both)."""
        if self._hour_is_wildcard:
            return False
        zone = time_zone(self.timezone)
        wall = tick.astimezone(zone).replace(tzinfo=None)
        first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        # a repeated wall time's second occurrence is the later instant; in a skipped
        # one, fold=1 reads it with the offset after the gap, an earlier instant
        return second > first and tick.astimezone(UTC) == second

    @cached_property
    def _hour_is_wildcard(self) -> bool:
        expanded = _cron(self._expression).expanded
        return bool(expanded[_HOUR_FIELD] == ["*"])
