"""The one canonical encoding: deterministic JSON.

Rules (what makes two encoders agree byte for byte):

* objects have string keys, sorted by code point; no insignificant whitespace;
* integers only, in ``[-2**63, 2**64)``; **no floats** (amounts are integer fen);
* strings are UTF-8; byte strings never appear raw: records encode them as lowercase
  hex (digests, ids) or standard padded base64 (signatures, certificates), see
  :func:`b64` / :func:`unb64`.

Everything signed or hashed goes through :func:`encode`. Decoding untrusted input
goes through :func:`decode`, which bounds the size and nesting and rejects floats;
values that enter another way (contract arguments, state values, responses) are
checked with :func:`validate_value` at that edge. :func:`encode` does not re-check
(it is on every hot path), so it must only see values that passed one of those.
"""

from __future__ import annotations

import base64
import binascii
import functools
from typing import Any

import orjson

from .errors import InvalidInput

JSONValue = Any  # None | bool | int | str | list[JSONValue] | dict[str, JSONValue]

MAX_DEPTH = 32
_OPTS = orjson.OPT_SORT_KEYS


def encode(value: Any) -> bytes:
    """Canonical bytes of a JSON value built from dicts, lists, str, int, bool, None."""
    try:
        return orjson.dumps(value, option=_OPTS)
    except TypeError as exc:
        raise InvalidInput(
            f"value cannot be encoded canonically: {exc}", code="unencodable"
        ) from exc


def decode(
    data: bytes | str, *, max_bytes: int, what: str = "message", check_values: bool = True
) -> Any:
    """Parse untrusted canonical JSON, bounded in size and depth, rejecting floats.

    ``check_values=False`` leaves out the value check (:func:`validate_value`): only for
    a caller that parses the result into records whose parsers check every value they
    keep (and drop the rest), so that the check would run twice.
    """
    if isinstance(data, str):
        data = data.encode()
    if len(data) > max_bytes:
        raise InvalidInput(
            f"{what} is {len(data)} bytes, over the limit of {max_bytes}",
            code="too_large",
            hint="split the request or send less data",
        )
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}", code="malformed") from exc
    if check_values:
        validate_value(value, what=what)
    return value


def validate_value(value: Any, *, what: str = "value", depth: int = 0) -> None:
    """Raise InvalidInput unless ``value`` is a canonical JSON value (no floats)."""
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{what} nests deeper than {MAX_DEPTH} levels", code="too_deep")
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return
    if kind is int:
        if not -(2**63) <= value < 2**64:
            raise InvalidInput(f"{what} has an integer out of 64-bit range", code="malformed")
        return
    if kind is list or kind is tuple:
        for item in value:
            validate_value(item, what=what, depth=depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{what} has a non-string object key", code="malformed")
            validate_value(item, what=what, depth=depth + 1)
        return
    if isinstance(value, float):
        raise InvalidInput(
            f"{what} contains a floating-point number",
            code="float_not_allowed",
            hint="use integers (for money: integer fen)",
        )
    raise InvalidInput(f"{what} contains a {type(value).__name__}", code="malformed")


@functools.lru_cache(maxsize=4096)
def b64_cert(data: bytes) -> str:
    """:func:`b64` memoised, for certificates (the same few recur in every record)."""
    return b64(data)


@functools.lru_cache(maxsize=4096)
def unb64_cert(text: str, *, what: str = "certificate") -> bytes:
    """:func:`unb64` memoised, for certificates; errors are not cached."""
    return unb64(text, what=what)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, *, what: str = "field") -> bytes:
    """Strict base64: exactly one accepted spelling per byte string."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a base64 string", code="malformed")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid base64", code="malformed") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise InvalidInput(f"{what} is not canonical base64", code="malformed")
    return raw


def unhex(text: Any, *, what: str = "field", length: int | None = None) -> bytes:
    """Strict lowercase hex, optionally of an exact byte length."""
    try:
        raw = bytes.fromhex(text)  # then one spelling only: no spaces, no capitals
    except (TypeError, ValueError):
        raw = None
    if raw is None or raw.hex() != text:
        raise InvalidInput(f"{what} must be a lowercase hex string", code="malformed")
    if length is not None and len(raw) != length:
        raise InvalidInput(f"{what} must be {length} bytes", code="malformed")
    return raw
