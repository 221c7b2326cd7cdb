"""The sliding-window rate limiter against the real Redis: boundary, concurrency, sliding, TTL."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from api_shim.rate_limit import RateDecision, SlidingWindowLimiter
from workers.settings import RateLimit

pytestmark = pytest.mark.redis

RATE_HEADERS = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}


def client_id(name: str) -> str:
    """A client id no other test (or earlier run in this session) shares."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client on this process's Redis db, closed afterwards (no ResourceWarning)."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def test_exactly_limit_allowed_then_denied(redis_url: str) -> None:
    async def scenario() -> list[RateDecision]:
        async with redis_client(redis_url) as client:
            limiter = SlidingWindowLimiter(client, RateLimit(limit=5, period_seconds=60))
            who = client_id("boundary")
            return [await limiter.hit(who) for _ in range(7)]

    decisions = asyncio.run(scenario())

    allowed, denied = decisions[:5], decisions[5:]
    assert [d.allowed for d in allowed] == [True] * 5
    assert [d.remaining for d in allowed] == [4, 3, 2, 1, 0]
    for decision in allowed:
        headers = decision.headers()
        assert set(headers) == RATE_HEADERS
        assert headers["RateLimit-Limit"] == "5"
        assert headers["RateLimit-Remaining"] == str(decision.remaining)
        assert 1 <= int(headers["RateLimit-Reset"]) <= 60
        assert decision.retry_after_seconds is None

    for decision in denied:
        assert not decision.allowed
        assert decision.remaining == 0
        assert decision.retry_after_seconds is not None
        assert 1 <= decision.retry_after_seconds <= 60
        headers = decision.headers()
        assert set(headers) == {*RATE_HEADERS, "Retry-After"}
        assert headers["RateLimit-Remaining"] == "0"
        # While limited, "room again" and "retry after" are the same instant.
        assert headers["Retry-After"] == headers["RateLimit-Reset"]


def test_concurrent_hits_allow_exactly_the_limit(redis_url: str) -> None:
    async def scenario() -> list[RateDecision]:
        async with redis_client(redis_url) as client:
            limiter = SlidingWindowLimiter(client, RateLimit(limit=20, period_seconds=60))
            who = client_id("concurrent")
            return list(await asyncio.gather(*(limiter.hit(who) for _ in range(50))))

    decisions = asyncio.run(scenario())

    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 20
    # Serialised by Redis: each allowed hit saw a distinct count.
    assert sorted(d.remaining for d in allowed) == list(range(20))
    assert all(d.remaining == 0 and d.retry_after_seconds for d in decisions if not d.allowed)


def test_retry_after_is_within_the_period(redis_url: str) -> None:
    async def scenario() -> RateDecision:
        async with redis_client(redis_url) as client:
            limiter = SlidingWindowLimiter(client, RateLimit(limit=2, period_seconds=10))
            who = client_id("retry-after")
            await limiter.hit(who)
            await limiter.hit(who)
            return await limiter.hit(who)

    denied = asyncio.run(scenario())

    assert not denied.allowed
    assert denied.retry_after_seconds is not None
    # The oldest hit is milliseconds old: its slot frees in just under 10 s, rounded up.
    assert 1 <= denied.retry_after_seconds <= 10
    assert denied.retry_after_seconds >= 9


def test_client_is_allowed_again_once_the_window_slides(redis_url: str) -> None:
    async def scenario() -> tuple[float, int]:
        async with redis_client(redis_url) as client:
            limiter = SlidingWindowLimiter(client, RateLimit(limit=3, period_seconds=1))
            who = client_id("slide")
            started = time.monotonic()
            assert all([(await limiter.hit(who)).allowed for _ in range(3)])
            assert not (await limiter.hit(who)).allowed
            # Keep hammering while limited: denied hits must not push recovery back.
            deadline = started + 3.0
            denials = 0
            while time.monotonic() < deadline:
                if (await limiter.hit(who)).allowed:
                    return time.monotonic() - started, denials
                denials += 1
                await asyncio.sleep(0.02)
            pytest.fail("still limited 3 s after the first hit of a 1 s window")

    elapsed, denials = asyncio.run(scenario())

    print(f"\nrate limit: allowed again {elapsed:.3f} s after the first hit ({denials} denials)")
    # The first hit was logged after `started`, and counts for a full second of Redis time.
    assert elapsed >= 0.95
    assert denials > 0


