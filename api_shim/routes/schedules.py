"""``/v1/schedules``: a client's periodic jobs, created or replaced, read, paused, deleted.

The workers fire them (:mod:`workers.scheduler`); the API only keeps their definitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from api_shim import errors
from api_shim.dependencies import Client, Services, json_document
from api_shim.json_response import MEDIA_TYPE, json_response
from api_shim.schemas import ScheduleListOut, ScheduleOut, error_responses
from api_shim.services import ApiServices
from workers.ledger import schedules
from workers.ledger.documents import schedule_document
from workers.ledger.models import SCHEDULE_NAME_MAX_LENGTH, SCHEDULE_NAME_PATTERN

router = APIRouter(prefix="/v1", tags=["schedules"])

_ERRORS = error_responses(401, 404, 413, 415, 422, 429, 503)

ScheduleName = Annotated[
    str,
    Path(
        min_length=1,
        max_length=SCHEDULE_NAME_MAX_LENGTH,
        pattern=SCHEDULE_NAME_PATTERN,
        description="The schedule's name: letters, digits, '.', '_' and '-'",
    ),
]


def _document(connection: Connection, client_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    latest = schedules.latest_job_ids(connection, client_id, [row["name"]])
    return schedule_document(row, latest[row["name"]])


def _found(
    connection: Connection, client_id: str, name: str, row: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The document of the client's schedule ``name`` read as ``row``; 404 if there is none."""
    if row is None:
        raise _missing(name)
    return _document(connection, client_id, row)


def _missing(name: str) -> errors.ApiError:
    return errors.not_found(f"no schedule {name}")


@router.put(
    "/schedules/{name}",
    status_code=201,
    response_model=ScheduleOut,
    responses={200: {"model": ScheduleOut, "description": "replaced"}, **_ERRORS},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ScheduleIn"}}},
        }
    },
    summary="Create or replace a schedule",
)
async def put_schedule(
    name: ScheduleName, request: Request, client_id: Client, services: Services
) -> Response:
    """``201`` with the new schedule, ``200`` when it replaced one of that name.

    The task and its arguments are checked as a job's. A replacement with the same timing
    keeps its next tick.
    """
    document = await json_document(request)
    with errors.intake_refusals():
        spec = services.intake.schedule(document, name=name)

    def put() -> tuple[dict[str, Any], bool]:
        with services.engine.begin() as connection:
            row, created = schedules.put_schedule(connection, client_id, spec, datetime.now(UTC))
            return _document(connection, client_id, row), created

    schedule, created = await run_in_threadpool(put)
    if created:
        return json_response(schedule, 201, {"Location": f"/v1/schedules/{name}"})
    return json_response(schedule, 200)


@router.get(
    "/schedules", response_model=ScheduleListOut, responses=_ERRORS, summary="List schedules"
)
async def list_schedules(client_id: Client, services: Services) -> Response:
    """The calling client's schedules, by name."""

    def read() -> list[dict[str, Any]]:
        with services.engine.connect() as connection:
            rows = schedules.list_schedules(connection, client_id)
            latest = schedules.latest_job_ids(connection, client_id, [r["name"] for r in rows])
        return [schedule_document(row, latest[row["name"]]) for row in rows]

    return json_response({"items": await run_in_threadpool(read)}, 200)


@router.get(
    "/schedules/{name}", response_model=ScheduleOut, responses=_ERRORS, summary="Get a schedule"
)
async def get_schedule(name: ScheduleName, client_id: Client, services: Services) -> Response:
    """The schedule with its last and next ticks and its latest jobs' ids."""

    def read() -> dict[str, Any]:
        with services.engine.connect() as connection:
            row = schedules.get_schedule(connection, client_id, name)
            return _found(connection, client_id, name, row)

    return json_response(await run_in_threadpool(read), 200)


@router.delete(
    "/schedules/{name}",
    status_code=204,
    response_class=Response,
    responses=_ERRORS,
    summary="Delete a schedule",
)
async def delete_schedule(name: ScheduleName, client_id: Client, services: Services) -> Response:
    """``204``; the jobs it made stay."""

    def delete() -> bool:
        with services.engine.begin() as connection:
            return schedules.delete_schedule(connection, client_id, name)

    if not await run_in_threadpool(delete):
        raise _missing(name)
    return Response(status_code=204)


async def _set_paused(
    name: str, client_id: str, services: ApiServices, *, paused: bool
) -> Response:
    def write() -> dict[str, Any]:
        with services.engine.begin() as connection:
            now = datetime.now(UTC)
            row = schedules.set_paused(connection, client_id, name, paused=paused, now=now)
            return _found(connection, client_id, name, row)

    return json_response(await run_in_threadpool(write), 200)


@router.post(
    "/schedules/{name}/pause",
    response_model=ScheduleOut,
    responses=_ERRORS,
    summary="Pause a schedule",
)
async def pause_schedule(name: ScheduleName, client_id: Client, services: Services) -> Response:
    """No tick fires while the schedule is paused."""
    return await _set_paused(name, client_id, services, paused=True)


@router.post(
    "/schedules/{name}/resume",
    response_model=ScheduleOut,
    responses=_ERRORS,
    summary="Resume a schedule",
)
async def resume_schedule(name: ScheduleName, client_id: Client, services: Services) -> Response:
    """The schedule ticks next at its first tick after now; the ticks it was paused over are
    not made up."""
    return await _set_paused(name, client_id, services, paused=False)
