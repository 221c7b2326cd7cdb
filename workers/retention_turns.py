"""Turns at deleting: retention batches one at a time across every process that shares the
broker's Redis, at a pace that does not grow with the number of workers.

A process deletes a batch only while it holds the turn: ``SET NX PX`` on one key, whose expiry
is the turn's length. So twenty workers prune no faster than one, and a backlog of old jobs is
deleted at a fixed ceiling (:data:`TURN`) instead of twenty times it. A batch that took long, a
sign of a busy database, lengthens its turn so that deleting fills at most :data:`DUTY` of the
time: pruning yields to the jobs when the database has less to spare.

If Redis loses the key (a restart, a flush), two processes may delete at once for one turn;
each batch locks its rows with ``SKIP LOCKED``, so that costs pace, never correctness.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import redis

#: The shortest turn: at most one batch this often, across every process on one Redis.
TURN = timedelta(seconds=0.25)
#: The largest share of the time that deleting may fill, measured by the batches themselves.
DUTY = 0.1
#: The key whose owner holds the turn.
TURN_KEY = "conveyor:retention:turn"


class RetentionTurns:
    """Takes and lengthens the retention turn of one process."""

    def __init__(
        self,
        redis_client: Callable[[], redis.Redis],
        *,
        key: str = TURN_KEY,
        turn: timedelta = TURN,
        duty: float = DUTY,
    ) -> None:
        if turn <= timedelta(0) or not 0 < duty <= 1:
            raise ValueError("a turn lasts a positive time and deleting fills part of it")
        self._redis = redis_client
        self._key = key
        self._turn_ms = max(1, round(turn.total_seconds() * 1000))
        self._duty = duty
        self._owner = uuid.uuid4().hex

    def take(self) -> bool:
        """Whether this process may delete a batch now; if so, no other may for a turn."""
        return bool(self._redis().set(self._key, self._owner, nx=True, px=self._turn_ms))

    def spent(self, seconds: float) -> None:
        """The batch of this turn took ``seconds``: hold the turn long enough after it that
        deleting filled at most the duty share of the time (no call when the turn already
        covers that)."""
        rest_ms = round(seconds * (1 / self._duty - 1) * 1000)
        if rest_ms > max(0, self._turn_ms - round(seconds * 1000)):
            self._redis().set(self._key, self._owner, px=rest_ms)
