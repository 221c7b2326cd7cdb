"""Argument models of the catalog tasks: URLs, headers, sizes, algorithms and defaults."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from tasks.arguments import (
    DEFAULT_FETCH_MAX_BYTES,
    MAX_FETCH_MAX_BYTES,
    MAX_URL_LENGTH,
    RESERVED_WEBHOOK_HEADERS,
    DigestArguments,
    FetchArguments,
    ThumbnailArguments,
    WebhookArguments,
    check_url,
)

URL = "https://hooks.example.test/orders"
BLOB = f"sha256:{hashlib.sha256(b'blob').hexdigest()}"


def webhook(**fields: Any) -> WebhookArguments:
    return WebhookArguments.model_validate({"url": URL, "payload": {"a": 1}, **fields})


def refused(model: type[BaseModel], data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(data)


# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.test/",
        "http://example.test",
        "http://127.0.0.1:8080/hook?x=1#f",
        "https://[2606:4700::1]:443/p",
        "https://example.test:65535/",
    ],
)
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url
    assert FetchArguments(url=url).url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://files.example.test/x", r"only http:// and https://"),
        ("file:///etc/passwd", r"only http:// and https://"),
        ("gopher://example.test/", r"only http:// and https://"),
        ("//example.test/path", r"only http:// and https://"),
        ("http:///path/only", "URL has no host"),
        ("https://user:secret@example.test/", "credentials in the URL"),
        ("https://user@example.test/", "credentials in the URL"),
        ("https://:secret@example.test/", "credentials in the URL"),
        ("https://example.test/a b", "whitespace or control characters"),
        ("https://example.test/a\tb", "whitespace or control characters"),
        ("https://example.test/\x7f", "whitespace or control characters"),
        ("https://example.test:99999/", "port is not a number between 0 and 65535"),
        ("https://example.test:http/", "port is not a number"),
    ],
)
def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_url(url)
    refused(FetchArguments, {"url": url}, message)
    refused(WebhookArguments, {"url": url, "payload": {}}, message)


def test_url_length_limit() -> None:
    prefix = "https://example.test/"
    longest = prefix + "a" * (MAX_URL_LENGTH - len(prefix))

    assert FetchArguments(url=longest).url == longest
    with pytest.raises(ValidationError, match=str(MAX_URL_LENGTH)):
        FetchArguments(url=longest + "a")
    with pytest.raises(ValueError, match=f"longer than {MAX_URL_LENGTH}"):
        check_url(longest + "a")


def test_shortest_possible_url_is_accepted() -> None:
    assert FetchArguments(url="http://a").url == "http://a"


# --- WebhookArguments ------------------------------------------------------------------------


def test_webhook_defaults() -> None:
    args = webhook()

    assert args.headers == {}
    assert args.timeout_seconds == 10.0
    assert args.payload == {"a": 1}


def test_webhook_accepts_ordinary_caller_headers() -> None:
    headers = {"Authorization": "Bearer abc.def", "X-Tenant": "acme", "Accept": "*/*"}

    assert webhook(headers=headers).headers == headers


@pytest.mark.parametrize(
    "value", ["a\r\nInjected: 1", "a\nInjected: 1", "a\rb", "nul\x00", "bell\x07", "x" * 4097]
)
def test_header_value_with_control_characters_or_too_long_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="without control characters, at most 4096"):
        webhook(headers={"X-Custom": value})


def test_header_value_with_a_tab_is_accepted() -> None:
    assert webhook(headers={"X-Note": "a\tb"}).headers["X-Note"] == "a\tb"


@pytest.mark.parametrize("value", ["café", "\x80", "ÿ", "日本", "emoji 🙂"])
def test_header_values_the_http_client_cannot_send_are_refused(value: str) -> None:
    with pytest.raises(UnicodeEncodeError):
        httpx.Request("POST", "https://example.test/", headers={"X-Name": value})
    with pytest.raises(ValidationError, match="printable ASCII"):
        webhook(headers={"X-Name": value})


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x17F), max_size=40))
def test_every_header_value_accepted_is_one_the_http_client_sends(value: str) -> None:
    try:
        webhook(headers={"X-Any": value})
    except ValidationError:
        return
    httpx.Request("POST", "https://example.test/", headers={"X-Any": value})


@pytest.mark.parametrize(
    "url",
    [
        "http://0177.0.0.1:18750/",
        "http://256.0.0.1/",
        "http://exa\xadmple.test/",
    ],
)
def test_urls_the_http_client_cannot_use_are_refused(url: str) -> None:
    with pytest.raises(httpx.InvalidURL):
        httpx.URL(url)
    refused(FetchArguments, {"url": url}, "cannot use this URL|not a number|no host")
    refused(
        WebhookArguments, {"url": url, "payload": {}}, "cannot use this URL|not a number|no host"
    )


@pytest.mark.parametrize(
    "name", ["X-Bad\r\nInjected", "X Bad", "X:Bad", "", "Ünïcode", "X-(comment)", "a" * 129]
)
def test_header_name_that_is_not_a_token_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="is not a valid HTTP token"):
        webhook(headers={name: "v"})


@pytest.mark.parametrize(
    "name",
    [
        "X-Conveyor-Signature",
        "x-conveyor-signature",
        "X-Conveyor-Timestamp",
        "X-CONVEYOR-JOB-ID",
        "X-Conveyor-Anything-New",
        "Host",
        "host",
        "Content-Type",
        "content-length",
        "Transfer-Encoding",
        "User-Agent",
        "Connection",
        "Proxy-Authorization",
    ],
)
def test_reserved_header_is_refused_in_any_letter_case(name: str) -> None:
    with pytest.raises(ValidationError, match="is set by Conveyor and cannot be replaced"):
        webhook(headers={name: "v"})


def test_every_listed_reserved_header_is_refused() -> None:
    for name in RESERVED_WEBHOOK_HEADERS:
        with pytest.raises(ValidationError):
            webhook(headers={name.title(): "v"})


def test_at_most_fifty_headers() -> None:
    fifty = {f"X-H{i}": "v" for i in range(50)}

    assert len(webhook(headers=fifty).headers) == 50
    with pytest.raises(ValidationError, match="at most 50"):
        webhook(headers={**fifty, "X-H50": "v"})


@pytest.mark.parametrize("timeout", [0.001, 1, 120])
def test_webhook_timeout_in_range(timeout: float) -> None:
    assert webhook(timeout_seconds=timeout).timeout_seconds == timeout


@pytest.mark.parametrize("timeout", [0, -1, 120.001, 3600])
def test_webhook_timeout_out_of_range(timeout: float) -> None:
    with pytest.raises(ValidationError, match="timeout_seconds"):
        webhook(timeout_seconds=timeout)


def test_webhook_payload_must_be_an_object() -> None:
    refused(WebhookArguments, {"url": URL, "payload": [1, 2]}, "payload")
    refused(WebhookArguments, {"url": URL}, "payload")


def test_unknown_fields_are_refused_and_arguments_are_frozen() -> None:
    refused(WebhookArguments, {"url": URL, "payload": {}, "retries": 3}, "Extra inputs")
    args = webhook()
    with pytest.raises(ValidationError, match="frozen"):
        args.timeout_seconds = 1.0  # type: ignore[misc]


# --- FetchArguments ------------------------------------------------------------------------


def test_fetch_default_max_bytes() -> None:
    assert FetchArguments(url=URL).max_bytes == DEFAULT_FETCH_MAX_BYTES == 100 * 1024 * 1024


@pytest.mark.parametrize("max_bytes", [1, 1024, MAX_FETCH_MAX_BYTES])
def test_fetch_max_bytes_in_range(max_bytes: int) -> None:
    assert FetchArguments(url=URL, max_bytes=max_bytes).max_bytes == max_bytes


@pytest.mark.parametrize("max_bytes", [0, -1, MAX_FETCH_MAX_BYTES + 1])
def test_fetch_max_bytes_out_of_range(max_bytes: int) -> None:
    refused(FetchArguments, {"url": URL, "max_bytes": max_bytes}, "max_bytes")


# --- DigestArguments -----------------------------------------------------------------------


def test_digest_defaults_to_sha256() -> None:
    assert DigestArguments(blob=BLOB).algorithms == ["sha256"]


def test_digest_accepts_every_algorithm_once() -> None:
    algorithms = ["md5", "sha1", "sha256", "sha512", "blake2b"]

    assert DigestArguments.model_validate({"blob": BLOB, "algorithms": algorithms}).algorithms == (
        algorithms
    )


@pytest.mark.parametrize(
    "algorithms", [["sha256", "sha256"], ["md5", "sha1", "md5"], ["blake2b"] * 5]
)
def test_repeated_algorithms_are_refused(algorithms: list[str]) -> None:
    refused(DigestArguments, {"blob": BLOB, "algorithms": algorithms}, "must not repeat")


@pytest.mark.parametrize(
    ("algorithms", "message"),
    [
        ([], "at least 1"),
        (["crc32"], "algorithms"),
        (["SHA256"], "algorithms"),
        (["sha256", "sha512", "md5", "sha1", "blake2b", "sha256"], "at most 5"),
    ],
)
def test_bad_algorithm_lists_are_refused(algorithms: list[str], message: str) -> None:
    refused(DigestArguments, {"blob": BLOB, "algorithms": algorithms}, message)


@pytest.mark.parametrize(
    "blob",
    [
        hashlib.sha256(b"x").hexdigest(),  # no prefix
        BLOB.upper(),
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "g" * 64,
        "md5:" + "a" * 32,
        BLOB + "\n",
    ],
)
def test_malformed_blob_ids_are_refused(blob: str) -> None:
    refused(DigestArguments, {"blob": blob}, "blob")
    refused(ThumbnailArguments, {"blob": blob, "sizes": [[10, 10]]}, "blob")


# --- ThumbnailArguments ----------------------------------------------------------------------


def test_thumbnail_defaults_and_sizes_as_pairs() -> None:
    args = ThumbnailArguments.model_validate({"blob": BLOB, "sizes": [[320, 240], [64, 64]]})

    assert args.format == "webp"
    assert args.sizes == [(320, 240), (64, 64)]


@pytest.mark.parametrize("output", ["webp", "png", "jpeg"])
def test_thumbnail_formats(output: str) -> None:
    assert (
        ThumbnailArguments.model_validate(
            {"blob": BLOB, "sizes": [[1, 1]], "format": output}
        ).format
        == output
    )


@pytest.mark.parametrize("output", ["gif", "jpg", "WEBP", ""])
def test_unknown_thumbnail_format_is_refused(output: str) -> None:
    refused(ThumbnailArguments, {"blob": BLOB, "sizes": [[1, 1]], "format": output}, "format")


def test_largest_box_is_accepted() -> None:
    args = ThumbnailArguments.model_validate({"blob": BLOB, "sizes": [[4096, 4096], [1, 1]]})

    assert args.sizes == [(4096, 4096), (1, 1)]


@pytest.mark.parametrize(
    "sizes",
    [
        [[0, 10]],
        [[10, 0]],
        [[-1, 10]],
        [[4097, 10]],
        [[10, 4097]],
        [[10]],
        [[10, 10, 10]],
        [[1.5, 10]],
        [],
        [[10, 10]] * 11,
    ],
)
def test_sizes_out_of_range_are_refused(sizes: list[list[Any]]) -> None:
    refused(ThumbnailArguments, {"blob": BLOB, "sizes": sizes}, "sizes")


def test_ten_sizes_are_accepted() -> None:
    sizes = [[10 * i, 10 * i] for i in range(1, 11)]

    assert len(ThumbnailArguments.model_validate({"blob": BLOB, "sizes": sizes}).sizes) == 10
