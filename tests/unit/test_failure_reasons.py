"""The reason table reads drivers' error texts as they are worded."""

from __future__ import annotations

import pytest

from conveyor.cli.failure_reasons import DATABASE_REASONS, REDIS_REASONS, explain

PG = "postgresql+psycopg://app@db.internal:6543/ledger"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            (
                'connection failed: connection to server at "10.0.0.5", port 6543 failed: '
                "timeout expired"
            ),
            "no answer from db.internal:6543 in time; check the host and port",
        ),
        (
            (
                'connection to server at "10.0.0.5", port 6543 failed: FATAL:  password '
                'authentication failed for user "app"'
            ),
            "authentication failed; check the user and password in CONVEYOR_DATABASE_URL",
        ),
        (
            (
                'connection to server at "10.0.0.5", port 6543 failed: FATAL:  no pg_hba.conf '
                'entry for host "10.0.0.9", user "app", database "ledger", no encryption'
            ),
            "authentication failed",
        ),
        (
            "failed to resolve host 'db.internal': [Errno -2] Name or service not known",
            "the host name in CONVEYOR_DATABASE_URL does not resolve",
        ),
        ('relation "jobs" does not exist', "the ledger's tables are missing; run conveyor migrate"),
        ("no such table: jobs", "the ledger's tables are missing; run conveyor migrate"),
        ("something new\nwith detail", "something new"),
    ],
)
def test_database_texts(text: str, expected: str) -> None:
    assert explain(text, PG, DATABASE_REASONS).startswith(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Timeout connecting to server", "no answer from cache:6380 in time"),
        ("invalid username-password pair or user is disabled.", "authentication failed"),
        ("WRONGPASS invalid username-password pair", "authentication failed"),
        ("Authentication required.", "authentication failed"),
    ],
)
def test_redis_texts(text: str, expected: str) -> None:
    assert explain(text, "redis://:secret@cache:6380/0", REDIS_REASONS).startswith(expected)
