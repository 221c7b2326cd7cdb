"""How jobs look on the broker: Redis queue keys, Celery messages, publishing and depths.

Messages are Celery protocol 2 in kombu's Redis envelope, built here with the standard
library so that the API can publish a thousand jobs in one pipelined round trip without
loading Celery. ``tests/unit/test_broker.py`` checks them against what Celery itself sends.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis

from tasks.catalog import KINDS

Priority = Literal["high", "normal", "low"]

# kombu's Redis transport keeps one list per priority step and pops the lowest step first;
# a plain ``send_task`` without a priority lands on step 0, the ``high`` lane
PRIORITY_STEPS: dict[Priority, int] = {"high": 0, "normal": 3, "low": 6}
_KOMBU_STEPS = (0, 3, 6, 9)
_KOMBU_SEPARATOR = "\x06\x16"
#: kombu's hash of messages delivered to a consumer and not yet acknowledged.
UNACKED_KEY = "unacked"
#: kombu's sorted set of those messages' delivery tags, scored by the time of delivery.
UNACKED_INDEX_KEY = "unacked_index"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_REPR_LIMIT = 1024


@dataclass(frozen=True)
class Dispatch:
    """One job to put on its queue; ``retries`` is the job's retry generation."""

    job_id: str
    task: str
    queue: str
    args: dict[str, Any]
    priority: Priority = "normal"
    retries: int = 0


def queue_key(queue: str, step: int) -> str:
    """The Redis list holding ``queue``'s messages of priority step ``step``."""
    return queue if step == 0 else f"{queue}{_KOMBU_SEPARATOR}{step}"


def queue_keys(queue: str) -> Iterator[str]:
    """Every Redis list of ``queue``, highest priority first."""
    for step in _KOMBU_STEPS:
        yield queue_key(queue, step)


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


class MessageEncoder:
    """Turns a :class:`Dispatch` into the bytes kombu's Redis transport expects."""

    def __init__(self, origin: str | None = None) -> None:
        self._origin = origin or f"{os.getpid()}@{socket.gethostname()}"

    def encode(self, dispatch: Dispatch) -> bytes:
        """The JSON envelope, with the protocol-2 body base64-encoded as kombu does."""
        body = json.dumps([[], dispatch.args, _EMBED], ensure_ascii=False).encode()
        step = PRIORITY_STEPS[dispatch.priority]
        envelope = {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": dispatch.task,
                "id": dispatch.job_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": dispatch.retries,
                "timelimit": [None, None],
                "root_id": dispatch.job_id,
                "parent_id": None,
                "argsrepr": "()",
                "kwargsrepr": _short_repr(dispatch.args),
                "origin": self._origin,
                "ignore_result": None,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": dispatch.job_id,
                "reply_to": None,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": dispatch.queue},
                "priority": step,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(envelope, ensure_ascii=False).encode()


class Publisher:
    """Pushes jobs onto their Redis queues: one pipelined round trip per call."""

    def __init__(self, client: redis.Redis, encoder: MessageEncoder | None = None) -> None:
        self._client = client
        self._encoder = encoder or MessageEncoder()

    def publish(self, dispatches: Sequence[Dispatch]) -> None:
        """Queue every dispatch, in order; raises ``redis.RedisError`` if Redis fails."""
        if not dispatches:
            return
        with self._client.pipeline(transaction=False) as pipe:
            for dispatch in dispatches:
                if dispatch.queue not in KINDS:
                    raise ValueError(f"unknown queue {dispatch.queue!r}")
                key = queue_key(dispatch.queue, PRIORITY_STEPS[dispatch.priority])
                pipe.lpush(key, self._encoder.encode(dispatch))
            pipe.execute()

    def ids_held(self, *, at_most: int, delivered_within: float | None = None) -> set[str] | None:
        """The job ids of every message Redis holds: waiting in a queue, or delivered to a
        worker and not yet acknowledged (kombu's ``unacked`` hash).

        With ``delivered_within``, a delivered message counts only if it was delivered that
        many seconds ago or less: one held longer by a worker that died stays in ``unacked``
        until the visibility timeout, and should not hide that its job never started.
        ``None`` when there are more than ``at_most`` messages: too many to read in one go.
        """
        keys = [key for _queue, key in depth_keys()]
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            pipe.hlen(UNACKED_KEY)
            sizes = pipe.execute()
        if sum(int(size) for size in sizes) > at_most:
            return None
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.lrange(key, 0, -1)
            pipe.hgetall(UNACKED_KEY)
            if delivered_within is not None:
                since = time.time() - delivered_within
                pipe.zrangebyscore(UNACKED_INDEX_KEY, since, "+inf")
            answers = pipe.execute()
        waiting, delivered = answers[: len(keys)], answers[len(keys)]
        if delivered_within is not None:
            fresh = set(answers[len(keys) + 1])
            delivered = {tag: raw for tag, raw in delivered.items() if tag in fresh}
        found = [_message_id(raw) for entries in waiting for raw in entries]
        found += [_message_id(raw, delivered=True) for raw in delivered.values()]
        return {task_id for task_id in found if task_id is not None}


def _message_id(raw: bytes, *, delivered: bool = False) -> str | None:
    """The ``id`` header of a kombu envelope (``[envelope, exchange, key]`` once delivered)."""
    try:
        document = json.loads(raw)
        envelope = document[0] if delivered else document
        task_id = envelope["headers"]["id"]
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return task_id if isinstance(task_id, str) else None


def depth_keys() -> list[tuple[str, str]]:
    """``(queue, redis key)`` for every list whose length makes up a queue's depth."""
    return [(queue, key) for queue in KINDS for key in queue_keys(queue)]


def sum_depths(lengths: Sequence[int]) -> dict[str, int]:
    """Add up the lengths answered for :func:`depth_keys`, by queue."""
    depths: dict[str, int] = dict.fromkeys(KINDS, 0)
    for (queue, _key), length in zip(depth_keys(), lengths, strict=True):
        depths[queue] += int(length)
    return depths


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each queue (all priorities), in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for _queue, key in depth_keys():
            pipe.llen(key)
        return sum_depths(pipe.execute())
