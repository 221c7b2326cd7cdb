"""The strict request-body parser: what it refuses, where it says the problem is, what it keeps."""

from __future__ import annotations

import copy
import json
import math
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api_shim.json_body import (
    MAX_PLAIN_NUMBER_LENGTH,
    JsonDocumentError,
    parse_json_document,
    plain_number_length,
)


def refused(raw: bytes, **limits: int) -> JsonDocumentError:
    with pytest.raises(JsonDocumentError) as caught:
        parse_json_document(raw, **limits)
    assert type(caught.value) is JsonDocumentError
    return caught.value


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(item) for item in value), default=0)
    return 0


# The error itself


def test_the_error_is_a_value_error_that_names_path_and_message() -> None:
    error = JsonDocumentError("NaN is refused", "$.a[2]")

    assert isinstance(error, ValueError)
    assert (error.message, error.path) == ("NaN is refused", "$.a[2]")
    assert str(error) == "$.a[2]: NaN is refused"
    assert JsonDocumentError("empty").path == "$"
    clone = copy.deepcopy(error)  # rebuilt from its args, as pickling does
    assert (clone.message, clone.path) == (error.message, error.path)


def test_limits_that_make_no_sense_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        parse_json_document(b"{}", max_depth=-1)
    with pytest.raises(ValueError, match="max_integer_digits"):
        parse_json_document(b"{}", max_integer_digits=0)


# Bytes and syntax


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "caf\xe9"}',  # Latin-1
        b'{"name": "\xc3"}',  # a truncated sequence
        b'"\xed\xa0\x80"',  # a surrogate encoded as if it were a character (CESU-8)
        b"\xff\xfe{\x00}\x00",  # UTF-16
    ],
)
def test_bytes_that_are_not_utf8_are_refused_as_such(raw: bytes) -> None:
    error = refused(raw)

    assert error.path == "$"
    assert "not valid UTF-8" in error.message
    assert "offset" in error.message


@pytest.mark.parametrize("raw", [b"", b" ", b"\r\n\t "])
def test_an_empty_body_is_refused(raw: bytes) -> None:
    error = refused(raw)

    assert error.path == "$"
    assert "empty" in error.message


def test_a_byte_order_mark_is_refused() -> None:
    assert "byte order mark" in refused(b"\xef\xbb\xbf{}").message


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"a": 1,}', "line 1, column 9"),
        (b'{\n  "a": 1,\n  "b": }', "line 3, column 8"),
        (b"{'a': 1}", "line 1, column 2"),
        (b"{} {}", "Extra data"),
        (b"[1, 2", "line 1, column 6"),
        (b'"a\x00b"', "Invalid control character"),  # a raw NUL byte, not the \u0000 escape
        (b'"\\x41"', "Invalid \\escape"),
    ],
)
def test_invalid_json_is_refused_with_line_and_column(raw: bytes, fragment: str) -> None:
    error = refused(raw)

    assert error.path == "$"
    assert error.message.startswith("invalid JSON: ")
    assert "line" in error.message
    assert "column" in error.message
    assert fragment in error.message


# Numbers


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_the_infinities_are_refused(literal: str) -> None:
    error = refused(literal.encode())

    assert error.path == "$"
    assert literal in error.message


def test_nan_in_a_nested_list_is_refused_at_its_path() -> None:
    error = refused(b'{"a": [1, 2, NaN]}')

    assert str(error) == "$.a[2]: NaN is not a JSON number; NaN and infinities are refused"


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"1e400", "$"),
        (b'{"x": {"y": [0, -1e400]}}', "$.x.y[1]"),
        (b'{"x": 1' + b"0" * 400 + b".5}", "$.x"),
    ],
)
def test_floats_that_overflow_to_infinity_are_refused(raw: bytes, path: str) -> None:
    error = refused(raw)

    assert error.path == path
    assert "overflows to infinity" in error.message
    assert len(error.message) < 120  # a long literal is shown shortened


def test_floats_that_underflow_to_zero_are_kept() -> None:
    assert parse_json_document(b"[1e-400, -1e-400]") == [0.0, -0.0]


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"1e308", "$"),
        (b"[1.7976931348623157e308]", "$[0]"),
        (b'{"x": [0, 2.2250738585072014e-308]}', "$.x[1]"),
        (b"1e-31", "$"),
        (b"1e32", "$"),
    ],
)
def test_numbers_the_ledger_would_print_in_many_more_digits_are_refused(
    raw: bytes, path: str
) -> None:
    error = refused(raw)

    assert error.path == path
    assert "plain decimal notation" in error.message


