"""Structured logs: one JSON object per line, job context attached, secrets never written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from workers.structured_logging import (
    CONTEXT_FIELDS,
    REDACTED,
    HousekeepingFilter,
    JsonFormatter,
    Redactor,
    configure_logging,
    log_context,
)

SECRET = "s3cr3t-api-key-value-1234"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", secrets=[SECRET], stream=stream)
    yield stream
    logging.getLogger().handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_line_with_every_context_field(output: io.StringIO) -> None:
    log = logging.getLogger("conveyor.test")

    with log_context(request_id="req-1", job_id="job-1", task_id="job-1", task="t", attempt=2):
        log.info("multi\nline message", extra={"queue": "io"})
    log.warning("outside")

    first, second = lines(output)
    assert first["message"] == "multi\nline message"
    assert (first["request_id"], first["job_id"], first["task_id"]) == ("req-1", "job-1", "job-1")
    assert (first["task"], first["attempt"], first["queue"]) == ("t", 2, "io")
    assert first["level"] == "INFO" and first["logger"] == "conveyor.test"
    assert set(CONTEXT_FIELDS) <= set(first) and "timestamp" in first
    assert second["job_id"] is None and second["level"] == "WARNING"


def test_sensitive_fields_urls_tokens_and_known_secrets_are_redacted(output: io.StringIO) -> None:
    log = logging.getLogger("conveyor.test")

    log.info(
        "calling redis://:hunter2@127.0.0.1:6379/0 with Authorization: Bearer abc.def-123 and %s",
        SECRET,
        extra={
            "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k", "Accept": "json"},
            "password": "pw",
            "nested": [{"token": "t", "ok": f"key={SECRET}"}],
        },
    )

    text = output.getvalue()
    for leaked in ("hunter2", "abc.def-123", SECRET, '"pw"', '"k"', '"t"'):
        assert leaked not in text
    (entry,) = lines(output)
    assert entry["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED, "Accept": "json"}
    assert entry["password"] == REDACTED
    assert entry["nested"] == [{"token": REDACTED, "ok": f"key={REDACTED}"}]
    assert "redis://:[REDACTED]@127.0.0.1" in str(entry["message"])


def test_tracebacks_are_logged_in_the_line_and_redacted(output: io.StringIO) -> None:
    log = logging.getLogger("conveyor.test")

    try:
        raise RuntimeError(f"failed with {SECRET}")
    except RuntimeError:
        log.exception("boom", extra={"error_id": "e1"})

    (entry,) = lines(output)
    assert "RuntimeError" in str(entry["traceback"])
    assert SECRET not in output.getvalue()
    assert entry["error_id"] == "e1"


def test_celery_task_lines_carry_the_task_id_but_not_the_arguments() -> None:
    record = logging.LogRecord("celery.app.trace", logging.INFO, "", 0, "Task done", None, None)
    record.data = {"id": "abc", "name": "diagnostics.echo", "args": "()", "kwargs": "{'x': 1}"}

    entry = json.loads(JsonFormatter().format(record))

    assert (entry["job_id"], entry["task_id"], entry["task"]) == ("abc", "abc", "diagnostics.echo")
    assert entry["data"] == {"id": "abc", "name": "diagnostics.echo"}


def test_context_is_restored_after_the_block() -> None:
    redactor = Redactor()
    with log_context(job_id="a"), log_context(attempt=1):
        pass
    assert redactor.text("plain") == "plain"


def test_routine_lines_of_internal_tasks_are_dropped_but_their_warnings_kept() -> None:
    housekeeping = HousekeepingFilter()

    def record(level: int, name: str) -> logging.LogRecord:
        entry = logging.LogRecord("celery.app.trace", level, __file__, 1, "Task done", None, None)
        entry.data = {"id": "x", "name": name}
        return entry

    assert not housekeeping.filter(record(logging.INFO, "conveyor.relay_outbox"))
    assert housekeeping.filter(record(logging.WARNING, "conveyor.relay_outbox"))
    assert housekeeping.filter(record(logging.INFO, "diagnostics.echo"))
