"""Plain Celery with Conveyor's no-op tasks, configured as Conveyor configures its workers.

Same names, same queues, JSON only, late acknowledgement, prefetch multiplier 1, one result
backend per process. ``BENCH_RESULTS=1`` stores each result in Redis; otherwise results are
ignored (``ignore_result``).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

URL = os.environ["BENCH_REDIS_URL"]
STORE_RESULTS = os.environ.get("BENCH_RESULTS") == "1"

app = Celery("plain", broker=URL, backend=URL if STORE_RESULTS else None)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_queues=[
        Queue(kind, Exchange(kind, type="direct"), routing_key=kind) for kind in ("io", "cpu")
    ],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=not STORE_RESULTS,
    result_backend_thread_safe=True,
    worker_prefetch_multiplier=1,
    worker_send_task_events=False,
    broker_transport_options={"max_connections": 200},
    redis_max_connections=200,
)


@app.task(name="diagnostics.echo")
def echo(value: Any, sleep_seconds: float = 0.0) -> dict[str, Any]:
    return {"value": value, "pool": "gevent", "pid": os.getpid()}


@app.task(name="diagnostics.spin")
def spin(milliseconds: int) -> dict[str, Any]:
    return {"pool": "prefork", "pid": os.getpid(), "iterations": 0}
