"""A plain Celery app with the same sleep task as diagnostics.echo, for comparison."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

app = Celery("plain", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    # without these a gevent pool above 100 greenlets stalls on redis-py's
    # MaxConnectionsError; plain Celery gets the same sizing Conveyor applies
    broker_transport_options={"max_connections": int(os.environ.get("BENCH_POOL", "520"))},
    redis_max_connections=int(os.environ.get("BENCH_POOL", "520")),
    # --tuned-plain: share one result backend per process, as Conveyor does
    result_backend_thread_safe=os.environ.get("BENCH_TUNED") == "1",
)


@app.task(name="diagnostics.echo")
def echo(value: Any, sleep_seconds: float = 0.0) -> dict[str, Any]:
    if sleep_seconds:
        time.sleep(sleep_seconds)
    return {"value": value, "pool": "gevent", "pid": os.getpid()}
