"""Node-local enforcement of an app's plan, and metering of what the app used.

* :class:`RateLimiter` holds each app to its plan's TPS with a token bucket (HTTP 429
  ``rate_limited`` + ``Retry-After`` when over it).
* :func:`check_requests_quota` refuses requests once the month's quota is used up
  (HTTP 429 ``quota_exhausted``, retry when the next billing month starts);
  :func:`check_storage_quota` refuses submits to an app that has used all of its
  storage (HTTP 403 ``storage_quota_exceeded``; the binding check is validation's,
  at commit). Both are pure.
* :class:`UsageMeter` counts requests, transactions, refusals and storage per app and
  billing month in a small SQLite file, for quotas and invoices
  (:func:`meridian.network.plans.compute_invoice`).

Everything here is per node: each gateway limits and meters what it serves itself.
The requests quota is the app's across its hosting nodes: the gateway passes
:func:`check_requests_quota` its own count plus the other gateways' (see
:mod:`meridian.gateway.peer_usage`); the rate limit stays per gateway.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Busy, Forbidden, InvalidInput
from ..network.plans import (
    Plan,
    Usage,
    billing_date,
    billing_month,
    days_in_month,
    format_bytes,
    get_upgrade,
    month_bounds_ms,
)
from ..types import NAME_RE

MAX_RATE_BUCKETS = 10_000
MIN_RETRY_AFTER_S = 0.001
MAX_COUNT_PER_CALL = 10**9
METER_FLUSH_EVERY = 1_000  # calls between flushes
METER_FLUSH_INTERVAL_S = 1.0
_TOKEN_EPSILON = 1e-9  # float slack, so waiting exactly retry_after_s always admits


# --------------------------------------------------------------------------- rate limits


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per app: capacity ``tps`` (one second's burst), refilled at ``tps``/s.

    The plan's TPS is passed on every call, so a plan change takes effect at once
    (a downgrade caps the bucket at the new capacity). At most ``max_apps`` buckets are
    kept; the least recently used is forgotten first, which at worst grants a
    forgotten app one fresh burst.
    """

    def __init__(
        self,
        *,
        max_apps: int = MAX_RATE_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_apps < 1:
            raise InvalidInput("max_apps must be at least 1", code="bad_config")
        self._max_apps = max_apps
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, app: str, tps: int, cost: int = 1, now: float | None = None) -> None:
        """Take ``cost`` tokens for ``app`` or raise ``Busy(code="rate_limited")``.

        A batch of n transactions costs n. A batch larger than the bucket can never
        be admitted, so it is refused outright (``InvalidInput(code="batch_over_rate")``)
        rather than told to retry.
        """
        _check_count("tps", tps, low=1)
        _check_count("cost", cost, low=1)
        if cost > tps:
            raise InvalidInput(
                f"a batch of {cost} transactions exceeds the plan's rate of {tps} per second",
                code="batch_over_rate",
                hint=f"send batches of at most {tps} transactions, or upgrade the plan",
                details={"tps": tps, "cost": cost},
            )
        now = self._clock() if now is None else now
        bucket = self._get_bucket(app, tps, now)
        if now > bucket.updated:
            bucket.tokens = min(float(tps), bucket.tokens + (now - bucket.updated) * tps)
            bucket.updated = now
        bucket.tokens = min(bucket.tokens, float(tps))
        if bucket.tokens + _TOKEN_EPSILON >= cost:
            bucket.tokens -= cost
            return
        retry_after_s = max(
            MIN_RETRY_AFTER_S, math.ceil((cost - bucket.tokens) / tps * 1000) / 1000
        )
        raise Busy(
            f"app {app!r} is over its plan's rate of {tps} transactions per second",
            retry_after_s=retry_after_s,
            code="rate_limited",
            hint=f"retry after {retry_after_s:.3f}s; spread requests out or upgrade the plan",
            details={"tps": tps, "retry_after_ms": math.ceil(retry_after_s * 1000)},
        )

    def _get_bucket(self, app: str, tps: int, now: float) -> _Bucket:
        bucket = self._buckets.get(app)
        if bucket is not None:
            self._buckets.move_to_end(app)
            return bucket
        while len(self._buckets) >= self._max_apps:
            self._buckets.popitem(last=False)
        bucket = self._buckets[app] = _Bucket(tokens=float(tps), updated=now)
        return bucket


