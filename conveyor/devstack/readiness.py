"""Waiting for a started local stack to serve: Flower and the API answer, a worker of each pool
answers a ping, and canary jobs make the round trip through the API, the broker and both pools.

``conveyor dev`` prints its banner and the demo sends its workload only after this.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
from celery import Celery

from conveyor.devstack.supervision import ProcessGroup, StackStartError

if TYPE_CHECKING:
    from conveyor.devstack.stack import DevStackInfo

#: How long a started stack may take to serve before it counts as failed.
STARTUP_TIMEOUT = 120.0
#: The idempotency keys of canary jobs start with this, so that they are told from the rest.
CANARY_KEY_PREFIX = "stack-canary:"
# one job per pool; diagnostics.* are in the catalog in dev and test unless switched off
CANARIES = (
    ("diagnostics.echo", {"value": "canary"}),
    ("diagnostics.spin", {"milliseconds": 1}),
)


class StartInterruptedError(StackStartError):
    """Ctrl-C (or SIGTERM, SIGHUP) came while the stack started."""


class _Waiter:
    """Polls probes until each holds, giving up on a deadline, a dead process or a stop."""

    def __init__(self, group: ProcessGroup, stop: threading.Event, timeout: float) -> None:
        self._group = group
        self._stop = stop
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    def until(self, what: str, probe: Callable[[], bool]) -> None:
        while True:
            if self._stop.is_set():
                raise StartInterruptedError("interrupted while the stack started")
            dead = self._group.exited()
            if dead is not None:
                raise StackStartError(f"{dead.name} exited while starting; see its log lines")
            if probe():
                return
            if time.monotonic() > self._deadline:
                raise StackStartError(f"{what} did not come up within {self._timeout:.0f} s")
            self._stop.wait(0.3)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _both_pools_answer(client: Celery) -> bool:
    replies = client.control.ping(timeout=0.5) or []
    nodes = [name for reply in replies for name in reply]
    return any(n.startswith("io@") for n in nodes) and any(n.startswith("cpu@") for n in nodes)


class _Canaries:
    """Sends one job per pool through the API once, then reports whether all succeeded."""

    def __init__(self, api: httpx.Client) -> None:
        self._api = api
        self._ids: list[str] | None = None

    def round_trip(self) -> bool:
        try:
            if self._ids is None:
                self._ids = self._send()
            return all(self._status(job_id) == "succeeded" for job_id in self._ids)
        except httpx.HTTPError:
            return False

    def _send(self) -> list[str]:
        ids = []
        for task, args in CANARIES:
            key = f"{CANARY_KEY_PREFIX}{uuid.uuid4().hex}"
            answer = self._api.post(
                "/v1/jobs", json={"task": task, "args": args, "idempotency_key": key}
            )
            if answer.status_code == 422:  # diagnostics switched off: the pings must do
                continue
            answer.raise_for_status()
            ids.append(str(answer.json()["id"]))
        return ids

    def _status(self, job_id: str) -> str:
        answer = self._api.get(f"/v1/jobs/{job_id}")
        answer.raise_for_status()
        return str(answer.json()["status"])


def wait_until_serving(
    info: DevStackInfo,
    group: ProcessGroup,
    stop: threading.Event,
    *,
    api_secret: str,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Return once the stack serves; :class:`StackStartError` if it does not in time or a
    process dies, :class:`StartInterruptedError` once ``stop`` is set.

    Flower comes first: it must be listening for task events before the first job runs.
    """
    waiter = _Waiter(group, stop, timeout)
    waiter.until("Flower", lambda: _answers(f"{info.flower_url}/healthcheck"))
    waiter.until("the API", lambda: _answers(f"{info.api_url}/readyz"))
    pinger = Celery("conveyor-readiness", broker=info.redis_url, set_as_current=False)
    try:
        waiter.until("a worker of each pool", lambda: _both_pools_answer(pinger))
    finally:
        pinger.close()
    headers = {"Authorization": f"Bearer {api_secret}"}
    with httpx.Client(base_url=info.api_url, headers=headers, timeout=5) as api:
        waiter.until("a job through each pool", _Canaries(api).round_trip)
