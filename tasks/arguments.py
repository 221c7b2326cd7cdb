"""Argument models of the catalog tasks: what a producer may send, checked on both sides."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class TaskArguments(BaseModel):
    """Base of every argument model: unknown fields are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EchoArguments(TaskArguments):
    """``diagnostics.echo``: return ``value`` after an optional cooperative sleep."""

    value: JsonValue = Field(description="Any JSON value, returned as is.")
    sleep_seconds: float = Field(default=0.0, ge=0.0, le=60.0)


class SpinArguments(TaskArguments):
    """``diagnostics.spin``: keep one core busy for ``milliseconds``."""

    milliseconds: int = Field(ge=0, le=60_000)


FailureKind = Literal["transient", "rate_limited", "dependency", "permanent", "crash"]


class FailArguments(TaskArguments):
    """``diagnostics.fail``: raise ``error`` on the first ``times`` attempts, then succeed."""

    error: FailureKind
    times: int = Field(default=1, ge=0, le=100)
    retry_after: float | None = Field(default=None, ge=0.0, le=3600.0)


class SqlSleepArguments(TaskArguments):
    """``diagnostics.sql_sleep``: hold a ledger connection in ``pg_sleep`` for ``seconds``."""

    seconds: float = Field(ge=0.0, le=10.0)