# --------------------------------------------------------------------------- quotas


def check_requests_quota(usage_requests: int, plan: Plan, *, now_ms: int | None = None) -> None:
    """Raise ``Busy(code="quota_exhausted")`` if the month's requests are used up.

    ``retry_after_s`` is the time until the next billing month (CST) starts and the
    quota renews. ``now_ms`` defaults to the wall clock.
    """
    _check_count("usage_requests", usage_requests, low=0, high=2**63 - 1)
    if usage_requests < plan.requests_per_month:
        return
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    month = billing_month(now_ms)
    _, end_ms = month_bounds_ms(month)
    retry_after_s = max(MIN_RETRY_AFTER_S, (end_ms - now_ms) / 1000)
    upgrade = get_upgrade(plan, "requests_per_month")
    raise Busy(
        f"the plan's {plan.requests_per_month:,} requests for {month} are used up",
        retry_after_s=retry_after_s,
        code="quota_exhausted",
        hint=(
            f"upgrade the plan (e.g. to {upgrade.id!r}: {upgrade.requests_per_month:,} "
            "requests a month) or wait for the next billing month"
            if upgrade
            else "upgrade the plan or wait for the next billing month"
        ),
        details={"month": month, "limit": plan.requests_per_month, "used": usage_requests},
    )


def check_storage_quota(stored_bytes: int, plan: Plan) -> None:
    """Raise ``Forbidden(code="storage_quota_exceeded")`` once an app has stored all
    its plan allows: the gateway's up-front refusal, before a transaction costs
    endorsement and ordering. The binding check is validation's (step 12 in
    :mod:`meridian.node.validate`), which refuses at commit, on every node alike, the
    transaction that would take the app past its quota. What an app stores never
    shrinks (a delete is one more transaction), so the way on is a larger plan.
    """
    _check_count("stored_bytes", stored_bytes, low=0, high=2**63 - 1)
    if stored_bytes < plan.storage_bytes:
        return
    upgrade = get_upgrade(plan, "storage_bytes")
    bigger = f" (e.g. {upgrade.id!r}: {format_bytes(upgrade.storage_bytes)})" if upgrade else ""
    raise Forbidden(
        f"the app has stored {format_bytes(stored_bytes)}: all of its "
        f"{format_bytes(plan.storage_bytes)} storage quota",
        code="storage_quota_exceeded",
        hint=f"its owner moves it to a larger plan{bigger} (governance set_app_plan)",
        details={"used_bytes": stored_bytes, "limit_bytes": plan.storage_bytes},
    )


def _check_count(what: str, value: Any, *, low: int, high: int = MAX_COUNT_PER_CALL) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{what} must be an integer in {low}..{high}, not {value!r}")


def _check_app(app: Any) -> None:
    if not isinstance(app, str) or not NAME_RE.fullmatch(app):
        raise InvalidInput(f"{app!r} is not an app name", code="bad_app")


# --------------------------------------------------------------------------- metering

_SCHEMA = """
CREATE TABLE IF NOT EXISTS monthly (
    app TEXT NOT NULL,
    month TEXT NOT NULL,                 -- "YYYY-MM", China Standard Time
    requests INTEGER NOT NULL,
    transactions INTEGER NOT NULL,
    throttled INTEGER NOT NULL,
    peak_tps INTEGER NOT NULL,
    storage_bytes INTEGER NOT NULL,      -- the latest sample of the month
    storage_at_ms INTEGER NOT NULL,      -- its timestamp; -1: no sample this month
    storage_peak_bytes INTEGER NOT NULL,
    PRIMARY KEY (app, month)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS daily (
    app TEXT NOT NULL,
    month TEXT NOT NULL,
    day INTEGER NOT NULL,                -- day of the month, 1..31, CST
    requests INTEGER NOT NULL,
    PRIMARY KEY (app, month, day)
) WITHOUT ROWID;
"""

