"""A webhook receiver for benchmarks: every POST is answered 200 after ``--delay`` seconds.

A raw ASGI app under uvicorn (one process, one event loop): a slow request costs one
``asyncio.sleep``, so hundreds of them in flight are cheap. It counts the POSTs received per
path, checks each one's Conveyor signature when ``--secret`` is given, and serves the counts
as JSON on ``GET /count``. Listens on 127.0.0.1 only.

    .venv/bin/python bench/receiver.py --port 8765 --delay 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from tasks.webhook_signature import verify_signature

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HOST = "127.0.0.1"
ANSWER = b'{"ok":true}'


class Receiver:
    """The ASGI app: counts, sleeps, answers."""

    def __init__(self, delay: float, secret: str | None) -> None:
        self.delay = delay
        self.secret = secret
        self.received: Counter[str] = Counter()
        self.bad_signatures: Counter[str] = Counter()
        self.in_flight = 0
        self.peak_in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/count":
            await respond(send, 200, json.dumps(self.counts()).encode())
        elif method == "POST" and path == "/reset":
            self.received.clear()
            self.bad_signatures.clear()
            self.peak_in_flight = self.in_flight
            await respond(send, 200, ANSWER)
        elif method == "POST":
            await self.deliver(scope, receive, send, path)
        else:
            await respond(send, 405, b'{"error":"method not allowed"}')

    async def deliver(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        self.received[path] += 1
        if self.secret is not None:
            headers = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
            }
            if not verify_signature(self.secret, headers, b"".join(chunks)):
                self.bad_signatures[path] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        await respond(send, 200, ANSWER)

    def counts(self) -> dict[str, Any]:
        return {
            "received": dict(self.received),
            "bad_signatures": dict(self.bad_signatures),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        }


async def respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds before each answer")
    parser.add_argument("--secret", help="check X-Conveyor-Signature with this secret")
    args = parser.parse_args()
    # a connection is a file: a thousand held at once need more than a default soft limit
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvicorn.run(
        Receiver(args.delay, args.secret),
        host=HOST,
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        lifespan="off",
        backlog=4096,  # a burst of a thousand new connections waits in the queue, not refused
        limit_concurrency=None,
        # the senders keep connections for 30 s; do not close them under a running benchmark
        timeout_keep_alive=60,
    )


if __name__ == "__main__":
    main()
