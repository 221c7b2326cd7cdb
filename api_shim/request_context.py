"""The ASGI layer around every request: request id, body limits, errors, headers, metrics.

A pure ASGI middleware (no per-request task or body copy) so that it costs microseconds.
Every refusal, and every exception, leaves here as the contract's error body with an
``error_id`` that is also in the log line; no traceback reaches a client.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim import errors
from api_shim.metrics import ApiMetrics
from workers.structured_logging import log_context, new_error_id

logger = logging.getLogger("api_shim")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
BLOB_UPLOAD_PATH = "/v1/blobs"


def request_id_from(header: bytes | None) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a new one."""
    if header:
        text = header.decode("latin-1")
        if _REQUEST_ID.match(text):
            return text
    return uuid.uuid4().hex


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _as_api_error(error: BaseException) -> errors.ApiError:
    if isinstance(error, errors.ApiError):
        return error
    if isinstance(error, redis.RedisError):
        return errors.service_unavailable("Redis does not answer; try again shortly")
    if isinstance(error, OperationalError | PoolTimeoutError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return errors.service_unavailable("the job ledger does not answer; try again shortly")
    return errors.internal_error()


class RequestContextMiddleware:
    """Request ids, body-size limits, error answers, rate-limit headers and metrics."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_blob_bytes: int,
        metrics: ApiMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._app = app
        self._max_body = max_body_bytes
        self._max_blob = max_blob_bytes
        self._metrics = metrics
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = self._clock()
        request_id = request_id_from(_header(scope, b"x-request-id"))
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        limit = self._limit_for(scope)
        status = {"code": 500, "sent": False}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                for name, value in state.get("rate_limit_headers", {}).items():
                    if not any(key.lower() == name.lower().encode() for key, _ in headers):
                        headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with log_context(request_id=request_id):
            try:
                _refuse_declared_excess(scope, limit)
                await self._app(scope, _limited(receive, limit), send_with_headers)
            except Exception as error:  # every failure becomes the error model
                if status["sent"]:
                    logger.exception("request failed after its answer started")
                else:
                    await self._answer_error(scope, error, send_with_headers)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self._metrics.observe_request(
                    scope["method"], template, status["code"], self._clock() - started
                )

    def _limit_for(self, scope: Scope) -> int:
        if scope["method"] == "POST" and scope["path"] == BLOB_UPLOAD_PATH:
            return self._max_blob
        return self._max_body

    async def _answer_error(self, scope: Scope, error: BaseException, send: Send) -> None:
        api_error = _as_api_error(error)
        error_id = new_error_id()
        state = scope.get("state", {})
        client = scope.get("client")
        fields = {
            "error_id": error_id,
            "status": api_error.status,
            "code": api_error.code,
            "method": scope["method"],
            "path": scope["path"],
            "client_id": state.get("client_id"),
            "source": f"{client[0]}:{client[1]}" if client else None,
        }
        if api_error.security_event:
            fields["security_event"] = True
        message = f"{api_error.status} {api_error.code}: {api_error.message}"
        if api_error.status >= 500:
            logger.error(message, exc_info=error, extra=fields)
        else:
            logger.log(api_error.log_level, message, extra=fields)
        response = errors.error_response(api_error, error_id)
        await response(scope, _empty_receive, send)


def _refuse_declared_excess(scope: Scope, limit: int) -> None:
    # refused before a byte of the body is read
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.payload_too_large(limit)


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that refuses a body growing past ``limit`` (chunked uploads included)."""
    seen = 0

    async def receive_within_limit() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise errors.payload_too_large(limit)
        return message

    return receive_within_limit


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}
