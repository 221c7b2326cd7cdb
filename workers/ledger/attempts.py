"""The attempt state machine: a delivered message starts an attempt, and the attempt ends.

A job is claimed (``queued``/``retrying`` → ``running``) with an attempt row, or the message
is dropped (finished, stale, another task's) or the job failed as poison; an attempt then
ends as ``succeeded``, ``retrying`` or ``failed``, recorded only while it is still the job's
current attempt and still open (an attempt the reconciler closed as lost stays lost: the
late outcome of a worker thought dead is fenced off). Each function works in the caller's
connection; the statements are in :mod:`workers.ledger.attempt_statements`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Row, Update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from workers.ledger import attempt_statements as statements
from workers.ledger.attempt_statements import WORKER_LOST
from workers.ledger.models import ATTEMPTS, JOBS, AttemptOutcome, JobStatus

__all__ = [
    "WORKER_LOST",
    "AttemptStart",
    "Delivery",
    "ErrorInfo",
    "LivenessCheck",
    "OpenAttempt",
    "Runner",
    "Verdict",
    "begin_attempt",
    "record_failure",
    "record_retry",
    "record_success",
    "try_begin_attempt",
]


@dataclass(frozen=True)
class Runner:
    """Who runs an attempt: the worker node, its pool, the process and its lease."""

    worker: str
    pool: str
    pid: int
    lease: str | None = None


@dataclass(frozen=True)
class OpenAttempt:
    """A job's attempt still open when another message for the job arrives."""

    lease: str | None
    pid: int
    lease_expires_at: datetime | None  # None: the lease row is gone (its process released it)


#: Whether an open attempt still runs somewhere; if not, its worker died under it.
LivenessCheck = Callable[[OpenAttempt], bool]


def _never_alive(_: OpenAttempt) -> bool:
    return False


@dataclass(frozen=True)
class ErrorInfo:
    """What the ledger keeps of an error: its type, message and the id found in the logs."""

    type: str
    message: str
    error_id: str

    def as_json(self) -> dict[str, str]:
        """The ``error`` object of the contract."""
        return {"type": self.type, "message": self.message, "error_id": self.error_id}


class Verdict(Enum):
    """What a worker should do with a delivered message."""

    RUN = "run"
    DROP = "drop"  # finished, cancelled or stale: acknowledge and forget
    POISON = "poison"  # its worker died too often: the job is now failed


@dataclass(frozen=True)
class AttemptStart:
    """The answer to :func:`begin_attempt`."""

    verdict: Verdict
    attempt: int
    request_id: str | None
    reason: str = ""
    attempt_in_round: int = 0  # counted since the latest replay, for the retry policies


@dataclass(frozen=True)
class Delivery:
    """The job a delivered message carries, as the worker reads it from the message.

    It is all the ledger has of a job met for the first time (a plain ``send_task``).
    """

    job_id: str
    task: str
    queue: str
    args: dict[str, Any]
    max_attempts: int
    request_id: str | None


def _lock_state(connection: Connection, job_id: str) -> Row[Any, Any, Any, Any, Any, Any] | None:
    return connection.execute(statements.LOCK_STATE, {"b_job_id": job_id}).one_or_none()


def _adopt_running(connection: Connection, delivery: Delivery, now: datetime) -> bool:
    """Record a job met for the first time as running its first attempt.

    ``False`` when the row already exists (a concurrent delivery inserted it first).
    """
    insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = insert(JOBS).on_conflict_do_nothing(index_elements=["id"]).returning(JOBS.c.id)
    inserted = connection.execute(statement, _adopted_values(delivery, now)).one_or_none()
    return inserted is not None


def _adopted_values(delivery: Delivery, now: datetime) -> dict[str, Any]:
    """The row of a job met for the first time, running its first attempt."""
    return {
        "id": delivery.job_id,
        "client_id": None,
        "task": delivery.task,
        "queue": delivery.queue,
        "status": JobStatus.RUNNING.value,
        "args": delivery.args,
        "priority": "normal",
        "attempts": 1,
        "max_attempts": delivery.max_attempts,
        "retry_generation": 0,
        "attempt_base": 0,
        "request_id": delivery.request_id,
        "created_at": now,
        "updated_at": now,
        "started_at": now,
    }


def _close_lost_attempts(
    connection: Connection, job_id: str, attempt_base: int, now: datetime
) -> int:
    """Mark attempts still open as lost; how many attempts of this round were lost."""
    connection.execute(
        statements.CLOSE_LOST,
        {
            "b_job_id": job_id,
            "outcome": AttemptOutcome.LOST.value,
            "finished_at": now,
            "error": statements.LOST_ERROR,
        },
    )
    return int(
        connection.scalar(statements.COUNT_LOST, {"b_job_id": job_id, "b_base": attempt_base}) or 0
    )