@pytest.mark.parametrize(
    "raw", [b"1e31", b"-1e-29", b"6.02e23", b"0.1", b"123456789.123456789", b"-2.5e-3"]
)
def test_numbers_that_print_short_in_plain_notation_are_kept(raw: bytes) -> None:
    number = parse_json_document(raw)

    assert number == float(raw)
    assert plain_number_length(number) <= MAX_PLAIN_NUMBER_LENGTH


def test_a_long_literal_may_print_as_long_as_twice_itself() -> None:
    # 40 significant digits: longer than 32 in plain notation, but not longer than sent
    literal = b"1234567890123456789012345678901234567.5"

    assert parse_json_document(literal) == float(literal)


@pytest.mark.timeout(5)
def test_a_5000_digit_integer_is_refused_before_conversion() -> None:
    error = refused(b'{"args": {"n": ' + b"7" * 5000 + b"}}")

    assert error.path == "$.args.n"
    assert error.message == "integer literal has 5000 digits; at most 4300 are allowed"


@pytest.mark.timeout(5)
def test_a_megabyte_integer_is_refused_without_quadratic_conversion() -> None:
    assert "1000000 digits" in refused(b"9" * 1_000_000).message


def test_the_integer_limit_counts_digits_not_the_sign() -> None:
    longest = "9" * 4300
    assert parse_json_document(f"[{longest}, -{longest}]".encode()) == [
        int(longest),
        -int(longest),
    ]
    assert refused(b"-" + b"9" * 4301).message.startswith("integer literal has 4301 digits")
    assert parse_json_document(b"[999, -999]", max_integer_digits=3) == [999, -999]
    assert refused(b"[1, [1000]]", max_integer_digits=3).path == "$[1][0]"


def test_an_interpreter_limit_lower_than_ours_is_still_a_document_error() -> None:
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        error = refused(b'{"n": ' + b"1" * 1000 + b"}")
    finally:
        sys.set_int_max_str_digits(before)

    assert error.path == "$.n"
    assert "too long to convert" in error.message


# Strings and keys


def test_nul_inside_a_nested_string_is_refused_at_its_path() -> None:
    error = refused(b'{"args": {"name": "a\\u0000b"}}')

    assert error.path == "$.args.name"
    assert "NUL" in error.message
    assert "JSONB" in error.message


def test_paths_name_list_positions_and_members() -> None:
    raw = b'{"jobs": [{}, {}, {}, {"args": {"name": "\\u0000"}}]}'

    assert refused(raw).path == "$.jobs[3].args.name"


def test_nul_inside_a_key_is_refused_at_that_member() -> None:
    error = refused(b'{"args": {"a\\u0000": 1}}')

    assert error.path == '$.args["a\\u0000"]'  # the path itself stays ASCII
    assert error.message.startswith("object key contains the NUL character")


@pytest.mark.parametrize(
    "escapes",
    [
        "\\ud800",  # a high surrogate alone
        "\\udc00",  # a low surrogate alone
        "\\uDBFF",  # upper-case hex
        "\\udc00\\ud800",  # a pair in the wrong order
        "\\ud800\\ud800",  # two high surrogates
        "x\\ud83d",  # a high surrogate at the end
    ],
)
def test_lone_surrogates_in_strings_are_refused(escapes: str) -> None:
    error = refused(f'{{"a": ["ok", "{escapes}"]}}'.encode())

    assert error.path == "$.a[1]"
    assert "lone UTF-16 surrogate" in error.message


def test_a_lone_surrogate_inside_a_key_is_refused() -> None:
    error = refused(b'{"args": {"\\udc00x": "v"}}')

    assert error.path == '$.args["\\udc00x"]'
    assert error.message.startswith("object key contains the lone UTF-16 surrogate U+DC00")


def test_a_surrogate_pair_is_one_character_and_kept() -> None:
    assert parse_json_document(b'{"emoji": "\\ud83d\\ude00 \\uD83D\\uDE00"}') == {
        "emoji": "\U0001f600 \U0001f600"
    }


