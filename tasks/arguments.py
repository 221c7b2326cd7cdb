"""Argument models of the catalog tasks: what a producer may send, checked on both sides."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, field_validator


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


# --- the catalog's real tasks -------------------------------------------------------------

#: The most a URL may hold; longer ones are refused before any request is made.
MAX_URL_LENGTH = 2048
#: The default ``max_bytes`` of ``http.fetch`` (the blob store's default upload limit).
DEFAULT_FETCH_MAX_BYTES = 100 * 1024 * 1024
MAX_FETCH_MAX_BYTES = 10 * 1024 * 1024 * 1024
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
# what the tasks' HTTP client (httpx) sends: ASCII, and no control character but tab
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,4096}")
#: Headers a caller may not set on a webhook: Conveyor's own, and those of the transport.
RESERVED_WEBHOOK_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "host",
        "te",
        "trailer",
        "upgrade",
        "user-agent",
        "expect",
        "proxy-authorization",
    }
)


def check_url(value: str) -> str:
    """``value`` if it is an absolute http(s) URL with a host and no credentials."""
    if len(value) > MAX_URL_LENGTH:
        raise ValueError(f"URL longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs are accepted")
    if not parts.hostname:
        raise ValueError("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not accepted; send them as headers")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("URL contains whitespace or control characters")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise ValueError("URL port is not a number between 0 and 65535") from None
    try:
        httpx.URL(value)  # what the task's HTTP client refuses is refused now, not in a worker
    except httpx.InvalidURL as error:
        raise ValueError(f"the HTTP client cannot use this URL: {error}") from None
    return value


HttpUrl = Annotated[
    str,
    AfterValidator(check_url),
    Field(
        min_length=8,
        max_length=MAX_URL_LENGTH,
        description="An absolute http:// or https:// URL, without credentials.",
        examples=["https://example.com/hooks/orders"],
    ),
]


class WebhookArguments(TaskArguments):
    """``webhooks.deliver``: POST ``payload`` as signed JSON to ``url``."""

    url: HttpUrl
    payload: dict[str, JsonValue] = Field(description="The JSON object to deliver.")
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=50,
        description="Extra request headers; Conveyor's own and transport headers are refused.",
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0.0, le=120.0, description="Connect and read timeout, in seconds."
    )

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name[:40]!r} is not a valid HTTP token")
            lowered = name.lower()
            if lowered in RESERVED_WEBHOOK_HEADERS or lowered.startswith("x-conveyor-"):
                raise ValueError(f"header {name!r} is set by Conveyor and cannot be replaced")
            if not _HEADER_VALUE.fullmatch(value):
                raise ValueError(
                    f"header {name!r}: the value must be printable ASCII (the HTTP client sends "
                    "no other) without control characters, at most 4096 characters"
                )
        return headers


class FetchArguments(TaskArguments):
    """``http.fetch``: GET ``url`` into the blob store, refusing more than ``max_bytes``."""

    url: HttpUrl
    max_bytes: int = Field(
        default=DEFAULT_FETCH_MAX_BYTES,
        ge=1,
        le=MAX_FETCH_MAX_BYTES,
        description="The largest body accepted; a longer one fails the job at once.",
    )


DigestAlgorithm = Literal["sha256", "sha512", "blake2b", "sha1", "md5"]
BlobId = Annotated[
    str,
    Field(
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="A blob id as returned by POST /v1/blobs or http.fetch.",
    ),
]


def _default_algorithms() -> list[DigestAlgorithm]:
    return ["sha256"]


class DigestArguments(TaskArguments):
    """``files.digest``: hash a blob with several algorithms in one pass."""

    blob: BlobId
    algorithms: list[DigestAlgorithm] = Field(
        default_factory=_default_algorithms,
        min_length=1,
        max_length=5,
        description="Digest algorithms; md5 and sha1 only for legacy checks.",
    )

    @field_validator("algorithms")
    @classmethod
    def _unique(cls, algorithms: list[DigestAlgorithm]) -> list[DigestAlgorithm]:
        if len(set(algorithms)) != len(algorithms):
            raise ValueError("algorithms must not repeat")
        return algorithms


ThumbnailFormat = Literal["webp", "png", "jpeg"]
MAX_THUMBNAIL_SIDE = 4096
ThumbnailSize = Annotated[
    tuple[
        Annotated[int, Field(ge=1, le=MAX_THUMBNAIL_SIDE)],
        Annotated[int, Field(ge=1, le=MAX_THUMBNAIL_SIDE)],
    ],
    Field(description="[width, height]: the box the thumbnail must fit in."),
]


class ThumbnailArguments(TaskArguments):
    """``images.thumbnail``: fit an image blob into each box of ``sizes``."""

    blob: BlobId
    sizes: list[ThumbnailSize] = Field(min_length=1, max_length=10)
    format: ThumbnailFormat = Field(default="webp", description="The thumbnails' format.")
