"""The completion counter the peers' no-op jobs increment in Redis, and the drain timer that
watches it: how fast a queue of N jobs empties, without asking the framework."""

from __future__ import annotations

import time

import redis

#: The key every peer's no-op job increments once, as the last thing it does.
KEY = "bench:peers:done"
#: Seconds between two reads of the counter while a drain runs.
POLL_INTERVAL = 0.001


def count_one(client: redis.Redis) -> None:
    """What a no-op job does: add itself to the counter."""
    client.incr(KEY)


def reset(client: redis.Redis) -> None:
    client.delete(KEY)


def drain_rate(client: redis.Redis, jobs: int, timeout: float) -> float:
    """Jobs per second from the first completion to the ``jobs``-th, read off the counter.

    Timing starts at the first completion, so the workers' start-up is not counted; the
    first job's own run is, over the rest of the drain, ``(jobs - 1) / seconds``.
    """
    deadline = time.monotonic() + timeout
    first: float | None = None
    while True:
        now = time.monotonic()
        done = int(client.get(KEY) or 0)
        if done and first is None:
            first = now
        if done >= jobs:
            break
        if now > deadline:
            raise SystemExit(f"only {done} of {jobs} jobs completed within {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)
    assert first is not None
    seconds = now - first
    return (jobs - 1) / seconds if seconds > 0 else float("inf")
