"""When the outbox relay last ran, kept in Redis by every relay and read by the API and CLI.

A relay that has not run for a while means delayed jobs and jobs recorded while Redis was
down wait: no worker runs (and no ``conveyor beat``), or none reaches the ledger.
"""

from __future__ import annotations

import time

import redis

#: When a relay last ran to the end, in seconds since the epoch.
RELAY_LAST_RUN_KEY = "conveyor:relay:last_run"
#: A relay older than this is reported as stalled (it runs every second).
RELAY_STALE_SECONDS = 30.0


def record_relay_run(client: redis.Redis, now: float | None = None) -> None:
    """Note that a relay ran to the end just now."""
    client.set(RELAY_LAST_RUN_KEY, f"{time.time() if now is None else now:.3f}")


def relay_age(client: redis.Redis, now: float | None = None) -> float | None:
    """Seconds since any relay last ran to the end; ``None`` if none ever has."""
    return age_of(client.get(RELAY_LAST_RUN_KEY), now)


def age_of(raw: bytes | str | None, now: float | None = None) -> float | None:
    """The relay's age from the value stored under :data:`RELAY_LAST_RUN_KEY`."""
    if raw is None:
        return None
    try:
        last = float(raw)
    except ValueError:
        return None
    return max(0.0, (time.time() if now is None else now) - last)


def describe_relay(age: float | None) -> str:
    """``ok``, or how long the relay has not run (one phrase, for probes and the CLI)."""
    if age is None:
        return "never ran (no worker or beat has run against this Redis)"
    if age > RELAY_STALE_SECONDS:
        return f"not run for {age:.0f} s (no worker or beat is running?)"
    return "ok"
