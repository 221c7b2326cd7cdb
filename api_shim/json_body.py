"""Strict JSON request bodies: refuse what would break PostgreSQL JSONB or Python."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from functools import lru_cache
from itertools import accumulate
from typing import Any, Final, TypeAlias

__all__ = [
    "MAX_PLAIN_NUMBER_LENGTH",
    "JsonDocumentError",
    "parse_json_document",
    "plain_number_length",
]

# A location inside the document as a chain (parent, key or index), built only when reporting.
_Trail: TypeAlias = "tuple[_Trail, str | int] | None"

_JSON_WHITESPACE: Final = " \t\r\n"
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The raw bytes read as a run of harmless pieces: text without backslashes, escapes other than
# \u, \u escapes of neither NUL nor a surrogate, and surrogate pairs. Where that reading stops
# early there is a NUL or a lone surrogate escape (or invalid JSON); only then are the decoded
# strings walked. An escaped backslash ("\\u0000") and an escaped emoji pass without the walk.
_HARMLESS_ESCAPES: Final = re.compile(
    rb"(?:[^\\]++"
    rb"|\\[^u]"
    rb"|\\u(?!0000|[dD][89a-fA-F])[0-9a-fA-F]{4}"
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb")*+"
)
_BAD_CHARACTER: Final = re.compile(r"[\x00\ud800-\udfff]")

# The depth scan keeps only brackets (braces folded into them) and quotes, once escaped
# backslashes and escaped quotes are gone; then it drops string contents.
_FOLD_BRACES: Final = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE: Final = bytes(byte for byte in range(256) if byte not in b'[]{}"')
_DEPTH_STEP: Final = {ord("["): 1, ord("]"): -1}

_LITERAL_PREVIEW: Final = 24
#: The longest plain decimal form a number with a fraction or an exponent may take.
MAX_PLAIN_NUMBER_LENGTH: Final = 32


class JsonDocumentError(ValueError):
    """A request body that is not acceptable JSON, with where in the document and why."""

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(message, path)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class _Abort(Exception):  # noqa: N818 - internal control flow, never seen outside this module
    """Raised by the fast pass's hooks; the slow pass then finds where the problem is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Rejected:
    """Stands in for a value the slow pass refused, so that the walk can report its path."""

    __slots__ = ("member", "message")

    def __init__(self, message: str, member: str | None = None) -> None:
        self.message = message
        self.member = member


def parse_json_document(raw: bytes, *, max_depth: int = 32, max_integer_digits: int = 4300) -> Any:
    """Parse a request body, raising JsonDocumentError for anything the system cannot store.

    Refused: bytes that are not UTF-8, an empty body, invalid JSON, NaN and the infinities,
    integers longer than ``max_integer_digits`` digits, floats that overflow, the NUL character
    and lone UTF-16 surrogates in strings and keys, arrays and objects nested deeper than
    ``max_depth`` (a top-level scalar is depth 0, ``{}`` depth 1) and duplicate keys.
    """
    if max_depth < 0 or max_integer_digits < 1:
        raise ValueError("max_depth must be >= 0 and max_integer_digits >= 1")
    if not raw:
        raise JsonDocumentError("the request body is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonDocumentError(
            f"the request body is not valid UTF-8: byte 0x{raw[error.start]:02x} "
            f"at offset {error.start} ({error.reason})"
        ) from error
    if text.startswith("\ufeff"):
        raise JsonDocumentError("the request body starts with a byte order mark (U+FEFF)")
    # Before the C scanner sees it, so that it never recurses deeper than allowed.
    if _nesting_exceeds(raw, max_depth):
        raise JsonDocumentError(f"arrays and objects are nested deeper than {max_depth} levels")

    fast, slow = _decoders(max_integer_digits)
    suspect = b"\\u" in raw and _escapes_suspect(raw)
    try:
        document = _decode(fast, text)
    except _Abort as abort:
        located = _first_problem(_decode(slow, text), check_text=suspect)
        raise located or JsonDocumentError(abort.message) from None
    if suspect:
        located = _first_problem(document, check_text=True)
        if located is not None:
            raise located
    return document


