"""Conveyor's settings: every ``CONVEYOR_*`` variable, validated once at start-up.

Nothing else in the code base reads the environment. Load with :func:`get_settings`
(cached) and hand the object down.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.ledger import database_url

Environment = Literal["dev", "test", "staging", "prod"]

DEV_WEBHOOK_SIGNING_SECRET = "conveyor-dev-signing-secret-not-for-production"  # noqa: S105
_DEFAULT_FLOWER_CREDENTIALS = frozenset({"admin:admin", "admin:password", "flower:flower"})
_RATE_PERIODS = {"second": 1, "minute": 60, "hour": 3600}
_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SettingsError(Exception):
    """A setting is missing or wrong; the message is one line naming the variable."""


@dataclass(frozen=True)
class RetentionPeriods:
    """How long ``succeeded`` and ``cancelled`` jobs, ``failed`` jobs and blobs no job names
    are kept once finished (blobs: once last written)."""

    finished: timedelta
    failed: timedelta
    blobs: timedelta


@dataclass(frozen=True)
class RateLimit:
    """``limit`` requests per ``period_seconds``."""

    limit: int
    period_seconds: int


def parse_rate_limit(text: str) -> RateLimit | None:
    """Parse ``N/second|minute|hour``; ``off`` disables limiting."""
    value = text.strip().lower()
    if value == "off":
        return None
    match = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour)", value)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"expected N/second, N/minute, N/hour or off, got {text!r}")
    return RateLimit(int(match.group(1)), _RATE_PERIODS[match.group(2)])


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``15m``, ``12h`` or ``14d`` (a whole number and one unit)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text.lower())
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"expected a duration such as 90s, 15m, 12h or 14d, got {text!r}")
    return timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])


def parse_api_keys(text: str) -> dict[str, SecretStr]:
    """Parse ``client_id:secret,client_id:secret`` into a client → secret table."""
    keys: dict[str, SecretStr] = {}
    for number, pair in enumerate((p.strip() for p in text.split(",")), start=1):
        if not pair:
            continue
        client_id, sep, secret = pair.partition(":")
        if not sep or not _CLIENT_ID.match(client_id):
            raise ValueError(
                f"pair {number} must be client_id:secret with a client id of letters, digits, _.-"
            )
        if len(secret) < 16:
            raise ValueError(f"the secret of client {client_id!r} is shorter than 16 characters")
        if client_id in keys:
            raise ValueError(f"client {client_id!r} appears twice")
        keys[client_id] = SecretStr(secret)
    return keys


class Settings(BaseSettings):
    """Every setting of the contract; field ``x`` is read from ``CONVEYOR_X``."""

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_",
        env_file=".env",
        env_ignore_empty=True,  # VAR= in .env means "use the default"
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    env: Environment = "dev"
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite:///./var/conveyor.db"
    database_pool_size: int = Field(default=20, ge=1, le=500)
    api_keys: SecretStr | None = None
    rate_limit: str = "100/second"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_blob_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    # a request's headers must arrive within this many seconds, its body within the next
    api_header_timeout: float = Field(default=10.0, gt=0, le=600)
    api_body_timeout: float = Field(default=60.0, gt=0, le=3600)
    retry_scale: float = Field(default=1.0, ge=0.0, le=100.0)
    webhook_signing_secret: SecretStr | None = None
    allow_private_networks: bool | None = None
    storage_dir: Path = Path("./var/blobs")
    io_concurrency: int = Field(default=200, ge=1, le=5000)
    cpu_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=512)
    flower_basic_auth: SecretStr | None = None
    visibility_timeout: int = Field(default=3600, ge=10)
    worker_lease_seconds: int = Field(default=30, ge=3, le=3600)
    # how long finished jobs (and their attempts) stay in the ledger, and unnamed blobs on disk
    job_retention: str = "14d"
    failed_retention: str = "30d"
    blob_retention: str = "7d"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    diagnostics: bool | None = None
    # extension: how long a task may hold a gevent worker's event loop before it is reported
    hub_block_threshold: float = Field(default=0.1, ge=0.01, le=60.0)
    # extensions: where `conveyor api` and `conveyor flower` listen when no option says, so a
    # container binds 0.0.0.0 through the environment while its command stays the Procfile's
    api_host: str = Field(default="127.0.0.1", min_length=1)
    api_port: int = Field(default=8000, ge=1, le=65535)
    flower_host: str = Field(default="127.0.0.1", min_length=1)
    flower_port: int = Field(default=5555, ge=1, le=65535)
    # Flower's persistent state (its task history survives a restart)
    flower_db: Path = Path("./var/flower.db")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        value = database_url.normalise(value)
        if not database_url.is_supported(value):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        parse_rate_limit(value)
        return value

    @field_validator("job_retention", "failed_retention", "blob_retention")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_keys(value.get_secret_value())
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _check_flower_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, sep, password = value.get_secret_value().partition(":")
            if not sep or not user or not password:
                raise ValueError("must be user:password")
        return value

    @model_validator(mode="after")
    def _apply_environment_rules(self) -> Settings:
        relaxed = self.env in ("dev", "test")
        # frozen model: defaults that depend on the environment are filled in this way
        if self.allow_private_networks is None:
            object.__setattr__(self, "allow_private_networks", relaxed)
        if self.diagnostics is None:
            object.__setattr__(self, "diagnostics", relaxed)
        if self.webhook_signing_secret is None and relaxed:
            object.__setattr__(
                self, "webhook_signing_secret", SecretStr(DEV_WEBHOOK_SIGNING_SECRET)
            )
        if self.env == "prod":
            self._refuse_unsafe_production()
        return self

    def _refuse_unsafe_production(self) -> None:
        if database_url.is_sqlite(self.database_url):
            raise ValueError("CONVEYOR_DATABASE_URL: prod refuses SQLite; use postgresql://")
        if self.api_keys is None or not parse_api_keys(self.api_keys.get_secret_value()):
            raise ValueError("CONVEYOR_API_KEYS: prod needs at least one client_id:secret pair")
        secret = self.webhook_signing_secret
        if secret is None or secret.get_secret_value() == DEV_WEBHOOK_SIGNING_SECRET:
            raise ValueError("CONVEYOR_WEBHOOK_SIGNING_SECRET: prod needs a secret of its own")
        if len(secret.get_secret_value()) < 32:
            raise ValueError("CONVEYOR_WEBHOOK_SIGNING_SECRET: use at least 32 characters")
        auth = self.flower_basic_auth
        if auth is None or auth.get_secret_value() in _DEFAULT_FLOWER_CREDENTIALS:
            raise ValueError("CONVEYOR_FLOWER_BASIC_AUTH: prod needs a non-default user:password")

    # Parsed views -------------------------------------------------------------

    @property
    def api_key_table(self) -> dict[str, SecretStr]:
        """Client id → secret."""
        return {} if self.api_keys is None else parse_api_keys(self.api_keys.get_secret_value())

    @property
    def parsed_rate_limit(self) -> RateLimit | None:
        """The per-client limit, or ``None`` when ``off``."""
        return parse_rate_limit(self.rate_limit)

    @property
    def retention(self) -> RetentionPeriods:
        """How long finished jobs and unnamed blobs are kept."""
        return RetentionPeriods(
            finished=parse_duration(self.job_retention),
            failed=parse_duration(self.failed_retention),
            blobs=parse_duration(self.blob_retention),
        )

    def secret_values(self) -> list[str]:
        """Every secret string, so that log redaction can scrub it wherever it appears."""
        secrets = [s.get_secret_value() for s in self.api_key_table.values()]
        for value in (self.webhook_signing_secret, self.flower_basic_auth):
            if value is not None:
                secrets.append(value.get_secret_value())
        return [s for s in secrets if len(s) >= 8]


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    message = str(first["msg"]).removeprefix("Value error, ")
    if message.startswith("CONVEYOR_"):
        return message
    variable = f"CONVEYOR_{field.upper()}" if field else "settings"
    return f"{variable}: {message}"


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; raise :class:`SettingsError` with one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()
