"""The ASGI application factory of the producer API.

FastAPI, for the OpenAPI document and ``/docs`` generated from the same pydantic models
the requests are checked with (the pages' scripts are served by the API, not a CDN); the hot
paths answer with raw ``Response`` objects.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from api_shim import errors
from api_shim.intake import location
from api_shim.metrics import ApiMetrics
from api_shim.request_context import RequestContextMiddleware
from api_shim.routes import blobs, health, jobs, schedules, stats
from api_shim.routes import catalog as catalog_routes
from api_shim.routes.docs import add_docs_pages
from api_shim.schemas import BatchIn, JobIn, ScheduleIn
from api_shim.services import open_services
from tasks.catalog import Catalog, build_catalog
from workers.settings import Settings, get_settings
from workers.structured_logging import configure_logging
from workers.version import VERSION


def create_api(settings: Settings, catalog: Catalog | None = None) -> FastAPI:
    """The API for ``settings``; connections open when the server starts the app."""
    catalog = (
        catalog if catalog is not None else build_catalog(diagnostics=bool(settings.diagnostics))
    )
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with open_services(settings, catalog, metrics) as services:
            app.state.services = services
            try:
                yield
            finally:
                await services.async_redis.aclose()

    app = FastAPI(
        title="Conveyor",
        version=VERSION,
        description="Hand Conveyor jobs; it runs them reliably and keeps their record.",
        lifespan=lifespan,
        docs_url=None,  # add_docs_pages serves both pages without a CDN
        redoc_url=None,
    )
    routers = (
        jobs.router,
        schedules.router,
        stats.router,
        blobs.router,
        catalog_routes.router,
        health.router,
    )
    for router in routers:
        app.include_router(router)
    add_docs_pages(app)
    _document_request_models(app)
    app.add_exception_handler(RequestValidationError, _refuse_invalid_parameters)
    app.add_exception_handler(HTTPException, _refuse_http)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_blob_bytes=settings.max_blob_bytes,
        metrics=metrics,
    )
    return app


def _document_request_models(app: FastAPI) -> None:
    """Put the request models into the OpenAPI components the routes refer to.

    The job and schedule routes read their bodies with the strict JSON reader instead of a
    FastAPI body parameter, so FastAPI does not list these models by itself.
    """
    build_document = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build_document()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in (JobIn, BatchIn, ScheduleIn):
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = spec
        return spec

    app.openapi = document  # type: ignore[method-assign]


async def _refuse_invalid_parameters(_request: Request, error: Exception) -> Response:
    # path and query parameters: the same 422 body as an invalid job
    assert isinstance(error, RequestValidationError)  # noqa: S101 - registered for this type
    details = [
        {
            "loc": location([p for p in item["loc"] if p not in ("query", "path")]),
            "msg": item["msg"],
        }
        for item in error.errors()
    ]
    first = details[0] if details else {"loc": "request", "msg": "invalid"}
    raise errors.validation_error(f"{first['loc']}: {first['msg']}", details)


async def _refuse_http(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)  # noqa: S101 - registered for this type
    if error.status_code == 404:
        raise errors.not_found("no such endpoint")
    if error.status_code == 405:
        # Starlette names only the first matching route's methods; a path may have several
        raise errors.method_not_allowed(_methods_for(request), str(error.detail))
    code = {400: "bad_request"}.get(error.status_code, "http_error")
    raise errors.ApiError(error.status_code, code, str(error.detail), headers=error.headers)


def _methods_for(request: Request) -> list[str]:
    # read from the OpenAPI paths: FastAPI nests included routers in private wrappers; a
    # literal path (/v1/jobs/batch) is never read as a template's parameter (a job id)
    paths: dict[str, dict[str, Any]] = request.app.openapi()["paths"]
    literal = paths.get(request.url.path)
    if literal is not None:
        return sorted(method.upper() for method in literal)
    methods: set[str] = set()
    for template, operations in paths.items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def build() -> FastAPI:
    """The API from the environment's settings (uvicorn's ``--factory`` target)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.secret_values())
    return create_api(settings)
