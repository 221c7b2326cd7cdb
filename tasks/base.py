"""The base task: ledger transitions, the retry-policy table and job log context, in one place.

Every catalog task runs through :meth:`ConveyorTask.__call__`; implementations never see
Celery, the ledger or retries.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from celery.result import denied_join_result
from pydantic import JsonValue, ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from tasks.catalog import TaskSpec
from tasks.errors import InvalidArgumentsError, PoisonJobError
from tasks.retry_policy import DEPENDENCY, POISON_AFTER_LOST_ATTEMPTS, UNEXPECTED, policy_for
from workers.blob_store import BlobStore
from workers.ledger import attempts as ledger
from workers.ledger.attempts import (
    AttemptStart,
    Delivery,
    ErrorInfo,
    OpenAttempt,
    Runner,
    Verdict,
)
from workers.ledger.models import JobStatus
from workers.pool_fitness import record_pool_mismatch
from workers.process_resources import ProcessResources
from workers.runtime import WorkerRuntime, runtime_of
from workers.settings import Settings
from workers.structured_logging import log_context, new_error_id

logger = logging.getLogger("conveyor.task")

_MESSAGE_LIMIT = 2000

#: Errors that mean "the ledger cannot be reached or is contended", not "this job is bad".
LEDGER_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError, IntegrityError)
# pauses between tries of an outcome write before the message is requeued
_LEDGER_WRITE_PAUSES = (0.2, 1.0, 3.0)
#: Retries due this far ahead or more wait in the ledger, not in a countdown message.
LEDGER_SCHEDULED_RETRY_SECONDS = 1.0
Outcome = TypeVar("Outcome")


@dataclass(frozen=True)
class JobContext:
    """What an implementation may know of the job it runs and the process it runs in."""

    job_id: str
    attempt: int
    pool: str
    worker: str
    pid: int
    settings: Settings
    database: Engine
    blobs: BlobStore
    resources: ProcessResources


Implementation = Callable[[JobContext, Any], JsonValue]


def describe_error(error: BaseException, error_id: str) -> ErrorInfo:
    """What the ledger keeps of ``error``."""
    message = str(error) or type(error).__name__
    return ErrorInfo(type(error).__name__, message[:_MESSAGE_LIMIT], error_id)


def _own_time_limits(timelimit: Any) -> bool:
    """Whether a message set time limits of its own (Celery's ``timelimit`` header)."""
    return isinstance(timelimit, list | tuple) and any(limit is not None for limit in timelimit)


def _now() -> datetime:
    return datetime.now(UTC)


def poison_error() -> ErrorInfo:
    """The error of a job failed as poison, with a new error id."""
    return ErrorInfo(
        PoisonJobError.__name__,
        f"the worker died during {POISON_AFTER_LOST_ATTEMPTS} attempts; not run again",
        new_error_id(),
    )


class ConveyorTask(Task):  # type: ignore[type-arg] # Celery's Task is generic only in the stubs
    """Base class of every catalog task."""

    spec: ClassVar[TaskSpec]
    implementation: ClassVar[Implementation]

    acks_late = True
    reject_on_worker_lost = True
    # the retry-policy table is the only limit; Celery's own would stop at 3 retries
    max_retries = None
    # a hard time limit kills the attempt like a lost worker: redelivered, and poison at 3
    acks_on_timeout = False
    typing = False  # arguments are checked by the task's pydantic model instead

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        runtime = runtime_of(self.app)
        request = self.request
        job_id = str(request.id)
        with log_context(job_id=job_id, task_id=job_id, task=self.name):
            try:
                start = self._begin(runtime, job_id, kwargs, int(request.retries or 0))
            except LEDGER_UNAVAILABLE as error:
                raise self._defer_while_ledger_is_down(runtime, error) from error
            runtime.running_tasks.mark(self.name, job_id)
            runtime.jobs_in_progress[job_id] = False  # its outcome is not recorded yet
            try:
                with log_context(request_id=start.request_id, attempt=start.attempt):
                    return self._run_attempt(runtime, job_id, start, args, kwargs)
            except BaseException:
                # killed (the greenlet by a connection loss or a time limit) or failed in its
                # own bookkeeping: the attempt is still open under this process's live lease,
                # so nobody else would take the job; this process puts it back
                if not runtime.jobs_in_progress.get(job_id) and runtime.lease_keeper:
                    runtime.lease_keeper.abandon(job_id, start.attempt)
                raise
            finally:
                runtime.jobs_in_progress.pop(job_id, None)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Validate the arguments and call the implementation (outside the ledger)."""
        return self._execute(int(self.request.retries or 0) + 1, args, kwargs)

    def _execute(self, attempt: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            raise InvalidArgumentsError("positional arguments are not accepted; use kwargs")
        try:
            arguments = self.spec.arguments.model_validate(kwargs)
        except ValidationError as error:
            raise InvalidArgumentsError(_explain(error)) from None
        return type(self).implementation(self._context(attempt), arguments)

    # ---------------------------------------------------------------------------------

    def _begin(
        self, runtime: WorkerRuntime, job_id: str, kwargs: dict[str, Any], generation: int
    ) -> AttemptStart:
        poison = poison_error()
        delivery = Delivery(
            job_id=job_id,
            task=self.name,
            queue=self.spec.queue,
            args=dict(kwargs),
            max_attempts=self.spec.max_attempts,
            request_id=None,
        )
        group = runtime.group_commit
        runner = self._runner(runtime)
        fast = None
        if group is not None:
            fast = group.claim(delivery, generation=generation, runner=runner)
        if fast is None and runtime.engine.dialect.name == "postgresql":
            with _unsure_if_killed(runtime, job_id), runtime.outcome_engine.connect() as connection:
                fast = ledger.try_begin_attempt(
                    connection,
                    delivery,
                    generation=generation,
                    runner=runner,
                    now=_now(),
                    claim=group is None,  # a round already tried to claim it
                )
        if fast is not None:
            self._warn_on_pool_mismatch(runtime)
            return fast
        with _unsure_if_killed(runtime, job_id), runtime.engine.begin() as connection:
            start = ledger.begin_attempt(
                connection,
                delivery,
                generation=generation,
                runner=self._runner(runtime),
                poison_after=POISON_AFTER_LOST_ATTEMPTS,
                poison_error=poison,
                now=_now(),
                still_running=_liveness(runtime, job_id),
            )
        if start.verdict is Verdict.DROP:
            logger.info("message dropped: %s", start.reason, extra={"reason": start.reason})
            raise Ignore
        if start.verdict is Verdict.POISON:
            logger.error(
                "job failed as poison after %d lost attempts",
                POISON_AFTER_LOST_ATTEMPTS,
                extra={"error_id": poison.error_id},
            )
            raise PoisonJobError(poison.message)
        self._warn_on_pool_mismatch(runtime)
        return start

    def _run_attempt(
        self,
        runtime: WorkerRuntime,
        job_id: str,
        start: AttemptStart,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            result = self._execute(start.attempt, args, kwargs)
        except Exception as error:  # noqa: BLE001 - every failure is judged by the policy table
            return self._handle_failure(runtime, job_id, start, error)

        def record(connection: Connection) -> JobStatus:
            return ledger.record_success(
                connection, job_id, start.attempt, result=result, now=_now()
            )

        group = runtime.group_commit
        if group is None:
            status = self._write_outcome(runtime, _in_transaction(runtime, record))
        else:

            def record_in_group() -> JobStatus:
                if group.succeed(job_id, start.attempt, result):
                    return JobStatus.SUCCEEDED
                # not moved (cancelled meanwhile, or lost): the statement says what it is now
                return _in_transaction(runtime, record)()

            status = self._write_outcome(runtime, record_in_group)
        logger.info("attempt succeeded", extra={"status": status.value})
        return result

    def _handle_failure(
        self, runtime: WorkerRuntime, job_id: str, start: AttemptStart, error: Exception
    ) -> Any:
        policy = policy_for(error, self.spec.retry_overrides)
        error_id = new_error_id()
        info = describe_error(error, error_id)
        unexpected = policy is UNEXPECTED
        log_extra = {"error_id": error_id, "error_type": info.type, "policy": policy.name}
        if policy.allows_another(start.attempt_in_round):
            delay = policy.delay(
                start.attempt_in_round, error, runtime.settings.retry_scale, runtime.rng
            )
            # a retry due within a second goes out at once as a countdown message; a later
            # one waits in the ledger's outbox and the relay publishes it when it is due, so
            # no worker holds it and no visibility timeout bounds it. A message with time
            # limits of its own (a plain Celery client's options) keeps them only in a
            # countdown message: the ledger does not record them.
            in_outbox = delay >= LEDGER_SCHEDULED_RETRY_SECONDS and not _own_time_limits(
                self.request.timelimit
            )
            if not in_outbox:
                delay = self._bounded_delay(runtime, delay)

            def record_retry(connection: Connection) -> int | None:
                return ledger.record_retry(
                    connection,
                    job_id,
                    start.attempt,
                    error=info,
                    delay=delay,
                    now=_now(),
                    in_outbox=in_outbox,
                )

            generation = self._write_outcome(runtime, _in_transaction(runtime, record_retry))
            if generation is None:
                logger.info("attempt failed but the job was cancelled; not retried")
                raise Ignore from error
            logger.warning(
                "attempt failed (%s: %s); retry in %.2f s",
                info.type,
                info.message,
                delay,
                exc_info=unexpected,
                extra={**log_extra, "retry_in_seconds": round(delay, 3)},
            )
            if in_outbox:
                # Celery records RETRY and acknowledges the message; no message is sent
                raise Retry(exc=error, when=_now() + timedelta(seconds=delay))
            raise self._retry_message(error, delay)

        def record_failure(connection: Connection) -> JobStatus:
            return ledger.record_failure(connection, job_id, start.attempt, error=info, now=_now())

        self._write_outcome(runtime, _in_transaction(runtime, record_failure))
        logger.error(
            "job failed (%s: %s) after %d attempts",
            info.type,
            info.message,
            start.attempt_in_round,
            exc_info=unexpected,
            extra=log_extra,
        )
        raise error

    def _defer_while_ledger_is_down(self, runtime: WorkerRuntime, error: Exception) -> Exception:
        """Put the message back for later: without a ledger row the job must not run."""
        error_id = new_error_id()
        # back off with every deferral of this message, up to the dependency policy's cap
        deferrals = int(self.request.retries or 0) + 1
        delay = self._bounded_delay(
            runtime, DEPENDENCY.delay(deferrals, error, runtime.settings.retry_scale, runtime.rng)
        )
        logger.error(
            "ledger unavailable (%s); message deferred %.2f s",
            type(error).__name__,
            delay,
            extra={"error_id": error_id, "retry_in_seconds": round(delay, 3)},
        )
        # a new message after ``delay``; the ledger is untouched, so its generation check lets
        # the later copy run
        return self._retry_message(error, delay)

    def _retry_message(self, error: Exception, delay: float) -> Exception:
        """Send the message again with a countdown of ``delay`` s; the exception to raise.

        Sent as a worker sends: neither subscribed to the new message's result nor added to
        this attempt's children. Under gevent Celery would otherwise keep an ``AsyncResult``
        per retry in greenlet-local state, and each one failed noisily when the warm shutdown
        finalized its greenlet."""
        with denied_join_result():
            return self.retry(exc=error, countdown=delay, throw=False, add_to_parent=False)

    def _write_outcome(self, runtime: WorkerRuntime, write: Callable[[], Outcome]) -> Outcome:
        """Record how an attempt ended, riding out a short ledger outage.

        If the ledger stays down, the attempt is abandoned and the message requeued: the
        attempt is still open in the ledger; a delivery in this process records it as lost and
        runs the job again, and this process's lease keeper puts the job back once the
        ledger answers (at least once, never lost).
        """
        job_id = str(self.request.id)
        for pause in _LEDGER_WRITE_PAUSES:
            try:
                return _write_once(runtime, job_id, write)
            except LEDGER_UNAVAILABLE as error:
                logger.warning(
                    "ledger write failed (%s); trying again in %.1f s", type(error).__name__, pause
                )
                time.sleep(pause)
        try:
            return _write_once(runtime, job_id, write)
        except LEDGER_UNAVAILABLE as error:
            logger.exception(
                "ledger unavailable; message requeued, the job will run again",
                extra={"error_id": new_error_id()},
            )
            raise Reject(error, requeue=True) from error

    def _bounded_delay(self, runtime: WorkerRuntime, delay: float) -> float:
        """``delay``, kept under half the visibility timeout.

        A countdown message waits unacknowledged in the worker; past the visibility timeout
        Redis would hand a second copy to another worker and the job would run twice.
        """
        ceiling = runtime.settings.visibility_timeout / 2
        if delay > ceiling:
            logger.warning(
                "retry delay %.0f s clamped to %.0f s (half the visibility timeout)",
                delay,
                ceiling,
            )
        return min(delay, ceiling)

    def _runner(self, runtime: WorkerRuntime) -> Runner:
        return Runner(
            worker=str(self.request.hostname or runtime.hostname),
            pool=runtime.pool,
            pid=os.getpid(),
            lease=runtime.lease_id,
        )

    def _context(self, attempt: int) -> JobContext:
        runtime = runtime_of(self.app)
        runner = self._runner(runtime)
        return JobContext(
            job_id=str(self.request.id),
            attempt=attempt,
            pool=runner.pool,
            worker=runner.worker,
            pid=runner.pid,
            settings=runtime.settings,
            database=runtime.engine,
            blobs=runtime.blobs,
            resources=runtime.resources,
        )

    def _warn_on_pool_mismatch(self, runtime: WorkerRuntime) -> None:
        expected = self.spec.pool
        if runtime.pool in ("gevent", "prefork") and runtime.pool != expected:
            logger.warning(
                "%s task running in a %s pool; its kind wants %s (sent to the wrong queue?)",
                self.spec.kind,
                runtime.pool,
                expected,
                extra={"pool": runtime.pool, "kind": self.spec.kind},
            )
            try:
                record_pool_mismatch(runtime.redis_client, self.name, runtime.pool)
            except redis.RedisError as error:
                logger.warning("pool-fitness counter not recorded: %s", error)


def _write_once(runtime: WorkerRuntime, job_id: str, write: Callable[[], Outcome]) -> Outcome:
    """Run ``write`` and note that the job's outcome is recorded."""
    outcome = write()
    runtime.jobs_in_progress[job_id] = True
    return outcome


def _in_transaction(
    runtime: WorkerRuntime, write: Callable[[Connection], Outcome]
) -> Callable[[], Outcome]:
    """``write`` run in a transaction of its own (one statement in autocommit on PostgreSQL)."""

    def written() -> Outcome:
        with runtime.outcome_engine.begin() as connection:
            return write(connection)

    return written


@contextmanager
def _unsure_if_killed(runtime: WorkerRuntime, job_id: str) -> Iterator[None]:
    """Around a claim's statement: if the caller is killed meanwhile (Celery ends a gevent
    task when the broker connection drops), the ledger may still have opened the attempt,
    under this process's live lease, for a job nobody will run; the lease keeper looks."""
    try:
        yield
    except Exception:
        raise
    except BaseException:
        if runtime.lease_keeper is not None:
            runtime.lease_keeper.abandon_claim(job_id)
        raise


def _liveness(runtime: WorkerRuntime, job_id: str) -> ledger.LivenessCheck:
    """Whether the open attempt of ``job_id`` still runs: in this process, only if this
    process is running it now; elsewhere, while the lease it runs under is renewed."""

    def still_running(attempt: OpenAttempt) -> bool:
        if attempt.lease is None:
            return False
        if attempt.lease == runtime.lease_id:
            return job_id in runtime.jobs_in_progress
        return attempt.lease_expires_at is not None and attempt.lease_expires_at > _now()

    return still_running


def _explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        location = ".".join(str(part) for part in item["loc"]) or "args"
        parts.append(f"{location}: {item['msg']}")
    return "invalid arguments: " + "; ".join(parts)
