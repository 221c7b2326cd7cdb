"""The demo's summary: its jobs counted by task and status, retries, throughput and latency
per pool, worked out from the jobs as the API returned them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

from api_shim.client import FINISHED_STATUSES, Job
from tasks.catalog import POOL_OF_KIND, Kind

STATUS_ORDER = ("succeeded", "failed", "cancelled", "retrying", "running", "queued")


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of ``values`` (``fraction`` 0.5 for the median)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return None if later is None or earlier is None else (later - earlier).total_seconds()


@dataclass(frozen=True)
class PoolFigures:
    """One queue's jobs: how many finished, how fast, how long each took from enqueue."""

    queue: str
    pool: str
    jobs: int
    finished: int
    busy_seconds: float
    jobs_per_second: float
    latency_p50: float | None
    latency_p95: float | None


def pool_figures(queue: str, jobs: Sequence[Job]) -> PoolFigures:
    """Throughput is finished jobs over the span from the first start to the last finish;
    latency is enqueue to finish, retries included."""
    finished = [job for job in jobs if job.finished_at is not None]
    starts = [job.started_at for job in jobs if job.started_at is not None]
    ends = [job.finished_at for job in finished if job.finished_at is not None]
    busy = (max(ends) - min(starts)).total_seconds() if ends and starts else 0.0
    latencies = [
        value
        for value in (_seconds(job.finished_at, job.created_at) for job in finished)
        if value is not None
    ]
    return PoolFigures(
        queue=queue,
        pool=POOL_OF_KIND.get(cast(Kind, queue), "?"),
        jobs=len(jobs),
        finished=len(finished),
        busy_seconds=round(busy, 3),
        jobs_per_second=round(len(finished) / busy, 2) if busy > 0 else 0.0,
        latency_p50=percentile(latencies, 0.5),
        latency_p95=percentile(latencies, 0.95),
    )


@dataclass(frozen=True)
class DeadLetter:
    """A job that ended ``failed``: what to replay."""

    id: str
    task: str
    attempts: int
    error: str


@dataclass(frozen=True)
class JobOutcome:
    """One job as it ended, for the JSON summary."""

    id: str
    task: str
    queue: str
    status: str
    attempts: int


@dataclass(frozen=True)
class DemoSummary:
    """Everything the demo reports at the end."""

    total: int
    by_status: dict[str, int]
    by_task: dict[str, dict[str, int]]
    retries_by_task: dict[str, int]
    retries: int
    jobs_retried: int
    pools: list[PoolFigures]
    latency_p50: float | None
    latency_p95: float | None
    wall_seconds: float
    dead_letters: list[DeadLetter]
    unexpected: list[str]
    unfinished: int
    jobs: list[JobOutcome]

    def dead_letter_examples(self, count: int) -> list[DeadLetter]:
        """Up to ``count`` dead letters, one of each task and error before any repeat."""
        seen: set[tuple[str, str]] = set()
        first: list[DeadLetter] = []
        for letter in self.dead_letters:
            if (letter.task, letter.error) not in seen:
                seen.add((letter.task, letter.error))
                first.append(letter)
        rest = [letter for letter in self.dead_letters if letter not in first]
        return (first + rest)[:count]

    def as_json(self) -> dict[str, Any]:
        """The summary as a JSON document (``conveyor demo --summary-json``)."""
        return asdict(self)


def summarise(
    jobs: Iterable[Job], *, wall_seconds: float, unexpected: Iterable[str] = ()
) -> DemoSummary:
    """The summary of ``jobs``; ``unexpected`` describes jobs that ended otherwise than planned."""
    jobs = list(jobs)
    by_task: dict[str, Counter[str]] = {}
    retries_by_task: Counter[str] = Counter()
    for job in jobs:
        by_task.setdefault(job.task, Counter())[job.status] += 1
        retries_by_task[job.task] += max(job.attempts - 1, 0)
    queues = sorted({job.queue for job in jobs})
    latencies = [
        value
        for value in (_seconds(job.finished_at, job.created_at) for job in jobs)
        if value is not None
    ]
    failed = [job for job in jobs if job.status == "failed"]
    return DemoSummary(
        total=len(jobs),
        by_status=dict(Counter(job.status for job in jobs)),
        by_task={task: dict(counts) for task, counts in sorted(by_task.items())},
        retries_by_task={task: retries_by_task[task] for task in sorted(by_task)},
        retries=sum(retries_by_task.values()),
        jobs_retried=sum(job.attempts > 1 for job in jobs),
        pools=[pool_figures(q, [job for job in jobs if job.queue == q]) for q in queues],
        latency_p50=percentile(latencies, 0.5),
        latency_p95=percentile(latencies, 0.95),
        wall_seconds=round(wall_seconds, 2),
        dead_letters=sorted(
            (
                DeadLetter(job.id, job.task, job.attempts, job.error.type if job.error else "?")
                for job in failed
            ),
            key=lambda letter: (letter.task, letter.error, letter.id),
        ),
        unexpected=list(unexpected),
        unfinished=sum(job.status not in FINISHED_STATUSES for job in jobs),
        jobs=[JobOutcome(job.id, job.task, job.queue, job.status, job.attempts) for job in jobs],
    )
