"""What makes a broker message acceptable to run: judged before Celery takes it.

Anyone who can write to Redis can put a message in a queue, and so can a buggy plain
Celery client. Celery trusts what it pops: a body that is not ``[args, kwargs, embed]``, a
missing ``id`` header or a built-in ``celery.*`` task name can stop a worker or run code
nobody asked for. Every message is judged here first, from its headers and its JSON body,
without running anything; a refusal names the reason (a metric label) and what was wrong.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from workers.ledger.models import is_job_id

JSON_CONTENT_TYPE = "application/json"
_TEXT_ENCODINGS = frozenset({"utf-8", "utf8"})
# headers of Celery's protocol 2 that hold an optional string
_OPTIONAL_TEXT_HEADERS = ("eta", "expires", "root_id", "parent_id", "group", "shadow", "origin")
# the parts of the embed that would make this worker start further tasks (workflows)
_WORKFLOW_KEYS = ("callbacks", "errbacks", "chain", "chord")


class RejectReason(StrEnum):
    """Why a message was refused; the label of ``conveyor_messages_rejected_total``."""

    ENVELOPE = "envelope"  # the transport could not read the message at all
    CONTENT_TYPE = "content_type"  # not JSON (pickle and the like are never run)
    UNDECODABLE = "undecodable"  # the body is not JSON text
    SHAPE = "shape"  # the body is not [args, kwargs, embed], or asks for a workflow
    HEADERS = "headers"  # a header missing or of the wrong type (task, id, retries …)
    UNKNOWN_TASK = "unknown_task"  # not a task of this worker's catalog
    INTERNAL_TASK = "internal_task"  # Celery's built-in tasks, or ours with arguments
    MALFORMED = "malformed"  # accepted here, yet Celery could not take it


@dataclass(frozen=True)
class Rejection:
    """A refused message: the reason, and what was wrong in a few words."""

    reason: RejectReason
    problem: str


@dataclass(frozen=True)
class MessageJudge:
    """Judges messages for a worker that runs ``catalog_tasks`` and ``internal_tasks``.

    Internal tasks (the outbox relay) take no arguments: a message for one with arguments
    was not sent by Conveyor.
    """

    catalog_tasks: Collection[str]
    internal_tasks: Collection[str] = ()

    def judge(
        self,
        headers: Any,
        body: Any,
        content_type: str | None,
        content_encoding: str | None,
    ) -> Rejection | None:
        """``None`` when the message may go to Celery, else why it may not."""
        if not isinstance(headers, Mapping):
            return Rejection(RejectReason.HEADERS, "no headers (protocol 1 is not accepted)")
        rejection = (
            _judge_content(content_type, content_encoding)
            or self._judge_task(headers.get("task"))
            or _judge_headers(headers)
        )
        if rejection is not None:
            return rejection
        parsed = _parse_body(body)
        if isinstance(parsed, Rejection):
            return parsed
        args, kwargs = parsed
        if headers["task"] in self.internal_tasks and (args or kwargs):
            return Rejection(RejectReason.INTERNAL_TASK, "an internal task with arguments")
        return None

    def _judge_task(self, task: Any) -> Rejection | None:
        if not isinstance(task, str) or not task:
            return Rejection(RejectReason.HEADERS, "no task name")
        if task in self.catalog_tasks or task in self.internal_tasks:
            return None
        if task.startswith("celery."):
            return Rejection(RejectReason.INTERNAL_TASK, "a built-in Celery task")
        return Rejection(RejectReason.UNKNOWN_TASK, "not in this worker's catalog")


def _judge_content(content_type: str | None, content_encoding: str | None) -> Rejection | None:
    if content_type != JSON_CONTENT_TYPE:
        return Rejection(RejectReason.CONTENT_TYPE, f"content type {content_type!r}")
    if content_encoding is not None and content_encoding.lower() not in _TEXT_ENCODINGS:
        return Rejection(RejectReason.CONTENT_TYPE, f"content encoding {content_encoding!r}")
    return None


def _judge_headers(headers: Mapping[Any, Any]) -> Rejection | None:
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not is_job_id(task_id):
        return Rejection(RejectReason.HEADERS, "no id, or not a job id")
    retries = headers.get("retries") or 0
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        return Rejection(RejectReason.HEADERS, "retries is not a count")
    for name in _OPTIONAL_TEXT_HEADERS:
        if not isinstance(headers.get(name), str | None):
            return Rejection(RejectReason.HEADERS, f"{name} is not text")
    if not _is_time_limit(headers.get("timelimit")):
        return Rejection(RejectReason.HEADERS, "timelimit is not [soft, hard]")
    return None


def _is_time_limit(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, list | tuple) or len(value) != 2:
        return False
    return all(
        limit is None or (isinstance(limit, int | float) and not isinstance(limit, bool))
        for limit in value
    )


def _parse_body(body: Any) -> tuple[list[Any], dict[str, Any]] | Rejection:
    """``(args, kwargs)`` of a protocol 2 body, or why it is not one."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else body
        document = json.loads(text) if isinstance(text, str) else text
    except (UnicodeDecodeError, ValueError, RecursionError):
        return Rejection(RejectReason.UNDECODABLE, "the body is not JSON text")
    if not isinstance(document, list) or len(document) != 3:
        return Rejection(RejectReason.SHAPE, "the body is not [args, kwargs, embed]")
    args, kwargs, embed = document
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return Rejection(RejectReason.SHAPE, "args is not a list, or kwargs not an object")
    if embed is None:
        embed = {}
    if not isinstance(embed, dict):
        return Rejection(RejectReason.SHAPE, "the embed is not an object")
    if any(embed.get(key) for key in _WORKFLOW_KEYS):
        return Rejection(RejectReason.SHAPE, "callbacks, chains and chords are not run")
    return args, kwargs
