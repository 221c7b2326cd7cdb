"""The API's one error model: every refusal is an :class:`ApiError` rendered the same way."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from starlette.responses import Response

from api_shim.intake import JobRefusedError, RefusalReason

logger = logging.getLogger("api_shim")


class ApiError(Exception):
    """An answer other than success: status, machine-readable code, message and details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
        log_level: int = logging.INFO,
        security_event: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = dict(headers or {})
        self.log_level = log_level
        self.security_event = security_event


def unauthorized(message: str) -> ApiError:
    """401: no credential, or one that matches no client."""
    return ApiError(
        401,
        "unauthorized",
        message,
        headers={"WWW-Authenticate": 'Bearer realm="conveyor"'},
        log_level=logging.WARNING,
        security_event=True,
    )


def not_found(message: str, *, security_event: bool = False) -> ApiError:
    """404; a security event when the thing exists but belongs to another client."""
    level = logging.WARNING if security_event else logging.INFO
    return ApiError(404, "not_found", message, log_level=level, security_event=security_event)


def conflict(message: str, details: Any = None) -> ApiError:
    """409: the request contradicts the job's state or an earlier request."""
    return ApiError(409, "conflict", message, details=details)


def bad_request(message: str) -> ApiError:
    """400: the request is not valid HTTP (a malformed header, say)."""
    return ApiError(400, "bad_request", message)


def method_not_allowed(allowed: list[str], message: str = "Method Not Allowed") -> ApiError:
    """405, with ``Allow`` naming the methods the path answers."""
    return ApiError(405, "method_not_allowed", message, headers={"Allow": ", ".join(allowed)})


def payload_too_large(limit: int) -> ApiError:
    """413: the body is over the limit (checked before it is parsed)."""
    return ApiError(
        413,
        "payload_too_large",
        f"the request body is larger than {limit} bytes",
        details={"max_bytes": limit},
    )


def unsupported_media_type(received: str | None) -> ApiError:
    """415: only ``application/json`` bodies are parsed."""
    return ApiError(
        415,
        "unsupported_media_type",
        f"send the body as application/json (got {received or 'no Content-Type'})",
    )


def validation_error(message: str, details: Any = None) -> ApiError:
    """422: the request is well-formed HTTP but not a valid job."""
    return ApiError(422, "validation_error", message, details=details)


def job_refused(refusal: JobRefusedError) -> ApiError:
    """422 ``validation_error`` or ``unknown_task``: the intake refused the job request.

    An unknown task covers internal ``celery.*`` names too; the message says where the
    catalog is listed.
    """
    if refusal.reason is RefusalReason.UNKNOWN_TASK:
        message = f"{refusal.message}; GET /v1/tasks lists the catalog"
    else:
        message = refusal.message
    return ApiError(422, refusal.reason.value, message, details=refusal.details)


@contextlib.contextmanager
def intake_refusals() -> Iterator[None]:
    """Turn the intake's refusal (of a job or a schedule) into the API's 422."""
    try:
        yield
    except JobRefusedError as refusal:
        raise job_refused(refusal) from None


def rate_limited(headers: Mapping[str, str]) -> ApiError:
    """429, with ``Retry-After`` and the ``RateLimit-*`` headers."""
    return ApiError(
        429,
        "rate_limited",
        f"rate limit exceeded; retry after {headers.get('Retry-After', '1')} s",
        headers=headers,
    )


def service_unavailable(message: str, retry_after: int = 5) -> ApiError:
    """503: Redis or the database does not answer; nothing was recorded."""
    return ApiError(
        503,
        "service_unavailable",
        message,
        headers={"Retry-After": str(retry_after)},
        log_level=logging.ERROR,
    )


def internal_error() -> ApiError:
    """500: a bug; the traceback goes to the log only."""
    return ApiError(
        500, "internal_error", "internal error; quote the error_id", log_level=logging.ERROR
    )


def error_body(error: ApiError, error_id: str) -> bytes:
    """``{"error": {"code", "message", "error_id", "details"?}}`` as JSON bytes."""
    payload: dict[str, Any] = {
        "code": error.code,
        "message": error.message,
        "error_id": error_id,
    }
    if error.details is not None:
        payload["details"] = error.details
    return json.dumps({"error": payload}, ensure_ascii=False, default=str).encode()


def error_response(error: ApiError, error_id: str) -> Response:
    """The HTTP answer for ``error``."""
    return Response(
        error_body(error, error_id),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )
