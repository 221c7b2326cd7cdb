"""Worker leases on PostgreSQL and SQLite: the reconciler puts back the jobs of dead
processes, fences their late outcomes, and leaves live ones alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import database_name
from tests.support.embedded_services import RunServices
from tests.support.postgres_databases import PostgresServer
from workers.leases import LeaseKeeper, Reconciler
from workers.ledger import attempts as ledger
from workers.ledger import queries, reconciliation
from workers.ledger.attempts import Delivery, ErrorInfo, OpenAttempt, Runner, Verdict
from workers.ledger.database import create_ledger_engine, session_scope
from workers.ledger.models import JobStatus
from workers.ledger.reconciliation import Lease, LostAttempt


@pytest.fixture(scope="module")
def lonely_ledger_url(
    postgres_server: PostgresServer, services: RunServices, worker_id: str
) -> Iterator[str]:
    """A PostgreSQL ledger of this module's own. The session's workers reconcile and relay
    the shared one: they would take these tests' dead leases' attempts, and publish and run
    the jobs put back, while a test looks at them."""
    with postgres_server.migrated_database(database_name(services, worker_id, "leases")) as url:
        yield url


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(
    request: pytest.FixtureRequest, lonely_ledger_url: str, sqlite_url: str
) -> Iterator[Engine]:
    url = lonely_ledger_url if request.param == "postgresql" else sqlite_url
    engine = create_ledger_engine(url, pool_size=2)
    yield engine
    engine.dispose()


POISON = ErrorInfo("PoisonJobError", "died three times", "e-poison")
TERM = timedelta(seconds=30)


def now() -> datetime:
    return datetime.now(UTC)


def new_lease(engine: Engine, *, at: datetime | None = None) -> Lease:
    lease = Lease(uuid.uuid4().hex[:16] + "-1", "io@test", "gevent", 1, TERM)
    with engine.begin() as connection:
        reconciliation.renew(connection, lease, at or now())
    return lease


def runner(lease: Lease | str | None) -> Runner:
    lease_id = lease.id if isinstance(lease, Lease) else lease
    return Runner(worker="io@test", pool="gevent", pid=1, lease=lease_id)


def begin(
    engine: Engine,
    job: Delivery,
    lease: Lease | str | None,
    *,
    at: datetime | None = None,
    alive: ledger.LivenessCheck | None = None,
    generation: int = 0,
) -> ledger.AttemptStart:
    with engine.begin() as connection:
        return ledger.begin_attempt(
            connection, job, generation=generation, runner=runner(lease), poison_after=3,
            poison_error=POISON, now=at or now(),
            **({"still_running": alive} if alive else {}),
        )  # fmt: skip


def new_job() -> Delivery:
    return Delivery(str(uuid.uuid4()), "diagnostics.echo", "io", {"value": 1}, 20, None)


def lost_now(engine: Engine, job_id: str, at: datetime | None = None) -> list[LostAttempt]:
    with engine.connect() as connection:
        found = reconciliation.lost_attempts(connection, at or now(), TERM, limit=10_000)
    return [lost for lost in found if lost.job_id == job_id]


def put_back(engine: Engine, lost: LostAttempt) -> str:
    with engine.begin() as connection:
        return reconciliation.put_back(
            connection, lost, now=now(), poison_after=3, poison_error=POISON.as_json()
        )


def view(sessions: sessionmaker[Session], job_id: str) -> tuple[str, int, list[str]]:
    with session_scope(sessions) as session:
        job = queries.get_job(session, job_id)
        assert job is not None
        return job.status, job.attempts, [a.outcome for a in job.history]


def test_an_expired_lease_puts_the_job_back_and_fences_the_late_outcome(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    lease = new_lease(engine, at=now() - 2 * TERM)  # renewed last a minute ago: dead
    job = new_job()
    start = begin(engine, job, lease)

    lost = lost_now(engine, job.job_id)
    assert lost == [LostAttempt(job.job_id, start.attempt)]
    assert put_back(engine, lost[0]) == "put_back"
    assert view(sessions, job.job_id) == ("retrying", 1, ["lost"])
    with engine.connect() as connection:
        row = connection.exec_driver_sql(
            "SELECT retry_generation, publish_after, published_at FROM jobs WHERE id = ?"
            if engine.dialect.name == "sqlite"
            else "SELECT retry_generation, publish_after, published_at FROM jobs WHERE id = %s",
            (job.job_id,),
        ).one()
    # a new generation, due in the outbox now, not yet published (no relay reads this ledger)
    assert row[0] == 1 and row[1] is not None and row[2] is None

    # the dead worker was only cut off: its late success must not be recorded
    with engine.begin() as connection:
        late = ledger.record_success(
            connection, job.job_id, start.attempt, result={"late": True}, now=now()
        )
    assert late is JobStatus.RETRYING
    assert view(sessions, job.job_id) == ("retrying", 1, ["lost"])
    # Redis's old copy of the message carries generation 0: stale
    with engine.begin() as connection:
        stale = ledger.begin_attempt(
            connection, job, generation=0, runner=runner(new_lease(engine)), poison_after=3,
            poison_error=POISON, now=now(),
        )  # fmt: skip
    assert (stale.verdict, stale.reason) == (Verdict.DROP, "stale delivery")
    assert lost_now(engine, job.job_id) == []


def test_a_live_lease_keeps_its_attempt_and_a_duplicate_message_is_dropped(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    lease = new_lease(engine)
    job = new_job()
    begin(engine, job, lease)

    assert lost_now(engine, job.job_id) == []

    def lease_alive(attempt: OpenAttempt) -> bool:
        assert attempt.lease == lease.id
        return attempt.lease_expires_at is not None and attempt.lease_expires_at > now()

    duplicate = begin(engine, job, new_lease(engine), alive=lease_alive)
    assert (duplicate.verdict, duplicate.reason) == (Verdict.DROP, "running on a live worker")
    assert view(sessions, job.job_id) == ("running", 1, ["running"])


def test_a_released_lease_counts_once_its_attempt_is_older_than_a_term(
    engine: Engine,
) -> None:
    lease = new_lease(engine)
    job = new_job()
    begin(engine, job, lease, at=now() - timedelta(seconds=5))
    with engine.begin() as connection:
        reconciliation.release(connection, lease.id)

    # a process whose first renewal has not landed yet looks the same for a while
    assert lost_now(engine, job.job_id) == []
    assert len(lost_now(engine, job.job_id, at=now() + TERM)) == 1


def test_an_expired_child_lease_is_lost_at_once(engine: Engine) -> None:
    lease = new_lease(engine)
    job = new_job()
    begin(engine, job, lease)
    with engine.begin() as connection:
        reconciliation.expire(connection, [lease.id], now())

    assert len(lost_now(engine, job.job_id, at=now() + timedelta(milliseconds=1))) == 1


def test_the_third_lost_attempt_fails_the_job_as_poison(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    job = new_job()
    for generation in range(3):  # each put-back is a new generation
        dead = new_lease(engine, at=now() - 2 * TERM)
        assert begin(engine, job, dead, generation=generation).verdict is Verdict.RUN
        [lost] = lost_now(engine, job.job_id)
        done = put_back(engine, lost)

    assert done == "poisoned"
    assert view(sessions, job.job_id) == ("failed", 3, ["lost", "lost", "lost"])


def test_a_renewed_lease_lives_on(engine: Engine) -> None:
    old = now() - 2 * TERM
    lease = new_lease(engine, at=old)
    job = new_job()
    begin(engine, job, lease)
    with engine.begin() as connection:
        reconciliation.renew(connection, lease, now())

    assert lost_now(engine, job.job_id) == []


def test_an_attempt_without_a_lease_is_left_to_redelivery(engine: Engine) -> None:
    job = new_job()
    begin(engine, job, None, at=now() - 10 * TERM)

    assert lost_now(engine, job.job_id) == []


def test_an_unsure_claim_is_put_back_once_nothing_here_runs_its_job(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    # a delivery killed while its claim's statement was on its way cannot tell whether the
    # ledger opened the attempt; its lease keeper looks, and puts back what it finds
    lease = new_lease(engine)
    claimed, never_claimed = new_job(), new_job()
    begin(engine, claimed, lease)
    reconciler = Reconciler(lambda: engine, TERM, poison_after=3, poison_error=POISON.as_json)
    running_here = {claimed.job_id}
    keeper = LeaseKeeper(
        lambda: engine, lease, reconciler.settle, running_here=running_here.__contains__
    )
    keeper.abandon_claim(claimed.job_id)
    keeper.abandon_claim(never_claimed.job_id)

    assert keeper.renew()
    assert view(sessions, claimed.job_id) == ("running", 1, ["running"])  # a delivery runs it

    running_here.clear()
    assert keeper.renew()
    assert view(sessions, claimed.job_id) == ("retrying", 1, ["lost"])
    assert keeper.renew()  # asked once: nothing is put back twice
    assert view(sessions, claimed.job_id) == ("retrying", 1, ["lost"])
