"""Turning a job request into ledger jobs: checked against the catalog, scheduled, fingerprinted.

Only the light catalog is consulted (names, kinds, argument models); no task
implementation is imported, and a name outside the catalog never reaches the broker.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from api_shim import errors
from api_shim.schemas import MAX_DELAY_SECONDS, BatchIn, JobIn
from tasks.catalog import Catalog
from workers.enqueue import JobRequest, Submission

_MAX_DETAILS = 20
M = TypeVar("M", bound=BaseModel)


def location(parts: Sequence[int | str]) -> str:
    """``("jobs", 3, "args", "x")`` → ``"jobs[3].args.x"``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _refusal(error: ValidationError, prefix: Sequence[int | str] = ()) -> errors.ApiError:
    details = [
        {"loc": location([*prefix, *item["loc"]]), "msg": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False, include_input=False)[:_MAX_DETAILS]
    ]
    first = details[0]
    more = error.error_count() - 1
    suffix = f" (and {more} more)" if more else ""
    return errors.validation_error(f"{first['loc']}: {first['msg']}{suffix}", details)


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
        self, document: Any, *, client_id: str, request_id: str, header_key: str | None
    ) -> Submission:
        """One ``POST /v1/jobs`` body; the ``Idempotency-Key`` header may carry its key."""
        job = self._model(JobIn, document, ())
        if header_key is not None:
            if job.idempotency_key is not None and job.idempotency_key != header_key:
                raise errors.validation_error(
                    "the Idempotency-Key header and the body's idempotency_key differ"
                )
            # validated like the body field: same length and character rules
            job = self._model(JobIn, {**document, "idempotency_key": header_key}, ())
        return Submission((self._prepare(job, (), client_id, request_id),))

    def batch(self, document: Any, *, client_id: str, request_id: str) -> Submission:
        """One ``POST /v1/jobs/batch`` body; any invalid item refuses the whole batch."""
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
            raise errors.validation_error(f"{location(prefix)}: expected a JSON object")
        try:
            return model.model_validate(document)
        except ValidationError as error:
            raise _refusal(error, prefix) from None

    def _prepare(
        self, job: JobIn, prefix: Sequence[int | str], client_id: str, request_id: str
    ) -> JobRequest:
        spec = self._catalog.get(job.task)
        if spec is None:
            raise errors.unknown_task(job.task, location([*prefix, "task"]))
        try:
            spec.arguments.model_validate(job.args)
        except ValidationError as error:
            raise _refusal(error, [*prefix, "args"]) from None
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
            scheduled_for=self._schedule(job),
        )

    def _schedule(self, job: JobIn) -> datetime | None:
        if job.delay_seconds:
            return self._clock() + timedelta(seconds=job.delay_seconds)
        if job.run_at is not None:
            now = self._clock()
            try:
                run_at = job.run_at.astimezone(UTC)
            except OverflowError:
                raise errors.validation_error("run_at: out of range") from None
            if run_at > now + timedelta(seconds=MAX_DELAY_SECONDS):
                raise errors.validation_error("run_at: at most 30 days ahead")
            # a time already past means now
            return max(run_at, now)
        return None
