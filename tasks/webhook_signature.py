"""The webhook signature scheme: how Conveyor signs a delivery and how a receiver checks it.

``X-Conveyor-Signature: v1=<hex>`` is HMAC-SHA256, under the signing secret, of
``"<X-Conveyor-Timestamp>.<raw body>"``. ``verify_signature`` uses the standard library
only, so a receiver can copy it as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "X-Conveyor-Signature"
TIMESTAMP_HEADER = "X-Conveyor-Timestamp"
JOB_ID_HEADER = "X-Conveyor-Job-Id"
ATTEMPT_HEADER = "X-Conveyor-Attempt"
SCHEME = "v1"


def compute_signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_headers(secret: str | bytes, timestamp: int, body: bytes) -> dict[str, str]:
    """The timestamp and signature headers of a delivery of ``body``."""
    signature = compute_signature(secret, timestamp, body)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: f"{SCHEME}={signature}"}


def verify_signature(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Whether ``body`` was signed with ``secret`` less than ``tolerance`` seconds ago.

    ``headers`` are the request's headers (any letter case); ``body`` the raw bytes as
    received, before any JSON parsing. Several ``v1=`` values, comma-separated, are
    accepted, so a sender can sign with an old and a new secret while rotating.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp_text = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
    if not (timestamp_text.isascii() and timestamp_text.isdigit()):
        return False
    timestamp = int(timestamp_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False  # too old (a replay) or from the future
    expected = compute_signature(secret, timestamp, body)
    offered = lowered.get(SIGNATURE_HEADER.lower(), "")
    matched = False
    for part in offered.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == SCHEME and hmac.compare_digest(value, expected):
            matched = True
    return matched
