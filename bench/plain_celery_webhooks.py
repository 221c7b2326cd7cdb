"""A plain Celery app that posts webhooks as ``webhooks.deliver`` does, for comparison.

Same JSON body bytes (``encode_payload``), same headers (job id, attempt, timestamp and
HMAC signature with the same secret), same HTTP clients (an ``HttpClientPool`` of
``guarded_client`` per worker process, one client lent to each task, as Conveyor does),
same answer handling (at most 64 KiB of the answer read, non-2xx raises). What it leaves
out is Conveyor: no ledger, no argument model, no retry policy.

The task is called ``plain.webhooks.deliver``: importing ``tasks.io.webhooks`` registers
Conveyor's own ``webhooks.deliver`` as a shared task in every Celery app, this one included,
where it would win over a plain task of the same name. It is never sent here.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import httpx
from celery import Celery, Task

from tasks.io.webhooks import encode_payload
from tasks.outbound_http import KEEPALIVE_PER_CLIENT, HttpClientPool, guarded_client
from tasks.webhook_signature import signature_headers
from workers.settings import DEV_WEBHOOK_SIGNING_SECRET

TASK = "plain.webhooks.deliver"
_ANSWER_READ_LIMIT = 64 * 1024
_CONNECT_TIMEOUT_CAP = 10.0

app = Celery("plain", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    # without these a gevent pool above 100 greenlets stalls on redis-py's
    # MaxConnectionsError; plain Celery gets the same sizing Conveyor applies
    broker_transport_options={"max_connections": int(os.environ.get("BENCH_POOL", "220"))},
    redis_max_connections=int(os.environ.get("BENCH_POOL", "220")),
    # --tuned-plain: share one result backend per process, as Conveyor does
    result_backend_thread_safe=os.environ.get("BENCH_TUNED") == "1",
)


@functools.cache
def http_clients() -> HttpClientPool:
    """The worker process's clients, built as Conveyor builds its own (``open_http_client``)."""
    ssl_context = httpx.create_ssl_context()
    return HttpClientPool(
        lambda: guarded_client(
            allow_private=True, keepalive=KEEPALIVE_PER_CLIENT, ssl_context=ssl_context
        )
    )


@app.task(name=TASK, bind=True)
def deliver(
    self: Task[Any, Any], url: str, payload: dict[str, Any], timeout_seconds: float = 10.0
) -> dict[str, Any]:
    body = encode_payload(payload)
    headers = {
        "Content-Type": "application/json",
        "X-Conveyor-Job-Id": str(self.request.id),
        "X-Conveyor-Attempt": str(int(self.request.retries or 0) + 1),
        **signature_headers(DEV_WEBHOOK_SIGNING_SECRET, int(time.time()), body),
    }
    timeout = httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, _CONNECT_TIMEOUT_CAP))
    started = time.monotonic()
    with (
        http_clients().client() as client,
        client.stream("POST", url, content=body, headers=headers, timeout=timeout) as response,
    ):
        received = 0
        for chunk in response.iter_raw():
            received += len(chunk)
            if received >= _ANSWER_READ_LIMIT:
                break
    response.raise_for_status()
    elapsed_ms = round((time.monotonic() - started) * 1000, 1)
    return {"status_code": response.status_code, "elapsed_ms": elapsed_ms}
