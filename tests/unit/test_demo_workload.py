"""The demo's plan, its receiver's scripts and its summary arithmetic."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from api_shim.client import Job
from conveyor.demo.receiver import WEBHOOK_SCRIPTS, answer_for, flaky_receiver
from conveyor.demo.summary import percentile, summarise
from conveyor.demo.workload import MINIMUM_JOBS, WorkloadState, follow_ups, plan_workload

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def job(
    number: int, task: str, queue: str, status: str, *, attempts: int = 1, seconds: float = 1.0
) -> Job:
    document: dict[str, Any] = {
        "id": f"job-{number}", "task": task, "queue": queue, "status": status, "args": {},
        "priority": "normal", "attempts": attempts, "max_attempts": 8,
        "idempotency_key": None, "request_id": None, "created_at": T0,
        "scheduled_for": None, "started_at": T0 + timedelta(seconds=0.5),
        "finished_at": T0 + timedelta(seconds=seconds), "next_retry_at": None,
        "result": None, "error": None,
    }  # fmt: skip
    return Job(**document)


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [([], 0.5, None), ([3.0], 0.95, 3.0), ([float(n) for n in range(1, 101)], 0.5, 50.0),
     ([float(n) for n in range(1, 101)], 0.95, 95.0), ([2.0, 1.0], 0.5, 1.0)],
)  # fmt: skip
def test_percentile_is_nearest_rank(
    values: list[float], fraction: float, expected: float | None
) -> None:
    assert percentile(values, fraction) == expected


@pytest.mark.parametrize("jobs", [MINIMUM_JOBS, 60, 150, 400, 1000])
def test_the_plan_makes_about_the_jobs_asked_for_with_every_kind(jobs: int) -> None:
    with flaky_receiver("secret") as receiver:
        plan = plan_workload(jobs, receiver)
    assert plan.total_jobs == jobs
    tasks = Counter(p.task for p in plan.initial)
    assert tasks["http.fetch"] == plan.pipelines + 1  # one asks for a missing image
    assert tasks["webhooks.deliver"] >= jobs // 3
    assert tasks["diagnostics.fail"] >= 6
    failing = [p for p in plan.initial if p.expected == "failed"]
    assert {p.task for p in failing} == {"webhooks.deliver", "http.fetch", "diagnostics.fail"}


def test_a_webhook_is_planned_to_end_as_its_script_ends() -> None:
    with flaky_receiver("secret") as receiver:
        plan = plan_workload(100, receiver)
    for planned in plan.initial:
        if planned.task == "webhooks.deliver":
            behaviour = planned.args["url"].split("/")[-2]
            final_status, _ = WEBHOOK_SCRIPTS[behaviour][-1]
            assert (planned.expected == "succeeded") == (final_status == 200)


def test_answers_follow_the_attempt_number_and_the_last_one_repeats() -> None:
    assert answer_for("unavailable", 1) == (503, None)
    assert answer_for("unavailable", 3) == (200, None)
    assert answer_for("unavailable", 9) == (200, None)
    assert answer_for("throttled", 1) == (429, 1)
    assert answer_for("ok", 0) == (200, None)


def test_the_receiver_answers_by_script_and_checks_signatures() -> None:
    with flaky_receiver("secret") as receiver:
        first = httpx.post(receiver.webhook_url("flaky", 1), content=b"{}")
        second = httpx.post(
            receiver.webhook_url("flaky", 1), content=b"{}", headers={"X-Conveyor-Attempt": "2"}
        )
        image = httpx.get(receiver.image_url(3))
        missing = httpx.get(receiver.image_url(-1))
    assert (first.status_code, second.status_code) == (500, 200)
    assert receiver.tally.webhooks["flaky"] == 2
    assert receiver.tally.bad_signatures == 2  # unsigned requests
    assert image.status_code == 200
    assert image.content.startswith(b"\xff\xd8")  # a JPEG
    assert missing.status_code == 404


def test_a_fetched_image_gets_a_digest_and_a_thumbnail_job() -> None:
    digest, thumbnail = follow_ups("sha256:" + "a" * 64)
    assert (digest.task, thumbnail.task) == ("files.digest", "images.thumbnail")
    assert digest.args["blob"] == thumbnail.args["blob"] == "sha256:" + "a" * 64


def test_the_workload_is_done_only_when_every_fetch_has_its_follow_ups() -> None:
    fetch = job(1, "http.fetch", "io", "succeeded")
    state = WorkloadState(expected={fetch.id: "succeeded"}, jobs={fetch.id: fetch})
    assert not state.done
    state.piped.add(fetch.id)
    assert state.done


def test_the_summary_counts_retries_and_figures_per_pool() -> None:
    jobs = [
        job(1, "webhooks.deliver", "io", "succeeded", attempts=3, seconds=2.0),
        job(2, "webhooks.deliver", "io", "failed", attempts=8, seconds=4.5),
        job(3, "files.digest", "cpu", "succeeded", seconds=1.0),
        job(4, "files.digest", "cpu", "succeeded", seconds=1.5),
    ]
    summary = summarise(jobs, wall_seconds=5.0, unexpected=["x"])
    assert summary.total == 4
    assert summary.unfinished == 0
    assert summary.by_status == {"succeeded": 3, "failed": 1}
    assert summary.by_task == {
        "files.digest": {"succeeded": 2}, "webhooks.deliver": {"succeeded": 1, "failed": 1},
    }  # fmt: skip
    assert summary.retries_by_task == {"files.digest": 0, "webhooks.deliver": 9}
    assert (summary.retries, summary.jobs_retried) == (9, 2)
    io, cpu = sorted(summary.pools, key=lambda pool: pool.queue, reverse=True)
    assert (io.pool, io.finished, io.busy_seconds) == ("gevent", 2, 4.0)
    assert io.jobs_per_second == 0.5
    assert (cpu.pool, cpu.latency_p50, cpu.latency_p95) == ("prefork", 1.0, 1.5)
    assert [letter.id for letter in summary.dead_letters] == ["job-2"]
    assert summary.latency_p95 == 4.5
    assert summary.as_json()["unexpected"] == ["x"]


def test_jobs_still_queued_or_retrying_count_as_unfinished() -> None:
    jobs = [
        job(1, "webhooks.deliver", "io", "retrying", attempts=2),
        job(2, "files.digest", "cpu", "queued", attempts=0),
        job(3, "files.digest", "cpu", "cancelled"),
    ]
    assert summarise(jobs, wall_seconds=1.0).unfinished == 2


def test_without_diagnostics_the_plan_has_no_deliberate_failures() -> None:
    with flaky_receiver("secret") as receiver:
        plan = plan_workload(100, receiver, diagnostics=False)
    assert plan.total_jobs == 100
    assert "diagnostics.fail" not in {p.task for p in plan.initial}
