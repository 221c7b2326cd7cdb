"""Probes and metrics: ``/healthz`` (alive), ``/readyz`` (dependencies answer), ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from fastapi import APIRouter
from fastapi.responses import Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from api_shim.dependencies import Services
from api_shim.json_response import json_response
from api_shim.metrics import CONTENT_TYPE
from api_shim.schemas import error_responses
from api_shim.services import ApiServices
from workers.pool_fitness import FitnessCount
from workers.relay_heartbeat import RELAY_LAST_RUN_KEY, age_of, describe_relay

logger = logging.getLogger("api_shim")
router = APIRouter(tags=["operations"])
T = TypeVar("T")

PROBE_TIMEOUT_SECONDS = 2.0


@router.get("/healthz", summary="Liveness", responses=error_responses())
async def healthz() -> Response:
    """``200`` while the process serves requests."""
    return json_response({"status": "ok"})


def _database_answers(services: ApiServices) -> None:
    with services.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


async def _check(name: str, probe: object) -> str | None:
    try:
        await asyncio.wait_for(probe, PROBE_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001 - any failure means "not ready"
        logger.warning("readiness: %s does not answer", name, extra={"reason": repr(error)})
        return f"{type(error).__name__}"
    return None


async def _relay_status(services: ApiServices) -> str:
    try:
        raw = await asyncio.wait_for(
            services.async_redis.get(RELAY_LAST_RUN_KEY), PROBE_TIMEOUT_SECONDS
        )
    except Exception as error:  # noqa: BLE001 - a probe reports, it does not fail
        return f"unknown ({type(error).__name__})"
    return describe_relay(age_of(raw))


@router.get(
    "/readyz",
    summary="Readiness",
    responses={**error_responses(), 503: {"description": "not ready"}},
)
async def readyz(services: Services) -> Response:
    """``200`` when Redis and the ledger database answer, else ``503`` naming which does not.

    ``checks.relay`` says whether the outbox relay runs; the API does not need it to take
    jobs, so it never makes the API unready.
    """
    redis_error, database_error = await asyncio.gather(
        _check("redis", services.async_redis.ping()),
        _check("database", run_in_threadpool(_database_answers, services)),
    )
    checks = {
        "redis": "ok" if redis_error is None else f"unavailable ({redis_error})",
        "database": "ok" if database_error is None else f"unavailable ({database_error})",
    }
    ready = redis_error is None and database_error is None
    if redis_error is None:
        checks["relay"] = await _relay_status(services)
    return json_response(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


def _or_empty(read: Callable[[], T], empty: Callable[[], T], what: str) -> Callable[[], T]:
    """``read``, answering ``empty()`` (with a warning) when Redis or the database does not."""

    def guarded() -> T:
        try:
            return read()
        except Exception:  # noqa: BLE001 - a scrape without these beats no scrape
            logger.warning("metrics: %s unavailable", what)
            return empty()

    return guarded


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses=error_responses()
)
async def metrics(services: Services) -> Response:
    """Prometheus text: requests, enqueued jobs, queue depths, pool fitness, refused messages,
    the ledger's jobs by status."""
    depths: Callable[[], dict[str, int]] = _or_empty(services.queue_depths, dict, "queue depths")
    fitness: Callable[[], list[FitnessCount]] = _or_empty(
        services.pool_fitness, list, "pool-fitness counters"
    )
    rejections: Callable[[], dict[str, int]] = _or_empty(
        services.rejected_messages, dict, "rejected-message counters"
    )
    ledger_jobs: Callable[[], dict[str, int]] = _or_empty(
        lambda: services.status_counts.read(None), dict, "ledger counts"
    )
    body = await run_in_threadpool(
        services.metrics.scrape, depths, fitness, rejections, ledger_jobs
    )
    return Response(body, media_type=CONTENT_TYPE)
