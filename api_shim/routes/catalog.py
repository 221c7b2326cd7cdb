"""``/v1/tasks``: the task catalog with each task's argument schema."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from api_shim.dependencies import Client, Services
from api_shim.json_response import json_response
from api_shim.schemas import ErrorEnvelope, TaskOut

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope} for code in (401, 429, 500, 503)
}
router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get(
    "/tasks", response_model=list[TaskOut], summary="List the task catalog", responses=_ERRORS
)
async def list_tasks(_client_id: Client, services: Services) -> Response:
    """Every task this deployment runs: name, queue, description and JSON Schema of args."""
    tasks = [
        {
            "name": spec.name,
            "queue": spec.queue,
            "description": spec.description,
            "args_schema": spec.args_schema(),
        }
        for spec in services.catalog.values()
    ]
    return json_response(tasks)
