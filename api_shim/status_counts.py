"""Job counts by status, per client and for the whole ledger, cached for a second so
dashboards and scrapes can poll cheaply."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine

from workers.ledger import queries
from workers.ledger.models import JobStatus

# a dashboard polling every second per client costs at most one grouped count per client
# and API process each second
COUNTS_TTL_SECONDS = 1.0


class StatusCounts:
    """Reads a client's counts, reusing an answer younger than the TTL."""

    def __init__(
        self,
        engine: Engine,
        *,
        ttl: float = COUNTS_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def read(self, client_id: str | None) -> dict[str, int]:
        """Every status with the client's count, or the whole ledger's with ``None``
        (blocking: call from a worker thread)."""
        key = "" if client_id is None else f"client:{client_id}"
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached and now - cached[0] < self._ttl:
            return cached[1]
        with self._engine.connect() as connection:
            found = queries.count_by_status(connection, client_id)
        counts = {status.value: found.get(status.value, 0) for status in JobStatus}
        with self._lock:
            self._cache[key] = (now, counts)
        return counts