def begin_attempt(
    connection: Connection,
    delivery: Delivery,
    *,
    generation: int,
    runner: Runner,
    poison_after: int,
    poison_error: ErrorInfo,
    now: datetime,
    still_running: LivenessCheck = _never_alive,
) -> AttemptStart:
    """Record the start of an attempt, or say why the message must not run.

    ``generation`` is the number of retries the message carries: a message older than the
    job's latest scheduled retry is a stale duplicate. A job still marked running is either
    still running elsewhere (``still_running`` says so: the message is a duplicate and is
    dropped) or lost its worker during the previous attempt; that attempt is then closed as
    lost, and the job is failed as poison once ``poison_after`` attempts of this round were
    lost.
    """
    claimed = connection.execute(
        statements.CLAIM,
        {
            "b_job_id": delivery.job_id,
            "b_task": delivery.task,
            "b_generation": generation,
            "b_now": now,
        },
    ).one_or_none()
    if claimed is not None:
        _insert_attempt(connection, delivery.job_id, claimed.attempts, runner, now)
        return AttemptStart(
            Verdict.RUN,
            claimed.attempts,
            claimed.request_id,
            attempt_in_round=claimed.attempts - claimed.attempt_base,
        )
    if _adopt_running(connection, delivery, now):
        _insert_attempt(connection, delivery.job_id, 1, runner, now)
        return AttemptStart(Verdict.RUN, 1, delivery.request_id, attempt_in_round=1)
    return _begin_unclaimable(
        connection,
        delivery,
        generation=generation,
        runner=runner,
        poison_after=poison_after,
        poison_error=poison_error,
        now=now,
        still_running=still_running,
    )


def try_begin_attempt(
    connection: Connection,
    delivery: Delivery,
    *,
    generation: int,
    runner: Runner,
    now: datetime,
    claim: bool = True,
) -> AttemptStart | None:
    """The common starts in one statement each (PostgreSQL); ``None`` for any other.

    A queued or retrying job is claimed (unless ``claim`` is false: a group-commit round
    tried already), or a job met for the first time is recorded as running, together with
    its attempt row. ``None`` means neither applied: the caller runs :func:`begin_attempt`
    in a transaction, which handles every other case.
    """
    runner_values = {
        "r_worker": runner.worker,
        "r_pool": runner.pool,
        "r_pid": runner.pid,
        "r_lease": runner.lease,
    }
    claimed = (
        connection.execute(
            statements.CLAIM_AND_OPEN,
            {
                "b_job_id": delivery.job_id,
                "b_task": delivery.task,
                "b_generation": generation,
                "b_now": now,
                **runner_values,
            },
        ).one_or_none()
        if claim
        else None
    )
    if claimed is not None:
        return AttemptStart(
            Verdict.RUN,
            claimed.attempts,
            claimed.request_id,
            attempt_in_round=claimed.attempts - claimed.attempt_base,
        )
    adopted = connection.execute(
        statements.ADOPT_AND_OPEN,
        {
            **{f"n_{name}": value for name, value in _adopted_values(delivery, now).items()},
            "b_now": now,
            **runner_values,
        },
    ).one_or_none()
    if adopted is not None:
        return AttemptStart(Verdict.RUN, 1, delivery.request_id, attempt_in_round=1)
    return None


def _begin_unclaimable(
    connection: Connection,
    delivery: Delivery,
    *,
    generation: int,
    runner: Runner,
    poison_after: int,
    poison_error: ErrorInfo,
    now: datetime,
    still_running: LivenessCheck,
) -> AttemptStart:
    """The rare start: the job exists but is finished, stale, another task's, running
    elsewhere, or orphaned."""
    state = _lock_state(connection, delivery.job_id)
    if state is None:
        raise LookupError(f"job {delivery.job_id} vanished while its message was delivered")
    if state.task != delivery.task:
        return AttemptStart(Verdict.DROP, state.attempts, state.request_id, "task name mismatch")
    if JobStatus(state.status).finished:
        return AttemptStart(
            Verdict.DROP, state.attempts, state.request_id, f"job is {state.status}"
        )
    if generation < state.retry_generation:
        return AttemptStart(Verdict.DROP, state.attempts, state.request_id, "stale delivery")
    if state.status == JobStatus.RUNNING.value:
        running = _open_attempt(connection, delivery.job_id, state.attempts)
        if running is not None and still_running(running):
            return AttemptStart(
                Verdict.DROP, state.attempts, state.request_id, "running on a live worker"
            )
        lost = _close_lost_attempts(connection, delivery.job_id, state.attempt_base, now)
        if lost >= poison_after:
            connection.execute(
                statements.POISON,
                {
                    "b_job_id": delivery.job_id,
                    "status": JobStatus.FAILED.value,
                    "finished_at": now,
                    "next_retry_at": None,
                    "error": poison_error.as_json(),
                    "updated_at": now,
                },
            )
            return AttemptStart(Verdict.POISON, state.attempts, state.request_id, "poison")
    attempt = state.attempts + 1
    connection.execute(
        statements.START, {"b_job_id": delivery.job_id, "b_attempt": attempt, "b_now": now}
    )
    _insert_attempt(connection, delivery.job_id, attempt, runner, now)
    return AttemptStart(
        Verdict.RUN, attempt, state.request_id, attempt_in_round=attempt - state.attempt_base
    )