def test_clients_are_independent(redis_url: str) -> None:
    async def scenario() -> tuple[RateDecision, RateDecision]:
        async with redis_client(redis_url) as client:
            limiter = SlidingWindowLimiter(client, RateLimit(limit=2, period_seconds=60))
            greedy, other = client_id("greedy"), client_id("other")
            for _ in range(3):
                await limiter.hit(greedy)
            return await limiter.hit(greedy), await limiter.hit(other)

    greedy, other = asyncio.run(scenario())

    assert not greedy.allowed
    assert other.allowed
    assert other.remaining == 1


def test_keys_expire_with_the_window(redis_url: str) -> None:
    prefix = f"test:ratelimit:{uuid.uuid4().hex[:8]}:"

    async def scenario() -> dict[bytes, int]:
        async with redis_client(redis_url) as client:
            limiter = SlidingWindowLimiter(
                client, RateLimit(limit=3, period_seconds=5), key_prefix=prefix
            )
            await limiter.hit(client_id("ttl"))
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            return {key: await client.pttl(key) for key in keys}

    ttls = asyncio.run(scenario())

    assert ttls, "the limiter wrote no key under its prefix"
    for key, ttl_ms in ttls.items():
        assert 0 < ttl_ms <= 5000, (key, ttl_ms)


def test_one_round_trip_per_hit(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[str]:
        async with redis_client(redis_url) as client:
            limiter = SlidingWindowLimiter(client, RateLimit(limit=5, period_seconds=60))
            who = client_id("round-trips")
            await limiter.hit(who)  # may load the script (NOSCRIPT → SCRIPT LOAD) first
            sent: list[str] = []
            original: Callable[..., Awaitable[Any]] = client.execute_command

            async def counting(*args: Any, **options: Any) -> Any:
                sent.append(str(args[0]))
                return await original(*args, **options)

            monkeypatch.setattr(client, "execute_command", counting)
            for _ in range(10):  # five allowed, five denied
                await limiter.hit(who)
            return sent

    assert asyncio.run(scenario()) == ["EVALSHA"] * 10


def test_rejects_a_rate_that_allows_nothing(redis_url: str) -> None:
    async def scenario() -> None:
        async with redis_client(redis_url) as client:
            with pytest.raises(ValueError, match="at least 1"):
                SlidingWindowLimiter(client, RateLimit(limit=0, period_seconds=60))

    asyncio.run(scenario())


def test_hit_latency(redis_url: str) -> None:
    hits = 2000

    async def scenario() -> list[float]:
        async with redis_client(redis_url) as client:
            # Room for every hit: each one takes the full path (trim, count, add, expire).
            limiter = SlidingWindowLimiter(client, RateLimit(limit=hits, period_seconds=60))
            who = client_id("latency")
            await limiter.hit(who)  # connect and load the script outside the measurement
            durations = []
            for _ in range(hits - 1):
                start = time.perf_counter()
                await limiter.hit(who)
                durations.append(time.perf_counter() - start)
            return durations

    durations = asyncio.run(scenario())

    micros = sorted(d * 1e6 for d in durations)
    p99 = micros[int(len(micros) * 0.99)]
    print(
        f"\nrate limit: {len(micros)} sequential hits, per hit mean "
        f"{statistics.fmean(micros):.0f} µs, p50 {statistics.median(micros):.0f} µs, "
        f"p99 {p99:.0f} µs, max {micros[-1]:.0f} µs"
    )
