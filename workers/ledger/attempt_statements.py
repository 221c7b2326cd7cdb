"""The ledger's attempt statements, built once: a job claimed, started, finished or poisoned.

Two forms: portable statements (SQLite, and PostgreSQL's rare paths) run a few to a
transaction; on PostgreSQL each common transition is also one statement, whose
data-modifying CTEs update the job and its attempt row atomically in autocommit, so a
worker's bookkeeping is two round trips per job instead of nine.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
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

from workers.ledger.models import (
    ATTEMPTS,
    JOBS,
    LEASES,
    AttemptOutcome,
    JobStatus,
    UTCDateTime,
)

#: The error recorded on an attempt whose worker died.
WORKER_LOST = "WorkerLostError"

LOCK_STATE = (
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
START = (
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
CLAIM = (
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
POISON = JOBS.update().where(JOBS.c.id == bindparam("b_job_id"))
CLOSE_LOST = ATTEMPTS.update().where(
    ATTEMPTS.c.job_id == bindparam("b_job_id"),
    ATTEMPTS.c.outcome == AttemptOutcome.RUNNING.value,
)
# the open attempt of a job, with the expiry of the lease it runs under (NULL: no lease row)
OPEN_ATTEMPT = (
    select(ATTEMPTS.c.lease, ATTEMPTS.c.pid, LEASES.c.expires_at)
    .select_from(ATTEMPTS.outerjoin(LEASES, LEASES.c.id == ATTEMPTS.c.lease))
    .where(
        ATTEMPTS.c.job_id == bindparam("b_job_id"),
        ATTEMPTS.c.number == bindparam("b_attempt"),
        ATTEMPTS.c.outcome == AttemptOutcome.RUNNING.value,
    )
)
COUNT_LOST = select(func.count()).where(
    ATTEMPTS.c.job_id == bindparam("b_job_id"),
    ATTEMPTS.c.outcome == AttemptOutcome.LOST.value,
    ATTEMPTS.c.number > bindparam("b_base"),
)
FINISH_JOB = (
    JOBS.update()
    .where(
        JOBS.c.id == bindparam("b_job_id"),
        JOBS.c.status == JobStatus.RUNNING.value,
        JOBS.c.attempts == bindparam("b_attempt"),
    )
    .returning(JOBS.c.retry_generation, JOBS.c.status)
)
SCHEDULE_RETRY = FINISH_JOB.values(retry_generation=JOBS.c.retry_generation + 1)
# fenced: an attempt already closed (lost, by the reconciler) keeps its outcome
CLOSE_ATTEMPT = ATTEMPTS.update().where(
    ATTEMPTS.c.job_id == bindparam("b_job_id"),
    ATTEMPTS.c.number == bindparam("b_attempt"),
    ATTEMPTS.c.outcome == AttemptOutcome.RUNNING.value,
)
STATUS = select(JOBS.c.status).where(JOBS.c.id == bindparam("b_job_id"))

# --- PostgreSQL: each common transition in one statement ---------------------------------

_ATTEMPT_COLUMNS = [
    "job_id", "number", "worker", "pool", "pid", "lease", "outcome", "started_at",
]  # fmt: skip


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
                bindparam("r_lease", type_=ATTEMPTS.c.lease.type),
                literal(AttemptOutcome.RUNNING.value),
                bindparam("b_now", type_=UTCDateTime()),
            ),
        )
        .cte("opened")
    )


_claimed = CLAIM.cte("claimed")
CLAIM_AND_OPEN = select(
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
ADOPT_AND_OPEN = select(_adopted.c.id).add_cte(_opening(_adopted, literal(1)))


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
            ATTEMPTS.c.outcome == AttemptOutcome.RUNNING.value,
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
_FINISH_IN_ONE = _finish_in_one(FINISH_JOB, _JOB_DONE_KEYS, ("error", "finished_at"))
_RETRY_IN_ONE = _finish_in_one(
    SCHEDULE_RETRY,
    ("status", "error", "next_retry_at", "publish_after", "updated_at"),
    ("error", "finished_at", "retry_delay_seconds"),
)
_FAIL_IN_ONE = _finish_in_one(
    FINISH_JOB,
    ("status", "error", "finished_at", "next_retry_at", "updated_at"),
    ("error", "finished_at"),
)
#: (schedules a retry, outcome) -> the one statement for that transition (PostgreSQL)
ONE_STATEMENT_FINISH = {
    (False, AttemptOutcome.SUCCEEDED): _FINISH_IN_ONE,
    (True, AttemptOutcome.RETRYING): _RETRY_IN_ONE,
    (False, AttemptOutcome.FAILED): _FAIL_IN_ONE,
}
LOST_ERROR = {
    "type": WORKER_LOST,
    "message": "the worker process died or was killed during this attempt",
    "error_id": None,
}