def _open_attempt(connection: Connection, job_id: str, number: int) -> OpenAttempt | None:
    row = connection.execute(
        statements.OPEN_ATTEMPT, {"b_job_id": job_id, "b_attempt": number}
    ).one_or_none()
    return None if row is None else OpenAttempt(row.lease, int(row.pid), row.expires_at)


def _insert_attempt(
    connection: Connection, job_id: str, number: int, runner: Runner, now: datetime
) -> None:
    connection.execute(
        ATTEMPTS.insert(),
        {
            "job_id": job_id,
            "number": number,
            "worker": runner.worker,
            "pool": runner.pool,
            "pid": runner.pid,
            "lease": runner.lease,
            "outcome": AttemptOutcome.RUNNING.value,
            "started_at": now,
        },
    )


def _finish(
    connection: Connection,
    statement: Update,
    job_id: str,
    attempt: int,
    outcome: AttemptOutcome,
    *,
    job_values: dict[str, Any],
    attempt_values: dict[str, Any],
    now: datetime,
) -> Row[Any] | None:
    """Move a running job on, if ``attempt`` is still its current one; close the attempt.

    Returns the job's new retry generation and status, or ``None`` when the job was no longer
    running that attempt (it was cancelled meanwhile): the attempt is then closed as cancelled.
    """
    key = {"b_job_id": job_id, "b_attempt": attempt}
    if connection.dialect.name == "postgresql":
        job_params = {f"j_{k}": v for k, v in {**job_values, "updated_at": now}.items()}
        attempt_params = {f"a_{k}": v for k, v in {**attempt_values, "finished_at": now}.items()}
        one = statements.ONE_STATEMENT_FINISH[(statement is statements.SCHEDULE_RETRY, outcome)]
        params = {**key, **job_params, **attempt_params, "a_outcome": outcome.value}
        return connection.execute(one, params).one_or_none()
    moved = connection.execute(statement, {**key, **job_values, "updated_at": now}).one_or_none()
    closed = outcome if moved else AttemptOutcome.CANCELLED
    connection.execute(
        statements.CLOSE_ATTEMPT,
        {**key, **attempt_values, "outcome": closed.value, "finished_at": now},
    )
    return moved


def _status_of(connection: Connection, job_id: str) -> JobStatus:
    status = connection.scalar(statements.STATUS, {"b_job_id": job_id})
    return JobStatus(status) if status else JobStatus.CANCELLED


def record_success(
    connection: Connection, job_id: str, attempt: int, *, result: Any, now: datetime
) -> JobStatus:
    """Close a successful attempt; the job succeeds unless it was cancelled meanwhile."""
    moved = _finish(
        connection,
        statements.FINISH_JOB,
        job_id,
        attempt,
        AttemptOutcome.SUCCEEDED,
        job_values={
            "status": JobStatus.SUCCEEDED.value,
            "result": result,
            "error": None,
            "finished_at": now,
        },
        attempt_values={"error": None},
        now=now,
    )
    return JobStatus.SUCCEEDED if moved else _status_of(connection, job_id)


def record_retry(
    connection: Connection,
    job_id: str,
    attempt: int,
    *,
    error: ErrorInfo,
    delay: float,
    now: datetime,
    in_outbox: bool = False,
) -> int | None:
    """Schedule another attempt after ``delay`` seconds; the new generation, or ``None``.

    ``in_outbox``: the ledger publishes the retry when it is due (the job goes back into the
    outbox with ``publish_after`` at that time), instead of the caller sending a countdown
    message. ``None`` means the job was cancelled while the attempt ran, so nothing is
    scheduled.
    """
    due = now + timedelta(seconds=delay)
    moved = _finish(
        connection,
        statements.SCHEDULE_RETRY,
        job_id,
        attempt,
        AttemptOutcome.RETRYING,
        job_values={
            "status": JobStatus.RETRYING.value,
            "error": error.as_json(),
            "next_retry_at": due,
            "publish_after": due if in_outbox else None,
        },
        attempt_values={"error": error.as_json(), "retry_delay_seconds": delay},
        now=now,
    )
    return int(moved.retry_generation) if moved else None


def record_failure(
    connection: Connection, job_id: str, attempt: int, *, error: ErrorInfo, now: datetime
) -> JobStatus:
    """Close a failed attempt and move the job to ``failed`` (the dead-letter state)."""
    moved = _finish(
        connection,
        statements.FINISH_JOB,
        job_id,
        attempt,
        AttemptOutcome.FAILED,
        job_values={
            "status": JobStatus.FAILED.value,
            "error": error.as_json(),
            "finished_at": now,
            "next_retry_at": None,
        },
        attempt_values={"error": error.as_json()},
        now=now,
    )
    return JobStatus.FAILED if moved else _status_of(connection, job_id)
