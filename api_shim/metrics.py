"""The API's Prometheus metrics: requests, enqueued jobs, queue depths, pool fitness, the
messages workers refused and the ledger's jobs by status.

With several uvicorn workers, ``conveyor api`` points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory so that every process's counters add up in one scrape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from workers.pool_fitness import FitnessCount

CONTENT_TYPE = CONTENT_TYPE_LATEST


class QueueDepthCollector(Collector):
    """``conveyor_queue_depth{queue}``, read from Redis at scrape time."""

    def __init__(self, read_depths: Callable[[], dict[str, int]]) -> None:
        self._read_depths = read_depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "conveyor_queue_depth", "Messages waiting in each queue", labels=["queue"]
        )
        for queue, depth in sorted(self._read_depths().items()):
            family.add_metric([queue], depth)
        yield family


class LedgerJobsCollector(Collector):
    """``conveyor_ledger_jobs{status}``: the jobs the ledger holds, read at scrape time, so
    that retention shows (finished jobs level off instead of growing forever)."""

    def __init__(self, read_counts: Callable[[], dict[str, int]]) -> None:
        self._read_counts = read_counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "conveyor_ledger_jobs", "Jobs in the ledger, by status", labels=["status"]
        )
        for status, count in sorted(self._read_counts().items()):
            family.add_metric([status], count)
        yield family


_FITNESS_FAMILIES = {
    "hub_blocked": (
        "conveyor_hub_blocked",
        "Times a task kept a gevent worker's event loop busy past the threshold",
    ),
    "hub_blocked_seconds": (
        "conveyor_hub_blocked_seconds",
        "Seconds tasks kept gevent workers' event loops busy",
    ),
    "pool_mismatch": (
        "conveyor_pool_mismatch",
        "Task runs in a pool their kind does not want (io task in prefork, cpu in gevent)",
    ),
}


class PoolFitnessCollector(Collector):
    """``conveyor_hub_blocked_total{task}`` and friends, read from Redis at scrape time."""

    def __init__(self, read_fitness: Callable[[], list[FitnessCount]]) -> None:
        self._read_fitness = read_fitness

    def collect(self) -> Iterator[CounterMetricFamily]:
        families = {
            metric: CounterMetricFamily(name, text, labels=["task", "pool"])
            for metric, (name, text) in _FITNESS_FAMILIES.items()
        }
        for count in self._read_fitness():
            family = families.get(count.metric)
            if family is not None:
                family.add_metric([count.task, count.pool], count.value)
        yield from families.values()


class RejectedMessagesCollector(Collector):
    """``conveyor_messages_rejected_total{reason}``: messages workers refused to run."""

    def __init__(self, read_rejections: Callable[[], dict[str, int]]) -> None:
        self._read_rejections = read_rejections

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "conveyor_messages_rejected",
            "Broker messages workers refused to run (and dropped), by reason",
            labels=["reason"],
        )
        for reason, count in sorted(self._read_rejections().items()):
            family.add_metric([reason], count)
        yield family


class ApiMetrics:
    """The counters the API updates, and the scrape of everything."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # in multiprocess mode the values live in files, not in a registry of their own
        self._registry = None if self.multiprocess else CollectorRegistry()
        self.http_requests = Counter(
            "conveyor_http_requests_total",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=self._registry,
        )
        self.http_duration = Histogram(
            "conveyor_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            ["route"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self._registry,
        )
        self.jobs_enqueued = Counter(
            "conveyor_jobs_enqueued_total",
            "Jobs recorded and queued through the API, by task and queue",
            ["task", "queue"],
            registry=self._registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(route).observe(seconds)

    def count_enqueued(self, task: str, queue: str, jobs: int = 1) -> None:
        """Count jobs newly recorded for ``task``."""
        self.jobs_enqueued.labels(task, queue).inc(jobs)

    def scrape(
        self,
        read_depths: Callable[[], dict[str, int]],
        read_fitness: Callable[[], list[FitnessCount]],
        read_rejections: Callable[[], dict[str, int]],
        read_ledger_jobs: Callable[[], dict[str, int]],
    ) -> bytes:
        """The Prometheus text exposition of every metric, Redis-held ones read now."""
        registry = CollectorRegistry()
        if self.multiprocess:
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            assert self._registry is not None  # noqa: S101 - set when not multiprocess
            for collector in (self.http_requests, self.http_duration, self.jobs_enqueued):
                registry.register(collector)
        registry.register(QueueDepthCollector(read_depths))
        registry.register(PoolFitnessCollector(read_fitness))
        registry.register(RejectedMessagesCollector(read_rejections))
        registry.register(LedgerJobsCollector(read_ledger_jobs))
        return generate_latest(registry)
