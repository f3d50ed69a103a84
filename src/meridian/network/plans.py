"""Resource plans, billing months and monthly invoices, priced in ordinary money.

An app on the network picks a :class:`Plan`: a monthly price in CNY and hard monthly
quotas (sustained TPS, storage, gateway requests). There is no gas and no token:
prices and amounts are integer **fen** (1 yuan = 100 fen) everywhere, never floats.

Quotas are hard limits, not billing meters: the gateway refuses what is over them
(rate limits and exhausted requests with HTTP 429, storage with 403), so an invoice is
the flat monthly fee of the plan and nothing else — there are no overage charges.
The invoice still reports usage against each quota, so an org sees how close it came.

Billing months are calendar months in **China Standard Time** (UTC+8, a fixed offset:
China has no daylight saving time), so ``2026-11-30T16:00Z`` is already December.

Everything here is pure (no clock, no disk); the gateway's enforcement and metering
live in :mod:`meridian.gateway.quotas`.
"""

from __future__ import annotations

import calendar
import html
import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, NewType

from ..errors import InvalidInput, NotFound
from ..types import NAME_RE

Fen = NewType("Fen", int)

CURRENCY = "CNY"
FEN_PER_YUAN = 100
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB
PIB = 1024 * TIB

MAX_PLAN_NAME_CHARS = 64
MAX_PRICE_FEN = 10**12  # ¥10 billion a month: far beyond any real plan
MIN_PLAN_TPS = 1
MAX_PLAN_TPS = 100_000
MIN_PLAN_STORAGE_BYTES = MIB
MAX_PLAN_STORAGE_BYTES = PIB
MAX_REQUESTS_PER_MONTH = 10**12
MAX_USAGE_COUNT = 2**62  # any usage counter; SQLite integers are 64-bit signed
MAX_USAGE_NODES = 1_000  # hosting nodes whose usage one network-wide view sums

CST_OFFSET_MS = 8 * 3_600_000  # China Standard Time is UTC+8 all year round
DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
MIN_MONTH_YEAR = 1970
MAX_MONTH_YEAR = 9999
# Timestamps (ms since the Unix epoch) that fall in a billing month 1970-01 .. 9999-12.
MIN_TIMESTAMP_MS = -CST_OFFSET_MS  # 1970-01-01T00:00 CST
MAX_TIMESTAMP_MS = ((date(9999, 12, 31) - _EPOCH).days + 1) * DAY_MS - CST_OFFSET_MS - 1

_MONTH_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
_PLAN_FIELDS = ("id", "name", "price_fen", "tps", "storage_bytes", "requests_per_month")

NO_OVERAGE_NOTE = (
    "Quotas are hard limits: requests over them are refused, never billed. "
    "The plan's flat monthly fee is the whole charge; there are no overage charges."
)


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class Plan:
    """A resource plan: a flat monthly price and the hard quotas it buys.

    ``tps`` is the sustained rate of transactions one gateway admits for the app (its
    burst is one second's worth); ``storage_bytes`` bounds what the app stores: the
    encoded size of its valid transactions, checked at commit; ``requests_per_month``
    counts every gateway request (submits, evaluates, reads) in a billing month, on all
    the app's hosting nodes together. Constructing a
    plan validates it.
    """

    id: str
    name: str
    price_fen: int
    tps: int
    storage_bytes: int
    requests_per_month: int

    def __post_init__(self) -> None:
        validate_plan(self)

    def to_dict(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in _PLAN_FIELDS}

    @classmethod
    def from_dict(cls, d: Any) -> Plan:
        """A plan from its JSON form: exactly the six fields, exact types, in range."""
        if not isinstance(d, Mapping):
            raise _bad_plan(f"a plan must be a JSON object, not {type(d).__name__}")
        unknown = sorted(set(d) - set(_PLAN_FIELDS))
        if unknown:
            raise _bad_plan(f"unknown plan field(s) {', '.join(map(repr, unknown))}")
        missing = [f for f in _PLAN_FIELDS if f not in d]
        if missing:
            raise _bad_plan(f"plan is missing field(s) {', '.join(missing)}")
        return cls(**{field: d[field] for field in _PLAN_FIELDS})


