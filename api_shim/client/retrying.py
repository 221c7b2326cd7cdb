"""When to ask again: the retry policy for failed calls and the polling backoff of wait()."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from api_shim.client.calls import _Call
from api_shim.client.errors import WaitTimeoutError, _retry_after
from api_shim.client.models import Job

MAX_RETRY_DELAY: Final = 30.0  # seconds; a longer Retry-After is cut to this
BACKOFF_BASE: Final = 0.25  # seconds before the first retry when the server names no delay

_jitter = random.SystemRandom()

# connection failures where the request never left: safe to send again whatever it was
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class _RetryPolicy:
    """When to ask again: 429 and 503 always, a lost connection only if that is safe."""

    max_retries: int

    def after_response(
        self, call: _Call[Any], attempt: int, response: httpx.Response
    ) -> float | None:
        """Seconds to wait before retrying ``response``, or ``None`` to give up."""
        if response.status_code not in (429, 503):
            return None
        if attempt >= self.max_retries or not call.replayable:
            return None
        return self._delay(attempt, _retry_after(response))

    def after_error(
        self, call: _Call[Any], attempt: int, error: httpx.TransportError
    ) -> float | None:
        """Seconds to wait before retrying after ``error``, or ``None`` to give up."""
        if attempt >= self.max_retries or not call.replayable:
            return None
        if not (call.idempotent or isinstance(error, _NOT_SENT)):
            return None
        return self._delay(attempt, None)

    @staticmethod
    def _delay(attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_DELAY)
        backoff = min(BACKOFF_BASE * 2.0**attempt, MAX_RETRY_DELAY)
        return backoff * _jitter.uniform(0.8, 1.0)


class _Poll:
    """The schedule of :meth:`ConveyorClient.wait`: exponential backoff to a deadline."""

    def __init__(self, timeout: float, poll_interval: float, max_interval: float) -> None:
        if timeout < 0 or poll_interval <= 0 or max_interval < poll_interval:
            raise ValueError("need timeout >= 0 and 0 < poll_interval <= max_interval")
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._interval = poll_interval
        self._max_interval = max_interval

    def delay_after(self, job: Job) -> float | None:
        """``None`` once ``job`` has finished, else the pause before the next look."""
        if job.finished:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(job, self._timeout)
        delay = min(self._interval, remaining)
        self._interval = min(self._interval * 2, self._max_interval)
        return delay
