"""The Dramatiq side of the peers' drain: one no-op actor on a Redis broker.

Run by ``dramatiq bench.peer_dramatiq_app`` with ``BENCH_REDIS_URL`` in its environment and
bench/ on its ``PYTHONPATH`` (as ``bench/peers.py`` starts it).
"""

from __future__ import annotations

import os

import dramatiq
from completion_counter import count_one
from dramatiq.brokers.redis import RedisBroker

# without BENCH_REDIS_URL (bench/peers.py importing the actor to build its messages) the
# broker is made but never used: RedisBroker connects on first use only
broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL"))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop() -> None:
    count_one(broker.client)
