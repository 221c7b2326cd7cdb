"""The ConveyorError hierarchy, and the typed error for an answer that is not a success."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx

from api_shim.client.models import Job, _as_utc


class ConveyorError(Exception):
    """Any failure of a Conveyor call.

    ``status`` is the HTTP status (``None`` when there was no answer), ``code`` the
    machine-readable code of the error body, ``error_id`` the id in the server's log line,
    ``request_id`` the ``X-Request-ID`` of the call and ``retry_after`` the server's
    ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "client_error",
        error_id: str | None = None,
        details: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.error_id = error_id
        self.details = details
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"{self.status} {self.code}" if self.status is not None else self.code
        ids = ", ".join(
            f"{name}={value}"
            for name, value in (("error_id", self.error_id), ("request_id", self.request_id))
            if value
        )
        return f"{head}: {self.message}" + (f" ({ids})" if ids else "")


class UnauthorizedError(ConveyorError):
    """401: no API key, or one the server does not know."""


class NotFoundError(ConveyorError):
    """404: no such job or blob (another client's job is not found either)."""


class ConflictError(ConveyorError):
    """409: an idempotency key reused for another request, or a job in the wrong state."""


class PayloadTooLargeError(ConveyorError):
    """413: the body is over the server's limit."""


class UnsupportedMediaTypeError(ConveyorError):
    """415: the body is not JSON."""


class ValidationError(ConveyorError):
    """422: not a valid request; ``details`` lists ``{"loc", "msg"}`` for each problem."""


class UnknownTaskError(ValidationError):
    """422 ``unknown_task``: the task is not in the catalog."""


class RateLimitedError(ConveyorError):
    """429: over the client's rate limit; ``retry_after`` says when to come back."""


class ServiceUnavailableError(ConveyorError):
    """503: Redis or the ledger does not answer; nothing was recorded."""


class ServerError(ConveyorError):
    """500 or another 5xx: a server bug; quote ``error_id``."""


class ConveyorConnectionError(ConveyorError):
    """No answer: the connection failed or timed out (``__cause__`` is the httpx error)."""


class WaitTimeoutError(ConveyorError):
    """:meth:`ConveyorClient.wait` ran out of time; ``job`` is the last state seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(
            f"job {job.id} is still {job.status} after {timeout:g} s", code="wait_timeout"
        )
        self.job = job
        self.timeout = timeout


_ERRORS_BY_STATUS: Final[dict[int, type[ConveyorError]]] = {
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: ValidationError,
    429: RateLimitedError,
    503: ServiceUnavailableError,
}


def _error_class(status: int, code: str) -> type[ConveyorError]:
    if status == 422 and code == "unknown_task":
        return UnknownTaskError
    known = _ERRORS_BY_STATUS.get(status)
    if known is not None:
        return known
    return ServerError if status >= 500 else ConveyorError


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or ``None``."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = (_as_utc(when) - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _error_from(response: httpx.Response, request_id: str | None) -> ConveyorError:
    """The typed exception for an answer that is not a success (its body already read)."""
    status = response.status_code
    code, message, error_id, details = f"http_{status}", response.reason_phrase, None, None
    try:
        envelope = response.json()
    except ValueError:
        envelope = None
    body = envelope.get("error") if isinstance(envelope, dict) else None
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        message = str(body.get("message") or message)
        error_id = str(body["error_id"]) if body.get("error_id") else None
        details = body.get("details")
    elif response.text:
        message = f"{message}: {response.text[:200]}"
    return _error_class(status, code)(
        message,
        status=status,
        code=code,
        error_id=error_id,
        details=details,
        request_id=response.headers.get("x-request-id") or request_id,
        retry_after=_retry_after(response),
    )
