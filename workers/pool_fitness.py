"""Pool-fitness counters: tasks that blocked a gevent hub, and tasks run in the wrong pool.

Workers add to one Redis hash; the API's ``/metrics`` reads it at scrape time, so the
counts of every worker process appear in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import redis

FITNESS_KEY = "conveyor:pool_fitness"
_SEPARATOR = "|"


@dataclass(frozen=True)
class FitnessCount:
    """One counter: ``metric`` is ``hub_blocked``, ``hub_blocked_seconds`` or ``pool_mismatch``."""

    metric: str
    task: str
    pool: str
    value: float


def record_hub_block(client: redis.Redis, task: str, seconds: float) -> None:
    """Count one block of the gevent hub by ``task``, lasting ``seconds``."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hincrby(FITNESS_KEY, _SEPARATOR.join(("hub_blocked", task, "gevent")), 1)
        pipe.hincrbyfloat(
            FITNESS_KEY, _SEPARATOR.join(("hub_blocked_seconds", task, "gevent")), seconds
        )
        pipe.execute()


def record_pool_mismatch(client: redis.Redis, task: str, pool: str) -> None:
    """Count one run of ``task`` in a ``pool`` its kind does not want."""
    client.hincrby(FITNESS_KEY, _SEPARATOR.join(("pool_mismatch", task, pool)), 1)


def read_fitness(client: redis.Redis) -> Iterator[FitnessCount]:
    """Every counter recorded so far."""
    raw: dict[bytes, bytes] = client.hgetall(FITNESS_KEY)  # type: ignore[assignment]
    for field, value in sorted(raw.items()):
        parts = field.decode("utf-8", "replace").split(_SEPARATOR)
        if len(parts) == 3:  # metric, task, pool
            yield FitnessCount(parts[0], parts[1], parts[2], float(value))
