"""The ledger's operations: every state transition of a job, each in the caller's session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    Select,
    Update,
    bindparam,
    case,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from workers.ledger.models import Attempt, AttemptOutcome, Base, Job, JobStatus, UTCDateTime


@dataclass(frozen=True)
class Runner:
    """Who runs an attempt: the worker node, its pool and the process."""

    worker: str
    pool: str
    pid: int


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
class NewJob:
    """What a worker knows of a job it meets for the first time (a plain ``send_task``)."""

    job_id: str
    task: str
    queue: str
    args: dict[str, Any]
    max_attempts: int
    request_id: str | None


WORKER_LOST = "WorkerLostError"

# The hot path (one attempt = two short transactions) runs statements built once, on the
# Core tables: building ORM statements per call cost milliseconds of CPU per job, and a
# gevent worker runs every job's bookkeeping on one core.
JOBS = Base.metadata.tables["jobs"]
ATTEMPTS = Base.metadata.tables["job_attempts"]

_LOCK_STATE = (
    select(
        JOBS.c.status,
        JOBS.c.task,
        JOBS.c.attempts,
        JOBS.c.attempt_base,
        JOBS.c.retry_generation,
        JOBS.c.request_id,
    )
    .where(JOBS.c.id == bindparam("b_job_id"))
    .with_for_update()
)
_START = (
    JOBS.update()
    .where(JOBS.c.id == bindparam("b_job_id"))
    .values(
        status=JobStatus.RUNNING.value,
        attempts=bindparam("b_attempt"),
        started_at=func.coalesce(JOBS.c.started_at, bindparam("b_now", type_=UTCDateTime())),
        next_retry_at=None,
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
)
# the common start: a queued or retrying job, this task, a current delivery
_CLAIM = (
    JOBS.update()
    .where(
        JOBS.c.id == bindparam("b_job_id"),
        JOBS.c.task == bindparam("b_task"),
        JOBS.c.status.in_([JobStatus.QUEUED.value, JobStatus.RETRYING.value]),
        JOBS.c.retry_generation <= bindparam("b_generation"),
    )
    .values(
        status=JobStatus.RUNNING.value,
        attempts=JOBS.c.attempts + 1,
        started_at=func.coalesce(JOBS.c.started_at, bindparam("b_now", type_=UTCDateTime())),
        next_retry_at=None,
        updated_at=bindparam("b_now", type_=UTCDateTime()),
    )
    .returning(JOBS.c.attempts, JOBS.c.attempt_base, JOBS.c.request_id, JOBS.c.id)
)
_POISON = JOBS.update().where(JOBS.c.id == bindparam("b_job_id"))
_CLOSE_LOST = ATTEMPTS.update().where(
    ATTEMPTS.c.job_id == bindparam("b_job_id"),
    ATTEMPTS.c.outcome == AttemptOutcome.RUNNING.value,
)
_COUNT_LOST = select(func.count()).where(
    ATTEMPTS.c.job_id == bindparam("b_job_id"),
    ATTEMPTS.c.outcome == AttemptOutcome.LOST.value,
    ATTEMPTS.c.number > bindparam("b_base"),
)
_FINISH_JOB = (
    JOBS.update()
    .where(
        JOBS.c.id == bindparam("b_job_id"),
        JOBS.c.status == JobStatus.RUNNING.value,
        JOBS.c.attempts == bindparam("b_attempt"),
    )
    .returning(JOBS.c.retry_generation, JOBS.c.status)
)
_SCHEDULE_RETRY = _FINISH_JOB.values(retry_generation=JOBS.c.retry_generation + 1)
_CLOSE_ATTEMPT = ATTEMPTS.update().where(
    ATTEMPTS.c.job_id == bindparam("b_job_id"), ATTEMPTS.c.number == bindparam("b_attempt")
)
_STATUS = select(JOBS.c.status).where(JOBS.c.id == bindparam("b_job_id"))

# --- PostgreSQL: each common transition in one statement -----------------------------------
# A worker's bookkeeping is two statements per job instead of nine round trips (BEGIN,
# two or three statements and COMMIT, twice): data-modifying CTEs make the job update and
# the attempt row one atomic statement, run in autocommit.

_ATTEMPT_COLUMNS = ["job_id", "number", "worker", "pool", "pid", "outcome", "started_at"]


def _opening(job_rows: Any, number: Any) -> Any:
    """An INSERT of the running attempt for each row of ``job_rows``, as a CTE."""
    return (
        ATTEMPTS.insert()
        .from_select(
            _ATTEMPT_COLUMNS,
            select(
                job_rows.c.id,
                number,
                bindparam("r_worker", type_=ATTEMPTS.c.worker.type),
                bindparam("r_pool", type_=ATTEMPTS.c.pool.type),
                bindparam("r_pid", type_=ATTEMPTS.c.pid.type),
                literal(AttemptOutcome.RUNNING.value),
                bindparam("b_now", type_=UTCDateTime()),
            ),
        )
        .cte("opened")
    )


_claimed = _CLAIM.cte("claimed")
_CLAIM_AND_OPEN = select(
    _claimed.c.attempts, _claimed.c.attempt_base, _claimed.c.request_id
).add_cte(_opening(_claimed, _claimed.c.attempts))

_ADOPTED_COLUMNS = (
    "id", "client_id", "task", "queue", "status", "args", "priority", "attempts",
    "max_attempts", "retry_generation", "attempt_base", "request_id", "created_at",
    "updated_at", "started_at",
)  # fmt: skip
_adopted = (
    postgresql_insert(JOBS)
    .values({name: bindparam(f"n_{name}", type_=JOBS.c[name].type) for name in _ADOPTED_COLUMNS})
    .on_conflict_do_nothing(index_elements=["id"])
    .returning(JOBS.c.id)
    .cte("adopted")
)
_ADOPT_AND_OPEN = select(_adopted.c.id).add_cte(_opening(_adopted, literal(1)))


def _finish_in_one(
    job_update: Update, job_keys: tuple[str, ...], attempt_keys: tuple[str, ...]
) -> Select[Any]:
    """``job_update`` and the closing of its attempt, as one statement.

    The attempt is closed with ``a_outcome`` when the job moved, as cancelled otherwise.
    """
    moved = job_update.values(
        {key: bindparam(f"j_{key}", type_=JOBS.c[key].type) for key in job_keys}
    ).cte("moved")
    closed = (
        ATTEMPTS.update()
        .where(
            ATTEMPTS.c.job_id == bindparam("b_job_id"),
            ATTEMPTS.c.number == bindparam("b_attempt"),
        )
        .values(
            outcome=case(
                (
                    exists(select(moved.c.status)),
                    bindparam("a_outcome", type_=ATTEMPTS.c.outcome.type),
                ),
                else_=literal(AttemptOutcome.CANCELLED.value),
            ),
            **{key: bindparam(f"a_{key}", type_=ATTEMPTS.c[key].type) for key in attempt_keys},
        )
        .cte("closed")
    )
    return select(moved.c.retry_generation, moved.c.status).add_cte(closed)


_JOB_DONE_KEYS = ("status", "result", "error", "finished_at", "updated_at")
_FINISH_IN_ONE = _finish_in_one(_FINISH_JOB, _JOB_DONE_KEYS, ("error", "finished_at"))
_RETRY_IN_ONE = _finish_in_one(
    _SCHEDULE_RETRY,
    ("status", "error", "next_retry_at", "updated_at"),
    ("error", "finished_at", "retry_delay_seconds"),
)
_FAIL_IN_ONE = _finish_in_one(
    _FINISH_JOB,
    ("status", "error", "finished_at", "next_retry_at", "updated_at"),
    ("error", "finished_at"),
)
# (schedules a retry, outcome) -> the one statement for that transition
_IN_ONE = {
    (False, AttemptOutcome.SUCCEEDED): _FINISH_IN_ONE,
    (True, AttemptOutcome.RETRYING): _RETRY_IN_ONE,
    (False, AttemptOutcome.FAILED): _FAIL_IN_ONE,
}
_LOST_ERROR = {
    "type": WORKER_LOST,
    "message": "the worker process died or was killed during this attempt",
    "error_id": None,
}


def _lock_state(connection: Connection, job_id: str) -> Row[Any, Any, Any, Any, Any, Any] | None:
    return connection.execute(_LOCK_STATE, {"b_job_id": job_id}).one_or_none()


def _adopt_running(connection: Connection, new: NewJob, now: datetime) -> bool:
    """Record a job met for the first time as running its first attempt.

    ``False`` when the row already exists (a concurrent delivery inserted it first).
    """
    insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = insert(JOBS).on_conflict_do_nothing(index_elements=["id"]).returning(JOBS.c.id)
    inserted = connection.execute(statement, _adopted_values(new, now)).one_or_none()
    return inserted is not None


def _adopted_values(new: NewJob, now: datetime) -> dict[str, Any]:
    """The row of a job met for the first time, running its first attempt."""
    return {
        "id": new.job_id,
        "client_id": None,
        "task": new.task,
        "queue": new.queue,
        "status": JobStatus.RUNNING.value,
        "args": new.args,
        "priority": "normal",
        "attempts": 1,
        "max_attempts": new.max_attempts,
        "retry_generation": 0,
        "attempt_base": 0,
        "request_id": new.request_id,
        "created_at": now,
        "updated_at": now,
        "started_at": now,
    }


def _close_lost_attempts(
    connection: Connection, job_id: str, attempt_base: int, now: datetime
) -> int:
    """Mark attempts still open as lost; how many attempts of this round were lost."""
    connection.execute(
        _CLOSE_LOST,
        {
            "b_job_id": job_id,
            "outcome": AttemptOutcome.LOST.value,
            "finished_at": now,
            "error": _LOST_ERROR,
        },
    )
    return int(connection.scalar(_COUNT_LOST, {"b_job_id": job_id, "b_base": attempt_base}) or 0)


def begin_attempt(
    connection: Connection,
    new: NewJob,
    *,
    generation: int,
    runner: Runner,
    poison_after: int,
    poison_error: ErrorInfo,
    now: datetime,
) -> AttemptStart:
    """Record the start of an attempt, or say why the message must not run.

    ``generation`` is the number of retries the message carries: a message older than the
    job's latest scheduled retry is a stale duplicate. A job still marked running lost its
    worker during the previous attempt; that attempt is closed as lost, and the job is
    failed as poison once ``poison_after`` attempts of this round were lost.
    """
    claimed = connection.execute(
        _CLAIM,
        {"b_job_id": new.job_id, "b_task": new.task, "b_generation": generation, "b_now": now},
    ).one_or_none()
    if claimed is not None:
        _insert_attempt(connection, new.job_id, claimed.attempts, runner, now)
        return AttemptStart(
            Verdict.RUN,
            claimed.attempts,
            claimed.request_id,
            attempt_in_round=claimed.attempts - claimed.attempt_base,
        )
    if _adopt_running(connection, new, now):
        _insert_attempt(connection, new.job_id, 1, runner, now)
        return AttemptStart(Verdict.RUN, 1, new.request_id, attempt_in_round=1)
    return _begin_unclaimable(
        connection,
        new,
        generation=generation,
        runner=runner,
        poison_after=poison_after,
        poison_error=poison_error,
        now=now,
    )


def try_begin_attempt(
    connection: Connection, new: NewJob, *, generation: int, runner: Runner, now: datetime
) -> AttemptStart | None:
    """The common starts in one statement each (PostgreSQL); ``None`` for any other.

    A queued or retrying job is claimed, or a job met for the first time is recorded as
    running, together with its attempt row. ``None`` means neither applied: the caller
    runs :func:`begin_attempt` in a transaction, which handles every other case.
    """
    runner_values = {"r_worker": runner.worker, "r_pool": runner.pool, "r_pid": runner.pid}
    claimed = connection.execute(
        _CLAIM_AND_OPEN,
        {
            "b_job_id": new.job_id,
            "b_task": new.task,
            "b_generation": generation,
            "b_now": now,
            **runner_values,
        },
    ).one_or_none()
    if claimed is not None:
        return AttemptStart(
            Verdict.RUN,
            claimed.attempts,
            claimed.request_id,
            attempt_in_round=claimed.attempts - claimed.attempt_base,
        )
    adopted = connection.execute(
        _ADOPT_AND_OPEN,
        {
            **{f"n_{name}": value for name, value in _adopted_values(new, now).items()},
            "b_now": now,
            **runner_values,
        },
    ).one_or_none()
    if adopted is not None:
        return AttemptStart(Verdict.RUN, 1, new.request_id, attempt_in_round=1)
    return None


def _begin_unclaimable(
    connection: Connection,
    new: NewJob,
    *,
    generation: int,
    runner: Runner,
    poison_after: int,
    poison_error: ErrorInfo,
    now: datetime,
) -> AttemptStart:
    """The rare start: the job exists but is finished, stale, another task's, or orphaned."""
    state = _lock_state(connection, new.job_id)
    if state is None:
        raise LookupError(f"job {new.job_id} vanished while its message was delivered")
    if state.task != new.task:
        return AttemptStart(Verdict.DROP, state.attempts, state.request_id, "task name mismatch")
    if JobStatus(state.status).finished:
        return AttemptStart(
            Verdict.DROP, state.attempts, state.request_id, f"job is {state.status}"
        )
    if generation < state.retry_generation:
        return AttemptStart(Verdict.DROP, state.attempts, state.request_id, "stale delivery")
    if state.status == JobStatus.RUNNING.value:
        lost = _close_lost_attempts(connection, new.job_id, state.attempt_base, now)
        if lost >= poison_after:
            connection.execute(
                _POISON,
                {
                    "b_job_id": new.job_id,
                    "status": JobStatus.FAILED.value,
                    "finished_at": now,
                    "next_retry_at": None,
                    "error": poison_error.as_json(),
                    "updated_at": now,
                },
            )
            return AttemptStart(Verdict.POISON, state.attempts, state.request_id, "poison")
    attempt = state.attempts + 1
    connection.execute(_START, {"b_job_id": new.job_id, "b_attempt": attempt, "b_now": now})
    _insert_attempt(connection, new.job_id, attempt, runner, now)
    return AttemptStart(
        Verdict.RUN, attempt, state.request_id, attempt_in_round=attempt - state.attempt_base
    )


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
        one = _IN_ONE[(statement is _SCHEDULE_RETRY, outcome)]
        params = {**key, **job_params, **attempt_params, "a_outcome": outcome.value}
        return connection.execute(one, params).one_or_none()
    moved = connection.execute(statement, {**key, **job_values, "updated_at": now}).one_or_none()
    closed = outcome if moved else AttemptOutcome.CANCELLED
    connection.execute(
        _CLOSE_ATTEMPT, {**key, **attempt_values, "outcome": closed.value, "finished_at": now}
    )
    return moved


