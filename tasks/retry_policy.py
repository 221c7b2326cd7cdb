"""The one table that maps exceptions to retry policies, and the delay arithmetic.

The most specific class wins: a raised exception is looked up along its MRO. Every delay
is multiplied by ``CONVEYOR_RETRY_SCALE``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from billiard.exceptions import SoftTimeLimitExceeded

from tasks.errors import (
    DependencyUnavailableError,
    PermanentError,
    RateLimitedError,
    TransientError,
)


class Backoff(Enum):
    """How the delay before the next attempt is chosen."""

    EXPONENTIAL = "exponential"  # full jitter: uniform(0, min(cap, base * 2**(n-1)))
    SERVER_HINT = "server_hint"  # the exception's retry_after, plus up to 10 % jitter
    NEVER = "never"  # no retry


@dataclass(frozen=True)
class RetryPolicy:
    """What to do after a failed attempt: how many attempts in all, and how long to wait."""

    name: str
    max_attempts: int
    backoff: Backoff
    base_delay: float = 0.0
    max_delay: float = 0.0

    def allows_another(self, attempts_so_far: int) -> bool:
        """Whether a job that has made ``attempts_so_far`` attempts may make one more."""
        return self.backoff is not Backoff.NEVER and attempts_so_far < self.max_attempts

    def ceiling(self, attempt: int) -> float:
        """The largest unscaled delay after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_delay, self.base_delay * 2.0 ** max(0, attempt - 1))

    def delay(self, attempt: int, error: BaseException, scale: float, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt``."""
        if self.backoff is Backoff.NEVER:
            return 0.0
        if self.backoff is Backoff.SERVER_HINT:
            hint = getattr(error, "retry_after", self.base_delay)
            return float(hint) * (1.0 + rng.uniform(0.0, 0.1)) * scale
        return rng.uniform(0.0, self.ceiling(attempt)) * scale


TRANSIENT = RetryPolicy("transient", 8, Backoff.EXPONENTIAL, base_delay=1.0, max_delay=600.0)
RATE_LIMITED = RetryPolicy("rate_limited", 20, Backoff.SERVER_HINT, base_delay=1.0)
DEPENDENCY = RetryPolicy("dependency", 20, Backoff.EXPONENTIAL, base_delay=5.0, max_delay=300.0)
PERMANENT = RetryPolicy("permanent", 1, Backoff.NEVER)
UNEXPECTED = RetryPolicy("unexpected", 3, Backoff.EXPONENTIAL, base_delay=1.0, max_delay=60.0)

#: A job whose worker died under it this many times is failed as poison.
POISON_AFTER_LOST_ATTEMPTS = 3

RETRY_POLICIES: Mapping[type[BaseException], RetryPolicy] = {
    TransientError: TRANSIENT,
    TimeoutError: TRANSIENT,
    ConnectionError: TRANSIENT,
    SoftTimeLimitExceeded: TRANSIENT,
    RateLimitedError: RATE_LIMITED,
    DependencyUnavailableError: DEPENDENCY,
    PermanentError: PERMANENT,
    Exception: UNEXPECTED,
}


def policy_for(
    error: BaseException,
    overrides: Mapping[type[BaseException], RetryPolicy] | None = None,
    table: Mapping[type[BaseException], RetryPolicy] = RETRY_POLICIES,
) -> RetryPolicy:
    """The policy for ``error``: the task's overrides first, then the table, by MRO."""
    for cls in type(error).__mro__:
        if overrides and cls in overrides:
            return overrides[cls]
        if cls in table:
            return table[cls]
    return UNEXPECTED


def max_attempts(overrides: Mapping[type[BaseException], RetryPolicy] | None = None) -> int:
    """The most attempts any policy grants a task: the job's ``max_attempts``."""
    effective = {**RETRY_POLICIES, **(overrides or {})}
    return max(p.max_attempts for p in effective.values())
