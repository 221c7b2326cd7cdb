"""The exception → retry-policy table: every row, the MRO lookup and the delay arithmetic."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

import tasks.errors as errors_module
from tasks.errors import (
    DependencyUnavailableError,
    InvalidArgumentsError,
    PermanentError,
    PoisonJobError,
    RateLimitedError,
    TransientError,
)
from tasks.retry_policy import (
    DEPENDENCY,
    PERMANENT,
    RATE_LIMITED,
    RETRY_POLICIES,
    TRANSIENT,
    UNEXPECTED,
    Backoff,
    RetryPolicy,
    max_attempts,
    policy_for,
)


class CustomTransientError(TransientError):
    """A task's own subclass: inherits the transient row."""


ROWS = [
    # raised, policy, attempts, first ceiling (s), cap (s)
    (TransientError("x"), TRANSIENT, 8, 1.0, 600.0),
    (TimeoutError("x"), TRANSIENT, 8, 1.0, 600.0),
    (ConnectionRefusedError("x"), TRANSIENT, 8, 1.0, 600.0),
    (SoftTimeLimitExceeded(), TRANSIENT, 8, 1.0, 600.0),
    (CustomTransientError("x"), TRANSIENT, 8, 1.0, 600.0),
    (DependencyUnavailableError("x"), DEPENDENCY, 20, 5.0, 300.0),
    (PermanentError("x"), PERMANENT, 1, 0.0, 0.0),
    (InvalidArgumentsError("x"), PERMANENT, 1, 0.0, 0.0),
    (PoisonJobError("x"), PERMANENT, 1, 0.0, 0.0),
    (ZeroDivisionError("x"), UNEXPECTED, 3, 1.0, 60.0),
    (KeyError("x"), UNEXPECTED, 3, 1.0, 60.0),
]


@pytest.mark.parametrize(("error", "policy", "attempts", "first", "cap"), ROWS)
def test_every_row_of_the_table(
    error: BaseException, policy: RetryPolicy, attempts: int, first: float, cap: float
) -> None:
    found = policy_for(error)

    assert found is policy
    assert found.max_attempts == attempts
    assert all(found.allows_another(n) for n in range(1, attempts))
    assert not found.allows_another(attempts)
    if found.backoff is Backoff.EXPONENTIAL:
        assert found.ceiling(1) == first
        ceilings = [found.ceiling(n) for n in range(1, 40)]
        assert ceilings == sorted(ceilings)
        assert max(ceilings) == cap


def test_rate_limited_row_waits_for_the_hint_plus_at_most_ten_percent() -> None:
    rng = random.Random(7)
    error = RateLimitedError("slow down", retry_after=30)

    delays = [policy_for(error).delay(n, error, 1.0, rng) for n in range(1, 200)]

    assert policy_for(error) is RATE_LIMITED and RATE_LIMITED.max_attempts == 20
    assert all(30 <= d <= 33 for d in delays)
    assert max(delays) - min(delays) > 1  # jitter is there


def test_full_jitter_spreads_over_zero_to_the_ceiling() -> None:
    rng = random.Random(1)

    delays = [TRANSIENT.delay(4, TransientError("x"), 1.0, rng) for _ in range(2000)]

    assert all(0 <= d <= 8.0 for d in delays)
    assert min(delays) < 0.5 and max(delays) > 7.5


@pytest.mark.parametrize("scale", [0.0, 0.01, 1.0, 3.0])
def test_every_delay_is_multiplied_by_the_scale(scale: float) -> None:
    error = RateLimitedError("x", retry_after=10)
    unscaled = RATE_LIMITED.delay(1, error, 1.0, random.Random(3))

    assert RATE_LIMITED.delay(1, error, scale, random.Random(3)) == pytest.approx(unscaled * scale)
    assert TRANSIENT.delay(30, error, scale, random.Random(3)) <= 600 * scale


def test_permanent_errors_never_wait() -> None:
    assert PERMANENT.delay(1, PermanentError("x"), 1.0, random.Random()) == 0.0
    assert not PERMANENT.allows_another(0) and not PERMANENT.allows_another(1)


def test_a_task_override_beats_the_table_for_its_class_only() -> None:
    patient = RetryPolicy("patient", 50, Backoff.EXPONENTIAL, base_delay=2, max_delay=30)
    overrides: dict[type[BaseException], RetryPolicy] = {TransientError: patient}

    assert policy_for(CustomTransientError("x"), overrides) is patient
    assert policy_for(DependencyUnavailableError("x"), overrides) is DEPENDENCY
    assert max_attempts(overrides) == 50


def test_overrides_can_lower_the_most_attempts_a_task_gets() -> None:
    quick = RetryPolicy("quick", 2, Backoff.EXPONENTIAL, base_delay=1, max_delay=1)
    overrides: dict[type[BaseException], RetryPolicy] = {
        RateLimitedError: quick,
        DependencyUnavailableError: quick,
    }

    assert max_attempts(overrides) == TRANSIENT.max_attempts == 8


def test_the_most_specific_class_wins_across_table_and_overrides() -> None:
    broad: dict[type[BaseException], RetryPolicy] = {Exception: PERMANENT}

    assert policy_for(TransientError("x"), broad) is TRANSIENT
    assert policy_for(ValueError("x"), broad) is PERMANENT


def test_the_table_knows_each_documented_error() -> None:
    assert set(RETRY_POLICIES) >= {
        TransientError,
        RateLimitedError,
        DependencyUnavailableError,
        PermanentError,
        TimeoutError,
        ConnectionError,
        SoftTimeLimitExceeded,
        Exception,
    }
    assert max_attempts() == 20


def test_error_classes_import_nothing_from_celery() -> None:
    source = Path(errors_module.__file__).read_text()
    assert "celery" not in source and "billiard" not in source
