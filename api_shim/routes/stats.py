"""``/v1/stats``: the calling client's jobs by status and the depth of every queue."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api_shim.dependencies import Client, Services
from api_shim.rendering import dumps
from api_shim.schemas import StatsOut
from api_shim.services import ApiServices
from workers.broker import depth_keys, sum_depths
from workers.ledger import queries
from workers.ledger.models import JobStatus

router = APIRouter(prefix="/v1", tags=["operations"])

# counts are reused for this long, so a dashboard polling every second per client costs at
# most one grouped count per client and process each second
COUNTS_TTL_SECONDS = 1.0


class StatusCounts:
    """A short-lived cache of per-client status counts."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, dict[str, int]]] = {}

    def read(self, services: ApiServices, client_id: str) -> dict[str, int]:
        """The client's counts, from the cache when fresh (blocking)."""
        now = time.monotonic()
        cached = self._cache.get(client_id)
        if cached and now - cached[0] < COUNTS_TTL_SECONDS:
            return cached[1]
        with services.engine.connect() as connection:
            found = queries.count_by_status(connection, client_id)
        counts = {status.value: found.get(status.value, 0) for status in JobStatus}
        self._cache[client_id] = (now, counts)
        return counts


_counts = StatusCounts()


@router.get("/stats", response_model=StatsOut, summary="Job counts and queue depths")
async def stats(client_id: Client, services: Services) -> Response:
    """The client's jobs by status and the messages waiting in each queue."""
    counts = await run_in_threadpool(_counts.read, services, client_id)
    async with services.async_redis.pipeline(transaction=False) as pipe:
        for _queue, key in depth_keys():
            pipe.llen(key)
        lengths = await pipe.execute()
    return Response(
        dumps({"jobs": counts, "queues": sum_depths(lengths)}), media_type="application/json"
    )
