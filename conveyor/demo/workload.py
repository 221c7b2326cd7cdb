"""The demo's workload: what it enqueues, what each job should end as, and the pipeline that
turns each fetched image into a digest job and a thumbnail job.

The plan is plain data, made before anything runs, so the outcome can be checked against
it: every job has the status its script implies (a webhook to a ``gone`` endpoint must end
``failed``, one to a ``flaky`` endpoint ``succeeded`` after a retry).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from api_shim.client import FINISHED_STATUSES, ConveyorClient, Job, JobSpec
from conveyor.demo.receiver import FlakyReceiver

#: Webhook behaviours in the proportions the demo sends them (twelve in twenty answer at
#: once), in an order that puts every kind among the first seven.
WEBHOOK_MIX = (
    "ok", "flaky", "ok", "gone", "ok", "throttled", "broken", "ok", "ok", "unavailable",
    "ok", "flaky", "ok", "ok", "throttled", "ok", "flaky", "ok", "ok", "ok",
)  # fmt: skip
#: ``diagnostics.fail`` arguments and the status each must end with.
FAILURE_MIX: tuple[tuple[dict[str, Any], str], ...] = (
    ({"error": "transient", "times": 2}, "succeeded"),
    ({"error": "rate_limited", "times": 1, "retry_after": 1}, "succeeded"),
    ({"error": "dependency", "times": 1}, "succeeded"),
    ({"error": "permanent"}, "failed"),
    ({"error": "crash", "times": 1}, "succeeded"),
    ({"error": "crash", "times": 5}, "failed"),
)
THUMBNAIL_SIZES = [[320, 240], [96, 96]]
DIGEST_ALGORITHMS = ["sha256", "blake2b"]
MINIMUM_JOBS = 20
#: The most jobs ``POST /v1/jobs/batch`` takes at once.
BATCH_SIZE = 1000
#: Jobs per page when the demo reads its jobs back.
PAGE_SIZE = 500


@dataclass(frozen=True)
class PlannedJob:
    """One job to enqueue and the status it must finish with."""

    task: str
    args: dict[str, Any]
    expected: str

    def spec(self) -> JobSpec:
        return JobSpec(self.task, self.args)


@dataclass(frozen=True)
class WorkloadPlan:
    """The first jobs, and how many image pipelines feed follow-up jobs."""

    initial: tuple[PlannedJob, ...]
    pipelines: int

    @property
    def total_jobs(self) -> int:
        """Every job the workload makes: the first ones and two per fetched image."""
        return len(self.initial) + 2 * self.pipelines


def plan_workload(jobs: int, receiver: FlakyReceiver, *, diagnostics: bool = True) -> WorkloadPlan:
    """About ``jobs`` jobs: half webhooks, a quarter image pipelines, and deliberate failures
    (``diagnostics.fail``, left out when the catalog does not have ``diagnostics``).

    Each image pipeline is three jobs (fetch, then digest and thumbnail of the fetched
    blob); one more fetch asks for an image that does not exist and fails at once.
    """
    jobs = max(jobs, MINIMUM_JOBS)
    failures = max(len(FAILURE_MIX), jobs // 15) if diagnostics else 0
    pipelines = max(2, jobs // 8)
    webhooks = jobs - failures - 3 * pipelines - 1
    planned: list[PlannedJob] = []
    for number in range(webhooks):
        behaviour = WEBHOOK_MIX[number % len(WEBHOOK_MIX)]
        payload = {"event": "order.paid", "order": number, "amount_cents": 1000 + number}
        planned.append(
            PlannedJob(
                "webhooks.deliver",
                {"url": receiver.webhook_url(behaviour, number), "payload": payload},
                "failed" if behaviour in ("gone", "broken") else "succeeded",
            )
        )
    for number in range(pipelines):
        planned.append(PlannedJob("http.fetch", {"url": receiver.image_url(number)}, "succeeded"))
    planned.append(PlannedJob("http.fetch", {"url": receiver.image_url(-1)}, "failed"))
    for number in range(failures):
        args, expected = FAILURE_MIX[number % len(FAILURE_MIX)]
        planned.append(PlannedJob("diagnostics.fail", dict(args), expected))
    return WorkloadPlan(tuple(planned), pipelines)


def follow_ups(blob: str) -> tuple[PlannedJob, PlannedJob]:
    """The cpu jobs for a fetched image: its digests and its thumbnails."""
    return (
        PlannedJob("files.digest", {"blob": blob, "algorithms": DIGEST_ALGORITHMS}, "succeeded"),
        PlannedJob(
            "images.thumbnail", {"blob": blob, "sizes": THUMBNAIL_SIZES, "format": "webp"},
            "succeeded",
        ),
    )  # fmt: skip


@dataclass
class WorkloadState:
    """The demo's jobs as last read, and what each must end as."""

    expected: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    piped: set[str] = field(default_factory=set)  # fetches whose follow-ups are enqueued

    @property
    def finished(self) -> int:
        return sum(job.status in FINISHED_STATUSES for job in self.jobs.values())

    def unpiped_fetches(self) -> list[Job]:
        """Fetches that succeeded and whose follow-up jobs are not enqueued yet."""
        return [
            job
            for job in self.jobs.values()
            if job.task == "http.fetch" and job.status == "succeeded" and job.id not in self.piped
        ]

    @property
    def done(self) -> bool:
        """Every job has finished and every fetched image has its follow-ups."""
        return self.finished == len(self.jobs) and not self.unpiped_fetches()

    def mismatches(self) -> list[tuple[Job, str]]:
        """Finished jobs whose status is not the planned one, with the planned one."""
        return [
            (job, self.expected[job.id])
            for job in self.jobs.values()
            if job.status in FINISHED_STATUSES and job.status != self.expected[job.id]
        ]


def enqueue_planned(
    client: ConveyorClient, planned: tuple[PlannedJob, ...], state: WorkloadState
) -> None:
    """Enqueue ``planned`` in batches and record what each job must end as."""
    for start in range(0, len(planned), BATCH_SIZE):
        chunk = planned[start : start + BATCH_SIZE]
        for job, plan in zip(client.enqueue_many([p.spec() for p in chunk]), chunk, strict=True):
            state.expected[job.id] = plan.expected
            state.jobs[job.id] = job


def refresh(client: ConveyorClient, state: WorkloadState) -> None:
    """Read the demo's jobs back (newest first, until every one of them has been seen)."""
    wanted = set(state.expected)
    for job in client.iter_jobs(limit=PAGE_SIZE):
        if job.id in wanted:
            state.jobs[job.id] = job
            wanted.discard(job.id)
            if not wanted:
                return


def run_workload(
    client: ConveyorClient,
    plan: WorkloadPlan,
    *,
    timeout: float,
    poll_interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[WorkloadState]:
    """Enqueue the plan and drive its pipelines; yields the state after every read.

    Ends when every job has finished, or at ``timeout`` seconds (the last state yielded
    then has unfinished jobs).
    """
    state = WorkloadState()
    enqueue_planned(client, plan.initial, state)
    deadline = clock() + timeout
    while True:
        refresh(client, state)
        fetched = state.unpiped_fetches()
        if fetched:
            batch = tuple(p for job in fetched for p in follow_ups(str(job.result["blob"])))
            enqueue_planned(client, batch, state)
            state.piped.update(job.id for job in fetched)
        yield state
        if state.done or clock() > deadline:
            return
        time.sleep(poll_interval)
