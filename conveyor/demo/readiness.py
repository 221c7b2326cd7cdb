"""Waiting for the demo's stack: Flower, the API and a worker of each pool, each answering."""

from __future__ import annotations

import threading
import time

import httpx
from celery import Celery

from conveyor.demo.errors import DemoError, DemoInterruptedError
from conveyor.devstack.stack import DevStackInfo
from conveyor.devstack.supervision import ProcessGroup

#: How long the started stack may take to answer before the demo gives up.
STARTUP_TIMEOUT = 90.0


def _deadline_wait(
    what: str, probe_ok: bool, deadline: float, group: ProcessGroup, stop: threading.Event
) -> bool:
    if stop.is_set():
        raise DemoInterruptedError("interrupted while the stack started")
    dead = group.exited()
    if dead is not None:
        raise DemoError(f"{dead.name} exited while starting; see the stack log")
    if time.monotonic() > deadline:
        raise DemoError(f"{what} did not come up within {STARTUP_TIMEOUT:.0f} s")
    return probe_ok


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _workers_ready(client: Celery) -> bool:
    replies = client.control.ping(timeout=0.5) or []
    nodes = [name for reply in replies for name in reply]
    return any(n.startswith("io@") for n in nodes) and any(n.startswith("cpu@") for n in nodes)


def wait_until_ready(info: DevStackInfo, group: ProcessGroup, stop: threading.Event) -> None:
    """Wait until Flower and the API answer and an io and a cpu worker answer a ping.

    Flower comes first: it must be listening for task events before the first job runs.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    flower_health = f"{info.flower_url}/healthcheck"
    while not _deadline_wait("Flower", _answers(flower_health), deadline, group, stop):
        time.sleep(0.3)
    while not _deadline_wait("the API", _answers(f"{info.api_url}/readyz"), deadline, group, stop):
        time.sleep(0.3)
    pinger = Celery("conveyor-demo", broker=info.redis_url, set_as_current=False)
    try:
        while not _deadline_wait("the workers", _workers_ready(pinger), deadline, group, stop):
            time.sleep(0.3)
    finally:
        pinger.close()
