"""Plans, billing months and invoices: money in integer fen, months in CST."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.errors import InvalidInput, NotFound
from meridian.network.plans import (
    DEFAULT_PLANS,
    GIB,
    MAX_TIMESTAMP_MS,
    MAX_USAGE_COUNT,
    MIB,
    MIN_TIMESTAMP_MS,
    NetworkUsage,
    Plan,
    Usage,
    billing_date,
    billing_month,
    compute_invoice,
    compute_network_usage,
    compute_percent,
    days_in_month,
    format_bytes,
    format_cny,
    get_plan,
    get_upgrade,
    month_bounds_ms,
    render_invoice_html,
    render_invoice_text,
)


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1000


def usage(app: str = "shop", month: str = "2026-12", **kw: Any) -> Usage:
    fields: dict[str, Any] = {
        "requests": 1_234_567,
        "transactions": 98_765,
        "storage_bytes": 700 * MIB,
        "peak_tps": 150,
        "throttled": 42,
        "daily_requests": tuple(range(days_in_month(month))),
        "storage_peak_bytes": 900 * MIB,
    }
    fields.update(kw)
    return Usage(app, month, **fields)


def invoice(plan_id: str = "standard", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "network": "mainnet",
        "app": "shop",
        "owner": "org1",
        "plan": get_plan(plan_id),
        "usage": usage(),
        "issued_ms": utc_ms("2026-12-31T16:05:00"),  # 00:05 on 1 January, CST
    }
    args.update(kw)
    return compute_invoice(**args)


# --------------------------------------------------------------------------- plans

VALID_PLAN = {
    "id": "basic",
    "name": "Basic",
    "price_fen": 9_900,
    "tps": 50,
    "storage_bytes": GIB,
    "requests_per_month": 5_000_000,
}


def test_default_plans_round_trip_and_are_ordered_by_price() -> None:
    for plan in DEFAULT_PLANS:
        assert Plan.from_dict(orjson.loads(orjson.dumps(plan.to_dict()))) == plan
    assert [p.id for p in DEFAULT_PLANS] == ["free", "basic", "standard", "enterprise"]
    assert get_plan("free").price_fen == 0
    assert get_plan("basic").price_fen == 9_900  # ¥99 a month
    prices = [p.price_fen for p in DEFAULT_PLANS]
    assert prices == sorted(prices)


@given(
    plan_id=st.from_regex(r"[a-z][a-z0-9_-]{0,63}", fullmatch=True),
    name=st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=64),
    price_fen=st.integers(0, 10**12),
    tps=st.integers(1, 100_000),
    storage_bytes=st.integers(MIB, 2**50),
    requests=st.integers(1, 10**12),
)
def test_plan_dict_round_trip(
    plan_id: str, name: str, price_fen: int, tps: int, storage_bytes: int, requests: int
) -> None:
    plan = Plan(plan_id, name, price_fen, tps, storage_bytes, requests)
    assert Plan.from_dict(orjson.loads(orjson.dumps(plan.to_dict()))) == plan


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", "Basic"),
        ("id", "9lives"),
        ("id", ""),
        ("id", 7),
        ("name", ""),
        ("name", "x" * 65),
        ("name", " padded"),
        ("name", "line\nbreak"),
        ("name", None),
        ("price_fen", -1),
        ("price_fen", 10**12 + 1),
        ("price_fen", 99.0),
        ("price_fen", "9900"),
        ("price_fen", True),
        ("tps", 0),
        ("tps", 100_001),
        ("tps", False),
        ("storage_bytes", MIB - 1),
        ("storage_bytes", 2**50 + 1),
        ("storage_bytes", 1.5 * GIB),
        ("requests_per_month", 0),
        ("requests_per_month", 10**12 + 1),
    ],
)
def test_invalid_plan_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        Plan.from_dict({**VALID_PLAN, field: value})
    assert err.value.code == "bad_plan"
    assert err.value.hint and "fen" in err.value.hint


def test_invalid_plan_unknown_field() -> None:
    with pytest.raises(InvalidInput, match="gas") as err:
        Plan.from_dict({**VALID_PLAN, "gas": 1})
    assert err.value.code == "bad_plan"


@pytest.mark.parametrize("field", sorted(VALID_PLAN))
def test_invalid_plan_missing_field(field: str) -> None:
    d = dict(VALID_PLAN)
    del d[field]
    with pytest.raises(InvalidInput, match=field):
        Plan.from_dict(d)


@pytest.mark.parametrize("value", [None, [], "basic", 1])
def test_invalid_plan_not_an_object(value: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        Plan.from_dict(value)
    assert err.value.code == "bad_plan"


def test_invalid_plan_constructed_directly() -> None:
    with pytest.raises(InvalidInput):
        Plan("basic", "Basic", -1, 50, GIB, 1)


def test_invalid_unknown_plan_id() -> None:
    with pytest.raises(NotFound) as err:
        get_plan("platinum")
    assert err.value.code == "unknown_plan"
    assert err.value.hint and "enterprise" in err.value.hint


def test_upgrade_is_the_cheapest_plan_with_more() -> None:
    assert get_upgrade(get_plan("free"), "storage_bytes") == get_plan("basic")
    assert get_upgrade(get_plan("enterprise"), "tps") is None


# --------------------------------------------------------------------------- formatting


@pytest.mark.parametrize(
    ("fen", "text"),
    [
        (0, "¥0.00"),
        (1, "¥0.01"),
        (99, "¥0.99"),
        (9_900, "¥99.00"),
        (299_900, "¥2,999.00"),
        (10**12, "¥10,000,000,000.00"),
        (-5, "-¥0.05"),
    ],
)
def test_format_cny(fen: int, text: str) -> None:
    assert format_cny(fen) == text


@pytest.mark.parametrize("fen", [99.0, True, "9900", None])
def test_invalid_format_cny_non_integer(fen: Any) -> None:
    with pytest.raises(InvalidInput):
        format_cny(fen)


@given(st.integers(-(10**15), 10**15))
def test_format_cny_reads_back_exactly(fen: int) -> None:
    text = format_cny(fen)
    digits = text.replace("¥", "").replace(",", "").replace(".", "")
    assert int(digits) == fen


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.50 KiB"), (64 * MIB, "64.00 MiB"), (GIB, "1.00 GiB")],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_percent_rounds_half_up_and_may_exceed_100() -> None:
    assert compute_percent(0, 10) == 0
    assert compute_percent(1, 200) == 1  # 0.5% rounds up
    assert compute_percent(1, 201) == 0
    assert compute_percent(300, 100) == 300


# --------------------------------------------------------------------------- billing months


def test_billing_month_turns_at_cst_midnight() -> None:
    assert billing_month(utc_ms("2026-11-30T15:59:59") + 999) == "2026-11"
    assert billing_month(utc_ms("2026-11-30T16:00:00")) == "2026-12"  # 00:00 1 Dec, CST
    assert billing_month(utc_ms("2026-12-31T16:00:00")) == "2027-01"
    assert billing_month(0) == "1970-01"
    assert billing_date(utc_ms("2026-11-30T16:00:00")).isoformat() == "2026-12-01"


def test_month_bounds_are_cst_midnights() -> None:
    assert month_bounds_ms("2026-12") == (utc_ms("2026-11-30T16:00"), utc_ms("2026-12-31T16:00"))
    assert month_bounds_ms("2028-02") == (utc_ms("2028-01-31T16:00"), utc_ms("2028-02-29T16:00"))
    assert days_in_month("2028-02") == 29 and days_in_month("2026-02") == 28


@given(st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS))
def test_every_timestamp_lies_in_its_billing_month(timestamp_ms: int) -> None:
    start, end = month_bounds_ms(billing_month(timestamp_ms))
    assert start <= timestamp_ms < end
    assert billing_month(start) == billing_month(end - 1)
    assert end == MAX_TIMESTAMP_MS + 1 or billing_month(end) != billing_month(start)


@pytest.mark.parametrize(
    "month",
    [
        "2026-13",
        "2026-00",
        "2026-1",
        "26-01",
        "2026/01",
        "2026-01\n",
        "\uff12\uff10\uff12\uff16-01",  # fullwidth digits
        "1969-12",
        202601,
    ],
)
def test_invalid_month(month: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        month_bounds_ms(month)
    assert err.value.code == "bad_month"


@pytest.mark.parametrize(
    "timestamp_ms", [MIN_TIMESTAMP_MS - 1, MAX_TIMESTAMP_MS + 1, 1.5e12, True, "0"]
)
def test_invalid_timestamp(timestamp_ms: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        billing_month(timestamp_ms)
    assert err.value.code == "bad_timestamp"


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "kw",
    [
        {"requests": -1},
        {"peak_tps": 1.0},
        {"throttled": True},
        {"daily_requests": (0,) * 30},  # December has 31 days
        {"daily_requests": list(range(31))},
        {"storage_bytes": 2 * GIB, "storage_peak_bytes": GIB},
    ],
)
def test_invalid_usage(kw: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        usage(**kw)


def test_empty_usage_has_a_zero_for_every_day() -> None:
    empty = Usage.empty("shop", "2026-02")
    assert empty.daily_requests == (0,) * 28 and empty.requests == 0


def test_usage_dict_round_trip_ignores_extra_keys() -> None:
    u = usage()
    assert Usage.from_dict(orjson.loads(orjson.dumps(u.to_dict()))) == u
    assert Usage.from_dict({**u.to_dict(), "scope": "local", "node": "node2"}) == u


MISSING = object()


@pytest.mark.parametrize(
    "change",
    [
        {"requests": MISSING},
        {"requests": True},
        {"transactions": "5"},
        {"daily_requests": "0" * 31},
        {"daily_requests": [0] * 32},
        {"daily_requests": [0.0] * 31},
        {"month": "2026-13"},
        {"app": "Shop"},
    ],
)
def test_invalid_usage_from_dict(change: dict[str, Any]) -> None:
    d = {k: v for k, v in {**usage().to_dict(), **change}.items() if v is not MISSING}
    with pytest.raises(InvalidInput) as err:
        Usage.from_dict(d)
    assert err.value.code in ("bad_usage", "bad_month")


@pytest.mark.parametrize("value", [None, [], "usage"])
def test_invalid_usage_from_non_object(value: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        Usage.from_dict(value)
    assert err.value.code == "bad_usage"


# --------------------------------------------------------------------------- usage across nodes


def day_counts(month: str = "2026-12", **days: int) -> tuple[int, ...]:
    counts = [0] * days_in_month(month)
    for day, n in days.items():
        counts[int(day[1:]) - 1] = n
    return tuple(counts)


NODE1 = usage(
    requests=100,
    transactions=40,
    throttled=3,
    peak_tps=5,
    storage_bytes=10 * MIB,
    storage_peak_bytes=12 * MIB,
    daily_requests=day_counts(d1=60, d2=40),
)
NODE2 = usage(
    requests=30,
    transactions=20,
    throttled=1,
    peak_tps=4,
    storage_bytes=11 * MIB,
    storage_peak_bytes=11 * MIB,
    daily_requests=day_counts(d2=25, d31=5),
)


def test_network_usage_adds_counts_and_takes_the_largest_storage_and_peak() -> None:
    merged = compute_network_usage("shop", "2026-12", {"node2": NODE2, "node1": NODE1})
    total = merged.total
    assert (total.requests, total.transactions, total.throttled) == (130, 60, 4)
    assert total.daily_requests == day_counts(d1=60, d2=65, d31=5)
    # the same ledger measured by each node: never added up
    assert total.storage_bytes == 11 * MIB and total.storage_peak_bytes == 12 * MIB
    assert total.peak_tps == 5  # per-gateway peak (the quota's unit), not 9
    assert merged.complete and merged.missing == ()
    assert [node for node, _ in merged.by_node] == ["node1", "node2"]
    doc = merged.to_dict()
    assert doc["scope"] == "network" and doc["complete"] is True and doc["missing"] == []
    assert doc["requests"] == 130 and doc["daily_requests"] == list(total.daily_requests)
    assert doc["by_node"]["node2"] == {
        "requests": 30,
        "transactions": 20,
        "throttled": 1,
        "peak_tps": 4,
        "storage_bytes": 11 * MIB,
        "storage_peak_bytes": 11 * MIB,
    }
    assert orjson.loads(orjson.dumps(doc)) == doc


def test_network_usage_with_a_missing_node_is_incomplete_and_sums_the_others() -> None:
    merged = compute_network_usage("shop", "2026-12", {"node1": NODE1}, ["node3", "node2"])
    assert not merged.complete and merged.missing == ("node2", "node3")
    assert merged.total.requests == 100 and merged.total.transactions == 40
    doc = merged.to_dict()
    assert doc["complete"] is False and doc["missing"] == ["node2", "node3"]
    assert list(doc["by_node"]) == ["node1"]


def test_network_usage_of_no_answer_at_all_is_zero_and_incomplete() -> None:
    merged = compute_network_usage("shop", "2026-12", {}, ["node1"])
    assert merged.total == Usage.empty("shop", "2026-12")
    assert not merged.complete and merged.by_node == ()


def test_network_usage_saturates_instead_of_overflowing() -> None:
    huge = usage(requests=MAX_USAGE_COUNT, daily_requests=day_counts(d1=MAX_USAGE_COUNT))
    merged = compute_network_usage("shop", "2026-12", {"node1": huge, "node2": huge})
    assert merged.total.requests == MAX_USAGE_COUNT
    assert merged.total.daily_requests[0] == MAX_USAGE_COUNT


@pytest.mark.parametrize(
    ("by_node", "missing"),
    [
        ({"node1": usage(app="other")}, ()),  # another app's usage
        ({"node1": usage(month="2026-11", daily_requests=(0,) * 30)}, ()),  # another month
        ({"node1": NODE1}, ("node1",)),  # reported and missing at once
        ({"Node 1": NODE1}, ()),  # not a node id
        ({"node1": NODE1}, ("",)),
    ],
)
def test_invalid_network_usage(by_node: dict[str, Usage], missing: tuple[str, ...]) -> None:
    with pytest.raises(InvalidInput) as err:
        compute_network_usage("shop", "2026-12", by_node, missing)
    assert err.value.code == "bad_usage"


# --------------------------------------------------------------------------- invoices


def walk(value: Any) -> list[Any]:
    """Every leaf of a JSON-like structure."""
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value)
        return [leaf for v in value.values() for leaf in walk(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in walk(v)]
    return [value]


def test_invoice_is_the_flat_plan_fee_in_integer_fen() -> None:
    inv = invoice("standard")
    assert inv["invoice"] == "mainnet-shop-2026-12"
    assert inv["currency"] == "CNY" and inv["billed_to"] == "org1"
    assert [line["amount_fen"] for line in inv["lines"]] == [49_900]
    assert inv["subtotal_fen"] == inv["total_fen"] == 49_900
    assert inv["status"] == "final"
    assert "no overage" in inv["note"]
    by_resource = {row["resource"]: row for row in inv["usage"]}
    assert by_resource["requests"] == {
        "resource": "requests",
        "label": "Requests this month",
        "used": 1_234_567,
        "limit": 50_000_000,
        "unit": "count",
        "percent": 2,
    }
    assert by_resource["tps"]["percent"] == 75
    assert by_resource["storage"]["used"] == 900 * MIB  # the month's peak
    assert inv["daily_requests"] == list(range(31))


def test_invoice_is_json_without_a_single_float() -> None:
    inv = invoice("enterprise")
    assert orjson.loads(orjson.dumps(inv)) == inv
    leaves = walk(inv)
    assert all(isinstance(leaf, (str, int)) and not isinstance(leaf, float) for leaf in leaves)


def test_free_plan_invoice_totals_zero() -> None:
    inv = invoice("free")
    assert inv["total_fen"] == 0 and inv["subtotal_fen"] == 0
    assert "¥0.00" in render_invoice_text(inv)


def test_invoice_is_deterministic_and_a_preview_until_the_month_ends() -> None:
    _, end = month_bounds_ms("2026-12")
    assert invoice(issued_ms=end - 1)["status"] == "preview"
    assert invoice(issued_ms=end)["status"] == "final"
    assert invoice() == invoice()


def test_invalid_invoice_for_another_apps_usage() -> None:
    with pytest.raises(InvalidInput) as err:
        invoice(usage=usage(app="other"))
    assert err.value.code == "bad_invoice"


def test_invalid_invoice_names() -> None:
    with pytest.raises(InvalidInput):
        invoice(owner="<script>")


def test_text_invoice_is_aligned_and_shows_the_total() -> None:
    text = render_invoice_text(invoice("basic"))
    lines = text.splitlines()
    assert "mainnet-shop-2026-12" in text and "Billed to  org1" in text
    total = next(line for line in lines if line.startswith("Total (CNY)"))
    assert total.endswith("¥99.00") and len(total) == 72
    subtotal = next(line for line in lines if line.startswith("Subtotal"))
    assert len(subtotal) == len(total)  # amounts right-aligned in one column
    assert "Issued     2027-01-01 00:05 CST" in text
    assert re.search(r"Requests this month +1,234,567 +5,000,000 +25%", text)
    assert all(len(line) <= 72 for line in lines)


def network_invoice(missing: tuple[str, ...] = ()) -> dict[str, Any]:
    by_node = {"node1": NODE1} if missing else {"node1": NODE1, "node2": NODE2}
    merged: NetworkUsage = compute_network_usage("shop", "2026-12", by_node, missing)
    return invoice("basic", usage=merged)


def test_network_invoice_bills_the_flat_fee_over_the_summed_usage() -> None:
    inv = network_invoice()
    assert inv["total_fen"] == 9_900 and inv["lines"][0]["amount_fen"] == 9_900
    assert inv["transactions"] == 60 and inv["throttled"] == 4
    assert {row["resource"]: row["used"] for row in inv["usage"]}["requests"] == 130
    assert inv["scope"] == "network" and inv["complete"] is True and inv["missing"] == []
    assert list(inv["by_node"]) == ["node1", "node2"]
    text = render_invoice_text(inv)
    assert "Metered by node1, node2" in text and "INCOMPLETE" not in text
    assert re.search(r"node2 +30 +20 +1", text)
    assert all(len(line) <= 72 for line in text.splitlines())
    assert all(isinstance(leaf, (str, int)) for leaf in walk(inv))


def test_incomplete_network_invoice_says_so_and_bills_the_same() -> None:
    inv = network_invoice(missing=("node2",))
    assert inv["complete"] is False and inv["missing"] == ["node2"]
    assert inv["total_fen"] == network_invoice()["total_fen"]  # the amount never depends on it
    text = render_invoice_text(inv)
    assert "INCOMPLETE" in text and "node2" in text.split("INCOMPLETE", 1)[1]
    assert "Metered by node1 (no answer from node2)" in text
    assert re.search(r"node2 +not reached", text)
    assert all(len(line) <= 72 for line in text.splitlines())
    page = render_invoice_html(inv)
    assert 'class="incomplete"' in page and "not reached" in page
    assert 'class="incomplete"' not in render_invoice_html(network_invoice())


def test_plain_invoice_has_no_coverage_fields() -> None:
    inv = invoice("basic")
    assert {"scope", "complete", "missing", "by_node"}.isdisjoint(inv)
    assert "Metered by" not in render_invoice_text(inv)


def hostile_invoice() -> dict[str, Any]:
    plan = Plan("pro", "<b>Pro</b> & co", 9_900, 50, GIB, 5_000_000)
    inv = invoice(plan=plan)
    inv["app"] = "<script>alert(1)</script>"  # as if read back from a tampered file
    inv["billed_to"] = '"><img src=x onerror=alert(2)>'
    return inv


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.append(tag)


def test_html_invoice_escapes_every_value_and_shows_the_total() -> None:
    page = render_invoice_html(hostile_invoice())
    assert "¥99.00" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;Pro&lt;/b&gt; &amp; co" in page
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    parser = TagCollector()
    parser.feed(page)
    assert {"script", "img", "b"}.isdisjoint(parser.tags)


def test_html_invoice_draws_a_daily_chart_and_a_bar_per_quota() -> None:
    page = render_invoice_html(invoice("standard"))
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 4  # three quota bars and the daily chart
    chart = ET.fromstring(svgs[-1])
    bars = [el for el in chart if el.tag.endswith("rect")]
    assert len(bars) == 31
    heights = [int(bar.get("height", "-1")) for bar in bars]
    assert heights == sorted(heights) and heights[0] == 0 and heights[-1] > 0
    for svg in svgs[:3]:
        ET.fromstring(svg)  # well-formed
    assert "1,234,567 of 50,000,000 (2%)" in page
    assert "150 of 200 (75%)" in page
