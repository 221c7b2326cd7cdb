"""Real gevent and prefork workers: routing, the retry-policy table, the ledger, Celery states."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from celery.result import AsyncResult

from tasks.retry_policy import DEPENDENCY, TRANSIENT, UNEXPECTED
from tests.integration.conftest import RETRY_SCALE, Stack
from tests.support.polling import wait_for
from workers.celery_app import create_app
from workers.settings import load_settings


def send(stack: Stack, task: str, queue: str, **kwargs: Any) -> AsyncResult[Any]:
    return stack.client.send_task(task, kwargs=kwargs, queue=queue)


def outcome(result: AsyncResult[Any], timeout: float = 60) -> Any:
    return result.get(timeout=timeout, propagate=False)


def test_io_task_runs_under_gevent_and_cpu_task_under_prefork(stack: Stack) -> None:
    echo = send(stack, "diagnostics.echo", "io", value={"n": 1})
    spin = send(stack, "diagnostics.spin", "cpu", milliseconds=50)

    echoed, spun = outcome(echo), outcome(spin)

    assert echoed["value"] == {"n": 1}
    assert (echoed["pool"], echoed["worker"]) == ("gevent", stack.io.node)
    assert echoed["pid"] == stack.io.process.pid
    assert (spun["pool"], spun["worker"]) == ("prefork", stack.cpu.node)
    assert spun["pid"] != stack.cpu.process.pid  # a pool child, not the parent
    assert spun["iterations"] > 0
    for result in (echo, spin):
        job = stack.ledger.wait_finished(result.id)
        assert (job.status, job.attempts, job.outcomes) == ("succeeded", 1, ["succeeded"])
        assert job.result == result.result
        assert result.state == "SUCCESS"


def test_conveyor_producer_routes_by_kind_without_naming_a_queue(
    stack: Stack, worker_settings: dict[str, str]
) -> None:
    producer = create_app(load_settings(**worker_settings))

    spin = producer.send_task("diagnostics.spin", kwargs={"milliseconds": 1})
    echo = producer.send_task("diagnostics.echo", kwargs={"value": "x"})

    assert outcome(spin)["pool"] == "prefork"
    assert outcome(echo)["pool"] == "gevent"
    producer.close()


def _retry_delays(job_id: str, stack: Stack) -> list[float]:
    job = stack.ledger.wait_finished(job_id)
    return [a.retry_delay_seconds for a in job.history if a.retry_delay_seconds is not None]


@pytest.mark.parametrize(
    ("error", "times", "policy"),
    [("transient", 3, TRANSIENT), ("dependency", 2, DEPENDENCY), ("crash", 2, UNEXPECTED)],
)
def test_backoff_policies_retry_until_success_within_growing_ceilings(
    stack: Stack, error: str, times: int, policy: Any
) -> None:
    result = send(stack, "diagnostics.fail", "io", error=error, times=times)

    assert outcome(result) == {"attempts": times + 1}
    job = stack.ledger.wait_finished(result.id)
    assert job.status == "succeeded"
    assert job.outcomes == ["retrying"] * times + ["succeeded"]
    delays = _retry_delays(result.id, stack)
    ceilings = [policy.ceiling(n) * RETRY_SCALE for n in range(1, times + 1)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True)), (delays, ceilings)
    assert ceilings == sorted(ceilings)
    assert ceilings[-1] > ceilings[0]
    gaps = [
        (later.started_at - earlier.finished_at).total_seconds()
        for earlier, later in zip(job.history, job.history[1:], strict=False)
        if earlier.finished_at is not None
    ]
    assert all(gap >= d - 0.01 for gap, d in zip(gaps, delays, strict=True)), (gaps, delays)


def test_transient_error_fails_after_eight_attempts(stack: Stack) -> None:
    result = send(stack, "diagnostics.fail", "io", error="transient", times=50)

    outcome(result, timeout=90)

    job = stack.ledger.wait_finished(result.id)
    assert (job.status, job.attempts) == ("failed", TRANSIENT.max_attempts)
    assert job.outcomes == ["retrying"] * 7 + ["failed"]
    assert job.error is not None and job.error["type"] == "TransientError"
    assert result.state == "FAILURE"


def test_rate_limited_waits_at_least_the_server_hint_and_shows_retry(stack: Stack) -> None:
    retry_after = 40.0  # × RETRY_SCALE = 0.8 s
    result = send(
        stack, "diagnostics.fail", "io", error="rate_limited", times=2, retry_after=retry_after
    )

    wait_for(lambda: result.state == "RETRY", timeout=20, what="Celery state RETRY")
    assert outcome(result) == {"attempts": 3}

    job = stack.ledger.wait_finished(result.id)
    assert job.outcomes == ["retrying", "retrying", "succeeded"]
    hint = retry_after * RETRY_SCALE
    for earlier, later in zip(job.history, job.history[1:], strict=False):
        assert earlier.retry_delay_seconds is not None
        assert hint <= earlier.retry_delay_seconds <= hint * 1.1
        assert earlier.finished_at is not None
        assert (later.started_at - earlier.finished_at).total_seconds() >= hint


def test_permanent_error_fails_after_one_attempt(stack: Stack) -> None:
    result = send(stack, "diagnostics.fail", "io", error="permanent", times=5)

    outcome(result)

    job = stack.ledger.wait_finished(result.id)
    assert (job.status, job.attempts, job.outcomes) == ("failed", 1, ["failed"])
    assert job.error is not None and job.error["type"] == "PermanentError"
    assert result.state == "FAILURE"


def test_a_bug_fails_after_three_attempts_and_its_error_id_is_logged(stack: Stack) -> None:
    result = send(stack, "diagnostics.fail", "io", error="crash", times=10)

    outcome(result)

    job = stack.ledger.wait_finished(result.id)
    assert (job.status, job.attempts) == ("failed", UNEXPECTED.max_attempts)
    assert job.error is not None and job.error["type"] == "SimulatedCrashError"
    error_id = job.error["error_id"]
    log_line = wait_for(
        lambda: next((line for line in stack.io.log().splitlines() if error_id in line), None),
        timeout=10,
        what="the error id in the worker log",
    )
    assert '"traceback"' in log_line and job.id in log_line
    assert result.state == "FAILURE"


def test_invalid_arguments_fail_at_once_with_the_field_named(stack: Stack) -> None:
    result = send(stack, "diagnostics.spin", "cpu", milliseconds="lots")

    outcome(result)

    job = stack.ledger.wait_finished(result.id)
    assert (job.status, job.attempts) == ("failed", 1)
    assert job.error is not None
    assert job.error["type"] == "InvalidArgumentsError"
    assert "milliseconds" in job.error["message"]


def test_a_message_for_a_finished_job_is_dropped(stack: Stack) -> None:
    job_id = str(uuid.uuid4())
    first = stack.client.send_task(
        "diagnostics.echo", kwargs={"value": 1}, queue="io", task_id=job_id
    )
    outcome(first)

    stack.client.send_task("diagnostics.echo", kwargs={"value": 2}, queue="io", task_id=job_id)
    wait_for(
        lambda: any(
            job_id in line and "message dropped" in line for line in stack.io.log().splitlines()
        ),
        timeout=20,
        what="the duplicate to be dropped",
    )

    job = stack.ledger.wait_finished(job_id)
    assert (job.status, job.attempts, job.result["value"]) == ("succeeded", 1, 1)
    stored: AsyncResult[dict[str, Any]] = AsyncResult(job_id, app=stack.client)
    assert stored.get(timeout=30)["value"] == 1


def test_psycopg_does_not_block_the_gevent_hub(stack: Stack) -> None:
    # holds long beside the per-job overhead, so a busy machine cannot blur the two cases:
    # concurrent, about one hold plus overhead; blocked, jobs × hold
    jobs, hold = 50, 1.0
    started = time.monotonic()
    results = [send(stack, "diagnostics.sql_sleep", "io", seconds=hold) for _ in range(jobs)]

    for result in results:
        assert outcome(result)["pool"] == "gevent"
    elapsed = time.monotonic() - started

    print(f"{jobs} jobs each holding pg_sleep({hold}) finished in {elapsed:.2f} s")
    assert elapsed < jobs * hold / 2  # serial would take jobs × hold = 50 s


def test_a_gevent_worker_above_the_default_redis_pool_cap_drains(stack: Stack) -> None:
    jobs, nap = 500, 1.0
    started = time.monotonic()
    results = [
        send(stack, "diagnostics.echo", "io", value=n, sleep_seconds=nap) for n in range(jobs)
    ]

    values = sorted(outcome(result, timeout=90)["value"] for result in results)
    elapsed = time.monotonic() - started

    print(f"{jobs} × {nap} s sleeps at gevent concurrency 500 drained in {elapsed:.2f} s")
    assert values == list(range(jobs))
    assert "MaxConnectionsError" not in stack.io.log()
