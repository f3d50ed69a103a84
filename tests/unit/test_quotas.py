"""Gateway enforcement of plans (rate limits, quotas) and per-node usage metering."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meridian.errors import Busy, Forbidden, InvalidInput
from meridian.gateway.quotas import (
    RateLimiter,
    UsageMeter,
    check_requests_quota,
    check_storage_quota,
)
from meridian.network.plans import MIB, Usage, get_plan, month_bounds_ms


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1000


DEC_1_CST = utc_ms("2026-11-30T16:00")  # 00:00 on 1 December 2026 in China
NOV_30_CST = DEC_1_CST - 1  # 23:59:59.999 on 30 November, CST


# --------------------------------------------------------------------------- rate limiter


def test_rate_limiter_refuses_the_request_over_tps_then_admits_after_waiting() -> None:
    limiter = RateLimiter(clock=lambda: pytest.fail("the clock must not be read"))
    for _ in range(5):
        limiter.check("shop", tps=5, now=100.0)
    with pytest.raises(Busy) as err:
        limiter.check("shop", tps=5, now=100.0)
    assert err.value.code == "rate_limited" and err.value.http_status == 429
    assert err.value.retry_after_s == pytest.approx(0.2)
    assert err.value.hint and "upgrade" in err.value.hint
    limiter.check("shop", tps=5, now=100.0 + err.value.retry_after_s)
    with pytest.raises(Busy):
        limiter.check("shop", tps=5, now=100.0 + err.value.retry_after_s)


def test_rate_limiter_retry_after_is_exact_enough_to_admit() -> None:
    limiter = RateLimiter()
    for tps in (3, 7, 9, 1000):
        now = 50.0
        app = f"app{tps}"
        for _ in range(tps):
            limiter.check(app, tps=tps, now=now)
        with pytest.raises(Busy) as err:
            limiter.check(app, tps=tps, now=now)
        assert 0.001 <= err.value.retry_after_s <= 1 / tps + 0.001
        limiter.check(app, tps=tps, now=now + err.value.retry_after_s)


def test_rate_limiter_burst_is_one_second_even_after_idling() -> None:
    limiter = RateLimiter()
    limiter.check("shop", tps=10, cost=10, now=0.0)
    for _ in range(10):
        limiter.check("shop", tps=10, now=3600.0)
    with pytest.raises(Busy):
        limiter.check("shop", tps=10, now=3600.0)


def test_rate_limiter_charges_batches_by_size() -> None:
    limiter = RateLimiter()
    limiter.check("shop", tps=10, cost=8, now=0.0)
    with pytest.raises(Busy) as err:
        limiter.check("shop", tps=10, cost=5, now=0.0)
    assert err.value.retry_after_s == pytest.approx(0.3)
    limiter.check("shop", tps=10, cost=2, now=0.0)


def test_invalid_batch_over_rate_is_refused_not_retried() -> None:
    with pytest.raises(InvalidInput) as err:
        RateLimiter().check("shop", tps=5, cost=6, now=0.0)
    assert err.value.code == "batch_over_rate"
    assert "5" in err.value.message and err.value.hint


def test_rate_limiter_keeps_apps_apart_and_applies_a_downgrade_at_once() -> None:
    limiter = RateLimiter()
    limiter.check("shop", tps=100, cost=100, now=0.0)
    limiter.check("bank", tps=2, cost=2, now=0.0)  # shop's burst is not bank's
    limiter.check("data", tps=100, now=0.0)  # 99 tokens left ...
    limiter.check("data", tps=2, cost=1, now=0.0)  # ... capped at 2 after the downgrade
    with pytest.raises(Busy):
        limiter.check("data", tps=2, cost=2, now=0.0)


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(max_apps=2)
    limiter.check("a", tps=1, now=0.0)
    limiter.check("b", tps=1, now=0.0)
    with pytest.raises(Busy):
        limiter.check("a", tps=1, now=0.0)  # "a" is now the most recently used
    limiter.check("c", tps=1, now=0.0)  # evicts "b", the least recently used
    assert len(limiter) == 2
    limiter.check("b", tps=1, now=0.0)  # forgotten: a fresh bucket
    with pytest.raises(Busy):
        limiter.check("c", tps=1, now=0.0)  # still remembered


def test_rate_limiter_ignores_a_clock_going_backwards() -> None:
    limiter = RateLimiter()
    limiter.check("shop", tps=1, now=10.0)
    with pytest.raises(Busy):
        limiter.check("shop", tps=1, now=5.0)


@pytest.mark.parametrize(("tps", "cost"), [(0, 1), (5, 0), (5, -1), (True, 1), (5.0, 1)])
def test_invalid_rate_limiter_arguments(tps: Any, cost: Any) -> None:
    with pytest.raises(InvalidInput):
        RateLimiter().check("shop", tps=tps, cost=cost, now=0.0)


# --------------------------------------------------------------------------- quotas


def test_requests_quota_refuses_until_the_next_billing_month() -> None:
    free = get_plan("free")
    check_requests_quota(free.requests_per_month - 1, free, now_ms=NOV_30_CST)
    with pytest.raises(Busy) as err:
        check_requests_quota(free.requests_per_month, free, now_ms=NOV_30_CST - 999)
    assert err.value.code == "quota_exhausted" and err.value.http_status == 429
    assert err.value.retry_after_s == pytest.approx(1.0)  # December starts in 1 s (CST)
    assert err.value.hint and "upgrade" in err.value.hint and "'basic'" in err.value.hint
    assert err.value.details["month"] == "2026-11"


def test_requests_quota_of_the_biggest_plan_still_hints_an_upgrade() -> None:
    enterprise = get_plan("enterprise")
    with pytest.raises(Busy) as err:
        check_requests_quota(enterprise.requests_per_month, enterprise, now_ms=DEC_1_CST)
    _, end = month_bounds_ms("2026-12")
    assert err.value.retry_after_s == (end - DEC_1_CST) / 1000  # all of December
    assert err.value.hint and "upgrade the plan" in err.value.hint


def test_storage_quota_refuses_an_app_that_used_all_of_it() -> None:
    free = get_plan("free")  # 64 MiB
    check_storage_quota(64 * MIB - 1, free)  # a byte left: validation judges the rest
    for stored in (64 * MIB, 100 * MIB):  # all of it, or more (after a smaller plan)
        with pytest.raises(Forbidden) as err:
            check_storage_quota(stored, free)
        assert err.value.code == "storage_quota_exceeded" and err.value.http_status == 403
        assert "64.00 MiB" in err.value.message
        assert err.value.hint and "'basic'" in err.value.hint
        assert err.value.details == {"used_bytes": stored, "limit_bytes": 64 * MIB}


@pytest.mark.parametrize("stored", [-1, 1.0, True, 2**63])
def test_invalid_storage_quota_arguments(stored: Any) -> None:
    with pytest.raises(InvalidInput):
        check_storage_quota(stored, get_plan("free"))


# --------------------------------------------------------------------------- metering


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rows_on_disk(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT app, month, requests FROM monthly ORDER BY 1, 2").fetchall()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def meter_path(tmp_path: Path) -> Path:
    return tmp_path / "meter" / "usage.sqlite"


def test_meter_reports_zeros_for_an_unknown_app(meter_path: Path) -> None:
    meter = UsageMeter(meter_path)
    assert meter.get_usage("shop", "2026-02") == Usage.empty("shop", "2026-02")
    assert meter.get_requests("shop", "2026-02") == 0
    meter.close()


def test_meter_persists_across_close_and_reopen(meter_path: Path) -> None:
    meter = UsageMeter(meter_path)
    meter.record_requests("shop", DEC_1_CST, 3)
    meter.record_transactions("shop", DEC_1_CST, 2, tps_sample=40)
    meter.record_throttled("shop", DEC_1_CST)
    meter.set_storage("shop", DEC_1_CST, 5 * MIB)
    meter.close()
    meter.close()  # harmless
    reopened = UsageMeter(meter_path)
    reopened.record_requests("shop", DEC_1_CST + 1)
    usage = reopened.get_usage("shop", "2026-12")
    reopened.close()
    assert (usage.requests, usage.transactions, usage.throttled) == (4, 2, 1)
    assert (usage.peak_tps, usage.storage_bytes, usage.storage_peak_bytes) == (40, 5 * MIB, 5 * MIB)


def test_meter_flushes_every_n_calls_not_every_call(meter_path: Path, clock: FakeClock) -> None:
    meter = UsageMeter(meter_path, flush_every=3, flush_interval_s=3600, clock=clock)
    meter.record_requests("shop", DEC_1_CST)
    meter.record_requests("shop", DEC_1_CST)
    assert rows_on_disk(meter_path) == []
    assert meter.get_requests("shop", "2026-12") == 2  # buffered counts are visible
    meter.record_requests("shop", DEC_1_CST)
    assert rows_on_disk(meter_path) == [("shop", "2026-12", 3)]
    meter.record_requests("shop", DEC_1_CST)
    assert rows_on_disk(meter_path) == [("shop", "2026-12", 3)]
    meter.flush()
    assert rows_on_disk(meter_path) == [("shop", "2026-12", 4)]
    meter.close()


def test_meter_flushes_once_the_interval_has_passed(meter_path: Path, clock: FakeClock) -> None:
    meter = UsageMeter(meter_path, flush_every=1_000, flush_interval_s=1.0, clock=clock)
    meter.record_requests("shop", DEC_1_CST)
    clock.now = 0.5
    meter.record_requests("shop", DEC_1_CST)
    assert rows_on_disk(meter_path) == []
    clock.now = 1.0
    meter.record_requests("shop", DEC_1_CST)
    assert rows_on_disk(meter_path) == [("shop", "2026-12", 3)]
    meter.close()


def test_meter_unflushed_counts_are_lost_on_a_crash_but_nothing_else(meter_path: Path) -> None:
    meter = UsageMeter(meter_path, flush_every=2, flush_interval_s=3600)
    for _ in range(3):
        meter.record_requests("shop", DEC_1_CST)
    # simulate kill -9: drop the object without close()
    survivor = UsageMeter(meter_path)
    assert survivor.get_requests("shop", "2026-12") == 2
    survivor.close()
    meter.close()


def test_meter_keeps_the_latest_and_the_peak_storage(meter_path: Path) -> None:
    meter = UsageMeter(meter_path, flush_every=2)
    meter.set_storage("shop", DEC_1_CST + 1_000, 30 * MIB)
    meter.set_storage("shop", DEC_1_CST + 3_000, 10 * MIB)
    meter.set_storage("shop", DEC_1_CST + 2_000, 50 * MIB)  # late sample: peak, not latest
    usage = meter.get_usage("shop", "2026-12")
    assert (usage.storage_bytes, usage.storage_peak_bytes) == (10 * MIB, 50 * MIB)
    meter.close()


def test_meter_carries_storage_into_a_month_without_samples(meter_path: Path) -> None:
    meter = UsageMeter(meter_path)
    meter.set_storage("shop", NOV_30_CST, 40 * MIB)
    meter.record_requests("shop", DEC_1_CST)
    december = meter.get_usage("shop", "2026-12")
    assert (december.storage_bytes, december.storage_peak_bytes) == (40 * MIB, 40 * MIB)
    meter.set_storage("shop", DEC_1_CST + 5, 8 * MIB)  # cleaned up on 1 December
    december = meter.get_usage("shop", "2026-12")
    assert (december.storage_bytes, december.storage_peak_bytes) == (8 * MIB, 40 * MIB)
    assert meter.get_usage("shop", "2026-10").storage_bytes == 0
    meter.close()


def test_meter_keeps_the_peak_tps_of_each_month(meter_path: Path) -> None:
    meter = UsageMeter(meter_path, flush_every=2)
    for sample in (12, 180, 90):
        meter.record_transactions("shop", DEC_1_CST, 1, tps_sample=sample)
    meter.record_transactions("shop", NOV_30_CST, 5, tps_sample=7)
    meter.record_transactions("shop", DEC_1_CST, 4)
    december = meter.get_usage("shop", "2026-12")
    assert (december.peak_tps, december.transactions) == (180, 7)
    assert meter.get_usage("shop", "2026-11").peak_tps == 7
    meter.close()


def test_meter_buckets_requests_by_cst_day(meter_path: Path) -> None:
    meter = UsageMeter(meter_path, flush_every=2)
    meter.record_requests("shop", NOV_30_CST, 7)  # 30 November in China
    meter.record_requests("shop", DEC_1_CST, 2)  # 1 December in China, 30 Nov in UTC
    meter.record_requests("shop", DEC_1_CST + 86_400_000 - 1, 3)  # still 1 December
    meter.record_requests("shop", utc_ms("2026-12-31T15:59:59"), 5)  # 31 December
    meter.record_throttled("shop", DEC_1_CST, 9)  # refusals are not served requests
    meter.record_requests("bank", DEC_1_CST, 100)
    december = meter.get_usage("shop", "2026-12")
    assert december.daily_requests == (5,) + (0,) * 29 + (5,)
    assert (december.requests, december.throttled) == (10, 9)
    november = meter.get_usage("shop", "2026-11")
    assert len(november.daily_requests) == 30 and november.daily_requests[-1] == 7
    assert meter.get_usage("bank", "2026-12").requests == 100
    meter.close()


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("record_requests", ("Shop", DEC_1_CST)),
        ("record_requests", ("shop", DEC_1_CST, -1)),
        ("record_requests", ("shop", 1.7e12)),
        ("record_transactions", ("shop", DEC_1_CST, 1, -5)),
        ("set_storage", ("shop", DEC_1_CST, 1.0)),
        ("get_usage", ("shop", "2026-13")),
        ("get_requests", ("<script>", "2026-12")),
    ],
)
def test_invalid_meter_arguments(meter_path: Path, method: str, args: tuple[Any, ...]) -> None:
    meter = UsageMeter(meter_path)
    with pytest.raises(InvalidInput):
        getattr(meter, method)(*args)
    meter.close()


def test_invalid_record_after_close(meter_path: Path) -> None:
    meter = UsageMeter(meter_path)
    meter.close()
    with pytest.raises(InvalidInput) as err:
        meter.record_requests("shop", DEC_1_CST)
    assert err.value.code == "meter_closed"
