"""Settings: defaults, per-environment rules and one clear line for a bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tasks.catalog import build_catalog
from workers.celery_app import create_app
from workers.settings import (
    DEV_WEBHOOK_SIGNING_SECRET,
    RateLimit,
    RetentionPeriods,
    Settings,
    SettingsError,
    load_settings,
    parse_duration,
    parse_rate_limit,
)

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))


def run_command(
    command: list[str], env: dict[str, str], cwd: Path, *, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a real command with only ``env`` (and a PATH) in its environment."""
    return subprocess.run(
        command,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        cwd=cwd,
        check=check,
    )


GOOD_PROD = {
    "env": "prod",
    "database_url": "postgresql://conveyor@db:5432/conveyor",
    "api_keys": "billing:0123456789abcdef0123",
    "webhook_signing_secret": "x" * 40,
    "flower_basic_auth": "ops:a-long-unguessable-password",
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("CONVEYOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_follow_the_contract() -> None:
    settings = load_settings()

    assert settings.env == "dev"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.database_url == "sqlite:///./var/conveyor.db"
    assert settings.parsed_rate_limit == RateLimit(100, 1)
    assert settings.max_body_bytes == 1_048_576
    assert settings.max_blob_bytes == 100 * 1024 * 1024
    assert settings.retry_scale == 1.0
    assert settings.io_concurrency == 200
    assert settings.cpu_concurrency >= 1
    assert settings.visibility_timeout == 3600
    assert settings.retention == RetentionPeriods(
        finished=timedelta(days=14), failed=timedelta(days=30), blobs=timedelta(days=7)
    )
    assert settings.allow_private_networks is True
    assert settings.diagnostics is True
    assert settings.webhook_signing_secret is not None
    assert settings.webhook_signing_secret.get_secret_value() == DEV_WEBHOOK_SIGNING_SECRET


def test_environment_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_IO_CONCURRENCY", "37")
    monkeypatch.setenv("CONVEYOR_RATE_LIMIT", "5/minute")
    monkeypatch.setenv("CONVEYOR_LOG_LEVEL", "debug")
    monkeypatch.setenv("BROKER_URL", "redis://elsewhere:1/0")  # Celery's name, not ours

    settings = load_settings()

    assert settings.io_concurrency == 37
    assert settings.parsed_rate_limit == RateLimit(5, 60)
    assert settings.log_level == "DEBUG"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


def test_staging_and_prod_close_private_networks_and_diagnostics() -> None:
    settings = load_settings(env="staging")
    prod = load_settings(**GOOD_PROD)

    assert (settings.allow_private_networks, settings.diagnostics) == (False, False)
    assert (prod.allow_private_networks, prod.diagnostics) == (False, False)
    assert settings.webhook_signing_secret is None


def test_postgres_urls_use_psycopg_3() -> None:
    settings = load_settings(database_url="postgres://u@h:5432/d")

    assert settings.database_url == "postgresql+psycopg://u@h:5432/d"


@pytest.mark.parametrize(
    ("change", "variable", "words"),
    [
        ({"database_url": "sqlite:///./prod.db"}, "CONVEYOR_DATABASE_URL", "SQLite"),
        ({"api_keys": None}, "CONVEYOR_API_KEYS", "at least one"),
        (
            {"webhook_signing_secret": DEV_WEBHOOK_SIGNING_SECRET},
            "CONVEYOR_WEBHOOK_SIGNING_SECRET",
            "own",
        ),
        ({"webhook_signing_secret": None}, "CONVEYOR_WEBHOOK_SIGNING_SECRET", "own"),
        ({"flower_basic_auth": "admin:admin"}, "CONVEYOR_FLOWER_BASIC_AUTH", "non-default"),
        ({"flower_basic_auth": None}, "CONVEYOR_FLOWER_BASIC_AUTH", "non-default"),
    ],
)
def test_prod_refuses_unsafe_settings(change: dict[str, object], variable: str, words: str) -> None:
    settings = {**GOOD_PROD, **change}

    with pytest.raises(SettingsError) as caught:
        load_settings(**{k: v for k, v in settings.items() if v is not None})

    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("field", "value", "variable", "words"),
    [
        ("rate_limit", "lots", "CONVEYOR_RATE_LIMIT", "N/second"),
        ("rate_limit", "0/second", "CONVEYOR_RATE_LIMIT", "N/second"),
        ("redis_url", "http://x", "CONVEYOR_REDIS_URL", "redis://"),
        ("database_url", "mysql://x", "CONVEYOR_DATABASE_URL", "postgresql"),
        ("api_keys", "nocolon", "CONVEYOR_API_KEYS", "client_id:secret"),
        ("api_keys", "a:short", "CONVEYOR_API_KEYS", "shorter than 16"),
        ("api_keys", "a:0123456789abcdef,a:0123456789abcdeg", "CONVEYOR_API_KEYS", "twice"),
        ("io_concurrency", "0", "CONVEYOR_IO_CONCURRENCY", "greater than or equal"),
        ("retry_scale", "-1", "CONVEYOR_RETRY_SCALE", "greater than or equal"),
        ("env", "production", "CONVEYOR_ENV", "dev"),
        ("flower_basic_auth", "nopassword", "CONVEYOR_FLOWER_BASIC_AUTH", "user:password"),
        ("visibility_timeout", "abc", "CONVEYOR_VISIBILITY_TIMEOUT", "integer"),
        ("job_retention", "14 days", "CONVEYOR_JOB_RETENTION", "such as 90s, 15m, 12h or 14d"),
        ("failed_retention", "0d", "CONVEYOR_FAILED_RETENTION", "duration"),
        ("blob_retention", "1w", "CONVEYOR_BLOB_RETENTION", "duration"),
    ],
)
def test_a_bad_value_gives_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, variable: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as caught:
        load_settings()

    message = str(caught.value)
    assert message.startswith(f"{variable}: "), message
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("12h", 43200), ("14d", 1209600), (" 2D ", 172800)],
)
def test_retention_durations_take_one_unit(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_api_keys_parse_into_a_client_table() -> None:
    settings = load_settings(api_keys="billing:0123456789abcdef, search:fedcba9876543210xyz")

    table = settings.api_key_table
    assert set(table) == {"billing", "search"}
    assert table["search"].get_secret_value() == "fedcba9876543210xyz"
    assert "0123456789abcdef" not in repr(settings)
    assert "0123456789abcdef" in settings.secret_values()


def test_off_disables_rate_limiting() -> None:
    assert parse_rate_limit("off") is None
    assert parse_rate_limit("3/hour") == RateLimit(3, 3600)


def test_start_up_refuses_a_visibility_timeout_within_a_task_time_limit() -> None:
    longest = build_catalog(diagnostics=True).longest_time_limit()

    with pytest.raises(SettingsError) as caught:
        create_app(load_settings(visibility_timeout=longest))

    assert str(caught.value).startswith("CONVEYOR_VISIBILITY_TIMEOUT: ")
    create_app(load_settings(visibility_timeout=longest + 1)).close()


def test_the_cli_stops_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    finished = run_command([CONVEYOR, "check"], {"CONVEYOR_RATE_LIMIT": "fast"}, tmp_path)

    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        "conveyor: CONVEYOR_RATE_LIMIT: expected N/second, N/minute, N/hour or off, got 'fast'"
    ]


