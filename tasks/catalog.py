"""The task catalog: names, kinds, argument models and limits of every task.

Light on purpose: the API imports it to validate and route jobs without loading any
task implementation. ``tasks/io/`` and ``tasks/cpu/`` hold the implementations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tasks.arguments import (
    DigestArguments,
    EchoArguments,
    FailArguments,
    FetchArguments,
    SpinArguments,
    SqlSleepArguments,
    TaskArguments,
    ThumbnailArguments,
    WebhookArguments,
)
from tasks.retry_policy import RetryPolicy, max_attempts

Kind = Literal["io", "cpu"]
#: Each kind's queue is consumed by workers with this pool: gevent for tasks that wait on
#: the network or the disk, prefork for tasks that compute.
POOL_OF_KIND: Mapping[Kind, str] = {"io": "gevent", "cpu": "prefork"}
KINDS: tuple[Kind, ...] = tuple(POOL_OF_KIND)


@dataclass(frozen=True)
class TaskSpec:
    """One catalog entry. ``kind`` decides the queue, and so the pool, the task runs in."""

    name: str
    kind: Kind
    description: str
    arguments: type[TaskArguments]
    module: str
    soft_time_limit: int = 300
    time_limit: int = 360
    # rows of the retry-policy table replaced for this task only
    retry_overrides: Mapping[type[BaseException], RetryPolicy] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        """The queue is the kind: ``io`` is consumed by gevent workers, ``cpu`` by prefork."""
        return self.kind

    @property
    def pool(self) -> str:
        """The worker pool the task's kind wants."""
        return POOL_OF_KIND[self.kind]

    @property
    def max_attempts(self) -> int:
        """The most attempts any of the task's retry policies grants."""
        return max_attempts(self.retry_overrides)

    def args_schema(self) -> dict[str, Any]:
        """The JSON Schema of the task's arguments."""
        return self.arguments.model_json_schema()


#: The tasks every deployment offers.
CORE: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="webhooks.deliver",
        kind="io",
        description=(
            "POST a JSON payload to a URL, signed with HMAC-SHA256 "
            "(X-Conveyor-Signature: v1=...); 2xx succeeds, 408/425/429/5xx and network "
            "errors retry, other answers fail at once."
        ),
        arguments=WebhookArguments,
        module="tasks.io.webhooks",
        soft_time_limit=150,
        time_limit=180,
    ),
    TaskSpec(
        name="http.fetch",
        kind="io",
        description="Download a URL into the blob store, streamed, refusing more than max_bytes.",
        arguments=FetchArguments,
        module="tasks.io.http_fetch",
        soft_time_limit=240,
        time_limit=270,
    ),
    TaskSpec(
        name="files.digest",
        kind="cpu",
        description="Hash a blob with several algorithms in one streaming pass.",
        arguments=DigestArguments,
        module="tasks.cpu.digests",
        soft_time_limit=240,
        time_limit=270,
    ),
    TaskSpec(
        name="images.thumbnail",
        kind="cpu",
        description=(
            "Fit an image blob into each [width, height] box (aspect ratio kept, EXIF "
            "orientation applied) and store the thumbnails as blobs."
        ),
        arguments=ThumbnailArguments,
        module="tasks.cpu.thumbnails",
        soft_time_limit=120,
        time_limit=150,
    ),
)

DIAGNOSTICS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="diagnostics.echo",
        kind="io",
        description="Return the value, after an optional cooperative sleep; reports its pool.",
        arguments=EchoArguments,
        module="tasks.io.diagnostics",
        soft_time_limit=90,
        time_limit=120,
    ),
    TaskSpec(
        name="diagnostics.fail",
        kind="io",
        description="Raise the named error on the first `times` attempts, then succeed.",
        arguments=FailArguments,
        module="tasks.io.diagnostics",
        soft_time_limit=30,
        time_limit=60,
    ),
    TaskSpec(
        name="diagnostics.sql_sleep",
        kind="io",
        description="Hold a ledger database connection in pg_sleep (PostgreSQL only).",
        arguments=SqlSleepArguments,
        module="tasks.io.diagnostics",
        soft_time_limit=30,
        time_limit=60,
    ),
    TaskSpec(
        name="diagnostics.spin",
        kind="cpu",
        description="Keep one core busy for the given milliseconds; reports its pool.",
        arguments=SpinArguments,
        module="tasks.cpu.diagnostics",
        soft_time_limit=90,
        time_limit=120,
    ),
)


#: Every task Conveyor can declare, whether or not a deployment offers it.
ALL_SPECS: Mapping[str, TaskSpec] = {spec.name: spec for spec in CORE + DIAGNOSTICS}


class Catalog(Mapping[str, TaskSpec]):
    """The tasks this deployment offers, by name."""

    def __init__(self, specs: tuple[TaskSpec, ...]) -> None:
        self._specs = {spec.name: spec for spec in specs}

    def __getitem__(self, name: str) -> TaskSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def modules(self) -> list[str]:
        """The implementation modules a worker must import, in a stable order."""
        return sorted({spec.module for spec in self._specs.values()})

    def longest_time_limit(self) -> int:
        """The largest hard time limit of any task (0 for an empty catalog)."""
        return max((spec.time_limit for spec in self._specs.values()), default=0)


def build_catalog(*, diagnostics: bool) -> Catalog:
    """The catalog for a deployment; ``diagnostics.*`` only when enabled."""
    specs = CORE
    if diagnostics:
        specs += DIAGNOSTICS
    return Catalog(specs)
