"""Ledger transitions on PostgreSQL and SQLite: adoption, drops, lost attempts and poison."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from workers.ledger import attempts as ledger
from workers.ledger import operator_actions, queries
from workers.ledger.attempts import Delivery, ErrorInfo, Runner, Verdict
from workers.ledger.database import session_scope
from workers.ledger.models import JobStatus

RUNNER = Runner(worker="io@test", pool="gevent", pid=4242)
POISON = ErrorInfo("PoisonJobError", "died three times", "e-poison")
BOOM = ErrorInfo("TransientError", "boom", "e-1")


def now() -> datetime:
    return datetime.now(UTC)


def new_job(task: str = "diagnostics.echo") -> Delivery:
    return Delivery(str(uuid.uuid4()), task, "io", {"value": 1}, 20, None)


def begin(
    sessions: sessionmaker[Session], job: Delivery, generation: int = 0
) -> ledger.AttemptStart:
    with session_scope(sessions) as session:
        return ledger.begin_attempt(
            session.connection(), job, generation=generation, runner=RUNNER, poison_after=3,
            poison_error=POISON, now=now(),
        )  # fmt: skip


def status(sessions: sessionmaker[Session], job_id: str) -> tuple[str, int, list[str]]:
    with session_scope(sessions) as session:
        job = queries.get_job(session, job_id)
        assert job is not None
        return job.status, job.attempts, [a.outcome for a in job.history]


def test_a_first_delivery_adopts_the_job_and_success_finishes_it(
    sessions: sessionmaker[Session],
) -> None:
    job = new_job()

    start = begin(sessions, job)
    with session_scope(sessions) as session:
        final = ledger.record_success(
            session.connection(), job.job_id, start.attempt, result={"ok": 1}, now=now()
        )

    assert (start.verdict, start.attempt, start.attempt_in_round) == (Verdict.RUN, 1, 1)
    assert final is JobStatus.SUCCEEDED
    assert status(sessions, job.job_id) == ("succeeded", 1, ["succeeded"])
    assert begin(sessions, job).verdict is Verdict.DROP


def test_a_delivery_older_than_the_latest_retry_is_dropped(sessions: sessionmaker[Session]) -> None:
    job = new_job()
    start = begin(sessions, job)
    with session_scope(sessions) as session:
        generation = ledger.record_retry(
            session.connection(), job.job_id, start.attempt, error=BOOM, delay=0.5, now=now()
        )

    assert generation == 1
    assert begin(sessions, job, generation=0).verdict is Verdict.DROP
    assert begin(sessions, job, generation=1).verdict is Verdict.RUN
    assert status(sessions, job.job_id) == ("running", 2, ["retrying", "running"])


def test_open_attempts_are_lost_and_the_third_loss_is_poison(
    sessions: sessionmaker[Session],
) -> None:
    job = new_job()

    verdicts = [begin(sessions, job).verdict for _ in range(4)]

    assert verdicts == [Verdict.RUN, Verdict.RUN, Verdict.RUN, Verdict.POISON]
    job_status, attempts, outcomes = status(sessions, job.job_id)
    assert (job_status, attempts, outcomes) == ("failed", 3, ["lost", "lost", "lost"])
    with session_scope(sessions) as session:
        row = queries.get_job(session, job.job_id)
        assert row is not None and row.error == POISON.as_json()


def test_replay_gives_a_poisoned_job_a_fresh_round(sessions: sessionmaker[Session]) -> None:
    job = new_job()
    for _ in range(4):
        begin(sessions, job)

    with session_scope(sessions) as session:
        replayed = operator_actions.replay(session, job.job_id, now=now()).job
        assert (replayed.status, replayed.retry_generation) == ("queued", 1)
    leftover = begin(sessions, job, generation=0)
    start = begin(sessions, job, generation=1)

    assert leftover.verdict is Verdict.DROP
    assert (start.verdict, start.attempt, start.attempt_in_round) == (Verdict.RUN, 4, 1)


def test_a_job_cancelled_while_running_stays_cancelled(sessions: sessionmaker[Session]) -> None:
    job = new_job()
    start = begin(sessions, job)

    with session_scope(sessions) as session:
        operator_actions.cancel(session, job.job_id, now=now())
    with session_scope(sessions) as session:
        final = ledger.record_success(
            session.connection(), job.job_id, start.attempt, result=1, now=now()
        )
    with session_scope(sessions) as session:
        generation = ledger.record_retry(
            session.connection(), job.job_id, start.attempt, error=BOOM, delay=1, now=now()
        )

    assert final is JobStatus.CANCELLED and generation is None
    assert status(sessions, job.job_id) == ("cancelled", 1, ["cancelled"])
    assert begin(sessions, job).verdict is Verdict.DROP


def test_a_message_naming_another_task_is_dropped(sessions: sessionmaker[Session]) -> None:
    job = new_job()
    begin(sessions, job)

    impostor = Delivery(job.job_id, "diagnostics.spin", "cpu", {}, 20, None)

    assert begin(sessions, impostor).verdict is Verdict.DROP


def test_times_come_back_timezone_aware(sessions: sessionmaker[Session]) -> None:
    job = new_job()
    begin(sessions, job)

    with session_scope(sessions) as session:
        row = queries.get_job(session, job.job_id)
        assert row is not None and row.started_at is not None
        assert row.started_at.tzinfo is not None
        assert row.history[0].started_at.utcoffset() is not None
