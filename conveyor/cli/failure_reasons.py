"""Why the database or Redis failed, in one line an operator can act on.

A driver's error text is matched against one table per service; the first row that matches
names the reason and what to do. Anything else keeps the driver's first line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


@dataclass(frozen=True)
class Reason:
    """A pattern of a driver's error text, the reason it means and what to do about it."""

    pattern: re.Pattern[str]
    reason: str  # may name the pattern's groups: {0} is the whole match, {1} the first group
    advice: str  # may name {where}: the host and port the URL points at


def _row(pattern: str, reason: str, advice: str) -> Reason:
    return Reason(re.compile(pattern, re.IGNORECASE), reason, advice)


DATABASE_REASONS: Sequence[Reason] = (
    _row(
        r'database "([^"]+)" does not exist',
        "the database {1} does not exist",
        "create it (createdb {1}), then run conveyor migrate",
    ),
    _row(
        r'password authentication failed for user "([^"]+)"|role "([^"]+)" does not exist'
        r"|no pg_hba\.conf entry",
        "authentication failed",
        "check the user and password in CONVEYOR_DATABASE_URL, and the server's pg_hba.conf",
    ),
    _row(
        r"connection refused",
        "nothing listens at {where}",
        "start PostgreSQL, or fix the host and port in CONVEYOR_DATABASE_URL",
    ),
    _row(
        r"timeout expired|timed out",
        "no answer from {where} in time",
        "check the host and port in CONVEYOR_DATABASE_URL and any firewall on the way",
    ),
    _row(
        r"could not translate host name|name or service not known|nodename nor servname",
        "the host name in CONVEYOR_DATABASE_URL does not resolve",
        "fix the host in CONVEYOR_DATABASE_URL",
    ),
    _row(
        r'relation "([^"]+)" does not exist|no such table: (\w+)',
        "the ledger's tables are missing",
        "run conveyor migrate",
    ),
    _row(
        r"unable to open database file",
        "the SQLite file cannot be opened",
        "check that its directory exists and is writable",
    ),
)

REDIS_REASONS: Sequence[Reason] = (
    _row(
        r"connection refused",
        "nothing listens at {where}",
        "start Redis, or fix the host and port in CONVEYOR_REDIS_URL",
    ),
    _row(
        r"timeout|timed out",
        "no answer from {where} in time",
        "check the host and port in CONVEYOR_REDIS_URL and any firewall on the way",
    ),
    _row(
        r"invalid (username-)?password|wrongpass|noauth|authentication required",
        "authentication failed",
        "check the password in CONVEYOR_REDIS_URL",
    ),
    _row(
        r"name or service not known|nodename nor servname|temporary failure in name resolution",
        "the host name in CONVEYOR_REDIS_URL does not resolve",
        "fix the host in CONVEYOR_REDIS_URL",
    ),
)


def _where(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "the configured address"
    if parsed.host is None:
        return "the configured address"
    return f"{parsed.host}:{parsed.port}" if parsed.port else parsed.host


def explain(text: str, url: str, reasons: Sequence[Reason]) -> str:
    """The reason for a driver's error ``text`` (about ``url``) and what to do, in one line."""
    for row in reasons:
        found = row.pattern.search(text)
        if found is None:
            continue
        groups = [found.group(0), *(group or "" for group in found.groups())]
        values = {"where": _where(url)}
        reason = row.reason.format(*groups, **values)
        return f"{reason}; {row.advice.format(*groups, **values)}"
    lines = text.strip().splitlines()
    return lines[0] if lines else "no reason given"


def database_reason(error: BaseException, url: str) -> str:
    """Why the database at ``url`` failed with ``error`` (SQLAlchemy's, or the driver's)."""
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error).strip() or type(error).__name__
    return explain(text, url, DATABASE_REASONS)


def redis_reason(error: BaseException, url: str) -> str:
    """Why Redis at ``url`` failed with ``error``."""
    return explain(str(error).strip() or type(error).__name__, url, REDIS_REASONS)