_UPSERT_MONTHLY = """
INSERT INTO monthly VALUES (?,?,?,?,?,?,?,?,?)
ON CONFLICT (app, month) DO UPDATE SET
    requests = requests + excluded.requests,
    transactions = transactions + excluded.transactions,
    throttled = throttled + excluded.throttled,
    peak_tps = max(peak_tps, excluded.peak_tps),
    storage_bytes = CASE WHEN excluded.storage_at_ms >= storage_at_ms
                    THEN excluded.storage_bytes ELSE storage_bytes END,
    storage_at_ms = max(storage_at_ms, excluded.storage_at_ms),
    storage_peak_bytes = max(storage_peak_bytes, excluded.storage_peak_bytes)
"""

_UPSERT_DAILY = """
INSERT INTO daily VALUES (?,?,?,?)
ON CONFLICT (app, month, day) DO UPDATE SET requests = requests + excluded.requests
"""


@dataclass(slots=True)
class _Delta:
    """Increments to one (app, month) row not yet written to the file."""

    requests: int = 0
    transactions: int = 0
    throttled: int = 0
    peak_tps: int = 0
    storage_bytes: int = 0
    storage_at_ms: int = -1
    storage_peak_bytes: int = 0


class UsageMeter:
    """Per-node usage of each app per billing month, in a SQLite file.

    Increments are buffered in memory and written in one transaction every
    ``flush_every`` calls or once ``flush_interval_s`` has passed since the last
    flush (checked on each call; the gateway should also call :meth:`flush` from a
    periodic task so a quiet app's last counts reach the file). The file uses WAL with
    ``synchronous=NORMAL``: metering may lose at most the last flush interval on a
    crash — it is not acknowledged data, unlike the ledger and the pending queue.

    ``record_requests`` is for requests the gateway served; refusals with 429 go to
    ``record_throttled``. One connection, guarded by a lock: meant for one asyncio
    event loop, safe if a worker thread calls in too.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_every: int = METER_FLUSH_EVERY,
        flush_interval_s: float = METER_FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_every < 1 or flush_interval_s < 0:
            raise InvalidInput("flush_every must be ≥ 1 and flush_interval_s ≥ 0")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._flush_every = flush_every
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._last_flush = clock()
        self._calls = 0
        self._monthly: dict[tuple[str, str], _Delta] = {}
        self._daily: dict[tuple[str, str, int], int] = {}
        self._closed = False

    # ---- recording

    def record_requests(self, app: str, timestamp_ms: int, count: int = 1) -> None:
        """Count ``count`` served gateway requests (submits, evaluates, reads)."""
        _check_count("count", count, low=0)
        with self._lock:
            delta, month, day = self._delta(app, timestamp_ms)
            delta.requests += count
            self._daily[(app, month, day)] = self._daily.get((app, month, day), 0) + count
            self._after_record()

    def record_transactions(
        self, app: str, timestamp_ms: int, count: int, tps_sample: int | None = None
    ) -> None:
        """Count ``count`` transactions; ``tps_sample`` raises the month's peak TPS."""
        _check_count("count", count, low=0)
        if tps_sample is not None:
            _check_count("tps_sample", tps_sample, low=0)
        with self._lock:
            delta, _, _ = self._delta(app, timestamp_ms)
            delta.transactions += count
            if tps_sample is not None:
                delta.peak_tps = max(delta.peak_tps, tps_sample)
            self._after_record()

    def record_throttled(self, app: str, timestamp_ms: int, count: int = 1) -> None:
        """Count ``count`` requests refused with 429 (rate limited or quota exhausted)."""
        _check_count("count", count, low=0)
        with self._lock:
            delta, _, _ = self._delta(app, timestamp_ms)
            delta.throttled += count
            self._after_record()

    def set_storage(self, app: str, timestamp_ms: int, storage_bytes: int) -> None:
        """Record the app's storage at ``timestamp_ms``: the month keeps latest and max."""
        _check_count("storage_bytes", storage_bytes, low=0, high=2**62)
        with self._lock:
            delta, _, _ = self._delta(app, timestamp_ms)
            if timestamp_ms >= delta.storage_at_ms:
                delta.storage_bytes, delta.storage_at_ms = storage_bytes, timestamp_ms
            delta.storage_peak_bytes = max(delta.storage_peak_bytes, storage_bytes)
            self._after_record()

    def _delta(self, app: str, timestamp_ms: int) -> tuple[_Delta, str, int]:
        if self._closed:
            raise InvalidInput("the usage meter is closed", code="meter_closed")
        _check_app(app)
        day = billing_date(timestamp_ms)
        month = f"{day.year:04d}-{day.month:02d}"
        delta = self._monthly.get((app, month))
        if delta is None:
            delta = self._monthly[(app, month)] = _Delta()
        return delta, month, day.day

    def _after_record(self) -> None:
        self._calls += 1
        if (
            self._calls >= self._flush_every
            or self._clock() - self._last_flush >= self._flush_interval_s
        ):
            self._flush_locked()

    # ---- flushing

    def flush(self) -> None:
        """Write the buffered increments in one transaction."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._calls = 0
        self._last_flush = self._clock()
        if not self._monthly and not self._daily:
            return
        monthly = [
            (app, month, d.requests, d.transactions, d.throttled, d.peak_tps,
             d.storage_bytes, d.storage_at_ms, d.storage_peak_bytes)
            for (app, month), d in self._monthly.items()
        ]  # fmt: skip
        daily = [(app, month, day, n) for (app, month, day), n in self._daily.items()]
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(_UPSERT_MONTHLY, monthly)
            self._conn.executemany(_UPSERT_DAILY, daily)
        self._monthly.clear()
        self._daily.clear()

    # ---- reading

    def get_requests(self, app: str, month: str) -> int:
        """The month's served requests so far, buffered ones included (no write).

        Cheap enough for every request: feed it to :func:`check_requests_quota`.
        """
        _check_app(app)
        days_in_month(month)  # validates the month
        with self._lock:
            row = self._conn.execute(
                "SELECT requests FROM monthly WHERE app=? AND month=?", (app, month)
            ).fetchone()
            delta = self._monthly.get((app, month))
            return (row[0] if row else 0) + (delta.requests if delta else 0)

    def get_usage(self, app: str, month: str) -> Usage:
        """Everything ``app`` used in ``month`` (zeros if nothing); flushes first.

        The month starts at the latest storage sample of an earlier month: that level
        counts towards the month's peak, and is the latest if the month has no sample.
        """
        _check_app(app)
        days = days_in_month(month)
        with self._lock:
            self._flush_locked()
            row = self._conn.execute(
                "SELECT requests, transactions, throttled, peak_tps, storage_bytes, "
                "storage_at_ms, storage_peak_bytes FROM monthly WHERE app=? AND month=?",
                (app, month),
            ).fetchone()
            daily = dict(
                self._conn.execute(
                    "SELECT day, requests FROM daily WHERE app=? AND month=?", (app, month)
                ).fetchall()
            )
            carried = self._conn.execute(
                "SELECT storage_bytes FROM monthly WHERE app=? AND month<? AND "
                "storage_at_ms>=0 ORDER BY month DESC LIMIT 1",
                (app, month),
            ).fetchone()
        row = row or (0, 0, 0, 0, 0, -1, 0)
        requests, transactions, throttled, peak_tps, storage, storage_at_ms, storage_peak = row
        if carried:  # the level the month started at counts towards its peak
            storage_peak = max(storage_peak, carried[0])
            if storage_at_ms < 0:
                storage = carried[0]
        return Usage(
            app=app,
            month=month,
            requests=requests,
            transactions=transactions,
            storage_bytes=storage,
            peak_tps=peak_tps,
            throttled=throttled,
            daily_requests=tuple(daily.get(day, 0) for day in range(1, days + 1)),
            storage_peak_bytes=storage_peak,
        )

    def close(self) -> None:
        """Flush and close; closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._flush_locked()
            self._closed = True
            self._conn.close()
