"""The one intake of jobs: a request checked against the catalog, scheduled and fingerprinted.

Schedules come in here too: a schedule's task and arguments are checked as a job's.

The HTTP API and ``conveyor enqueue`` both turn what they were given into a
:class:`workers.enqueue.Submission` here, then record and publish it with
:class:`workers.enqueue.Enqueuer`. A request that cannot become a job raises
:class:`JobRefusedError`, which names no transport: the API answers it with a 422 and the
command line with exit code 2.

Only the light catalog is consulted (names, kinds, argument models); no task
implementation is imported, and a name outside the catalog never reaches the broker.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from api_shim.schemas import MAX_DELAY_SECONDS, BatchIn, JobIn, ScheduleIn
from tasks.catalog import Catalog, TaskSpec
from workers.enqueue import JobRequest, Submission
from workers.ledger.schedules import ScheduleSpec
from workers.schedule_timing import ScheduleTimingError, Timing

_MAX_DETAILS = 20
M = TypeVar("M", bound=BaseModel)


class RefusalReason(StrEnum):
    """Why a request did not become a job."""

    INVALID = "validation_error"  # not a valid job document, or arguments the task refuses
    UNKNOWN_TASK = "unknown_task"  # the task is not in the catalog


class JobRefusedError(Exception):
    """A job request was refused: where (``location``), what was wrong, and every problem."""

    def __init__(
        self,
        reason: RefusalReason,
        location: str,
        problem: str,
        details: Sequence[Mapping[str, str]] | None = None,
        *,
        more: int = 0,
    ) -> None:
        self.reason = reason
        self.location = location
        self.problem = problem
        self.more = more  # further problems beyond the first
        self.details = list(details) if details is not None else [{"loc": location, "msg": problem}]
        suffix = f" (and {more} more)" if more else ""
        super().__init__(f"{location}: {problem}{suffix}")

    @property
    def message(self) -> str:
        """``location: problem``, and how many more problems there are."""
        return str(self)


def location(parts: Sequence[int | str]) -> str:
    """``("jobs", 3, "args", "x")`` → ``"jobs[3].args.x"``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _invalid(error: ValidationError, prefix: Sequence[int | str] = ()) -> JobRefusedError:
    details = [
        {"loc": location([*prefix, *item["loc"]]), "msg": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False, include_input=False)[:_MAX_DETAILS]
    ]
    first = details[0]
    return JobRefusedError(
        RefusalReason.INVALID,
        first["loc"],
        first["msg"],
        details,
        more=error.error_count() - 1,
    )


class JobIds:
    """Random version-4 UUIDs without a system call per id.

    ``uuid.uuid4`` reads the OS entropy source for every id; on the event loop that call
    releases the interpreter lock and may wait milliseconds to get it back from the writer
    thread. Ids need to be unique, not secret (every read checks the owner), so a generator
    seeded once from the OS is enough.
    """

    def __init__(self) -> None:
        self._random = random.Random(os.urandom(32))  # noqa: S311 - uniqueness, not secrecy

    def new(self) -> str:
        """A fresh job id."""
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))


def _utcnow() -> datetime:
    return datetime.now(UTC)


class JobIntake:
    """Validates job documents and prepares them for :class:`workers.enqueue.Enqueuer`."""

    def __init__(self, catalog: Catalog, clock: Callable[[], datetime] = _utcnow) -> None:
        self._catalog = catalog
        self._clock = clock
        self._ids = JobIds()

    def single(
        self, document: Any, *, client_id: str, request_id: str, header_key: str | None = None
    ) -> Submission:
        """One job document; ``header_key`` is an idempotency key given beside it."""
        job = self._model(JobIn, document, ())
        if header_key is not None:
            if job.idempotency_key is not None and job.idempotency_key != header_key:
                raise JobRefusedError(
                    RefusalReason.INVALID,
                    "idempotency_key",
                    "the Idempotency-Key header and the body's idempotency_key differ",
                )
            # validated like the body field: same length and character rules
            job = self._model(JobIn, {**document, "idempotency_key": header_key}, ())
        return Submission((self._prepare(job, (), client_id, request_id),))

    def batch(self, document: Any, *, client_id: str, request_id: str) -> Submission:
        """A batch document (``{"jobs": [...]}``); any invalid item refuses the whole batch."""
        batch = self._model(BatchIn, document, ())
        return Submission(
            tuple(
                self._prepare(job, ("jobs", index), client_id, request_id)
                for index, job in enumerate(batch.jobs)
            )
        )

    @staticmethod
    def _model(model: type[M], document: Any, prefix: Sequence[int | str]) -> M:
        if not isinstance(document, dict):
            raise JobRefusedError(RefusalReason.INVALID, location(prefix), "expected a JSON object")
        try:
            return model.model_validate(document)
        except ValidationError as error:
            raise _invalid(error, prefix) from None

    def schedule(self, document: Any, *, name: str) -> ScheduleSpec:
        """A schedule document: its task and arguments checked as a job's are, its timing
        (cron expression, period, time zone) as a schedule's."""
        schedule = self._model(ScheduleIn, document, ())
        spec = self._checked_task(schedule.task, schedule.args, ())
        try:
            timing = Timing(
                cron=schedule.cron, every_seconds=schedule.every_seconds, timezone=schedule.timezone
            )
        except ScheduleTimingError as error:
            raise JobRefusedError(RefusalReason.INVALID, error.field, error.problem) from None
        return ScheduleSpec(
            name=name,
            task=spec.name,
            args=dict(schedule.args),
            timing=timing,
            priority=schedule.priority,
            paused=schedule.paused,
        )

    def _checked_task(
        self, task: str, args: Mapping[str, Any], prefix: Sequence[int | str]
    ) -> TaskSpec:
        """The catalog entry of ``task``, once ``args`` are valid arguments for it."""
        spec = self._catalog.get(task)
        if spec is None:
            where = location([*prefix, "task"])
            raise JobRefusedError(RefusalReason.UNKNOWN_TASK, where, f"unknown task {task!r}")
        try:
            spec.arguments.model_validate(args)
        except ValidationError as error:
            raise _invalid(error, [*prefix, "args"]) from None
        return spec

    def _prepare(
        self, job: JobIn, prefix: Sequence[int | str], client_id: str, request_id: str
    ) -> JobRequest:
        spec = self._checked_task(job.task, job.args, prefix)
        return JobRequest(
            job_id=self._ids.new(),
            client_id=client_id,
            task=spec.name,
            queue=spec.queue,
            args=dict(job.args),
            priority=job.priority,
            max_attempts=spec.max_attempts,
            fingerprint=job.fingerprint(),
            idempotency_key=job.idempotency_key,
            request_id=request_id,
            scheduled_for=self._schedule(job, prefix),
        )

    def _schedule(self, job: JobIn, prefix: Sequence[int | str]) -> datetime | None:
        if job.delay_seconds:
            return self._clock() + timedelta(seconds=job.delay_seconds)
        if job.run_at is not None:
            now = self._clock()
            where = location([*prefix, "run_at"])
            try:
                run_at = job.run_at.astimezone(UTC)
            except OverflowError:
                raise JobRefusedError(RefusalReason.INVALID, where, "out of range") from None
            if run_at > now + timedelta(seconds=MAX_DELAY_SECONDS):
                raise JobRefusedError(RefusalReason.INVALID, where, "at most 30 days ahead")
            # a time already past means now
            return max(run_at, now)
        return None