def _decode(decoder: json.JSONDecoder, text: str) -> Any:
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as error:
        if not text.strip(_JSON_WHITESPACE):
            raise JsonDocumentError("the request body is empty") from error
        raise JsonDocumentError(
            f"invalid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from error
    except RecursionError as error:  # only when the caller allows more depth than the stack
        raise JsonDocumentError("arrays and objects are nested too deeply to parse") from error


def _nesting_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether arrays and objects outside strings nest deeper than ``max_depth``, in C loops."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    scan = raw
    if b"\\" in scan:
        # A run of backslashes pairs up from its start, as the JSON lexer reads it; what is left
        # of a run escapes the next character, which matters only when that is a quote.
        scan = scan.replace(b"\\\\", b"").replace(b'\\"', b"")
    scan = scan.translate(_FOLD_BRACES, _NOT_STRUCTURE)
    if b'"' in scan:
        # Removing two adjacent quotes keeps every bracket on its side of every string; what is
        # left are the (rare) strings that hold brackets, dropped with their contents.
        scan = scan.replace(b'""', b"")
        if b'"' in scan:
            scan = b"".join(scan.split(b'"')[::2])
    if b"[" * (max_depth + 1) in scan:
        return True
    # Each pass removes the innermost pairs, one level; balanced input is empty within max_depth.
    nested = scan
    for _ in range(max_depth):
        shorter = nested.replace(b"[]", b"")
        if not shorter:
            return False
        if len(shorter) == len(nested):
            break
        nested = shorter
    # Too deep, or unbalanced (invalid JSON, refused later): the deepest point decides.
    return max(accumulate(map(_DEPTH_STEP.__getitem__, scan)), default=0) > max_depth


def _escapes_suspect(raw: bytes) -> bool:
    """Whether a \\u escape in ``raw`` might decode to NUL or to a lone surrogate."""
    clean = _HARMLESS_ESCAPES.match(raw)
    return clean is None or clean.end() != len(raw)


@lru_cache(maxsize=16)
def _decoders(max_integer_digits: int) -> tuple[json.JSONDecoder, json.JSONDecoder]:
    """The fast decoder (aborts at the first problem) and the slow one (marks every problem).

    Both are stateless and shared, like the one behind ``json.loads``.
    """

    def integer_problem(literal: str) -> str | None:
        digits = len(literal) - literal.startswith("-")
        if digits > max_integer_digits:
            return f"integer literal has {digits} digits; at most {max_integer_digits} are allowed"
        return None

    def fast_int(literal: str) -> int:
        problem = integer_problem(literal)
        if problem is not None:
            raise _Abort(problem)
        try:
            return int(literal)
        except ValueError as error:  # the interpreter's own limit is lower than ours
            raise _Abort(f"integer literal is too long to convert: {error}") from None

    def slow_int(literal: str) -> int | _Rejected:
        problem = integer_problem(literal)
        if problem is not None:
            return _Rejected(problem)
        try:
            return int(literal)
        except ValueError as error:
            return _Rejected(f"integer literal is too long to convert: {error}")

    def fast_float(literal: str) -> float:
        number = float(literal)
        problem = float_problem(literal, number)
        if problem is not None:
            raise _Abort(problem)
        return number

    def slow_float(literal: str) -> float | _Rejected:
        number = float(literal)
        problem = float_problem(literal, number)
        if problem is not None:
            return _Rejected(problem)
        return number

    def fast_constant(literal: str) -> Any:
        raise _Abort(_constant_message(literal))

    def slow_constant(literal: str) -> _Rejected:
        return _Rejected(_constant_message(literal))

    def fast_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            raise _Abort("duplicate key in one object")
        return obj

    def slow_object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Rejected:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return _Rejected(
                    f"duplicate key {json.dumps(key)} in one object: which value counts is"
                    " ambiguous",
                    member=key,
                )
            seen.add(key)
        raise AssertionError("unreachable: a shorter dict has a repeated key")

    fast = json.JSONDecoder(
        parse_int=fast_int,
        parse_float=fast_float,
        parse_constant=fast_constant,
        object_pairs_hook=fast_object,
    )
    slow = json.JSONDecoder(
        parse_int=slow_int,
        parse_float=slow_float,
        parse_constant=slow_constant,
        object_pairs_hook=slow_object,
    )
    return fast, slow


def float_problem(literal: str, number: float) -> str | None:
    """Why a JSON number with a fraction or exponent is refused, if it is.

    PostgreSQL keeps JSON numbers as decimals and prints them in plain notation: ``1e308``
    would come back from the ledger as 309 digits. A number whose plain form is longer than
    :data:`MAX_PLAIN_NUMBER_LENGTH` characters, and longer than twice what was sent, is
    refused, so that no answer and no message grows far beyond the request.
    """
    if math.isinf(number):
        return _overflow_message(literal)
    plain = plain_number_length(number)
    if plain > max(MAX_PLAIN_NUMBER_LENGTH, 2 * len(literal)):
        shown = _shown_literal(literal)
        return (
            f"number {shown} would take {plain} characters in the ledger, which keeps numbers in"
            f" plain decimal notation; at most {MAX_PLAIN_NUMBER_LENGTH} are allowed"
        )
    return None


def plain_number_length(number: float) -> int:
    """How many characters ``number`` takes in plain decimal notation (as the ledger prints it)."""
    return len(format(Decimal(repr(number)), "f"))


def _shown_literal(literal: str) -> str:
    return literal if len(literal) <= _LITERAL_PREVIEW else f"{literal[:_LITERAL_PREVIEW]}..."


def _overflow_message(literal: str) -> str:
    return f"number {_shown_literal(literal)} is too large for a double (it overflows to infinity)"


def _constant_message(literal: str) -> str:
    return f"{literal} is not a JSON number; NaN and infinities are refused"


def _first_problem(document: Any, *, check_text: bool) -> JsonDocumentError | None:
    """The first refused value in document order, walking iteratively (no recursion)."""
    stack: list[tuple[Any, _Trail, bool]] = [(document, None, False)]
    while stack:
        value, trail, is_key = stack.pop()
        if isinstance(value, dict):
            for key, item in reversed(value.items()):
                member: _Trail = (trail, key)
                stack.append((item, member, False))
                if check_text:
                    stack.append((key, member, True))
        elif isinstance(value, list):
            stack.extend(
                (value[index], (trail, index), False) for index in reversed(range(len(value)))
            )
        elif isinstance(value, str):
            if check_text:
                bad = _BAD_CHARACTER.search(value)
                if bad is not None:
                    return JsonDocumentError(
                        _character_message(bad.group(), is_key), _render(trail)
                    )
        elif isinstance(value, _Rejected):
            if value.member is not None:
                trail = (trail, value.member)
            return JsonDocumentError(value.message, _render(trail))
    return None


def _character_message(character: str, is_key: bool) -> str:
    where = "object key" if is_key else "string"
    if character == "\x00":
        return f"{where} contains the NUL character U+0000, which PostgreSQL JSONB cannot store"
    return (
        f"{where} contains the lone UTF-16 surrogate U+{ord(character):04X}"
        " (a \\u escape without its pair), which is not a Unicode character"
    )


def _render(trail: _Trail) -> str:
    """``$.jobs[3].args.name``; keys that are not identifiers as ``["a b"]``, ASCII-escaped."""
    parts: list[str] = []
    while trail is not None:
        trail, step = trail
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENTIFIER.fullmatch(step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{json.dumps(step)}]")
    parts.append("$")
    return "".join(reversed(parts))