def validate_plan(plan: Plan) -> None:
    """Raise ``InvalidInput(code="bad_plan")`` unless every field has its type and range."""
    if not isinstance(plan.id, str) or not NAME_RE.fullmatch(plan.id):
        raise _bad_plan(f"plan id {plan.id!r} must match {NAME_RE.pattern}")
    if (
        not isinstance(plan.name, str)
        or not 1 <= len(plan.name) <= MAX_PLAN_NAME_CHARS
        or not plan.name.isprintable()
        or plan.name.strip() != plan.name
    ):
        raise _bad_plan(
            f"plan name {plan.name!r} must be 1..{MAX_PLAN_NAME_CHARS} printable characters "
            "without leading or trailing spaces"
        )
    _check_int_field("price_fen", plan.price_fen, 0, MAX_PRICE_FEN)
    _check_int_field("tps", plan.tps, MIN_PLAN_TPS, MAX_PLAN_TPS)
    _check_int_field(
        "storage_bytes", plan.storage_bytes, MIN_PLAN_STORAGE_BYTES, MAX_PLAN_STORAGE_BYTES
    )
    _check_int_field("requests_per_month", plan.requests_per_month, 1, MAX_REQUESTS_PER_MONTH)


def _check_int_field(field: str, value: Any, lo: int, hi: int) -> None:
    if not _is_int(value) or not lo <= value <= hi:
        raise _bad_plan(f"plan {field} must be an integer in {lo}..{hi}, not {value!r}")


def _bad_plan(message: str) -> InvalidInput:
    return InvalidInput(
        message,
        code="bad_plan",
        hint="a plan is {id, name, price_fen, tps, storage_bytes, requests_per_month}; "
        "amounts are integer fen (¥1 = 100 fen), never floats",
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The catalogue. Prices are monthly, in fen. Each tier costs about 5x the one below and
# gives roughly 4-10x its quotas; requests per month are about 1/10 of what the tier's
# TPS could sustain around the clock (2.6M seconds a month), since load is bursty.
DEFAULT_PLANS: tuple[Plan, ...] = (
    Plan("free", "Free", 0, 5, 64 * MIB, 100_000),
    Plan("basic", "Basic", 9_900, 50, 1 * GIB, 5_000_000),
    Plan("standard", "Standard", 49_900, 200, 10 * GIB, 50_000_000),
    Plan("enterprise", "Enterprise", 299_900, 1_000, 100 * GIB, 500_000_000),
)


def get_plan(plan_id: str, catalogue: tuple[Plan, ...] = DEFAULT_PLANS) -> Plan:
    """The plan called ``plan_id`` in ``catalogue``, or ``NotFound(code="unknown_plan")``."""
    for plan in catalogue:
        if plan.id == plan_id:
            return plan
    raise NotFound(
        f"no plan {plan_id!r}",
        code="unknown_plan",
        hint=f"known plans: {', '.join(p.id for p in catalogue)}",
    )


def get_upgrade(
    plan: Plan, resource: str, catalogue: tuple[Plan, ...] = DEFAULT_PLANS
) -> Plan | None:
    """The cheapest plan in ``catalogue`` with more of ``resource`` than ``plan`` has."""
    more = [p for p in catalogue if getattr(p, resource) > getattr(plan, resource)]
    return min(more, key=lambda p: (p.price_fen, p.id), default=None)


# --------------------------------------------------------------------------- formatting


def format_cny(fen: int) -> str:
    """``9900`` → ``"¥99.00"``, ``299900`` → ``"¥2,999.00"``; integer arithmetic only."""
    if not _is_int(fen):
        raise InvalidInput(f"an amount must be integer fen, not {fen!r}", code="bad_amount")
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), FEN_PER_YUAN)
    return f"{sign}¥{yuan:,}.{cents:02d}"


