"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with their scripts served by the API itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and stay blank without internet
access; these load the copies the ``fastapi-offline`` package installs, from ``/docs/assets``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"
# swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png
_ASSETS = ("fastapi_offline", "static")
# Swagger UI would otherwise send the document's address to its public online validator
_SWAGGER_UI_PARAMETERS = {"validatorUrl": None}


def add_docs_pages(app: FastAPI) -> None:
    """Serve ``app``'s OpenAPI document as ``/docs`` and ``/redoc``; no request leaves the host.

    A function, not a router: an included router drops its mounts on older FastAPI versions.
    """
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_PATH, StaticFiles(packages=[_ASSETS]), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=_SWAGGER_UI_PARAMETERS,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root_path(request)
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )


def _root_path(request: Request) -> str:
    # the prefix a proxy serves the API under, as FastAPI's own pages use it
    return str(request.scope.get("root_path", "")).rstrip("/")
