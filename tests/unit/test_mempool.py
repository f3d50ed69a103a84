"""The mempool: deduplicated, bounded, oldest first; own transactions never dropped."""

from __future__ import annotations

import pytest

from meridian.errors import Busy
from meridian.node.mempool import Mempool
from meridian.types import Transaction, compute_tx_hash
from tests.sim.simulator import make_tx

TXS = [make_tx(i, 1) for i in range(10)]
SIZE = len(TXS[0].encode())


def ids(txs: list[Transaction] | tuple[Transaction, ...]) -> list[str]:
    return [tx.tx_id for tx in txs]


def big_pool() -> Mempool:
    return Mempool(max_txs=1_000, max_bytes=1 << 30)


def test_transactions_have_the_same_size() -> None:
    assert {len(tx.encode()) for tx in TXS} == {SIZE}  # the byte bounds below rely on it


def test_add_deduplicates_by_tx_id() -> None:
    pool = big_pool()
    assert ids(pool.add(TXS[:3], 0, own=False)) == ids(TXS[:3])
    assert ids(pool.add([TXS[1], TXS[3], TXS[3]], 5, own=True)) == [TXS[3].tx_id]
    assert len(pool) == 4 and pool.size_bytes == 4 * SIZE
    assert TXS[1].tx_id in pool and TXS[9].tx_id not in pool


def test_take_is_fifo_and_does_not_remove() -> None:
    pool = big_pool()
    for t, tx in enumerate(reversed(TXS[:5])):
        pool.add([tx], t, own=True)
    assert ids(pool.take(10, 1 << 30)) == ids(list(reversed(TXS[:5])))
    assert len(pool) == 5


@pytest.mark.parametrize(
    ("max_txs", "max_bytes", "expected"),
    [
        (3, 1 << 30, 3),
        (10, 3 * SIZE, 3),
        (10, 3 * SIZE - 1, 2),
        (0, 1 << 30, 0),
        (10, SIZE - 1, 0),
        (100, 1 << 30, 10),
    ],
)
def test_take_is_bounded_by_count_and_bytes(max_txs: int, max_bytes: int, expected: int) -> None:
    pool = big_pool()
    pool.add(TXS, 0, own=False)
    assert ids(pool.take(max_txs, max_bytes)) == ids(TXS[:expected])


def test_check_room_raises_busy_when_full() -> None:
    pool = Mempool(max_txs=3, max_bytes=1 << 30)
    pool.check_room(3, 3 * SIZE)
    pool.add(TXS[:2], 0, own=True)
    pool.check_room(1, SIZE)
    with pytest.raises(Busy) as exc:
        pool.check_room(2, 2 * SIZE)
    assert exc.value.retry_after_s > 0
    assert exc.value.code == "busy"


def test_check_room_counts_bytes() -> None:
    pool = Mempool(max_txs=100, max_bytes=2 * SIZE)
    pool.add(TXS[:1], 0, own=True)
    pool.check_room(1, SIZE)
    with pytest.raises(Busy):
        pool.check_room(1, SIZE + 1)


def test_forwarded_transactions_are_refused_when_full_own_ones_always_enter() -> None:
    pool = Mempool(max_txs=2, max_bytes=1 << 30)
    pool.add(TXS[:2], 0, own=False)
    assert pool.add(TXS[2:4], 1, own=False) == []
    assert pool.refused == 2
    assert ids(pool.add(TXS[4:6], 2, own=True)) == ids(TXS[4:6])
    assert len(pool) == 4 and pool.refused == 2


def test_forwarded_transactions_are_refused_when_bytes_are_full() -> None:
    pool = Mempool(max_txs=100, max_bytes=2 * SIZE)
    pool.add(TXS[:2], 0, own=False)
    assert pool.add(TXS[2:3], 1, own=False) == []
    assert pool.refused == 1 and pool.size_bytes == 2 * SIZE


def test_remove_returns_arrival_times_of_own_transactions_only() -> None:
    pool = big_pool()
    pool.add(TXS[:2], 10, own=True)
    pool.add(TXS[2:4], 20, own=False)
    pool.add(TXS[3:4], 30, own=True)  # forwarded first, then submitted here: own, arrived 20
    arrivals = pool.remove([*ids(TXS[:4]), TXS[9].tx_id])
    assert sorted(arrivals) == [10, 10, 20]
    assert len(pool) == 0 and pool.size_bytes == 0
    assert pool.remove(ids(TXS[:4])) == []


def test_due_for_forward_returns_own_waiting_transactions_once_per_period() -> None:
    pool = big_pool()
    pool.add(TXS[:2], 0, own=True)
    pool.add(TXS[2:4], 0, own=False)
    pool.add(TXS[4:5], 500, own=True)
    assert pool.due_for_forward(999, every_ms=1_000) == []
    assert ids(pool.due_for_forward(1_000, every_ms=1_000)) == ids(TXS[:2])
    assert pool.due_for_forward(1_400, every_ms=1_000) == []
    assert ids(pool.due_for_forward(1_500, every_ms=1_000)) == ids(TXS[4:5])
    assert pool.due_for_forward(1_999, every_ms=1_000) == []
    assert ids(pool.due_for_forward(2_000, every_ms=1_000)) == ids(TXS[:2])


def test_committed_transactions_are_not_forwarded_again() -> None:
    pool = big_pool()
    pool.add(TXS[:2], 0, own=True)
    pool.remove([TXS[0].tx_id])
    assert ids(pool.due_for_forward(10_000, every_ms=1_000)) == [TXS[1].tx_id]


def test_transactions_needed_by_a_proposal_enter_a_full_pool() -> None:
    pool = Mempool(max_txs=1, max_bytes=1 << 30)
    pool.add(TXS[:1], 0, own=False)
    wanted = compute_tx_hash(TXS[1])
    assert ids(pool.add(TXS[1:3], 1, own=False, needed={wanted})) == ids(TXS[1:2])
    assert pool.refused == 1
    assert pool.find([wanted]) == ([TXS[1]], [])
