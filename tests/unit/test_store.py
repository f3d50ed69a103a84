"""SqliteLedger: atomic block commits, durability across reopen, pending, ranges, queries."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meridian.crypto.hashing import Digest, compute_digest
from meridian.errors import InvalidInput
from meridian.ledger.merkle import compute_root
from meridian.ledger.pending import PendingStore
from meridian.ledger.store import (
    LEDGER_FORMAT,
    BlockEvent,
    CommitBatch,
    SqliteLedger,
    StateWrite,
    TxLocation,
    compile_selector,
)
from meridian.types import (
    ZERO_DIGEST,
    Block,
    BlockHeader,
    Proposal,
    SignedProposal,
    Transaction,
    TxCode,
    TxResult,
    Version,
    compute_tx_hash,
)

NS = "asset"


def _tx(n: int) -> Transaction:
    proposal = Proposal(
        "testnet",
        "trade",
        NS,
        "put",
        (n,),
        n.to_bytes(8, "big"),
        1_900_000_000_000 + n,
        b"creator-cert",
    )
    return Transaction(SignedProposal(proposal, b"sig"), TxResult(n, (), (), "asset@1"), ())


def _block(number: int, txs: list[Transaction], previous: Digest = ZERO_DIGEST) -> Block:
    header = BlockHeader(
        "testnet",
        "trade",
        number,
        previous,
        compute_root([compute_tx_hash(t) for t in txs]),
        ZERO_DIGEST,
        1_900_000_000_000 + number * 1000,
        len(txs),
        "node1",
    )
    return Block(header, tuple(txs))


def _write(
    key: str, value: Any, version: Version, tx: Transaction, *, ns: str = NS, delete: bool = False
) -> StateWrite:
    return StateWrite(ns, key, None if delete else value, delete, version, tx.tx_id)


def _batch(
    block: Block,
    writes: list[StateWrite] | None = None,
    events: list[BlockEvent] | None = None,
    codes: list[TxCode] | None = None,
    stored: int = 0,
) -> CommitBatch:
    codes = codes if codes is not None else [TxCode.VALID] * len(block.transactions)
    root = compute_digest(repr((block.header.number, codes)).encode())
    return CommitBatch(block, tuple(codes), tuple(writes or ()), tuple(events or ()), root, stored)


def _event(block: int, tx: Transaction, idx: int = 0, payload: Any = None) -> BlockEvent:
    return BlockEvent(block, 0, idx, tx.tx_id, NS, "moved", payload)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    store = SqliteLedger(tmp_path / "trade.db")
    yield store
    store.close()


def _commit_genesis(ledger: SqliteLedger) -> tuple[Block, Transaction]:
    tx = _tx(0)
    block = _block(0, [tx])
    ledger.commit_block(
        _batch(
            block,
            [_write("car-1", {"owner": "alice"}, Version(0, 0), tx)],
            [_event(0, tx, payload={"car": "car-1"})],
        )
    )
    return block, tx


def _snapshot(ledger: SqliteLedger) -> tuple[Any, ...]:
    return (
        ledger.height(),
        list(ledger.iter_state()),
        ledger.get_events(0, 100),
        ledger.get_history(NS, "car-1", 100),
        ledger.get_history(NS, "car-2", 100),
    )


# ---------------------------------------------------------------------------- commits


def test_empty_ledger(ledger: SqliteLedger) -> None:
    assert ledger.height() == 0
    assert ledger.get_block(0) is None
    assert ledger.get_header(0) is None
    assert ledger.get_codes(0) is None
    assert ledger.get_result_root(0) is None
    assert ledger.get_tx("00" * 32) is None
    assert ledger.get(NS, "car-1") is None


def test_commit_block_writes_everything(ledger: SqliteLedger) -> None:
    tx0, tx1 = _tx(1), _tx(2)
    block = _block(0, [tx0, tx1])
    batch = _batch(
        block,
        [_write("car-1", {"owner": "alice"}, Version(0, 0), tx0)],
        [_event(0, tx0, payload={"car": "car-1"})],
        codes=[TxCode.VALID, TxCode.MVCC_READ_CONFLICT],
    )
    ledger.commit_block(batch)
    assert ledger.height() == 1
    assert ledger.get_block(0) == block
    assert ledger.get_header(0) == block.header
    assert ledger.get_codes(0) == (TxCode.VALID, TxCode.MVCC_READ_CONFLICT)
    assert ledger.get_result_root(0) == batch.result_root
    assert ledger.get_tx(tx0.tx_id) == TxLocation(tx0.tx_id, 0, 0, TxCode.VALID)
    assert ledger.get_tx(tx1.tx_id) == TxLocation(tx1.tx_id, 0, 1, TxCode.MVCC_READ_CONFLICT)
    assert ledger.known_tx_ids([tx0.tx_id, tx1.tx_id, "ff" * 32]) == {tx0.tx_id, tx1.tx_id}
    assert ledger.get(NS, "car-1") == ({"owner": "alice"}, Version(0, 0))
    [entry] = ledger.get_history(NS, "car-1", 10)
    assert (entry.tx_id, entry.block, entry.value, entry.deleted) == (
        tx0.tx_id,
        0,
        {"owner": "alice"},
        False,
    )
    assert entry.timestamp_ms == block.header.timestamp_ms
    assert ledger.get_events(0, 1) == [
        BlockEvent(0, 0, 0, tx0.tx_id, NS, "moved", {"car": "car-1"})
    ]


def test_later_blocks_overwrite_and_delete_state_with_history(ledger: SqliteLedger) -> None:
    genesis, _ = _commit_genesis(ledger)
    tx1, tx2 = _tx(1), _tx(2)
    ledger.commit_block(
        _batch(
            _block(1, [tx1], genesis.header.hash),
            [_write("car-1", {"owner": "bob"}, Version(1, 0), tx1)],
        )
    )
    assert ledger.get(NS, "car-1") == ({"owner": "bob"}, Version(1, 0))
    ledger.commit_block(
        _batch(_block(2, [tx2]), [_write("car-1", None, Version(2, 0), tx2, delete=True)])
    )
    assert ledger.height() == 3
    assert ledger.get(NS, "car-1") is None
    history = ledger.get_history(NS, "car-1", 10)
    assert [(h.block, h.value, h.deleted) for h in history] == [
        (0, {"owner": "alice"}, False),
        (1, {"owner": "bob"}, False),
        (2, None, True),
    ]
    assert [h.block for h in ledger.get_history(NS, "car-1", 2)] == [0, 1]


def test_state_is_separate_per_namespace(ledger: SqliteLedger) -> None:
    tx = _tx(1)
    ledger.commit_block(
        _batch(
            _block(0, [tx]),
            [
                _write("k", 1, Version(0, 0), tx, ns="asset"),
                _write("k", 2, Version(0, 0), tx, ns="token"),
            ],
        )
    )
    assert ledger.get("asset", "k") == (1, Version(0, 0))
    assert ledger.get("token", "k") == (2, Version(0, 0))
    assert ledger.get("other", "k") is None


def test_writer_reads_see_commits(ledger: SqliteLedger) -> None:
    _commit_genesis(ledger)
    assert ledger.get(NS, "car-1", writer=True) == ({"owner": "alice"}, Version(0, 0))
    assert ledger.get_range(NS, "", "", 10, writer=True)[0][0] == "car-1"


def _assert_failed_commit_wrote_nothing(
    ledger: SqliteLedger, batch: CommitBatch, error: type[BaseException]
) -> None:
    before = _snapshot(ledger)
    number = batch.block.header.number
    with pytest.raises(error):
        ledger.commit_block(batch)
    assert _snapshot(ledger) == before
    assert ledger.get_block(number) is None
    assert ledger.get_codes(number) is None
    for tx in batch.block.transactions:
        assert ledger.get_tx(tx.tx_id) is None


def _failing_block(ledger: SqliteLedger, events: list[BlockEvent]) -> CommitBatch:
    genesis, _ = _commit_genesis(ledger)
    tx1, tx2 = _tx(1), _tx(2)
    block = _block(1, [tx1, tx2], genesis.header.hash)
    writes = [
        _write("car-1", {"owner": "mallory"}, Version(1, 0), tx1),
        _write("car-2", {"owner": "mallory"}, Version(1, 1), tx2),
    ]
    return _batch(block, writes, events)


def test_commit_with_unencodable_event_writes_nothing(ledger: SqliteLedger) -> None:
    batch = _failing_block(ledger, [])
    tx = batch.block.transactions[0]
    batch = _batch(
        batch.block,
        list(batch.writes),
        [_event(1, tx, 0, {"ok": 1}), _event(1, tx, 1, {"bad": object()})],
    )
    _assert_failed_commit_wrote_nothing(ledger, batch, InvalidInput)
    assert ledger.height() == 1
    assert ledger.get(NS, "car-1") == ({"owner": "alice"}, Version(0, 0))
    assert ledger.get(NS, "car-2") is None


def test_commit_with_duplicate_event_key_writes_nothing(ledger: SqliteLedger) -> None:
    batch = _failing_block(ledger, [])
    tx = batch.block.transactions[0]
    batch = _batch(batch.block, list(batch.writes), [_event(1, tx, 0), _event(1, tx, 0)])
    _assert_failed_commit_wrote_nothing(ledger, batch, sqlite3.IntegrityError)
    assert ledger.get(NS, "car-1") == ({"owner": "alice"}, Version(0, 0))


def test_commit_with_codes_not_matching_txs_writes_nothing(ledger: SqliteLedger) -> None:
    batch = _failing_block(ledger, [])
    batch = _batch(batch.block, list(batch.writes), codes=[TxCode.VALID])
    _assert_failed_commit_wrote_nothing(ledger, batch, ValueError)


def test_committing_a_block_number_twice_fails_and_keeps_the_first(
    ledger: SqliteLedger,
) -> None:
    genesis, _ = _commit_genesis(ledger)
    tx = _tx(9)
    again = _batch(_block(0, [tx]), [_write("car-1", "stolen", Version(0, 0), tx)])
    before = _snapshot(ledger)
    with pytest.raises(sqlite3.IntegrityError):
        ledger.commit_block(again)
    assert _snapshot(ledger) == before
    assert ledger.get_block(0) == genesis
    assert ledger.get_tx(tx.tx_id) is None


def test_ledger_is_usable_after_a_failed_commit(ledger: SqliteLedger) -> None:
    batch = _failing_block(ledger, [])
    tx = batch.block.transactions[0]
    bad = _batch(batch.block, list(batch.writes), [_event(1, tx, 0), _event(1, tx, 0)])
    with pytest.raises(sqlite3.IntegrityError):
        ledger.commit_block(bad)
    ledger.commit_block(batch)
    assert ledger.height() == 2
    assert ledger.get(NS, "car-2") == ({"owner": "mallory"}, Version(1, 1))


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "data" / "trade.db"
    first = SqliteLedger(path)
    genesis, tx = _commit_genesis(first)
    before = _snapshot(first)
    root = first.get_result_root(0)
    first.close()

    second = SqliteLedger(path)
    try:
        assert _snapshot(second) == before
        assert second.height() == 1
        assert second.get_block(0) == genesis
        assert second.get_codes(0) == (TxCode.VALID,)
        assert second.get_result_root(0) == root
        assert second.get_tx(tx.tx_id) == TxLocation(tx.tx_id, 0, 0, TxCode.VALID)
    finally:
        second.close()


def test_the_last_write_of_a_key_in_a_block_wins(ledger: SqliteLedger) -> None:
    """One transaction deletes a key and a later one in the same block writes it (or
    the other way round): the state holds what the later one did."""
    _commit_genesis(ledger)
    t1, t2, t3, t4 = (_tx(i) for i in range(1, 5))
    block = _block(1, [t1, t2, t3, t4])
    writes = [
        _write("car-1", None, Version(1, 0), t1, delete=True),
        _write("car-1", {"owner": "carol"}, Version(1, 1), t2),
        _write("car-9", {"owner": "dan"}, Version(1, 2), t3),
        _write("car-9", None, Version(1, 3), t4, delete=True),
    ]
    ledger.commit_block(_batch(block, writes))
    assert ledger.get(NS, "car-1") == ({"owner": "carol"}, Version(1, 1))
    assert ledger.get(NS, "car-9") is None
    assert [h.value for h in ledger.get_history(NS, "car-1", 10)] == [
        {"owner": "alice"},
        None,
        {"owner": "carol"},
    ]


def test_stored_bytes_are_committed_with_each_block(tmp_path: Path) -> None:
    path = tmp_path / "trade.db"
    first = SqliteLedger(path)
    try:
        assert first.stored_bytes() == 0
        first.commit_block(_batch(_block(0, [_tx(0)]), stored=120))
        first.commit_block(_batch(_block(1, [_tx(1)]), stored=300))
        assert first.stored_bytes() == first.stored_bytes(writer=True) == 300
        assert [row[-1] for row in first.iter_raw_blocks()] == [120, 300]
    finally:
        first.close()
    second = SqliteLedger(path)
    try:
        assert second.stored_bytes() == 300
    finally:
        second.close()


def test_a_ledger_of_another_format_is_refused_not_misread(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE blocks (number INTEGER PRIMARY KEY, hash BLOB)")  # format 1
    conn.commit()
    conn.close()
    with pytest.raises(InvalidInput) as err:
        SqliteLedger(old)
    assert err.value.code == "ledger_format" and "format 1" in err.value.message
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version={LEDGER_FORMAT + 1}")
    conn.close()
    with pytest.raises(InvalidInput):
        SqliteLedger(newer)
    fresh = SqliteLedger(tmp_path / "fresh.db")  # a new file is stamped, and reopens
    fresh.close()
    SqliteLedger(tmp_path / "fresh.db").close()


# ---------------------------------------------------------------------------- pending


def test_pending_add_get_drop(tmp_path: Path) -> None:
    pending = PendingStore(tmp_path / "app.pending.sqlite")
    txs = [_tx(i) for i in range(4)]
    pending.add(txs[:2])
    pending.add(txs[2:])
    assert pending.get_all() == txs
    pending.add([txs[0]])  # idempotent: already acknowledged
    assert pending.get_all() == txs
    pending.drop([txs[1].tx_id, "unknown"])
    assert pending.get_all() == [txs[0], txs[2], txs[3]]
    pending.close()


def test_pending_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "app.pending.sqlite"
    first = PendingStore(path)
    waiting = [_tx(5), _tx(6)]
    first.add(waiting)
    first.close()
    second = PendingStore(path)
    assert second.get_all() == waiting
    second.close()


# ----------------------------------------------------------------------------- ranges


@pytest.fixture
def keyed(ledger: SqliteLedger) -> SqliteLedger:
    tx = _tx(1)
    writes = [_write(k, i, Version(0, i), tx) for i, k in enumerate(["a", "b", "b/1", "c", "d"])]
    writes.append(_write("a", "other-ns", Version(0, 9), tx, ns="token"))
    ledger.commit_block(_batch(_block(0, [tx]), writes))
    return ledger


def test_get_range_is_half_open_and_ordered(keyed: SqliteLedger) -> None:
    rows = keyed.get_range(NS, "b", "d", 100)
    assert rows == [("b", 1, Version(0, 1)), ("b/1", 2, Version(0, 2)), ("c", 3, Version(0, 3))]


def test_get_range_with_empty_end_is_unbounded(keyed: SqliteLedger) -> None:
    assert [k for k, _, _ in keyed.get_range(NS, "b/", "", 100)] == ["b/1", "c", "d"]
    assert [k for k, _, _ in keyed.get_range(NS, "", "", 100)] == ["a", "b", "b/1", "c", "d"]


def test_get_range_respects_limit(keyed: SqliteLedger) -> None:
    assert [k for k, _, _ in keyed.get_range(NS, "", "", 2)] == ["a", "b"]
    assert [k for k, _, _ in keyed.get_range(NS, "b", "", 1)] == ["b"]


def test_get_range_stays_in_its_namespace(keyed: SqliteLedger) -> None:
    assert keyed.get_range("token", "", "", 100) == [("a", "other-ns", Version(0, 9))]
    assert keyed.get_range("nothing", "", "", 100) == []


def test_get_range_empty_when_start_after_end(keyed: SqliteLedger) -> None:
    assert keyed.get_range(NS, "d", "b", 100) == []


# ---------------------------------------------------------------------------- queries

DOCS: dict[str, Any] = {
    "car-1": {
        "owner": "alice",
        "value": 10,
        "color": "red",
        "active": True,
        "spec": {"engine": {"hp": 120}},
    },
    "car-2": {
        "owner": "bob",
        "value": 25,
        "color": None,
        "active": False,
        "spec": {"engine": {"hp": 300}},
    },
    "car-3": {"owner": "alice", "value": 40, "active": True},
    "car-4": {"owner": "carol", "value": 25, "color": "blue", "spec": {"engine": {"hp": 90}}},
    "note": "not a document",
}


@pytest.fixture
def docs(ledger: SqliteLedger) -> SqliteLedger:
    tx = _tx(1)
    writes = [_write(k, v, Version(0, 0), tx) for k, v in DOCS.items()]
    writes.append(_write("car-9", {"owner": "alice"}, Version(0, 0), tx, ns="token"))
    ledger.commit_block(_batch(_block(0, [tx]), writes))
    return ledger


def _keys(store: SqliteLedger, selector: dict[str, Any], limit: int = 100) -> list[str]:
    return [k for k, _, _ in store.query(NS, selector, limit)]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({"owner": "alice"}, ["car-1", "car-3"]),
        ({"owner": {"$eq": "alice"}}, ["car-1", "car-3"]),
        ({"owner": {"$ne": "alice"}}, ["car-2", "car-4"]),
        ({"value": {"$gt": 25}}, ["car-3"]),
        ({"value": {"$gte": 25}}, ["car-2", "car-3", "car-4"]),
        ({"value": {"$lt": 25}}, ["car-1"]),
        ({"value": {"$lte": 25}}, ["car-1", "car-2", "car-4"]),
        ({"value": {"$gt": 10, "$lt": 40}}, ["car-2", "car-4"]),
        ({"owner": {"$in": ["bob", "carol"]}}, ["car-2", "car-4"]),
        ({"value": {"$in": [10, 40]}}, ["car-1", "car-3"]),
        ({"owner": "alice", "value": {"$gte": 20}}, ["car-3"]),
        ({"spec.engine.hp": {"$gte": 120}}, ["car-1", "car-2"]),
        ({"spec.engine.hp": 90}, ["car-4"]),
        ({"color": None}, ["car-2", "car-3", "note"]),
        ({"color": {"$eq": None}}, ["car-2", "car-3", "note"]),
        ({"color": {"$ne": None}}, ["car-1", "car-4"]),
        ({"active": True}, ["car-1", "car-3"]),
        ({"active": False}, ["car-2"]),
        ({"owner": "nobody"}, []),
        ({"owner": "alice' OR 1=1 --"}, []),
    ],
)
def test_query_returns_matching_documents_only(
    docs: SqliteLedger, selector: dict[str, Any], expected: list[str]
) -> None:
    assert _keys(docs, selector) == expected


def test_query_returns_values_and_versions(docs: SqliteLedger) -> None:
    assert docs.query(NS, {"owner": "bob"}, 10) == [("car-2", DOCS["car-2"], Version(0, 0))]


def test_query_respects_limit_and_namespace(docs: SqliteLedger) -> None:
    assert _keys(docs, {"owner": "alice"}, limit=1) == ["car-1"]
    assert [k for k, _, _ in docs.query("token", {"owner": "alice"}, 10)] == ["car-9"]


def test_compile_selector_uses_parameters_not_literals() -> None:
    where, params = compile_selector({"owner": "x'; DROP TABLE state; --", "n": {"$in": [1, 2]}})
    assert "DROP" not in where
    assert params == ["x'; DROP TABLE state; --", 1, 2]


def test_query_in_with_null(docs: SqliteLedger) -> None:
    assert _keys(docs, {"color": {"$in": ["red", None]}}) == ["car-1", "car-2", "car-3", "note"]


def _bad_query(selector: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        compile_selector(selector)
    assert exc.value.code == "bad_query"


@pytest.mark.parametrize(
    "field",
    ["a;DROP", "a b", "", "a..b", ".a", "a.", "$.a", "a'", "a[0]", "x" * 65, ".".join("a" * 9)],
)
def test_invalid_selector_field_name(field: str) -> None:
    _bad_query({field: 1})


def test_invalid_selector_non_string_field() -> None:
    _bad_query({1: 1})


@pytest.mark.parametrize("op", ["$regex", "$where", "$exists", "eq", "$EQ", "$nin"])
def test_invalid_selector_unknown_operator(op: str) -> None:
    _bad_query({"owner": {op: "alice"}})


@pytest.mark.parametrize("operand", [1.5, {"x": 1}, [1, 2], 0.0])
def test_invalid_selector_operand(operand: Any) -> None:
    _bad_query({"value": {"$gt": operand}})


def test_invalid_selector_float_equality() -> None:
    _bad_query({"value": 2.5})


@pytest.mark.parametrize("operand", [[], "alice", None, [1.5], [[1]], list(range(101))])
def test_invalid_selector_in_operand(operand: Any) -> None:
    _bad_query({"owner": {"$in": operand}})


def test_selector_accepts_sixteen_fields() -> None:
    where, params = compile_selector({f"f{i}": i for i in range(16)})
    assert where.count(" AND ") == 16
    assert params == list(range(16))


def test_invalid_selector_more_than_sixteen_fields() -> None:
    _bad_query({f"f{i}": i for i in range(17)})


def test_invalid_query_through_the_ledger(docs: SqliteLedger) -> None:
    with pytest.raises(InvalidInput) as exc:
        docs.query(NS, {"a;DROP": 1}, 10)
    assert exc.value.code == "bad_query"
    assert docs.get(NS, "car-1") is not None


@pytest.mark.parametrize("operand", [2**63, -(2**63) - 1, {"$gt": 2**64 - 1}])
def test_invalid_selector_integer_out_of_sqlite_range(operand: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        compile_selector({"n": operand})
    assert exc.value.code == "bad_query"
