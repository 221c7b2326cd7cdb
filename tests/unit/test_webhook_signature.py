"""The webhook signature scheme: signing, the headers, and the receiver's verification."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

import pytest

from tasks.webhook_signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    compute_signature,
    signature_headers,
    verify_signature,
)

SECRET = "whsec_test_0123456789"
TIMESTAMP = 1_700_000_000
BODY = b'{"event":"order.paid","id":42,"note":"caf\xc3\xa9"}'
# computed independently of the code under test
EXPECTED = hmac.new(SECRET.encode(), b"1700000000." + BODY, digestmod=hashlib.sha256).hexdigest()


def signed(secret: str = SECRET, timestamp: int = TIMESTAMP, body: bytes = BODY) -> dict[str, str]:
    return signature_headers(secret, timestamp, body)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    assert compute_signature(SECRET, TIMESTAMP, BODY) == EXPECTED


def test_known_vector_with_a_fixed_digest() -> None:
    # pins the scheme itself: a change of message layout or hash changes this value
    assert compute_signature("key", 1, b"x") == (
        hmac.new(b"key", b"1.x", hashlib.sha256).hexdigest()
    )
    assert len(compute_signature("key", 1, b"x")) == 64


def test_bytes_and_text_secrets_sign_alike() -> None:
    assert compute_signature(SECRET.encode(), TIMESTAMP, BODY) == EXPECTED


def test_signature_headers_carry_timestamp_and_versioned_signature() -> None:
    assert signed() == {
        "X-Conveyor-Timestamp": "1700000000",
        "X-Conveyor-Signature": f"v1={EXPECTED}",
    }
    assert TIMESTAMP_HEADER == "X-Conveyor-Timestamp"
    assert SIGNATURE_HEADER == "X-Conveyor-Signature"


def test_fresh_signature_verifies() -> None:
    assert verify_signature(SECRET, signed(), BODY, now=TIMESTAMP)


def test_verification_uses_the_current_time_by_default() -> None:
    now = int(time.time())

    assert verify_signature(SECRET, signed(timestamp=now), BODY)
    assert not verify_signature(SECRET, signed(timestamp=now - 3600), BODY)


@pytest.mark.parametrize("case", [str.lower, str.upper, str.title])
def test_header_names_are_matched_in_any_letter_case(case: Callable[[str], str]) -> None:
    headers = {case(name): value for name, value in signed().items()}

    assert verify_signature(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("offset", "valid"),
    [(0, True), (300, True), (301, False), (-300, True), (-301, False), (86_400, False)],
)
def test_default_tolerance_is_five_minutes_either_way(offset: int, valid: bool) -> None:
    # a positive offset: the signature is old (a replay); negative: it is from the future
    assert verify_signature(SECRET, signed(), BODY, now=TIMESTAMP + offset) is valid


def test_custom_tolerance() -> None:
    assert verify_signature(SECRET, signed(), BODY, tolerance=10, now=TIMESTAMP + 10)
    assert not verify_signature(SECRET, signed(), BODY, tolerance=10, now=TIMESTAMP + 11)
    assert not verify_signature(SECRET, signed(), BODY, tolerance=10, now=TIMESTAMP - 11)


@pytest.mark.parametrize(
    "body",
    [BODY + b" ", BODY[:-1], b"", BODY.replace(b"42", b"43"), BODY.decode().upper().encode()],
)
def test_tampered_body_fails(body: bytes) -> None:
    assert not verify_signature(SECRET, signed(), body, now=TIMESTAMP)


def test_wrong_secret_fails() -> None:
    assert not verify_signature("whsec_other", signed(), BODY, now=TIMESTAMP)
    assert not verify_signature(SECRET + "x", signed(), BODY, now=TIMESTAMP)


def test_timestamp_is_part_of_what_is_signed() -> None:
    headers = signed()
    headers[TIMESTAMP_HEADER] = str(TIMESTAMP + 1)  # still within the tolerance

    assert not verify_signature(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize("good_first", [True, False])
def test_any_of_several_v1_signatures_may_match_during_rotation(good_first: bool) -> None:
    old = compute_signature("whsec_old", TIMESTAMP, BODY)
    new = compute_signature("whsec_new", TIMESTAMP, BODY)
    values = [f"v1={new}", f"v1={old}"] if good_first else [f"v1={old}", f"v1={new}"]
    headers = {TIMESTAMP_HEADER: str(TIMESTAMP), SIGNATURE_HEADER: " , ".join(values)}

    assert verify_signature("whsec_new", headers, BODY, now=TIMESTAMP)
    assert verify_signature("whsec_old", headers, BODY, now=TIMESTAMP)
    assert not verify_signature("whsec_third", headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "v1=",
        EXPECTED,  # no scheme
        f"v0={EXPECTED}",  # another scheme
        f"V1={EXPECTED}",
        f"v1={EXPECTED.upper()}",
        f"v1={EXPECTED[:-1]}",
        f"v1={EXPECTED}0",
        "v1=deadbeef,v1=cafebabe",
    ],
)
def test_malformed_or_wrong_signature_fails(signature: str) -> None:
    headers = {TIMESTAMP_HEADER: str(TIMESTAMP), SIGNATURE_HEADER: signature}

    assert not verify_signature(SECRET, headers, BODY, now=TIMESTAMP)


def test_missing_signature_header_fails() -> None:
    assert not verify_signature(SECRET, {TIMESTAMP_HEADER: str(TIMESTAMP)}, BODY, now=TIMESTAMP)


def test_missing_timestamp_fails() -> None:
    headers = {SIGNATURE_HEADER: f"v1={EXPECTED}"}

    assert not verify_signature(SECRET, headers, BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "timestamp",
    ["", " ", "soon", "-1700000000", "1700000000.0", "1.7e9", "0x6553f100", "²", "¹⁷⁰⁰"],
)
def test_garbage_timestamp_fails_without_raising(timestamp: str) -> None:
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: f"v1={EXPECTED}"}

    assert verify_signature(SECRET, headers, BODY, now=TIMESTAMP) is False


def test_timestamp_with_surrounding_spaces_is_accepted() -> None:
    headers = {TIMESTAMP_HEADER: f" {TIMESTAMP} ", SIGNATURE_HEADER: f"v1={EXPECTED}"}

    assert verify_signature(SECRET, headers, BODY, now=TIMESTAMP)
