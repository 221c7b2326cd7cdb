"""Deadlines for a request to arrive: a client that sends its headers or its body too slowly
is disconnected, so slow clients cannot hold the API's connections open indefinitely.

uvicorn bounds only the idle time between requests (keep-alive). This protocol, uvicorn's
own httptools protocol with two timers, also bounds a request in flight: its headers must
be complete ``CONVEYOR_API_HEADER_TIMEOUT`` seconds after the connection opens or the
request's first byte arrives, and its body ``CONVEYOR_API_BODY_TIMEOUT`` seconds after the
headers. A never-ending chunked body ends at the body deadline. Once the request is in,
no deadline applies: the answer takes what it takes, and keep-alive works as before.

A request that is not valid HTTP is answered here too, with the API's error model and an
``error_id`` in the log, not uvicorn's plain-text 400.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api_shim import errors
from workers.settings import get_settings
from workers.structured_logging import new_error_id

logger = logging.getLogger("api_shim")


class RequestDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, closing connections whose request arrives too slowly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._header_timeout = settings.api_header_timeout
        self._body_timeout = settings.api_body_timeout
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self._header_timeout, "headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self._body_timeout, "body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, part, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def send_400_response(self, msg: str) -> None:
        """A request that is not valid HTTP: the API's error model, logged with its id."""
        error = errors.bad_request(msg)
        error_id = new_error_id()
        logger.log(
            error.log_level,
            "request refused before routing: %s",
            msg,
            extra={"error_id": error_id, "status": error.status, "code": error.code},
        )
        body = errors.error_body(error, error_id)
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n".encode()
            + b"connection: close\r\n\r\n"
            + body
        )
        self.transport.close()

    def _too_slow(self, part: str, seconds: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        logger.warning(
            "client too slow: the request's %s did not arrive within %g s; disconnected",
            part,
            seconds,
            extra={"client": f"{self.client[0]}:{self.client[1]}" if self.client else None},
        )
        self.transport.close()
