"""Messages built by ``workers.broker`` are the ones Celery itself would send."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from celery import Celery

from workers.broker import (
    PRIORITY_STEPS,
    Dispatch,
    MessageEncoder,
    depth_keys,
    queue_key,
    sum_depths,
)


def _celery_message(dispatch: Dispatch) -> Any:
    app = Celery("reference", set_as_current=False)
    return app.amqp.as_task_v2(
        dispatch.job_id, dispatch.task, args=(), kwargs=dispatch.args, retries=dispatch.retries
    )


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_the_envelope_matches_celerys_protocol_2(priority: str) -> None:
    dispatch = Dispatch("job-1", "diagnostics.echo", "io", {"value": "é"}, priority, retries=2)  # type: ignore[arg-type]
    reference = _celery_message(dispatch)

    envelope = json.loads(MessageEncoder(origin="test@host").encode(dispatch))

    assert set(envelope["headers"]) == set(reference.headers)
    for name in ("task", "id", "root_id", "retries", "eta", "expires", "group", "parent_id"):
        assert envelope["headers"][name] == reference.headers[name], name
    assert envelope["headers"]["timelimit"] == list(reference.headers["timelimit"])
    body = json.loads(base64.b64decode(envelope["body"]))
    assert body == json.loads(json.dumps(list(reference.body)))
    assert envelope["content-type"] == "application/json"
    assert envelope["content-encoding"] == "utf-8"
    properties = envelope["properties"]
    assert properties["correlation_id"] == "job-1"
    assert properties["priority"] == PRIORITY_STEPS[dispatch.priority]
    assert properties["body_encoding"] == "base64"
    assert properties["delivery_info"] == {"exchange": "", "routing_key": "io"}
    assert properties["delivery_tag"]


def test_queue_keys_follow_kombus_priority_lists() -> None:
    assert queue_key("io", 0) == "io"
    assert queue_key("cpu", 3) == "cpu\x06\x163"
    assert [key for queue, key in depth_keys() if queue == "io"] == [
        "io", "io\x06\x163", "io\x06\x166", "io\x06\x169",
    ]  # fmt: skip


def test_depths_add_up_by_queue() -> None:
    lengths = [1, 2, 3, 4, 10, 0, 0, 5]
    assert sum_depths(lengths) == {"io": 10, "cpu": 15}


def test_a_long_argument_repr_is_cut() -> None:
    envelope = json.loads(
        MessageEncoder().encode(Dispatch("j", "diagnostics.echo", "io", {"value": "x" * 5000}))
    )
    assert len(envelope["headers"]["kwargsrepr"]) == 1024
