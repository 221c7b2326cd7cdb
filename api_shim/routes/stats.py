"""``/v1/stats``: the calling client's jobs by status and the depth of every queue."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api_shim.dependencies import Client, Services
from api_shim.json_response import json_response
from api_shim.schemas import StatsOut, error_responses
from workers.broker import depth_keys, sum_depths
from workers.relay_heartbeat import RELAY_LAST_RUN_KEY, age_of, describe_relay

_ERRORS = error_responses(401, 429, 503)
router = APIRouter(prefix="/v1", tags=["operations"])


@router.get(
    "/stats",
    response_model=StatsOut,
    summary="Job counts, queue depths and the outbox relay",
    responses=_ERRORS,
)
async def stats(client_id: Client, services: Services) -> Response:
    """The client's jobs by status and the messages waiting in each queue."""
    counts = await run_in_threadpool(services.status_counts.read, client_id)
    async with services.async_redis.pipeline(transaction=False) as pipe:
        for _queue, key in depth_keys():
            pipe.llen(key)
        pipe.get(RELAY_LAST_RUN_KEY)
        *lengths, last_relay = await pipe.execute()
    age = age_of(last_relay)
    relay = {
        "status": describe_relay(age),
        "seconds_since_last_run": None if age is None else round(age, 1),
    }
    return json_response({"jobs": counts, "queues": sum_depths(lengths), "relay": relay})
