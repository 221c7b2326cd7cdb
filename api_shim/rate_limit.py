"""The per-client sliding-window rate limit on /v1/*: its Redis log and its RateLimit-* headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from workers.settings import RateLimit

_MICROS_PER_SECOND: Final = 1_000_000

# One atomic round trip per request. Redis runs a script to completion before serving
# anything else, so concurrent hits from any number of API processes are serialised and
# the limit is exact at the boundary, with no WATCH/MULTI retry loop.
#
# KEYS[1]: sorted set, one member per counted request, scored by its time in µs.
# KEYS[2]: sequence counter that makes members unique when two hits share a microsecond.
# ARGV[1]: limit; ARGV[2]: window in µs; ARGV[3]: window in ms (for PEXPIRE).
#
# Replies {allowed (0/1), count after this hit, oldest counted µs (0 if none), now µs}.
_SLIDING_WINDOW_LUA: Final = """
-- The clock is Redis's, not the caller's, so API processes on different hosts agree.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])

-- A request counts while now - score < window; drop everything older (inclusive bound).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])

local allowed = 0
if count < limit then
    allowed = 1
    count = count + 1
    local seq = redis.call('INCR', KEYS[2])
    -- Build the member from Redis's own strings: Lua would print 16-digit numbers in
    -- exponent form and merge neighbouring microseconds.
    redis.call('ZADD', KEYS[1], now, time[1] .. '.' .. time[2] .. '#' .. seq)
    -- Both keys live exactly as long as the newest counted request, so an idle client
    -- leaves nothing behind. Denied hits are not logged and do not extend the life:
    -- a client hammering while limited still recovers once the window slides.
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
end

local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local oldest_score = 0
if oldest[2] then
    oldest_score = tonumber(oldest[2])
end
return {allowed, count, oldest_score, now}
"""


def _ceil_seconds(micros: int) -> int:
    """``micros`` rounded up to whole seconds, in integer arithmetic (no float error)."""
    return -(-micros // _MICROS_PER_SECOND)


@dataclass(frozen=True)
class RateDecision:
    """The outcome of one request against its client's limit.

    ``reset_seconds`` is the time until the window next has room for one more request,
    that is until the oldest request still counted slides out of it (not until the
    whole log empties). While limited it equals ``retry_after_seconds``; it is rounded
    up, so it is never 0 while the client is limited. ``retry_after_seconds`` is
    ``None`` exactly when the request was allowed.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after_seconds: int | None

    def headers(self) -> dict[str, str]:
        """The response headers: RateLimit-* always, Retry-After only on a 429."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if self.retry_after_seconds is not None:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers


class SlidingWindowLimiter:
    """``rate.limit`` requests per client in any ``rate.period_seconds`` window, in Redis.

    A sliding log rather than fixed buckets, so a client cannot fit twice the limit
    across a bucket edge. Redis errors propagate: whether an unreachable limiter means
    503 or letting the request through is the caller's decision.
    """

    def __init__(
        self,
        redis: Redis,
        rate: RateLimit,
        *,
        key_prefix: str = "conveyor:ratelimit:",
    ) -> None:
        if rate.limit < 1 or rate.period_seconds < 1:
            raise ValueError(f"rate limit needs limit and period of at least 1, got {rate}")
        self._rate = rate
        self._key_prefix = key_prefix
        self._window_micros = rate.period_seconds * _MICROS_PER_SECOND
        # Registered once: every hit is an EVALSHA of the cached script, and the script
        # object reloads it by itself if the server answers NOSCRIPT (restart, failover).
        self._script = redis.register_script(_SLIDING_WINDOW_LUA)

    def _keys(self, client_id: str) -> list[str]:
        # The braces make a Redis Cluster hash tag: both keys of a client share a slot,
        # which a multi-key script requires there.
        log = f"{self._key_prefix}{{{client_id}}}"
        return [log, f"{log}:seq"]

    async def hit(self, client_id: str) -> RateDecision:
        """Count one request by ``client_id`` if the window has room; say what happened."""
        reply = await self._script(
            keys=self._keys(client_id),
            args=[self._rate.limit, self._window_micros, self._rate.period_seconds * 1000],
        )
        allowed, count, oldest, now = _parse_reply(reply)
        limit = self._rate.limit
        # Every counted request is at most a window old, so this is in (0, window]; the
        # clamp only guards against the Redis clock stepping back between hits.
        until_room = min(max(oldest + self._window_micros - now, 1), self._window_micros)
        reset_seconds = _ceil_seconds(until_room) if count else 0
        return RateDecision(
            allowed=allowed,
            limit=limit,
            # A lowered limit can leave more entries logged than the new limit allows.
            remaining=max(limit - count, 0),
            reset_seconds=reset_seconds,
            retry_after_seconds=None if allowed else max(reset_seconds, 1),
        )


def _parse_reply(reply: object) -> tuple[bool, int, int, int]:
    """The script's reply as (allowed, count, oldest µs, now µs)."""
    if not (
        isinstance(reply, list)
        and len(reply) == 4
        and all(isinstance(value, int) for value in reply)
    ):
        raise TypeError(f"unexpected rate-limit script reply: {reply!r}")
    allowed, count, oldest, now = reply
    return bool(allowed), count, oldest, now
