"""Retries wait in the ledger, not in a worker: a 1,000 s Retry-After is kept whole, however
short the visibility timeout, and the relay publishes a retry when it is due."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import create_engine, text

from tests.support.ledger_reads import LedgerReader
from tests.support.polling import wait_for
from tests.support.workers import running_worker
from workers.broker import depth_keys

VISIBILITY_TIMEOUT = 600
RETRY_AFTER = 1000.0


def _schedule(database: str, job_id: str) -> dict[str, Any] | None:
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            row = (
                connection.execute(
                    text(
                        "SELECT status, next_retry_at, publish_after, updated_at FROM jobs"
                        " WHERE id = :id"
                    ),
                    {"id": job_id},
                )
                .mappings()
                .one_or_none()
            )
    finally:
        engine.dispose()
    return dict(row) if row is not None else None


def test_a_long_retry_after_is_scheduled_whole_in_the_ledger_and_held_by_no_worker(
    chaos_env: dict[str, str], chaos_client: Celery, chaos_ledger: LedgerReader, tmp_path: Path
) -> None:
    chaos_redis, chaos_database = (
        chaos_env["CONVEYOR_REDIS_URL"],
        chaos_env["CONVEYOR_DATABASE_URL"],
    )
    env = {
        **chaos_env,
        "CONVEYOR_RETRY_SCALE": "1",
        "CONVEYOR_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    }
    with running_worker(chaos_client, "io", "io-retries@test", tmp_path / "io.log", env) as io:
        later = chaos_client.send_task(
            "diagnostics.fail",
            kwargs={"error": "rate_limited", "times": 1, "retry_after": RETRY_AFTER},
            queue="io",
        )
        soon = chaos_client.send_task(
            "diagnostics.fail",
            kwargs={"error": "rate_limited", "times": 1, "retry_after": 2.0},
            queue="io",
        )

        def retrying(job_id: str) -> dict[str, Any] | None:
            row = _schedule(chaos_database, job_id)
            return row if row is not None and row["status"] == "retrying" else None

        scheduled = wait_for(lambda: retrying(later.id), timeout=60, what="the retry")
        done = chaos_ledger.wait_finished(soon.id, timeout=60)
        broker = redis.Redis.from_url(chaos_redis)
        waiting = sum(broker.llen(key) for _queue, key in depth_keys())
        held = broker.hlen("unacked")
        log = io.log()

    ahead = (scheduled["next_retry_at"] - scheduled["updated_at"]).total_seconds()
    print(f"\na Retry-After of {RETRY_AFTER:g} s is scheduled {ahead:.0f} s ahead "
          f"(visibility timeout {VISIBILITY_TIMEOUT} s)")  # fmt: skip
    assert RETRY_AFTER <= ahead <= RETRY_AFTER * 1.1 + 1  # the hint, with up to 10 % jitter
    assert isinstance(scheduled["publish_after"], datetime)
    assert scheduled["publish_after"] == scheduled["next_retry_at"]  # in the outbox until due
    assert (waiting, held) == (0, 0)  # no message waits in Redis or in a worker
    assert "clamped" not in log
    # the short one went through the ledger too, and the relay published it when due
    assert (done.status, done.attempts, done.outcomes) == (
        "succeeded",
        2,
        ["retrying", "succeeded"],
    )