@pytest.mark.parametrize(
    "raw",
    [
        b'"\\\\u0000"',  # an escaped backslash, then the text u0000
        b'"\\\\ud800"',
        b'{"\\\\u0000": "\\\\\\\\u0000"}',
        b'"\\u005cu0000"',  # the backslash itself as an escape
    ],
)
def test_an_escaped_backslash_before_u0000_is_text_and_kept(raw: bytes) -> None:
    assert parse_json_document(raw) == json.loads(raw)


def test_the_escaped_backslash_case_keeps_the_six_characters() -> None:
    assert parse_json_document(b'"\\\\u0000"') == "\\u0000"
    assert len("\\u0000") == 6


def test_an_escaped_backslash_then_a_real_nul_escape_is_refused() -> None:
    assert "NUL" in refused(b'["\\\\\\u0000"]').message


# Duplicate keys


def test_duplicate_keys_are_refused_at_the_repeated_member() -> None:
    error = refused(b'{"args": {"name": 1, "x": 2, "name": 1}}')

    assert error.path == "$.args.name"
    assert error.message.startswith('duplicate key "name"')


def test_the_same_key_in_different_objects_is_fine() -> None:
    raw = b'[{"a": 1}, {"a": 2, "b": {"a": 3}}]'

    assert parse_json_document(raw) == json.loads(raw)


def test_keys_that_are_not_identifiers_are_quoted_in_the_path() -> None:
    assert refused(b'{"a-b": 1, "a-b": 2}').path == '$["a-b"]'
    assert refused(b'{"a b": [-Infinity]}').path == '$["a b"][0]'


def test_the_first_problem_in_document_order_is_the_one_reported() -> None:
    assert refused(b"[NaN, 1e400]").message.startswith("NaN")
    assert refused(b"[1e400, NaN]").message.startswith("number 1e400")
    assert refused(b'{"a": "\\u0000", "\\ud800": 1}').path == "$.a"
    assert refused(b'{"\\ud800": "\\u0000"}').message.startswith("object key")


# Depth


def test_depth_counts_arrays_and_objects() -> None:
    assert parse_json_document(b'"scalar"', max_depth=0) == "scalar"
    assert refused(b"{}", max_depth=0).path == "$"
    assert parse_json_document(b"{}", max_depth=1) == {}
    assert parse_json_document(b'{"a": [{"b": []}]}', max_depth=4) == {"a": [{"b": []}]}
    assert "deeper than 3" in refused(b'{"a": [{"b": []}]}', max_depth=3).message


def test_32_levels_are_accepted_and_33_refused() -> None:
    assert parse_json_document(nested_arrays(32)) == json.loads(nested_arrays(32))
    assert refused(nested_arrays(33)).message == (
        "arrays and objects are nested deeper than 32 levels"
    )
    objects = b'{"a": ' * 32 + b"1" + b"}" * 32
    assert parse_json_document(objects) == json.loads(objects)
    assert "deeper than 32" in refused(b'{"a": ' * 33 + b"1" + b"}" * 33).message


def test_depth_is_the_deepest_branch_not_the_bracket_count() -> None:
    wide = json.dumps({"jobs": [{"args": {"v": [1, [2]]}}] * 500}).encode()

    assert parse_json_document(wide) == json.loads(wide)


def test_brackets_inside_strings_do_not_count() -> None:
    raw = json.dumps(
        {"a": "[" * 100, "b": '\\"[{' * 50, "c": "\\" * 7 + "[", "d": [["]]]" * 40]]}
    ).encode()

    assert parse_json_document(raw) == json.loads(raw)


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        nested_arrays(100_000),
        b'{"a": ' * 100_000,
        b"[{" * 50_000,
        b"[[]," * 100_000,  # deepening without long runs of opening brackets
    ],
)
def test_very_deep_input_is_refused_as_a_document_error(raw: bytes) -> None:
    assert "nested deeper than 32" in refused(raw).message


@pytest.mark.timeout(5)
def test_a_depth_limit_beyond_the_stack_still_gives_a_document_error() -> None:
    error = refused(nested_arrays(100_000), max_depth=1_000_000)

    assert "nested too deeply" in error.message


# Valid documents


