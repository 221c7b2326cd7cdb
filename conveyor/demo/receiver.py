"""The demo's local, flaky HTTP peer on 127.0.0.1: webhook endpoints that fail on script, and
generated JPEG images to fetch.

A webhook's path names its behaviour (``/hooks/<behaviour>/<n>``), and the attempt
header picks the answer from that behaviour's script, so a redelivered or retried request
gets the same answer as any other request of that attempt number. Every webhook's
signature is checked with the signing secret the workers use.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageDraw

from tasks.webhook_signature import ATTEMPT_HEADER, verify_signature

#: A webhook answer: the status code and its ``Retry-After`` (seconds), if any.
Answer = tuple[int, int | None]

#: What each kind of webhook endpoint answers on attempts 1, 2, …; the last one repeats.
WEBHOOK_SCRIPTS: Mapping[str, tuple[Answer, ...]] = {
    "ok": ((200, None),),
    "flaky": ((500, None), (200, None)),
    "throttled": ((429, 1), (200, None)),
    "unavailable": ((503, None), (503, None), (200, None)),
    "gone": ((410, None),),
    "broken": ((500, None),),
}

IMAGE_SIZE = (1600, 1200)
#: Answer delays, as a real endpoint's would vary.
LATENCY_SECONDS = (0.005, 0.06)
_MAX_BODY = 1 << 20


@dataclass
class ReceiverTally:
    """What the receiver has seen: webhook requests by behaviour, signatures, images served."""

    webhooks: Counter[str]
    bad_signatures: int = 0
    images_served: int = 0


def answer_for(behaviour: str, attempt: int) -> Answer:
    """The answer a ``behaviour`` endpoint gives to attempt number ``attempt`` (from 1)."""
    script = WEBHOOK_SCRIPTS[behaviour]
    return script[min(max(attempt, 1), len(script)) - 1]


@lru_cache(maxsize=64)
def demo_image(number: int) -> bytes:
    """A JPEG photo stand-in: a colour gradient with shapes, different for each ``number``."""
    chooser = random.Random(number)  # noqa: S311 - picture content, not a secret
    width, height = IMAGE_SIZE
    ramp = Image.linear_gradient("L").resize(IMAGE_SIZE)
    image = Image.merge(
        "RGB",
        (
            ramp,
            ramp.rotate(90 * (number % 4)).resize(IMAGE_SIZE),
            ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        ),
    )
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = chooser.randrange(width), chooser.randrange(height)
        radius = chooser.randrange(40, 300)
        colour = tuple(chooser.randrange(256) for _ in range(3))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


class FlakyReceiver:
    """The running server: its URLs and its tally."""

    def __init__(self, server: ThreadingHTTPServer, tally: ReceiverTally) -> None:
        self._server = server
        self.tally = tally

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def webhook_url(self, behaviour: str, number: int) -> str:
        """The URL of endpoint ``number`` with ``behaviour`` (a key of ``WEBHOOK_SCRIPTS``)."""
        if behaviour not in WEBHOOK_SCRIPTS:
            raise ValueError(f"unknown webhook behaviour {behaviour!r}")
        return f"{self.base_url}/hooks/{behaviour}/{number}"

    def image_url(self, number: int) -> str:
        """The URL of generated image ``number``; a negative number is a missing image."""
        return f"{self.base_url}/images/{number}.jpg"


def _handler(
    secret: str, tally: ReceiverTally, lock: threading.Lock
) -> type[BaseHTTPRequestHandler]:
    chooser = random.Random(7)  # noqa: S311 - answer latency, not a secret

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the demo shows its own progress."""

        def _answer(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            name = self.path.removeprefix("/images/").removesuffix(".jpg")
            if not self.path.startswith("/images/") or not name.isdigit():
                self._answer(404, b"no such image", {"Content-Type": "text/plain"})
                return
            body = demo_image(int(name))
            with lock:
                tally.images_served += 1
            self._answer(200, body, {"Content-Type": "image/jpeg"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(length, _MAX_BODY))
            parts = self.path.split("/")
            if len(parts) != 4 or parts[1] != "hooks" or parts[2] not in WEBHOOK_SCRIPTS:
                self._answer(404, b"", {})
                return
            behaviour = parts[2]
            attempt_text = self.headers.get(ATTEMPT_HEADER, "1")
            attempt = int(attempt_text) if attempt_text.isdigit() else 1
            signed = verify_signature(secret, dict(self.headers.items()), body)
            with lock:
                tally.webhooks[behaviour] += 1
                tally.bad_signatures += 0 if signed else 1
                delay = chooser.uniform(*LATENCY_SECONDS)
            time.sleep(delay)
            status, retry_after = answer_for(behaviour, attempt)
            headers = {"Content-Type": "application/json"}
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
            self._answer(status, b'{"received":true}', headers)

    return Handler


@contextmanager
def flaky_receiver(signing_secret: str) -> Iterator[FlakyReceiver]:
    """A receiver on a free port of 127.0.0.1, serving from a thread until the block ends."""
    tally = ReceiverTally(Counter())
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), _handler(signing_secret, tally, threading.Lock())
    )
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-receiver", daemon=True)
    thread.start()
    try:
        yield FlakyReceiver(server, tally)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
