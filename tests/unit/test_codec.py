"""The canonical encoding: deterministic bytes, bounded decoding, strict base64 and hex."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian import codec
from meridian.errors import InvalidInput

INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = st.none() | st.booleans() | INTS | st.text(max_size=20)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def _code(exc: pytest.ExceptionInfo[InvalidInput]) -> str:
    return exc.value.code


# ------------------------------------------------------------------------------ encode


def test_encode_sorts_keys_and_has_no_whitespace() -> None:
    value = {"b": 1, "a": {"d": [1, 2], "c": None}, "B": True}
    assert codec.encode(value) == b'{"B":true,"a":{"c":null,"d":[1,2]},"b":1}'


def test_encode_sorts_keys_by_code_point() -> None:
    assert codec.encode({"é": 1, "z": 2, "Z": 3}) == '{"Z":3,"z":2,"é":1}'.encode()


def test_encode_writes_strings_as_utf8() -> None:
    assert codec.encode("héllo ✓") == '"héllo ✓"'.encode()


def test_encode_accepts_the_64_bit_bounds() -> None:
    assert codec.encode([-(2**63), 2**64 - 1]) == b"[-9223372036854775808,18446744073709551615]"


@given(st.dictionaries(st.text(max_size=8), SCALARS, max_size=12), st.randoms())
def test_encode_is_independent_of_key_insertion_order(d: dict[str, Any], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    assert codec.encode({"outer": shuffled, "x": 1}) == codec.encode({"x": 1, "outer": d})
    assert codec.encode(shuffled) == codec.encode(d)


@given(JSON_VALUES)
def test_encode_decode_round_trip(value: Any) -> None:
    data = codec.encode(value)
    assert codec.decode(data, max_bytes=len(data)) == value
    assert codec.encode(codec.decode(data, max_bytes=len(data))) == data


def test_invalid_encode_integer_beyond_64_bits() -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.encode(2**64)
    assert _code(exc) == "unencodable"


def test_invalid_encode_non_string_key() -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.encode({1: "a"})
    assert _code(exc) == "unencodable"


def test_invalid_encode_arbitrary_object() -> None:
    with pytest.raises(InvalidInput):
        codec.encode({"x": object()})


# ------------------------------------------------------------------------------ decode


def test_decode_accepts_str_and_bytes() -> None:
    assert codec.decode('{"a":[1,"x"]}', max_bytes=100) == {"a": [1, "x"]}
    assert codec.decode(b'{"a":[1,"x"]}', max_bytes=100) == {"a": [1, "x"]}


def test_decode_accepts_exactly_max_bytes() -> None:
    data = codec.encode("x" * 10)
    assert codec.decode(data, max_bytes=len(data)) == "x" * 10


def test_invalid_decode_too_large() -> None:
    data = codec.encode("x" * 10)
    with pytest.raises(InvalidInput) as exc:
        codec.decode(data, max_bytes=len(data) - 1, what="request")
    assert _code(exc) == "too_large"
    assert "request" in exc.value.message
    assert exc.value.hint


def test_invalid_decode_too_large_counts_utf8_bytes_of_str() -> None:
    text = '"' + "é" * 10 + '"'  # 12 characters, 22 bytes
    with pytest.raises(InvalidInput) as exc:
        codec.decode(text, max_bytes=15)
    assert _code(exc) == "too_large"


def test_decode_accepts_moderate_nesting() -> None:
    nested = "[" * 30 + "1" + "]" * 30
    assert codec.decode(nested, max_bytes=1000) is not None


@pytest.mark.parametrize("depth", [40, 200])
def test_invalid_decode_too_deep(depth: int) -> None:
    for nested in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        with pytest.raises(InvalidInput) as exc:
            codec.decode(nested, max_bytes=10_000)
        assert _code(exc) == "too_deep"


@pytest.mark.parametrize(
    "data", [b"", b"{", b"[1,]", b"{'a':1}", b"NaN", b"Infinity", b"\xff\xfe", b"1 2", b"{a:1}"]
)
def test_invalid_decode_malformed(data: bytes) -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.decode(data, max_bytes=100)
    assert _code(exc) == "malformed"


@pytest.mark.parametrize("data", [b"1.5", b"1e3", b"[0.0]", b'{"amount":{"fen":-2.5E-1}}'])
def test_invalid_decode_float(data: bytes) -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.decode(data, max_bytes=100)
    assert _code(exc) == "float_not_allowed"
    assert exc.value.hint


@pytest.mark.parametrize("data", [b"18446744073709551616", b"-9223372036854775809"])
def test_invalid_decode_integer_out_of_range(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        codec.decode(data, max_bytes=100)


def test_validate_value_accepts_tuples_as_arrays() -> None:
    codec.validate_value({"rows": [("k", 1)]})
    assert codec.encode({"rows": [("k", 1)]}) == b'{"rows":[["k",1]]}'


def test_invalid_validate_value_rejects_non_json_types() -> None:
    for value in [b"bytes", {1, 2}, object()]:
        with pytest.raises(InvalidInput) as exc:
            codec.validate_value({"v": value})
        assert _code(exc) == "malformed"


def test_invalid_validate_value_rejects_non_string_keys() -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.validate_value({1: "a"})
    assert _code(exc) == "malformed"


# ------------------------------------------------------------------------------ base64


@given(st.binary(max_size=100))
def test_b64_round_trip(data: bytes) -> None:
    text = codec.b64(data)
    assert text == base64.b64encode(data).decode()
    assert codec.unb64(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "QQ",  # missing padding
        "QR==",  # non-zero padding bits: decodes to b"A" but is not its spelling
        "QUI=\n",  # trailing newline
        " QUI=",  # leading space
        "QU I=",  # embedded space
        "QUI-",  # url-safe alphabet
        "Q===",  # impossible padding
    ],
)
def test_invalid_unb64_non_canonical(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.unb64(text, what="signature")
    assert _code(exc) == "malformed"
    assert "signature" in exc.value.message


@pytest.mark.parametrize("value", [None, 5, b"QUI="])
def test_invalid_unb64_not_a_string(value: Any) -> None:
    with pytest.raises(InvalidInput):
        codec.unb64(value)


# --------------------------------------------------------------------------------- hex


@given(st.binary(max_size=64))
def test_unhex_round_trip(data: bytes) -> None:
    assert codec.unhex(data.hex()) == data
    assert codec.unhex(data.hex(), length=len(data)) == data


@pytest.mark.parametrize("text", ["ABCD", "aBcd", "abc", "zz", "0x00", "ab-cd"])
def test_invalid_unhex(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.unhex(text)
    assert _code(exc) == "malformed"


@pytest.mark.parametrize("text", ["ab cd", " abcd", "abcd\n"])
def test_invalid_unhex_whitespace(text: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.unhex(text)
    assert _code(exc) == "malformed"


def test_invalid_unhex_wrong_length() -> None:
    with pytest.raises(InvalidInput) as exc:
        codec.unhex("00" * 31, length=32)
    assert _code(exc) == "malformed"


def test_invalid_unhex_not_a_string() -> None:
    with pytest.raises(InvalidInput):
        codec.unhex(b"00")
