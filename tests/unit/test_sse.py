"""The SDK's server-sent-events parser: block messages, and the error that ends a stream."""

from __future__ import annotations

import orjson
import pytest

from meridian.client.core import SseParser, parse_sse
from meridian.errors import CertificateError, Forbidden


def _message(number: int) -> list[str]:
    data = {"block": number, "hash": "ab", "timestamp_ms": 1, "txs": [], "events": []}
    return [f"id: {number}", "event: block", f"data: {orjson.dumps(data).decode()}", ""]


def _error(status: int, code: str) -> list[str]:
    body = {"status": status, "error": {"code": code, "message": "lost access", "hint": "h"}}
    return ["event: error", f"data: {orjson.dumps(body).decode()}", ""]


def test_blocks_then_comments_and_heartbeats() -> None:
    lines = [": connected", "", *_message(3), ": heartbeat", "", *_message(4)]
    assert [e.block for e in parse_sse(iter(lines))] == [3, 4]


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [(403, "not_a_member", Forbidden), (401, "certificate_revoked", CertificateError)],
)
def test_an_error_event_raises_the_typed_error_after_the_blocks_before_it(
    status: int, code: str, cls: type[Exception]
) -> None:
    got = []
    with pytest.raises(cls) as err:
        for event in parse_sse(iter([*_message(7), *_error(status, code), *_message(8)])):
            got.append(event.block)
    assert got == [7]
    assert err.value.code == code and err.value.hint == "h"  # type: ignore[attr-defined]


def test_the_event_type_applies_to_one_message_only() -> None:
    parser = SseParser()
    *head, last = _error(403, "not_a_member")
    for line in head:
        assert parser.feed(line) is None
    with pytest.raises(Forbidden):
        parser.feed(last)
    *head, last = _message(1)[2:]  # a data line without its own "event:" line
    assert all(parser.feed(line) is None for line in head)
    event = parser.feed(last)
    assert event is not None and event.block == 1