def _status_of(connection: Connection, job_id: str) -> JobStatus:
    status = connection.scalar(_STATUS, {"b_job_id": job_id})
    return JobStatus(status) if status else JobStatus.CANCELLED


def record_success(
    connection: Connection, job_id: str, attempt: int, *, result: Any, now: datetime
) -> JobStatus:
    """Close a successful attempt; the job succeeds unless it was cancelled meanwhile."""
    moved = _finish(
        connection,
        _FINISH_JOB,
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
) -> int | None:
    """Schedule another attempt after ``delay`` seconds; the new generation, or ``None``.

    ``None`` means the job was cancelled while the attempt ran, so nothing is scheduled.
    """
    moved = _finish(
        connection,
        _SCHEDULE_RETRY,
        job_id,
        attempt,
        AttemptOutcome.RETRYING,
        job_values={
            "status": JobStatus.RETRYING.value,
            "error": error.as_json(),
            "next_retry_at": now + timedelta(seconds=delay),
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
        _FINISH_JOB,
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


def _locked_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, with_for_update=True, populate_existing=True)


def _open_attempts(session: Session, job_id: str) -> list[Attempt]:
    query = select(Attempt).where(
        Attempt.job_id == job_id, Attempt.outcome == AttemptOutcome.RUNNING.value
    )
    return list(session.scalars(query))


def get_job(session: Session, job_id: str) -> Job | None:
    """The job with its attempt history, or ``None``."""
    return session.get(Job, job_id)


def cancel_job(session: Session, job_id: str, *, now: datetime) -> Job | None:
    """Cancel a job that has not finished; a finished job is returned unchanged."""
    job = _locked_job(session, job_id)
    if job is None or JobStatus(job.status).finished:
        return job
    job.status = JobStatus.CANCELLED.value
    job.finished_at = now
    job.next_retry_at = None
    return job


def replay_job(session: Session, job_id: str, *, now: datetime) -> Job | None:
    """Put a ``failed`` or ``cancelled`` job back to ``queued`` for a fresh round of attempts.

    The retry generation moves on by one, so messages left from the earlier round are
    dropped as stale: the caller publishes the replay with ``retries=job.retry_generation``.
    """
    job = _locked_job(session, job_id)
    if job is None or job.status not in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
        return job
    for attempt in _open_attempts(session, job.id):
        attempt.outcome = AttemptOutcome.LOST.value
        attempt.finished_at = now
    job.status = JobStatus.QUEUED.value
    job.retry_generation += 1
    job.attempt_base = job.attempts
    job.finished_at = None
    job.next_retry_at = None
    job.error = None
    job.result = None
    return job
