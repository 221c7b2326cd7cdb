"""Every message is judged before Celery takes it: what Conveyor and Celery send passes,
what a hostile writer or a buggy producer puts in a queue is refused with its reason."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from celery import Celery

from workers.broker import Dispatch, MessageEncoder
from workers.message_judge import MessageJudge, RejectReason

JUDGE = MessageJudge(
    frozenset({"diagnostics.echo", "webhooks.deliver"}),
    internal_tasks=frozenset({"conveyor.relay_outbox"}),
)
ECHO = "diagnostics.echo"


def _celery(task: str = ECHO, **options: Any) -> tuple[dict[str, Any], bytes]:
    """Headers and body bytes of a message exactly as Celery's own client builds it."""
    app = Celery("reference", set_as_current=False)
    options.setdefault("kwargs", {"value": 1})
    message = app.amqp.as_task_v2("3f2a7c1e-1111-4222-8333-944455556666", task, **options)
    return dict(message.headers), json.dumps(list(message.body)).encode()


def _verdict(headers: Any, body: Any, content_type: str = "application/json") -> Any:
    rejection = JUDGE.judge(headers, body, content_type, "utf-8")
    return None if rejection is None else rejection.reason


def test_what_celery_sends_for_a_catalog_task_passes() -> None:
    assert _verdict(*_celery()) is None


def test_what_conveyor_publishes_passes() -> None:
    dispatch = Dispatch("job-1", ECHO, "io", {"value": "é"}, "normal", retries=2)
    envelope = json.loads(MessageEncoder(origin="test@host").encode(dispatch))

    body = base64.b64decode(envelope["body"])
    verdict = JUDGE.judge(
        envelope["headers"], body, envelope["content-type"], envelope["content-encoding"]
    )

    assert verdict is None


def test_beats_relay_message_passes_and_one_with_arguments_does_not() -> None:
    assert _verdict(*_celery("conveyor.relay_outbox", kwargs={})) is None
    assert (
        _verdict(*_celery("conveyor.relay_outbox", kwargs={"limit": 10}))
        is RejectReason.INTERNAL_TASK
    )


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (json.dumps("just a string").encode(), RejectReason.SHAPE),
        (b"null", RejectReason.SHAPE),
        (json.dumps([[], {}]).encode(), RejectReason.SHAPE),
        (json.dumps([{}, [], {}]).encode(), RejectReason.SHAPE),
        (json.dumps([[], {}, "embed"]).encode(), RejectReason.SHAPE),
        (json.dumps([[], {}, {"chain": [{"task": "celery.map"}]}]).encode(), RejectReason.SHAPE),
        (json.dumps([[], {}, {"callbacks": [{"task": ECHO}]}]).encode(), RejectReason.SHAPE),
        (b"\x80\x04K\x01.", RejectReason.UNDECODABLE),
        (b"{not json", RejectReason.UNDECODABLE),
        (b"[" * 100_000, RejectReason.UNDECODABLE),
    ],
    ids=[
        "string", "null", "two-parts", "args-not-list", "embed-not-object", "chain",
        "callbacks", "pickle-bytes", "broken-json", "deeply-nested",
    ],
)  # fmt: skip
def test_bodies_that_are_not_args_kwargs_embed_are_refused(body: bytes, reason: str) -> None:
    headers, _ = _celery()

    assert _verdict(headers, body) is reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"task": None}, RejectReason.HEADERS),
        ({"task": ""}, RejectReason.HEADERS),
        ({"task": "celery.backend_cleanup"}, RejectReason.INTERNAL_TASK),
        ({"task": "celery.map"}, RejectReason.INTERNAL_TASK),
        ({"task": "celery.chord_unlock"}, RejectReason.INTERNAL_TASK),
        ({"task": "no.such.task"}, RejectReason.UNKNOWN_TASK),
        ({"id": None}, RejectReason.HEADERS),
        ({"id": 17}, RejectReason.HEADERS),
        ({"id": "x" * 65}, RejectReason.HEADERS),
        ({"id": "has a space"}, RejectReason.HEADERS),
        ({"retries": "many"}, RejectReason.HEADERS),
        ({"retries": -1}, RejectReason.HEADERS),
        ({"retries": True}, RejectReason.HEADERS),
        ({"eta": 12}, RejectReason.HEADERS),
        ({"expires": ["x"]}, RejectReason.HEADERS),
        ({"timelimit": "forever"}, RejectReason.HEADERS),
        ({"timelimit": [1, 2, 3]}, RejectReason.HEADERS),
    ],
)
def test_headers_that_celery_would_trip_on_are_refused(change: dict[str, Any], reason: str) -> None:
    headers, body = _celery()
    headers.update(change)

    assert _verdict(headers, body) is reason


def test_a_message_without_an_id_header_is_refused() -> None:
    headers, body = _celery()
    del headers["id"]

    assert _verdict(headers, body) is RejectReason.HEADERS


def test_a_protocol_1_message_without_headers_is_refused() -> None:
    body = json.dumps({"task": ECHO, "id": "x", "args": [], "kwargs": {}}).encode()

    assert _verdict(None, body) is RejectReason.HEADERS


@pytest.mark.parametrize(
    "content_type", ["application/x-python-serialize", "application/x-yaml", None]
)
def test_anything_but_json_is_refused(content_type: str | None) -> None:
    headers, body = _celery()

    assert _verdict(headers, body, content_type) is RejectReason.CONTENT_TYPE  # type: ignore[arg-type]


def test_a_binary_content_encoding_is_refused() -> None:
    headers, body = _celery()

    rejection = JUDGE.judge(headers, body, "application/json", "binary")

    assert rejection is not None and rejection.reason is RejectReason.CONTENT_TYPE