def test_the_celery_app_module_stops_with_one_line(tmp_path: Path) -> None:
    finished = run_command(
        [sys.executable, "-c", "import workers.app"], {"CONVEYOR_ENV": "prod"}, tmp_path
    )

    assert finished.returncode == 1
    assert finished.stderr.strip() == (
        "conveyor: CONVEYOR_DATABASE_URL: prod refuses SQLite; use postgresql://"
    )


def test_env_example_documents_every_setting_and_loads_as_is(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / ".env.example"
    names = {
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line.startswith("CONVEYOR_")
    }
    (tmp_path / ".env").write_text(example.read_text())

    settings = load_settings()

    assert names == {f"CONVEYOR_{field.upper()}" for field in Settings.model_fields}
    assert settings.env == "dev"
    assert settings.cpu_concurrency >= 1


def test_check_names_the_service_that_does_not_answer(tmp_path: Path) -> None:
    finished = run_command(
        [CONVEYOR, "check"], {"CONVEYOR_REDIS_URL": "redis://127.0.0.1:1/0"}, tmp_path
    )

    assert finished.returncode == 1
    assert "conveyor check: Redis at redis://127.0.0.1:1/0 does not answer" in finished.stderr


def test_cli_commands_log_one_json_object_per_line(tmp_path: Path) -> None:
    finished = run_command(
        [CONVEYOR, "migrate"],
        {"CONVEYOR_DATABASE_URL": f"sqlite:///{tmp_path}/l.db"},
        tmp_path,
        check=True,
    )

    lines = [json.loads(line) for line in finished.stderr.splitlines()]
    assert lines, "migrate logs what it runs"
    assert all({"timestamp", "level", "logger", "message", "job_id"} <= set(e) for e in lines)
    assert finished.stdout.strip() == "ledger at head"