def format_bytes(n: int) -> str:
    """``1536`` → ``"1.50 KiB"`` (binary units, two decimals, rounded down)."""
    if n < KIB:
        return f"{n} B"
    for unit, suffix in ((PIB, "PiB"), (TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if n >= unit:
            hundredths = n * 100 // unit
            return f"{hundredths // 100:,}.{hundredths % 100:02d} {suffix}"
    raise AssertionError("unreachable")  # pragma: no cover


def compute_percent(used: int, limit: int) -> int:
    """``used`` as a whole percentage of ``limit``, rounded half up (may exceed 100)."""
    return (used * 100 + limit // 2) // limit


# --------------------------------------------------------------------------- billing months


def billing_date(timestamp_ms: int) -> date:
    """The calendar date in China Standard Time (fixed UTC+8) of a Unix-ms timestamp."""
    if not _is_int(timestamp_ms) or not MIN_TIMESTAMP_MS <= timestamp_ms <= MAX_TIMESTAMP_MS:
        raise InvalidInput(
            f"timestamp {timestamp_ms!r} is not integer ms since the Unix epoch in range",
            code="bad_timestamp",
        )
    return _EPOCH + timedelta(days=(timestamp_ms + CST_OFFSET_MS) // DAY_MS)


def billing_month(timestamp_ms: int) -> str:
    """The billing month ``"YYYY-MM"`` of a Unix-ms timestamp.

    Months are calendar months in China Standard Time, a fixed UTC+8 offset (China
    keeps no daylight saving time): a month starts at 16:00 UTC on the last day of the
    previous month.
    """
    day = billing_date(timestamp_ms)
    return f"{day.year:04d}-{day.month:02d}"


def parse_month(month: Any) -> tuple[int, int]:
    """``"2026-12"`` → ``(2026, 12)``; ``InvalidInput(code="bad_month")`` otherwise."""
    match = _MONTH_RE.fullmatch(month) if isinstance(month, str) else None
    if match is None or not MIN_MONTH_YEAR <= int(match[1]) <= MAX_MONTH_YEAR:
        raise InvalidInput(
            f"{month!r} is not a billing month",
            code="bad_month",
            hint=f'months are written "YYYY-MM" (e.g. "2026-12"), {MIN_MONTH_YEAR} or later',
        )
    return int(match[1]), int(match[2])


def days_in_month(month: str) -> int:
    year, mon = parse_month(month)
    return calendar.monthrange(year, mon)[1]


def month_bounds_ms(month: str) -> tuple[int, int]:
    """``(start, end)`` of a billing month in Unix ms: start inclusive, end exclusive."""
    year, mon = parse_month(month)
    first_day = (date(year, mon, 1) - _EPOCH).days
    start = first_day * DAY_MS - CST_OFFSET_MS
    return start, start + calendar.monthrange(year, mon)[1] * DAY_MS


# --------------------------------------------------------------------------- usage


@dataclass(frozen=True, slots=True)
class Usage:
    """What one app used in one billing month, as metered by a gateway (or, merged by
    :func:`compute_network_usage`, by all its hosting nodes' gateways).

    ``storage_bytes`` is the latest storage sample of the month (carried over from an
    earlier month if the month has none yet), ``storage_peak_bytes`` the month's
    largest; ``throttled`` counts requests refused with 429; ``daily_requests`` has one
    entry per day of the month (CST days), for a chart.
    """

    app: str
    month: str
    requests: int
    transactions: int
    storage_bytes: int
    peak_tps: int
    throttled: int
    daily_requests: tuple[int, ...]
    storage_peak_bytes: int

    def __post_init__(self) -> None:
        if not isinstance(self.app, str) or not NAME_RE.fullmatch(self.app):
            raise InvalidInput(f"{self.app!r} is not an app name", code="bad_usage")
        days = days_in_month(self.month)
        if not isinstance(self.daily_requests, tuple):
            raise InvalidInput("daily_requests must be a tuple", code="bad_usage")
        counters = (
            self.requests,
            self.transactions,
            self.storage_bytes,
            self.peak_tps,
            self.throttled,
            self.storage_peak_bytes,
            *self.daily_requests,
        )
        if not all(_is_int(c) and 0 <= c <= MAX_USAGE_COUNT for c in counters):
            raise InvalidInput("usage counters must be non-negative integers", code="bad_usage")
        if self.storage_peak_bytes < self.storage_bytes:
            raise InvalidInput("peak storage is below the latest sample", code="bad_usage")
        if len(self.daily_requests) != days:
            raise InvalidInput(
                f"{self.month} has {days} days, not {len(self.daily_requests)} daily counts",
                code="bad_usage",
            )

    @classmethod
    def empty(cls, app: str, month: str) -> Usage:
        return cls(app, month, 0, 0, 0, 0, 0, (0,) * days_in_month(month), 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "month": self.month,
            "requests": self.requests,
            "transactions": self.transactions,
            "storage_bytes": self.storage_bytes,
            "storage_peak_bytes": self.storage_peak_bytes,
            "peak_tps": self.peak_tps,
            "throttled": self.throttled,
            "daily_requests": list(self.daily_requests),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Usage:
        """A usage from its JSON form (another gateway's answer): every field of
        :meth:`to_dict` with its exact type, checked like a constructed one; other
        keys (``scope``, ``node``) are ignored. ``InvalidInput(code="bad_usage")``."""
        if not isinstance(d, Mapping):
            raise InvalidInput("usage must be a JSON object", code="bad_usage")
        missing = [f for f in _USAGE_FIELDS if f not in d]
        if missing:
            raise InvalidInput(f"usage is missing field(s) {', '.join(missing)}", code="bad_usage")
        daily = d["daily_requests"]
        if not isinstance(daily, list) or len(daily) > 31:
            raise InvalidInput("daily_requests must be a list of day counts", code="bad_usage")
        fields = {f: d[f] for f in _USAGE_FIELDS}
        return cls(**{**fields, "daily_requests": tuple(daily)})


_USAGE_FIELDS = (
    "app",
    "month",
    "requests",
    "transactions",
    "storage_bytes",
    "peak_tps",
    "throttled",
    "daily_requests",
    "storage_peak_bytes",
)


@dataclass(frozen=True, slots=True)
class NetworkUsage:
    """An app's usage of a month across its hosting nodes (:func:`compute_network_usage`).

    ``total`` is the merged usage, ``by_node`` what each node that answered metered
    (sorted by node id), ``missing`` the hosting nodes that could not be asked: while
    any is missing the totals are lower bounds and ``complete`` is false.
    """

    total: Usage
    by_node: tuple[tuple[str, Usage], ...]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.total.to_dict(),
            "scope": "network",
            "complete": self.complete,
            "missing": list(self.missing),
            "by_node": {node: _node_counters(usage) for node, usage in self.by_node},
        }


def _node_counters(usage: Usage) -> dict[str, int]:
    return {
        "requests": usage.requests,
        "transactions": usage.transactions,
        "throttled": usage.throttled,
        "peak_tps": usage.peak_tps,
        "storage_bytes": usage.storage_bytes,
        "storage_peak_bytes": usage.storage_peak_bytes,
    }


def compute_network_usage(
    app: str, month: str, by_node: Mapping[str, Usage], missing: Iterable[str] = ()
) -> NetworkUsage:
    """Merge what each hosting node's gateway metered for ``app`` in ``month``.

    Each gateway counts only the requests it served, so ``requests``,
    ``transactions``, ``throttled`` and the daily counts **add up** (saturating at
    ``MAX_USAGE_COUNT``). Every node holds the same ledger and measures it itself, so
    storage is **not** added: the latest sample and the peak are the largest any node
    reported. ``peak_tps`` is the **largest** per-gateway peak: the plan's TPS is a
    per-gateway limit (each gateway admits it), so this is the figure the quota
    compares with; the network-wide rate in one second may have been up to the sum of
    the per-node peaks, which ``by_node`` keeps. ``missing`` names hosting nodes that
    did not answer. Pure; ``InvalidInput(code="bad_usage")`` for a usage of another app
    or month, a bad node id, or a node both reported and missing.
    """
    days = days_in_month(month)
    missing_nodes = tuple(sorted(set(missing)))
    nodes = sorted(by_node)
    if len(nodes) + len(missing_nodes) > MAX_USAGE_NODES:
        raise InvalidInput(f"usage of more than {MAX_USAGE_NODES} nodes", code="bad_usage")
    for node in (*nodes, *missing_nodes):
        if not isinstance(node, str) or not NAME_RE.fullmatch(node):
            raise InvalidInput(f"{node!r} is not a node id", code="bad_usage")
    both = set(nodes) & set(missing_nodes)
    if both:
        raise InvalidInput(
            f"node(s) {', '.join(sorted(both))} both reported and missing", code="bad_usage"
        )
    parts = [by_node[node] for node in nodes]
    for node, usage in zip(nodes, parts, strict=True):
        if usage.app != app or usage.month != month:
            raise InvalidInput(
                f"{node} reported usage of {usage.app} in {usage.month}, not {app} in {month}",
                code="bad_usage",
            )

    def total(values: Iterable[int]) -> int:
        return min(MAX_USAGE_COUNT, sum(values))

    merged = Usage(
        app=app,
        month=month,
        requests=total(u.requests for u in parts),
        transactions=total(u.transactions for u in parts),
        storage_bytes=max((u.storage_bytes for u in parts), default=0),
        peak_tps=max((u.peak_tps for u in parts), default=0),
        throttled=total(u.throttled for u in parts),
        daily_requests=tuple(total(u.daily_requests[day] for u in parts) for day in range(days)),
        storage_peak_bytes=max((u.storage_peak_bytes for u in parts), default=0),
    )
    return NetworkUsage(merged, tuple(zip(nodes, parts, strict=True)), missing_nodes)


# --------------------------------------------------------------------------- invoices


def compute_invoice(
    *,
    network: str,
    app: str,
    owner: str,
    plan: Plan,
    usage: Usage | NetworkUsage,
    issued_ms: int,
) -> dict[str, Any]:
    """The JSON invoice of ``app`` for ``usage.month``: integers and strings only.

    The only line is the plan's flat monthly fee (quotas are hard limits, so nothing
    is ever billed over them). The plan is the one in force when the invoice is
    issued, charged for the whole month (no proration). An invoice issued before the
    month ends is a ``"preview"``; from the first instant of the next month it is
    ``"final"``. The number ``{network}-{app}-{month}`` is deterministic, so issuing
    twice gives the same invoice.

    With a :class:`NetworkUsage` (the gateways' invoices) the usage is the app's
    across its hosting nodes, and the invoice also says ``complete``, which nodes are
    ``missing`` and what each node metered (``by_node``). The amount never depends on
    usage, so an incomplete invoice bills the same; only its usage report is partial.
    """
    coverage = usage if isinstance(usage, NetworkUsage) else None
    usage = usage.total if isinstance(usage, NetworkUsage) else usage
    for what, name in (("network", network), ("app", app), ("owner", owner)):
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise InvalidInput(f"{what} {name!r} is not a valid name", code="bad_invoice")
    if usage.app != app:
        raise InvalidInput(f"usage is for app {usage.app!r}, not {app!r}", code="bad_invoice")
    start_ms, end_ms = month_bounds_ms(usage.month)
    billing_date(issued_ms)  # validates the timestamp
    subtotal = plan.price_fen
    return {
        "invoice": f"{network}-{app}-{usage.month}",
        "status": "final" if issued_ms >= end_ms else "preview",
        "network": network,
        "app": app,
        "billed_to": owner,
        "month": usage.month,
        "period_start_ms": start_ms,
        "period_end_ms": end_ms,
        "timezone": "China Standard Time, UTC+8",
        "issued_ms": issued_ms,
        "currency": CURRENCY,
        "plan": plan.to_dict(),
        "lines": [
            {
                "description": f"{plan.name} plan, {usage.month}, flat monthly fee",
                "quantity": 1,
                "unit_price_fen": plan.price_fen,
                "amount_fen": plan.price_fen,
            }
        ],
        "usage": _compute_usage_lines(plan, usage),
        "transactions": usage.transactions,
        "throttled": usage.throttled,
        "storage_bytes": usage.storage_bytes,
        "daily_requests": list(usage.daily_requests),
        "subtotal_fen": subtotal,
        "total_fen": subtotal,
        "note": NO_OVERAGE_NOTE,
        **(_compute_coverage(coverage) if coverage is not None else {}),
    }


def _compute_coverage(usage: NetworkUsage) -> dict[str, Any]:
    doc = usage.to_dict()
    return {key: doc[key] for key in ("scope", "complete", "missing", "by_node")}


def _compute_usage_lines(plan: Plan, usage: Usage) -> list[dict[str, Any]]:
    rows = (
        ("requests", "Requests this month", usage.requests, plan.requests_per_month, "count"),
        ("tps", "Peak transactions per second", usage.peak_tps, plan.tps, "count"),
        ("storage", "Peak storage", usage.storage_peak_bytes, plan.storage_bytes, "bytes"),
    )
    return [
        {
            "resource": resource,
            "label": label,
            "used": used,
            "limit": limit,
            "unit": unit,
            "percent": compute_percent(used, limit),
        }
        for resource, label, used, limit, unit in rows
    ]


# --------------------------------------------------------------------------- rendering


def _format_quantity(value: int, unit: str) -> str:
    return format_bytes(value) if unit == "bytes" else f"{value:,}"


def _format_timestamp(timestamp_ms: int) -> str:
    day = billing_date(timestamp_ms)
    minute_of_day = (timestamp_ms + CST_OFFSET_MS) % DAY_MS // 60_000
    return f"{day.isoformat()} {minute_of_day // 60:02d}:{minute_of_day % 60:02d} CST"


def render_invoice_text(invoice: Mapping[str, Any]) -> str:
    """The invoice as aligned plain text, for a terminal."""
    width = 72
    plan = invoice["plan"]
    header = [
        ("Invoice", invoice["invoice"] + ("" if invoice["status"] == "final" else " (preview)")),
        ("Network", invoice["network"]),
        ("App", invoice["app"]),
        ("Billed to", invoice["billed_to"]),
        ("Month", f"{invoice['month']} ({invoice['timezone']})"),
        ("Issued", _format_timestamp(invoice["issued_ms"])),
        ("Plan", f"{plan['name']} ({plan['id']}), {format_cny(plan['price_fen'])} a month"),
    ]
    out = ["MERIDIAN INVOICE".center(width), ""]
    out += [f"{key:<11}{value}" for key, value in header]
    if "by_node" in invoice:
        metered = _metered_by(invoice)
        out += textwrap.wrap(f"{'Metered by':<11}{metered}", width, subsequent_indent=" " * 11)
    if invoice.get("complete") is False:
        out += ["", *textwrap.wrap(_incomplete_warning(invoice), width)]
    out += ["", f"{'Description':<56}{'Amount':>16}", "-" * width]
    for line in invoice["lines"]:
        out.append(f"{line['description'][:55]:<56}{format_cny(line['amount_fen']):>16}")
    out.append("-" * width)
    out.append(f"{'Subtotal':<56}{format_cny(invoice['subtotal_fen']):>16}")
    out.append(f"{'Total (' + invoice['currency'] + ')':<56}{format_cny(invoice['total_fen']):>16}")
    out += ["", f"{'Usage':<32}{'Used':>16}{'Quota':>16}{'Used %':>8}", "-" * width]
    for row in invoice["usage"]:
        used = _format_quantity(row["used"], row["unit"])
        limit = _format_quantity(row["limit"], row["unit"])
        out.append(f"{row['label']:<32}{used:>16}{limit:>16}{row['percent']:>7}%")
    out += _render_nodes_text(invoice, width)
    out += [
        "",
        f"Transactions committed: {invoice['transactions']:,}",
        f"Requests refused (429): {invoice['throttled']:,}",
        f"Storage at last sample: {format_bytes(invoice['storage_bytes'])}",
        "",
        textwrap.fill(invoice["note"], width),
    ]
    return "\n".join(line.rstrip() for line in out) + "\n"


def _metered_by(invoice: Mapping[str, Any]) -> str:
    """The nodes whose usage a network-wide invoice sums, and those that did not answer."""
    text = ", ".join(invoice["by_node"]) or "no node"
    if invoice["missing"]:
        text += f" (no answer from {', '.join(invoice['missing'])})"
    return text


def _incomplete_warning(invoice: Mapping[str, Any]) -> str:
    missing = ", ".join(invoice["missing"])
    return (
        f"INCOMPLETE: the usage below leaves out what {missing} metered (not reachable "
        "when this invoice was issued); it is a lower bound. The amount is not affected."
    )


def _render_nodes_text(invoice: Mapping[str, Any], width: int) -> list[str]:
    """The per-node breakdown of a network-wide invoice (none for a plain one)."""
    if "by_node" not in invoice:
        return []
    out = [
        "",
        f"{'Metered by node':<24}{'Requests':>16}{'Transactions':>16}{'Refused (429)':>16}",
        "-" * width,
    ]
    for node, row in invoice["by_node"].items():
        out.append(
            f"{node[:23]:<24}{row['requests']:>16,}{row['transactions']:>16,}"
            f"{row['throttled']:>16,}"
        )
    out += [f"{node[:23]:<24}{'not reached':>16}" for node in invoice["missing"]]
    return out


_STYLE = """
body{font-family:system-ui,sans-serif;color:#1f2933;max-width:760px;margin:2em auto;padding:0 1em}
h1{font-size:1.4em;margin-bottom:0}.muted{color:#616e7c}
table{border-collapse:collapse;width:100%;margin:1em 0}
th,td{text-align:left;padding:.3em .5em;border-bottom:1px solid #e4e7eb}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.total td{font-weight:bold;border-top:2px solid #1f2933}
.preview{color:#b44d12;font-weight:bold}
.incomplete{color:#ab091e;font-weight:bold;border:2px solid #ab091e;padding:.5em}
tr.missing td{color:#ab091e}
"""
_CHART_W, _CHART_H, _BAR_W = 640, 160, 480


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _bar_colour(percent: int) -> str:
    if percent >= 100:
        return "#d64545"
    return "#de911d" if percent >= 80 else "#3ebd93"


def _render_daily_chart(daily: list[int], month: str) -> str:
    """An SVG bar chart of requests per day (integer geometry)."""
    top = max([1, *daily])
    plot_h = _CHART_H - 20
    step = _CHART_W // max(1, len(daily))
    bars = []
    for i, count in enumerate(daily):
        h = count * plot_h // top
        bars.append(
            f'<rect x="{i * step + 1}" y="{plot_h - h}" width="{step - 2}" height="{h}" '
            f'fill="#2186eb"><title>{_esc(month)}-{i + 1:02d}: {count:,} requests</title></rect>'
        )
    labels = "".join(
        f'<text x="{(day - 1) * step + step // 2}" y="{_CHART_H - 4}" font-size="10" '
        f'text-anchor="middle">{day}</text>'
        for day in (1, 10, 20, len(daily))
        if 1 <= day <= len(daily)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_CHART_W}" height="{_CHART_H}" '
        f'role="img" aria-label="Requests per day in {_esc(month)}, peak {top:,}">'
        f'<text x="0" y="10" font-size="10" fill="#616e7c">peak {top:,}/day</text>'
        f'{"".join(bars)}<line x1="0" y1="{plot_h}" x2="{_CHART_W}" y2="{plot_h}" '
        f'stroke="#9aa5b1"/>{labels}</svg>'
    )


def _render_quota_bar(row: Mapping[str, Any]) -> str:
    """One SVG bar: the share of a quota used (capped at the full width)."""
    used, limit, percent = row["used"], row["limit"], row["percent"]
    fill = min(used, limit) * _BAR_W // limit
    caption = (
        f"{_format_quantity(used, row['unit'])} of {_format_quantity(limit, row['unit'])} "
        f"({percent}%)"
    )
    return (
        f"<div>{_esc(row['label'])}</div>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_BAR_W + 160}" height="22" '
        f'role="img" aria-label="{_esc(row["label"])}: {_esc(caption)}">'
        f'<rect x="0" y="3" width="{_BAR_W}" height="16" rx="3" fill="#e4e7eb"/>'
        f'<rect x="0" y="3" width="{fill}" height="16" rx="3" fill="{_bar_colour(percent)}"/>'
        f'<text x="{_BAR_W + 8}" y="16" font-size="12">{_esc(caption)}</text></svg>'
    )


def _render_nodes_html(invoice: Mapping[str, Any]) -> str:
    """The per-node breakdown of a network-wide invoice as a table (none for a plain one)."""
    if "by_node" not in invoice:
        return ""
    keys = ("requests", "transactions", "throttled")
    rows = "".join(
        f"<tr><td>{_esc(node)}</td>"
        + "".join(f'<td class="num">{_esc(f"{row[key]:,}")}</td>' for key in keys)
        + "</tr>"
        for node, row in invoice["by_node"].items()
    )
    rows += "".join(
        f'<tr class="missing"><td>{_esc(node)}</td>'
        '<td colspan="3">not reached: its usage is missing</td></tr>'
        for node in invoice["missing"]
    )
    return (
        '<h2>Usage by node</h2><table><tr><th>Node</th><th class="num">Requests</th>'
        '<th class="num">Transactions</th><th class="num">Refused (429)</th></tr>'
        f"{rows}</table>"
    )


def render_invoice_html(invoice: Mapping[str, Any]) -> str:
    """The invoice as one self-contained HTML page, every value escaped."""
    plan = invoice["plan"]
    preview = (
        ""
        if invoice["status"] == "final"
        else '<p class="preview">Preview: the month is not over yet.</p>'
    )
    lines = "".join(
        f"<tr><td>{_esc(line['description'])}</td>"
        f'<td class="num">{_esc(format_cny(line["amount_fen"]))}</td></tr>'
        for line in invoice["lines"]
    )
    facts = [
        ("Network", invoice["network"]),
        ("App", invoice["app"]),
        ("Billed to", invoice["billed_to"]),
        ("Month", f"{invoice['month']} ({invoice['timezone']})"),
        ("Issued", _format_timestamp(invoice["issued_ms"])),
        ("Plan", f"{plan['name']} ({plan['id']}), {format_cny(plan['price_fen'])} a month"),
    ]
    if "by_node" in invoice:
        facts.append(("Metered by", _metered_by(invoice)))
    facts_html = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
    incomplete = (
        f'<p class="incomplete">{_esc(_incomplete_warning(invoice))}</p>'
        if invoice.get("complete") is False
        else ""
    )
    quota_bars = "".join(_render_quota_bar(row) for row in invoice["usage"])
    total = _esc(format_cny(invoice["total_fen"]))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Invoice {_esc(invoice["invoice"])}</title><style>{_STYLE}</style></head>
<body>
<h1>Meridian invoice {_esc(invoice["invoice"])}</h1>
{preview}
{incomplete}
<table>{facts_html}</table>
<table><tr><th>Description</th><th class="num">Amount</th></tr>{lines}
<tr><td>Subtotal</td><td class="num">{_esc(format_cny(invoice["subtotal_fen"]))}</td></tr>
<tr class="total"><td>Total ({_esc(invoice["currency"])})</td><td class="num">{total}</td></tr>
</table>
<h2>Usage against quotas</h2>
{quota_bars}
{_render_nodes_html(invoice)}
<p>Transactions committed: {_esc(f"{invoice['transactions']:,}")} &middot;
Requests refused (429): {_esc(f"{invoice['throttled']:,}")} &middot;
Storage at last sample: {_esc(format_bytes(invoice["storage_bytes"]))}</p>
<h2>Requests per day</h2>
{_render_daily_chart(list(invoice["daily_requests"]), invoice["month"])}
<p class="muted">{_esc(invoice["note"])}</p>
</body></html>
"""