@pytest.mark.parametrize(
    "raw",
    [
        b"null",
        b" true ",
        b"-0",
        b"-0.0",
        b"1E+2",
        b"3.141592653589793",
        b'"caf\xc3\xa9 \\u00e9 \\n\\t\\"\\/"',
        b"[]",
        b"{}",
        b'\n{"task": "diagnostics.echo", "args": {"value": "x"}, "priority": "normal"}\n',
        b'{"a": [1, 2.5, -3e-7, "\xe2\x82\xac", null, false, {"b": {}}]}',
        json.dumps({"k\u00e9y": ["\U0001f600", "\u2028"]}).encode(),
        json.dumps({"k\u00e9y": ["\U0001f600", "\u2028"]}, ensure_ascii=False).encode(),
    ],
)
def test_valid_documents_come_back_as_json_loads_gives_them(raw: bytes) -> None:
    assert parse_json_document(raw) == json.loads(raw)


def test_a_batch_of_a_thousand_jobs_parses() -> None:
    item = {"task": "diagnostics.echo", "args": {"value": "x"}, "priority": "normal"}
    raw = json.dumps({"jobs": [item] * 1000}).encode()

    assert parse_json_document(raw) == {"jobs": [item] * 1000}


# Properties

TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
# Structure characters in strings: they must not confuse the depth scan.
TRICKY_TEXT = st.text(st.sampled_from('[]{}"\\/u0d8 a\u00e9\U0001f600'))
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    # clean: numbers the ledger prints short (others are refused, see above)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30).filter(
        lambda number: plain_number_length(number) <= MAX_PLAIN_NUMBER_LENGTH
    )
    | TEXT
    | TRICKY_TEXT
)
# ``max_leaves=200`` lets st.recursive nest at most 8 containers (it stacks extend() while
# 2 ** levels <= max_leaves), so every value is at most 8 deep; the test checks depth <= 10.
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(TEXT | TRICKY_TEXT, children, max_size=5)
    ),
    max_leaves=200,
)


@settings(max_examples=300)
@given(value=JSON_VALUES, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_any_clean_json_parses_as_json_loads_parses_it(
    value: Any, ensure_ascii: bool, indent: int | None
) -> None:
    depth = depth_of(value)
    assert depth <= 10
    raw = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()

    assert parse_json_document(raw) == json.loads(raw)
    assert parse_json_document(raw, max_depth=depth) == json.loads(raw)
    if depth > 0:
        assert "nested deeper" in refused(raw, max_depth=depth - 1).message


def strict_reference(raw: bytes, max_depth: int) -> tuple[bool, Any]:
    """The same rules, written plainly with recursion: (accepted, document)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({key for key, _ in pairs}) != len(pairs):
            raise ValueError("duplicate")
        return dict(pairs)

    def no_constant(literal: str) -> Any:
        raise ValueError(literal)

    def finite(literal: str) -> float:
        number = float(literal)
        if math.isinf(number):
            raise ValueError(literal)
        return number

    def clean(value: Any, depth: int) -> bool:
        if isinstance(value, str):
            return not any(char == "\x00" or 0xD800 <= ord(char) <= 0xDFFF for char in value)
        if isinstance(value, dict):
            return depth < max_depth and all(
                clean(key, depth) and clean(item, depth + 1) for key, item in value.items()
            )
        if isinstance(value, list):
            return depth < max_depth and all(clean(item, depth + 1) for item in value)
        return True

    try:
        document = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=no_duplicates,
            parse_constant=no_constant,
            parse_float=finite,
        )
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return False, None
    return clean(document, 0), document


JSONISH = st.lists(
    st.sampled_from(
        [
            "[", "]", "{", "}", '"', ",", ":", " ", "\\", "\\\\", "\\u0000", "\\ud800",
            "\\udc00", "\\ud83d\\ude00", "u0000", "\\\"", "1", "-", "e400", ".5", "NaN",
            "Infinity", "true", "null", "a", "\u00e9", '"k"', '"k":', '{"k":1,"k":2}',
        ]
    ),
    max_size=30,
).map("".join)  # fmt: skip


@settings(max_examples=1000)
@given(raw=st.binary(max_size=40) | JSONISH.map(str.encode))
def test_arbitrary_input_is_accepted_exactly_when_the_plain_rules_accept_it(raw: bytes) -> None:
    accepted, document = strict_reference(raw, max_depth=3)
    try:
        parsed = parse_json_document(raw, max_depth=3)
    except JsonDocumentError:
        assert not accepted, raw
    else:
        assert accepted, raw
        assert parsed == document
