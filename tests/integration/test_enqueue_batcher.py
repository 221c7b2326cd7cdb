"""The API's writer thread through a ledger outage: every request of a round gets the error,
and the thread goes on recording once the database is back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from api_shim.batching import LEDGER_OUTAGE, EnqueueBatcher
from api_shim.intake import JobIntake
from tasks.catalog import build_catalog
from tests.support.fault_proxy import FaultProxy, fault_proxy
from workers.broker import Publisher
from workers.enqueue import Accepted, Enqueuer
from workers.ledger.database import create_ledger_engine

INTAKE = JobIntake(build_catalog(diagnostics=True))


@pytest.fixture
def cuttable_ledger(postgres_url: str) -> Iterator[tuple[Engine, FaultProxy]]:
    """An engine on the test ledger through a proxy the test can cut."""
    url = make_url(postgres_url)
    with fault_proxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        engine = create_ledger_engine(through, pool_size=2, connect_timeout=2)
        yield engine, proxy
        engine.dispose()


async def submit_many(batcher: EnqueueBatcher, count: int) -> list[object]:
    """``count`` single-job requests at once, as concurrent API requests send them."""
    submissions = [
        INTAKE.single(
            {"task": "diagnostics.echo", "args": {"value": n}},
            client_id="alice",
            request_id=uuid.uuid4().hex,
        )
        for n in range(count)
    ]
    return await asyncio.gather(
        *(batcher.submit(submission) for submission in submissions), return_exceptions=True
    )


def test_a_round_refused_by_a_ledger_outage_answers_every_request_and_the_writer_goes_on(
    cuttable_ledger: tuple[Engine, FaultProxy], redis_url: str
) -> None:
    engine, proxy = cuttable_ledger
    client = redis.Redis.from_url(redis_url)
    try:
        with EnqueueBatcher(Enqueuer(engine, Publisher(client))) as batcher:
            assert all(isinstance(o, Accepted) for o in asyncio.run(submit_many(batcher, 3)))

            proxy.cut()
            during = asyncio.run(asyncio.wait_for(submit_many(batcher, 20), timeout=60))
            assert all(isinstance(outcome, LEDGER_OUTAGE) for outcome in during), during

            proxy.heal()
            after = asyncio.run(asyncio.wait_for(submit_many(batcher, 5), timeout=60))
            assert all(isinstance(outcome, Accepted) for outcome in after), after
    finally:
        client.close()
