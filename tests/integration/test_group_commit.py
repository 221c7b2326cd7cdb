"""Group commit on PostgreSQL: many concurrent claims and successes in few rounds, each with
the one-at-a-time path's rules, and a flusher that survives a ledger outage."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.support.fault_proxy import FaultProxy, fault_proxy
from workers.enqueue import JobRequest
from workers.ledger import outbox
from workers.ledger.attempts import Delivery, Runner, Verdict
from workers.ledger.database import create_ledger_engine, create_session_factory, session_scope
from workers.ledger.group_commit import GroupCommit
from workers.ledger.operator_actions import cancel

RUNNER = Runner(worker="io@group", pool="gevent", pid=4343, lease=None)


@pytest.fixture
def ledger_engine(quiet_ledger_url: str) -> Iterator[Engine]:
    """A ledger no worker of the session reads: its queued jobs wait for these tests alone
    (the session's workers relay and claim the jobs of the shared test ledger)."""
    engine = create_ledger_engine(quiet_ledger_url, pool_size=4, pre_ping=False)
    yield engine
    engine.dispose()


def autocommit(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def queued_jobs(engine: Engine, count: int) -> list[Delivery]:
    """``count`` jobs recorded as the producer records them: queued."""
    now = datetime.now(UTC)
    requests = [
        JobRequest(
            job_id=str(uuid.uuid4()),
            client_id="group",
            task="diagnostics.echo",
            queue="io",
            args={"value": n},
            priority="normal",
            max_attempts=5,
            fingerprint=str(n),
        )
        for n in range(count)
    ]
    with engine.begin() as connection:
        outbox.insert_new_jobs(connection, [r.row(now, now) for r in requests])
    return [Delivery(r.job_id, r.task, r.queue, r.args, r.max_attempts, None) for r in requests]


def job_state(engine: Engine, job_id: str) -> tuple[str, int, list[str]]:
    with engine.connect() as connection:
        status, attempts = connection.execute(
            text("SELECT status, attempts FROM jobs WHERE id = :id"), {"id": job_id}
        ).one()
        outcomes = connection.scalars(
            text("SELECT outcome FROM job_attempts WHERE job_id = :id ORDER BY number"),
            {"id": job_id},
        ).all()
    return str(status), int(attempts), [str(o) for o in outcomes]


def in_threads(count: int, work: object) -> None:
    assert callable(work)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()


def test_concurrent_claims_and_successes_share_rounds(ledger_engine: Engine) -> None:
    group = GroupCommit(lambda: autocommit(ledger_engine))
    jobs = queued_jobs(ledger_engine, 60)
    starts: dict[str, object] = {}
    moved: dict[str, bool] = {}

    def run(n: int) -> None:
        job = jobs[n]
        start = group.claim(job, generation=0, runner=RUNNER)
        starts[job.job_id] = start
        assert start is not None
        moved[job.job_id] = group.succeed(job.job_id, start.attempt, {"n": n})

    in_threads(len(jobs), run)

    assert all(moved.values()) and len(moved) == len(jobs)
    assert group.transitions == 2 * len(jobs)
    assert group.flushes < group.transitions  # several transitions rode each round
    for job in jobs:
        assert job_state(ledger_engine, job.job_id) == ("succeeded", 1, ["succeeded"])
    with ledger_engine.connect() as connection:
        result = connection.scalar(
            text("SELECT result FROM jobs WHERE id = :id"), {"id": jobs[7].job_id}
        )
    assert result == {"n": 7}


def test_a_round_claims_only_what_the_one_at_a_time_path_would(ledger_engine: Engine) -> None:
    group = GroupCommit(lambda: autocommit(ledger_engine))
    running, wrong_task, stale, twice = queued_jobs(ledger_engine, 4)
    unknown = Delivery(str(uuid.uuid4()), "diagnostics.echo", "io", {"value": 3}, 7, None)
    assert group.claim(running, generation=0, runner=RUNNER) is not None
    with ledger_engine.begin() as connection:
        connection.execute(
            text("UPDATE jobs SET retry_generation = 2, status = 'retrying' WHERE id = :id"),
            {"id": stale.job_id},
        )
    answers: dict[str, object] = {}
    deliveries = [
        ("running", running, 0),
        ("wrong task", Delivery(wrong_task.job_id, "diagnostics.spin", "cpu", {}, 5, None), 0),
        ("stale", stale, 1),
        ("unknown-1", unknown, 0),
        ("unknown-2", unknown, 0),
        ("twice-1", twice, 0),
        ("twice-2", twice, 0),
    ]

    def claim(n: int) -> None:
        label, delivery, generation = deliveries[n]
        answers[label] = group.claim(delivery, generation=generation, runner=RUNNER)

    in_threads(len(deliveries), claim)

    assert answers["running"] is None  # the slow path decides: a duplicate, or a lost attempt
    assert answers["wrong task"] is None
    assert answers["stale"] is None
    for job, labels in ((twice, ("twice-1", "twice-2")), (unknown, ("unknown-1", "unknown-2"))):
        # one delivery of the round starts the job (a plain send_task's job is adopted); the
        # other is left to the slow path, which finds it running on a live worker
        started = [answers[label] for label in labels if answers[label] is not None]
        assert len(started) == 1
        assert getattr(started[0], "verdict", None) is Verdict.RUN
        assert getattr(started[0], "attempt", None) == 1
        assert job_state(ledger_engine, job.job_id) == ("running", 1, ["running"])
    with ledger_engine.connect() as connection:
        adopted = connection.execute(
            text("SELECT task, queue, args, max_attempts, client_id FROM jobs WHERE id = :id"),
            {"id": unknown.job_id},
        ).one()
    assert tuple(adopted) == ("diagnostics.echo", "io", {"value": 3}, 7, None)
    assert job_state(ledger_engine, stale.job_id)[0] == "retrying"


def test_a_success_is_fenced_as_the_one_at_a_time_path_fences_it(ledger_engine: Engine) -> None:
    group = GroupCommit(lambda: autocommit(ledger_engine))
    cancelled, lost = queued_jobs(ledger_engine, 2)
    for job in (cancelled, lost):
        assert group.claim(job, generation=0, runner=RUNNER) is not None
    with session_scope(create_session_factory(ledger_engine)) as session:
        cancel(session, cancelled.job_id, now=datetime.now(UTC))
    with ledger_engine.begin() as connection:
        # what the reconciler does to the attempt of a worker it found dead
        connection.execute(
            text("UPDATE job_attempts SET outcome = 'lost' WHERE job_id = :id"),
            {"id": lost.job_id},
        )
        connection.execute(
            text("UPDATE jobs SET status = 'queued' WHERE id = :id"), {"id": lost.job_id}
        )

    assert group.succeed(cancelled.job_id, 1, {"late": True}) is False
    assert group.succeed(lost.job_id, 1, {"late": True}) is False

    assert job_state(ledger_engine, cancelled.job_id) == ("cancelled", 1, ["cancelled"])
    assert job_state(ledger_engine, lost.job_id) == ("queued", 1, ["lost"])


@pytest.fixture
def cuttable_ledger(quiet_ledger_url: str) -> Iterator[tuple[Engine, FaultProxy]]:
    url = make_url(quiet_ledger_url)
    with fault_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        engine = create_ledger_engine(through, pool_size=2, connect_timeout=2, pre_ping=False)
        yield engine, proxy
        engine.dispose()


def test_an_outage_fails_every_waiter_of_the_round_and_the_flusher_goes_on(
    cuttable_ledger: tuple[Engine, FaultProxy], ledger_engine: Engine
) -> None:
    engine, proxy = cuttable_ledger
    group = GroupCommit(lambda: autocommit(engine))
    before, during, after = (queued_jobs(ledger_engine, 10) for _ in range(3))
    assert all(group.claim(job, generation=0, runner=RUNNER) for job in before[:1])

    proxy.cut()
    errors: list[BaseException] = []

    def claim_during(n: int) -> None:
        try:
            group.claim(during[n], generation=0, runner=RUNNER)
        except OperationalError as error:
            errors.append(error)

    in_threads(len(during), claim_during)
    assert len(errors) == len(during)

    proxy.heal()

    def claim_after(n: int) -> None:
        # the first statement after the cut may meet a connection the cut broke
        for _ in range(3):
            try:
                start = group.claim(after[n], generation=0, runner=RUNNER)
            except OperationalError:
                continue
            assert start is not None
            return
        raise AssertionError("the flusher did not recover")

    in_threads(len(after), claim_after)
    for job in during:
        assert job_state(ledger_engine, job.job_id) == ("queued", 0, [])
