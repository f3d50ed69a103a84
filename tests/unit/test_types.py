"""Ledger records: canonical round trips, transaction ids, and strict decoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian import codec
from meridian.crypto.hashing import compute_digest
from meridian.errors import InvalidInput
from meridian.ledger.merkle import compute_root
from meridian.types import (
    MAX_ARG_BYTES,
    MAX_ARGS,
    MAX_BLOCK_TXS,
    MAX_SIGNED_BATCH,
    MAX_TX_BYTES,
    ZERO_DIGEST,
    BatchProof,
    Block,
    BlockHeader,
    Endorsement,
    Event,
    KVDelta,
    KVRead,
    KVWrite,
    NsRWSet,
    Proposal,
    RangeRead,
    SignedProposal,
    Transaction,
    TxResult,
    Version,
    compute_endorsement_payload,
    compute_tx_hash,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "encoding.json"

# ---------------------------------------------------------------------------- strategies

NAMES = st.from_regex(r"\A[a-z][a-z0-9_-]{0,15}\Z")
FUNCTIONS = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,15}\Z")
KEYS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
U63 = st.integers(min_value=0, max_value=2**63 - 1)
DIGESTS = st.binary(min_size=32, max_size=32)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)
VERSIONS = st.none() | st.builds(Version, U63, U63)

PROPOSALS = st.builds(
    Proposal,
    network=NAMES,
    app=NAMES,
    contract=NAMES | st.from_regex(r"\A_[a-z][a-z0-9_]{0,10}\Z"),
    function=FUNCTIONS,
    args=st.lists(JSON, max_size=4).map(tuple),
    nonce=st.binary(min_size=8, max_size=64),
    timestamp_ms=U63,
    creator=st.binary(min_size=1, max_size=300),
)
SIGNATURES = st.binary(min_size=1, max_size=512)
BATCH_PROOFS = st.none() | st.integers(2, MAX_SIGNED_BATCH).flatmap(
    lambda size: st.builds(
        BatchProof,
        st.integers(0, size - 1),
        st.just(size),
        st.lists(st.binary(min_size=32, max_size=32), max_size=10).map(tuple),
    )
)
SIGNED = st.builds(SignedProposal, PROPOSALS, SIGNATURES, BATCH_PROOFS)
READS = st.builds(KVRead, KEYS, VERSIONS)
RANGE_READS = st.builds(
    RangeRead,
    st.text(max_size=8),
    st.text(max_size=8),
    st.lists(READS, max_size=3).map(tuple),
    st.booleans(),
)
WRITES = st.builds(KVWrite, KEYS, JSON, st.just(False)) | st.builds(
    KVWrite, KEYS, st.none(), st.just(True)
)
DELTAS = st.builds(KVDelta, KEYS, st.integers(-(2**62), 2**62))
RWSETS = st.builds(
    NsRWSet,
    NAMES,
    st.lists(READS, max_size=3, unique_by=lambda r: r.key).map(tuple),
    st.lists(RANGE_READS, max_size=2).map(tuple),
    st.lists(WRITES, max_size=3, unique_by=lambda w: w.key).map(tuple),
    st.lists(DELTAS, max_size=3, unique_by=lambda x: x.key).map(tuple),
).filter(lambda rw: not {w.key for w in rw.writes} & {x.key for x in rw.deltas})

EVENTS = st.builds(Event, NAMES, st.text(min_size=1, max_size=64), JSON)
RESULTS = st.builds(
    TxResult,
    JSON,
    st.lists(RWSETS, max_size=2).map(tuple),
    st.lists(EVENTS, max_size=2).map(tuple),
    st.text(max_size=20),
)
ENDORSEMENTS = st.builds(Endorsement, st.binary(max_size=300), SIGNATURES, BATCH_PROOFS)
TRANSACTIONS = st.builds(
    Transaction, SIGNED, RESULTS, st.lists(ENDORSEMENTS, max_size=3).map(tuple)
)
HEADERS = st.builds(
    BlockHeader,
    NAMES,
    NAMES,
    U63,
    DIGESTS,
    DIGESTS,
    DIGESTS,
    U63,
    st.integers(0, MAX_BLOCK_TXS),
    NAMES,
)


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    txs = tuple(draw(st.lists(TRANSACTIONS, max_size=2)))
    header = draw(HEADERS)
    data_hash = compute_root([compute_tx_hash(t) for t in txs])
    return Block(
        BlockHeader(
            header.network,
            header.app,
            header.number,
            header.previous_hash,
            data_hash,
            header.last_result_root,
            header.timestamp_ms,
            len(txs),
            header.proposer,
        ),
        txs,
    )


# ---------------------------------------------------------------------------- fixtures


def _proposal(**changes: Any) -> Proposal:
    fields: dict[str, Any] = {
        "network": "testnet",
        "app": "trade",
        "contract": "asset",
        "function": "transfer",
        "args": ("car-1", "bob", 100),
        "nonce": bytes(range(16)),
        "timestamp_ms": 1_900_000_000_000,
        "creator": b"\x30\x82creator-der",
    }
    fields.update(changes)
    return Proposal(**fields)


def _result() -> TxResult:
    rw = NsRWSet(
        "asset",
        reads=(KVRead("car-1", Version(3, 1)), KVRead("car-2", None)),
        range_reads=(RangeRead("car-", "car.", (KVRead("car-1", Version(3, 1)),), True),),
        writes=(KVWrite("car-1", {"owner": "bob"}), KVWrite("car-9", None, delete=True)),
        deltas=(KVDelta("count", -2),),
    )
    return TxResult({"ok": True}, (rw,), (Event("asset", "moved", {"to": "bob"}),), "asset@1")


def _tx(proposal: Proposal | None = None) -> Transaction:
    signed = SignedProposal(proposal or _proposal(), b"\x01" * 64)
    return Transaction(signed, _result(), (Endorsement(b"node-cert", b"\x02" * 64),))


def _header(**changes: Any) -> BlockHeader:
    fields: dict[str, Any] = {
        "network": "testnet",
        "app": "trade",
        "number": 7,
        "previous_hash": bytes(range(32)),
        "data_hash": bytes(32),
        "last_result_root": bytes([0xAB]) * 32,
        "timestamp_ms": 1_900_000_000_500,
        "tx_count": 0,
        "proposer": "node1",
    }
    fields.update(changes)
    return BlockHeader(**fields)


def _reject(parse: Any, d: Any, code: str | None = "malformed") -> InvalidInput:
    with pytest.raises(InvalidInput) as exc:
        parse(d)
    if code is not None:
        assert exc.value.code == code
    return exc.value


def _through_json(d: Any) -> Any:
    """What a peer receives: the dict after a trip through the canonical encoding."""
    return codec.decode(codec.encode(d), max_bytes=MAX_TX_BYTES * 4)


# -------------------------------------------------------------------------- round trips


@settings(max_examples=50)
@given(PROPOSALS)
def test_proposal_round_trip(p: Proposal) -> None:
    back = Proposal.from_dict(_through_json(p.to_dict()))
    assert back == p
    assert back.tx_id == p.tx_id
    assert back.encode() == p.encode()


@settings(max_examples=30)
@given(SIGNED)
def test_signed_proposal_round_trip(sp: SignedProposal) -> None:
    assert SignedProposal.from_dict(_through_json(sp.to_dict())) == sp


@given(READS)
def test_kv_read_round_trip(r: KVRead) -> None:
    assert KVRead.from_dict(_through_json(r.to_dict())) == r


@given(RANGE_READS)
def test_range_read_round_trip(r: RangeRead) -> None:
    assert RangeRead.from_dict(_through_json(r.to_dict())) == r


@given(WRITES)
def test_kv_write_round_trip(w: KVWrite) -> None:
    assert KVWrite.from_dict(_through_json(w.to_dict())) == w


@given(DELTAS)
def test_kv_delta_round_trip(d: KVDelta) -> None:
    assert KVDelta.from_dict(_through_json(d.to_dict())) == d


@settings(max_examples=30)
@given(RWSETS)
def test_ns_rwset_round_trip(rw: NsRWSet) -> None:
    assert NsRWSet.from_dict(_through_json(rw.to_dict())) == rw


@given(EVENTS)
def test_event_round_trip(e: Event) -> None:
    assert Event.from_dict(_through_json(e.to_dict())) == e


@settings(max_examples=30)
@given(RESULTS)
def test_tx_result_round_trip(r: TxResult) -> None:
    back = TxResult.from_dict(_through_json(r.to_dict()))
    assert back == r
    assert back.encode() == r.encode()


@given(ENDORSEMENTS)
def test_endorsement_round_trip(e: Endorsement) -> None:
    assert Endorsement.from_dict(_through_json(e.to_dict())) == e


@settings(max_examples=20)
@given(TRANSACTIONS)
def test_transaction_round_trip(tx: Transaction) -> None:
    assert tx.encode() == codec.encode(tx.to_dict())  # the spliced encoding is canonical
    back = Transaction.decode(tx.encode())
    assert back == tx
    assert back.tx_id == tx.tx_id
    assert compute_tx_hash(back) == compute_tx_hash(tx)


@given(HEADERS)
def test_block_header_round_trip(h: BlockHeader) -> None:
    back = BlockHeader.from_dict(_through_json(h.to_dict()))
    assert back == h
    assert back.hash == h.hash == compute_digest(h.encode())


@settings(max_examples=15)
@given(blocks())
def test_block_round_trip(b: Block) -> None:
    assert Block.from_dict(_through_json(b.to_dict())) == b


def test_empty_rwset_round_trip() -> None:
    rw = NsRWSet("_lifecycle")
    assert NsRWSet.from_dict(rw.to_dict()) == rw


def test_record_dicts_use_hex_for_ids_and_base64_for_bytes() -> None:
    d = _proposal().to_dict()
    assert d["nonce"] == bytes(range(16)).hex()
    assert d["creator"] == codec.b64(b"\x30\x82creator-der")
    h = _header().to_dict()
    assert h["previous_hash"] == bytes(range(32)).hex()


# ---------------------------------------------------------------------------- identifiers


def test_tx_id_is_the_digest_of_the_unsigned_proposal() -> None:
    p = _proposal()
    assert p.tx_id == compute_digest(p.encode()).hex()


def test_tx_id_is_independent_of_the_signature() -> None:
    p = _proposal()
    a = Transaction(SignedProposal(p, b"\x01" * 64), _result(), ())
    b = Transaction(SignedProposal(p, b"\x02" * 70), _result(), ())
    assert a.tx_id == b.tx_id == p.tx_id
    assert compute_tx_hash(a) != compute_tx_hash(b)


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": bytes(range(1, 17))},
        {"args": ("car-1", "bob", 101)},
        {"args": ("car-1", "bob")},
        {"timestamp_ms": 1_900_000_000_001},
        {"creator": b"\x30\x82other-der"},
        {"function": "burn"},
        {"app": "other"},
    ],
)
def test_tx_id_changes_with_every_proposal_field(change: dict[str, Any]) -> None:
    assert _proposal(**change).tx_id != _proposal().tx_id


def test_signing_digest_is_bound_to_the_network() -> None:
    assert _proposal().signing_digest() != _proposal(network="othernet").signing_digest()
    assert bytes(_proposal().signing_digest()) != compute_digest(_proposal().encode())


def test_endorsement_payload_binds_tx_id_and_result() -> None:
    result = _result()
    payload = compute_endorsement_payload(_proposal().tx_id, result)
    assert payload != compute_endorsement_payload(_proposal(nonce=b"n" * 8).tx_id, result)
    other = TxResult({"ok": False}, result.rwsets, result.events, result.contract_version)
    assert payload != compute_endorsement_payload(_proposal().tx_id, other)


def test_block_hash_changes_with_every_header_field() -> None:
    base = _header()
    for change in [
        {"number": 8},
        {"data_hash": bytes([1]) * 32},
        {"tx_count": 1},
        {"last_result_root": ZERO_DIGEST},
        {"timestamp_ms": 1},
    ]:
        assert _header(**change).hash != base.hash


def test_version_orders_by_block_then_tx() -> None:
    assert Version(1, 5) < Version(2, 0) < Version(2, 1)
    assert Version.from_list(None) is None
    assert Version.from_list([3, 4]) == Version(3, 4)


# ------------------------------------------------------------------------ test vectors


def test_encoding_vectors() -> None:
    """Fixed records with their canonical bytes and digests, for other implementations."""
    vectors = json.loads(VECTORS.read_text())
    assert vectors["proposals"] and vectors["headers"]
    for v in vectors["proposals"]:
        p = Proposal.from_dict(v["proposal"])
        assert p.encode() == v["canonical"].encode()
        assert codec.encode(v["proposal"]) == v["canonical"].encode()
        assert p.tx_id == v["tx_id"]
        assert bytes(p.signing_digest()).hex() == v["signing_digest"]
    for v in vectors["headers"]:
        h = BlockHeader.from_dict(v["header"])
        assert h.encode() == v["canonical"].encode()
        assert h.hash.hex() == v["hash"]


# ------------------------------------------------------------------------ invalid input


@pytest.mark.parametrize(
    "field",
    ["network", "app", "contract", "function", "args", "nonce", "timestamp_ms", "creator"],
)
def test_invalid_proposal_missing_field(field: str) -> None:
    d = _proposal().to_dict()
    del d[field]
    _reject(Proposal.from_dict, d)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp_ms", True),
        ("timestamp_ms", "1900000000000"),
        ("timestamp_ms", -1),
        ("timestamp_ms", 2**63),
        ("args", "car-1"),
        ("args", {"a": 1}),
        ("nonce", 5),
        ("creator", ["AA=="]),
        ("network", 1),
    ],
)
def test_invalid_proposal_wrong_type(field: str, value: Any) -> None:
    d = _proposal().to_dict()
    d[field] = value
    _reject(Proposal.from_dict, d)


@pytest.mark.parametrize("d", [None, [], "proposal", 3])
def test_invalid_proposal_not_an_object(d: Any) -> None:
    _reject(Proposal.from_dict, d)


def test_proposal_accepts_max_args() -> None:
    d = _proposal().to_dict()
    d["args"] = [1] * MAX_ARGS
    assert len(Proposal.from_dict(d).args) == MAX_ARGS


def test_invalid_proposal_too_many_args() -> None:
    d = _proposal().to_dict()
    d["args"] = [1] * (MAX_ARGS + 1)
    _reject(Proposal.from_dict, d, "too_large")


def test_invalid_proposal_args_too_many_bytes() -> None:
    d = _proposal().to_dict()
    d["args"] = ["x" * MAX_ARG_BYTES]
    _reject(Proposal.from_dict, d, "too_large")


def test_invalid_proposal_float_arg() -> None:
    d = _proposal().to_dict()
    d["args"] = [1, {"amount": 2.5}]
    _reject(Proposal.from_dict, d, "float_not_allowed")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("network", "TestNet"),
        ("network", ""),
        ("app", "1trade"),
        ("app", "trade app"),
        ("app", "a" * 65),
        ("contract", "Asset"),
        ("contract", "__dunder"),
        ("contract", "asset.v2"),
        ("function", "9lives"),
        ("function", "do-it"),
        ("function", ""),
    ],
)
def test_invalid_proposal_bad_name(field: str, value: str) -> None:
    d = _proposal().to_dict()
    d[field] = value
    _reject(Proposal.from_dict, d)


@pytest.mark.parametrize("length", [0, 7, 65])
def test_invalid_proposal_nonce_length(length: int) -> None:
    d = _proposal().to_dict()
    d["nonce"] = bytes(length).hex()
    _reject(Proposal.from_dict, d)


def test_invalid_proposal_uppercase_nonce() -> None:
    d = _proposal().to_dict()
    d["nonce"] = "AB" * 16
    _reject(Proposal.from_dict, d)


@pytest.mark.parametrize("creator", ["MII", "MIIBAA", "MIIBAB==", "MIIB AA==", "MIIB-A=="])
def test_invalid_proposal_non_canonical_base64(creator: str) -> None:
    d = _proposal().to_dict()
    d["creator"] = creator
    _reject(Proposal.from_dict, d)


def test_invalid_proposal_creator_too_large() -> None:
    d = _proposal().to_dict()
    d["creator"] = codec.b64(bytes(9000))
    _reject(Proposal.from_dict, d, "too_large")


@pytest.mark.parametrize("sig", [b"", bytes(513)])
def test_invalid_signed_proposal_signature_length(sig: bytes) -> None:
    d = SignedProposal(_proposal(), b"x").to_dict()
    d["signature"] = codec.b64(sig)
    _reject(SignedProposal.from_dict, d)


@pytest.mark.parametrize(
    "batch",
    [
        {"index": 0, "size": 1, "path": []},  # a batch of one is signed as itself
        {"index": 2, "size": 2, "path": ["00" * 32]},
        {"index": -1, "size": 4, "path": []},
        {"index": 0, "size": MAX_SIGNED_BATCH + 1, "path": []},
        {"index": 0, "size": 4, "path": ["00" * 32] * 11},
        {"index": 0, "size": 4, "path": ["00" * 31]},
        {"index": 0, "size": 4, "path": "00"},
        {"index": True, "size": 4, "path": []},
        {"size": 4, "path": []},
        [],
    ],
)
def test_invalid_batch_proof(batch: Any) -> None:
    d = SignedProposal(_proposal(), b"x").to_dict()
    d["batch"] = batch
    with pytest.raises(InvalidInput) as info:
        SignedProposal.from_dict(d)
    assert info.value.code in ("malformed", "too_large")
    e = Endorsement(b"node-cert", b"x").to_dict()
    e["batch"] = batch
    with pytest.raises(InvalidInput):
        Endorsement.from_dict(e)


def test_invalid_signed_proposal_missing_proposal() -> None:
    _reject(SignedProposal.from_dict, {"signature": codec.b64(b"sig")})


@pytest.mark.parametrize("key", ["", "a\x00b", "k" * 513, 5])
def test_invalid_read_key(key: Any) -> None:
    _reject(KVRead.from_dict, {"key": key, "version": None}, code=None)
    _reject(KVWrite.from_dict, {"key": key, "value": 1}, code=None)
    _reject(KVDelta.from_dict, {"key": key, "delta": 1}, code=None)


@pytest.mark.parametrize("version", [[1], [1, 2, 3], [-1, 0], [True, 0], ["1", "0"], 5])
def test_invalid_read_version(version: Any) -> None:
    _reject(KVRead.from_dict, {"key": "k", "version": version})


def test_invalid_write_float_value() -> None:
    _reject(KVWrite.from_dict, {"key": "k", "value": {"p": 0.5}}, "float_not_allowed")


@pytest.mark.parametrize("delta", [True, 2**62 + 1, -(2**62) - 1, "1", None])
def test_invalid_delta(delta: Any) -> None:
    _reject(KVDelta.from_dict, {"key": "k", "delta": delta})


@pytest.mark.parametrize("ns", ["Asset", "", "a/b", "__x"])
def test_invalid_rwset_namespace(ns: str) -> None:
    d = NsRWSet("asset").to_dict()
    d["namespace"] = ns
    _reject(NsRWSet.from_dict, d)


def test_invalid_rwset_missing_list() -> None:
    d = NsRWSet("asset").to_dict()
    del d["deltas"]
    _reject(NsRWSet.from_dict, d)


def test_invalid_range_read_exhausted_not_bool() -> None:
    d = RangeRead("a", "b", (), True).to_dict()
    d["exhausted"] = 1
    _reject(RangeRead.from_dict, d)


@pytest.mark.parametrize("name", ["", "e" * 65, 5])
def test_invalid_event_name(name: Any) -> None:
    _reject(Event.from_dict, {"contract": "asset", "name": name, "payload": None})


def test_invalid_result_too_many_events() -> None:
    d = _result().to_dict()
    d["events"] = [Event("asset", "e", None).to_dict()] * 65
    _reject(TxResult.from_dict, d, "too_large")


def test_invalid_result_float_response() -> None:
    d = _result().to_dict()
    d["response"] = 1.0
    _reject(TxResult.from_dict, d, "float_not_allowed")


def test_invalid_result_missing_contract_version() -> None:
    d = _result().to_dict()
    del d["contract_version"]
    _reject(TxResult.from_dict, d)


@pytest.mark.parametrize(
    "d",
    [
        {"endorser": codec.b64(b"cert"), "signature": ""},
        {"endorser": codec.b64(bytes(9000)), "signature": codec.b64(b"s")},
        {"endorser": codec.b64(b"cert")},
        {"endorser": "not base64!", "signature": codec.b64(b"s")},
    ],
)
def test_invalid_endorsement(d: dict[str, Any]) -> None:
    _reject(Endorsement.from_dict, d)


def test_invalid_transaction_too_many_endorsements() -> None:
    d = _tx().to_dict()
    d["endorsements"] = d["endorsements"] * 65
    _reject(Transaction.from_dict, d, "too_large")


def test_invalid_transaction_decode_over_max_tx_bytes() -> None:
    d = _tx().to_dict()
    d["result"]["response"] = "x" * MAX_TX_BYTES
    data = codec.encode(d)
    assert len(data) > MAX_TX_BYTES
    _reject(Transaction.decode, data, "too_large")


def test_invalid_transaction_decode_malformed_json() -> None:
    _reject(Transaction.decode, b'{"signed_proposal": ', "malformed")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("number", True),
        ("number", -1),
        ("tx_count", MAX_BLOCK_TXS + 1),
        ("previous_hash", "00" * 31),
        ("data_hash", "AB" * 32),
        ("last_result_root", None),
        ("network", "Net"),
    ],
)
def test_invalid_header_field(field: str, value: Any) -> None:
    d = _header().to_dict()
    d[field] = value
    _reject(BlockHeader.from_dict, d, code=None)


def test_invalid_header_missing_field() -> None:
    d = _header().to_dict()
    del d["timestamp_ms"]
    _reject(BlockHeader.from_dict, d)


@pytest.mark.parametrize("tx_count", [0, 2])
def test_invalid_block_tx_count_mismatch(tx_count: int) -> None:
    block = Block(_header(tx_count=1), (_tx(),))
    assert Block.from_dict(block.to_dict()) == block
    d = block.to_dict()
    d["header"]["tx_count"] = tx_count
    _reject(Block.from_dict, d)
