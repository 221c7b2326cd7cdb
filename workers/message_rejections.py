"""The count of broker messages workers refused to run, by reason.

Workers add to one Redis hash; the API's ``/metrics`` reads it at scrape time as
``conveyor_messages_rejected_total{reason}``, so every worker's refusals show in one place.
"""

from __future__ import annotations

import redis

REJECTIONS_KEY = "conveyor:messages_rejected"


def record_rejection(client: redis.Redis, reason: str) -> None:
    """Count one message refused for ``reason``."""
    client.hincrby(REJECTIONS_KEY, reason, 1)


def read_rejections(client: redis.Redis) -> dict[str, int]:
    """Refused messages so far, by reason."""
    raw: dict[bytes, bytes] = client.hgetall(REJECTIONS_KEY)  # type: ignore[assignment]
    return {field.decode("utf-8", "replace"): int(value) for field, value in sorted(raw.items())}
