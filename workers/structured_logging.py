"""Structured logging: one JSON object per line, with job context and secrets redacted.

The context (``request_id``, ``job_id``, ``task_id``, ``task``, ``attempt``) lives in a
context variable, so each greenlet and each thread carries its own.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

CONTEXT_FIELDS = ("request_id", "job_id", "task_id", "task", "attempt", "error_id")
REDACTED = "[REDACTED]"
INTERNAL_TASK_PREFIX = "conveyor."


def new_error_id() -> str:
    """A fresh id that ties an error (an HTTP answer, a ledger error, a refused message) to
    its log line."""
    return f"err_{secrets.token_hex(8)}"


_log_context: ContextVar[Mapping[str, Any]] = ContextVar("conveyor_log_context", default={})  # noqa: B039 - never mutated

_SENSITIVE_KEY = re.compile(
    r"(authorization|password|passwd|secret|token|api[_-]?key|cookie|signature|credential)",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")

# attributes every LogRecord has; anything else came in through ``extra=``
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}


class Redactor:
    """Removes secrets from log fields: known secret values, sensitive keys, URL passwords."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, value: str) -> str:
        """``value`` with URL passwords, bearer tokens and known secrets masked."""
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        value = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", value)
        return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)

    def value(self, value: Any, depth: int = 0) -> Any:
        """A JSON-ready copy of ``value`` with sensitive keys and strings masked."""
        if depth > 8:
            return "…"
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {
                str(k): REDACTED if _SENSITIVE_KEY.search(str(k)) else self.value(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v, depth + 1) for v in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.text(repr(value))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object, context and ``extra=`` fields included."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _log_context.get()
        for name in CONTEXT_FIELDS:
            entry[name] = context.get(name)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        _adopt_celery_task_data(entry)
        entry["process"] = record.process
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        redacted = self._redactor.value(entry)
        return json.dumps(redacted, default=str, ensure_ascii=False)


def _adopt_celery_task_data(entry: dict[str, Any]) -> None:
    # Celery's own task lines carry the task in ``data``; lift its id into the context
    # fields and drop the arguments, which may hold payloads that do not belong in logs
    data = entry.get("data")
    if not isinstance(data, Mapping) or "id" not in data:
        return
    entry["job_id"] = entry["job_id"] or data["id"]
    entry["task_id"] = entry["task_id"] or data["id"]
    entry["task"] = entry["task"] or data.get("name")
    entry["data"] = {k: v for k, v in data.items() if k not in ("args", "kwargs")}


class HousekeepingFilter(logging.Filter):
    """Drops Celery's routine received/succeeded lines for internal ``conveyor.*`` tasks.

    The outbox relay runs every second; its two lines per run would drown the job lines.
    Its warnings, failures and the relay's own "published" line still get through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        if record.name == "celery.beat" and isinstance(record.args, tuple):
            # "Scheduler: Sending due task <entry> (<task name>)"
            return not any(
                isinstance(arg, str) and arg.startswith(INTERNAL_TASK_PREFIX) for arg in record.args
            )
        data = getattr(record, "data", None)
        name = data.get("name") if isinstance(data, Mapping) else None
        return not (isinstance(name, str) and name.startswith(INTERNAL_TASK_PREFIX))


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (by this greenlet/thread)."""
    merged = {**_log_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _log_context.set(merged)
    try:
        yield
    finally:
        _log_context.reset(token)


def current_log_context() -> Mapping[str, Any]:
    """The fields the current context adds to log lines."""
    return _log_context.get()


def configure_logging(
    level: str, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Send every logger's output through one JSON handler on the root logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(Redactor(secrets)))
    handler.addFilter(HousekeepingFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # chatty libraries stay at WARNING unless asked for DEBUG
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("kombu", "amqp", "urllib3", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
