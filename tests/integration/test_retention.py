"""Retention on PostgreSQL and SQLite: finished jobs past their time go with their attempts,
the rest stay; blobs no job names go once old; a real worker prunes on its own."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from sqlalchemy import Engine, func, insert, select

from tests.integration.conftest import plain_client
from tests.support.polling import wait_for
from tests.support.redis_server import private_redis
from tests.support.workers import running_worker, worker_environment
from workers.blob_store import BlobStore
from workers.ledger.database import create_ledger_engine
from workers.ledger.models import ATTEMPTS, JOBS
from workers.retention import BATCH, Retention
from workers.retention_turns import TURN, RetentionTurns
from workers.settings import RetentionPeriods

HOUR = timedelta(hours=1)
# shorter than the defaults, so the session's own workers (14 d / 30 d) never race the test
PERIODS = RetentionPeriods(finished=HOUR, failed=2 * HOUR, blobs=HOUR)


def now() -> datetime:
    return datetime.now(UTC)


def add_job(
    engine: Engine,
    status: str,
    finished_ago: timedelta | None,
    *,
    args: dict[str, object] | None = None,
    result: object = None,
) -> str:
    """A job in ``status`` that finished ``finished_ago`` (None: not finished), with two
    attempts."""
    job_id = uuid.uuid4().hex
    finished = None if finished_ago is None else now() - finished_ago
    with engine.begin() as connection:
        connection.execute(
            insert(JOBS).values(
                id=job_id, task="diagnostics.echo", queue="io", status=status,
                args=args or {"value": 1}, result=result, max_attempts=3,
                finished_at=finished,
            )
        )  # fmt: skip
        for number in (1, 2):
            connection.execute(
                insert(ATTEMPTS).values(
                    job_id=job_id, number=number, worker="io@test", pool="gevent", pid=1,
                    outcome="running" if finished is None and number == 2 else "failed",
                )
            )  # fmt: skip
    return job_id


def remaining(engine: Engine, ids: list[str]) -> tuple[set[str], int]:
    """Which of ``ids`` the ledger still holds, and how many attempts they have."""
    with engine.connect() as connection:
        jobs = set(connection.execute(select(JOBS.c.id).where(JOBS.c.id.in_(ids))).scalars())
        attempts = connection.execute(
            select(func.count()).select_from(ATTEMPTS).where(ATTEMPTS.c.job_id.in_(ids))
        ).scalar_one()
    return jobs, int(attempts)


def retention_on(
    engine: Engine, redis_url: str, blobs: BlobStore, clock: Callable[[], datetime] = now
) -> Retention:
    """Retention whose every step has a turn (turns of 1 ms, never lengthened), so that the
    steps below each do their work."""
    client = redis.Redis.from_url(redis_url)
    turns = RetentionTurns(lambda: client, turn=timedelta(milliseconds=1), duty=1.0)
    return Retention(lambda: engine, lambda: client, blobs, PERIODS, turns=turns, clock=clock)


def settle(retention: Retention, steps: int = 50) -> None:
    for _ in range(steps):
        retention.step()


def test_finished_jobs_past_their_retention_go_with_their_attempts(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    expired = [
        add_job(engine, "succeeded", 90 * timedelta(minutes=1)),
        add_job(engine, "cancelled", 2 * HOUR),
        add_job(engine, "failed", 3 * HOUR),
    ]
    kept = {
        add_job(engine, "succeeded", timedelta(minutes=30)),  # finished recently
        add_job(engine, "failed", 90 * timedelta(minutes=1)),  # dead letters are kept longer
        add_job(engine, "running", None),
        add_job(engine, "queued", None),
        add_job(engine, "retrying", None),
    }

    retention = retention_on(engine, redis_url, BlobStore(tmp_path / "blobs"))
    settle(retention)

    jobs, attempts = remaining(engine, [*expired, *kept])
    assert jobs == kept
    assert attempts == 2 * len(kept)
    assert retention.pruned.jobs >= len(expired)


def test_a_large_backlog_goes_in_batches(engine: Engine, redis_url: str, tmp_path: Path) -> None:
    ids = [add_job(engine, "succeeded", 2 * HOUR) for _ in range(BATCH + 200)]
    retention = retention_on(engine, redis_url, BlobStore(tmp_path / "blobs"))

    retention.step()
    assert len(remaining(engine, ids)[0]) == 200  # one batch per step

    settle(retention, steps=3)
    assert remaining(engine, ids) == (set(), 0)


def test_workers_take_turns_at_deleting_so_more_workers_delete_no_faster(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    ids = [add_job(engine, "succeeded", 2 * HOUR) for _ in range(2 * BATCH)]
    client = redis.Redis.from_url(redis_url)
    blobs = BlobStore(tmp_path / "blobs")
    shared_turns = [RetentionTurns(lambda: client) for _ in range(3)]  # one per process
    workers = [
        Retention(lambda: engine, lambda: client, blobs, PERIODS, turns=turns)
        for turns in shared_turns
    ]

    first_batch = time.monotonic()
    for retention in workers:
        retention.step()
    assert len(remaining(engine, ids)[0]) == BATCH  # one batch among the three

    def next_batch_went() -> bool:
        for retention in workers:
            retention.step()
        return not remaining(engine, ids)[0]

    wait_for(next_batch_went, timeout=30, interval=0.01, what="the second batch")
    assert time.monotonic() - first_batch >= TURN.total_seconds()
    assert sum(retention.pruned.jobs for retention in workers) == 2 * BATCH


def test_a_slow_batch_lengthens_the_turn_to_keep_deleting_to_its_share(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"test:turn:{uuid.uuid4().hex}"
    mine, theirs = (RetentionTurns(lambda: client, key=key, duty=0.1) for _ in range(2))

    assert mine.take()
    mine.spent(0.005)  # a quick batch: the turn stays as it was
    assert 0 < client.pttl(key) <= TURN.total_seconds() * 1000

    mine.spent(0.1)  # a batch of 100 ms may fill a tenth: 900 ms more
    assert 800 < client.pttl(key) <= 900
    assert not theirs.take()


def test_old_blobs_no_job_names_are_deleted_and_the_rest_stay(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    blobs = BlobStore(tmp_path / "blobs")

    def stored(content: bytes, age: timedelta) -> str:
        blob = blobs.store([content], max_bytes=1 << 20)
        written = (now() - age).timestamp()
        os.utime(blob.path, (written, written))
        return blob.blob

    old_in_args = stored(b"named by arguments", 2 * HOUR)
    old_in_result = stored(b"named by a result", 2 * HOUR)
    old_unnamed = stored(b"named by nothing", 2 * HOUR)
    new_unnamed = stored(b"uploaded a minute ago", timedelta(minutes=1))
    add_job(engine, "queued", None, args={"blob": old_in_args, "algorithms": ["sha256"]})
    add_job(
        engine, "succeeded", timedelta(minutes=5), result={"thumbnails": [{"blob": old_in_result}]}
    )

    retention = retention_on(engine, redis_url, blobs)
    settle(retention)

    everything = (old_in_args, old_in_result, old_unnamed, new_unnamed)
    assert {b for b in everything if blobs.exists(b)} == {old_in_args, old_in_result, new_unnamed}
    assert retention.pruned.blobs == 1


def test_an_old_blob_uploaded_again_during_the_sweep_stays(
    engine: Engine, redis_url: str, tmp_path: Path
) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    blob = blobs.store([b"uploaded twice"], max_bytes=1 << 20)
    written = (now() - 2 * HOUR).timestamp()
    os.utime(blob.path, (written, written))
    retention = retention_on(engine, redis_url, blobs)
    retention.step()  # the sweep has listed the blob as a candidate

    blobs.store([b"uploaded twice"], max_bytes=1 << 20)  # the same content again, now
    settle(retention)

    assert blobs.exists(blob.blob)


def test_a_worker_prunes_its_ledger_by_itself(tmp_path: Path, sqlite_url: str) -> None:
    with private_redis(tmp_path) as broker:
        env = worker_environment(
            env="test", redis_url=broker.url, database_url=sqlite_url, io_concurrency="4",
            storage_dir=str(tmp_path / "blobs"), job_retention="2s",
        )  # fmt: skip
        client = plain_client(broker.url)
        engine = create_ledger_engine(sqlite_url, pool_size=1)
        try:
            with running_worker(client, "io", "io-retention@test", tmp_path / "io.log", env):
                sent = [
                    client.send_task("diagnostics.echo", kwargs={"value": v}, queue="io")
                    for v in range(5)
                ]
                for result in sent:  # each ran, and so has its row in the ledger
                    result.get(timeout=60)
                job_ids = [result.id for result in sent]
                wait_for(
                    lambda: remaining(engine, job_ids) == (set(), 0),
                    timeout=60, interval=0.5, what="the worker to prune its finished jobs",
                )  # fmt: skip
                assert "retention deleted" in log_of(tmp_path)
        finally:
            engine.dispose()
            client.close()


def log_of(directory: Path) -> str:
    return (directory / "io.log").read_text(errors="replace")
