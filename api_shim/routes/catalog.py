"""``/v1/tasks``: the task catalog with each task's argument schema."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api_shim.dependencies import Client, Services
from api_shim.json_response import json_response
from api_shim.schemas import TaskOut, error_responses

_ERRORS = error_responses(401, 429, 503)
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
