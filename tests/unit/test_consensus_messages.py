"""Consensus messages on the wire, their signing digests, and the persisted safety state.

``decode_message`` is the first code a peer's bytes reach: it must give back exactly
what was encoded, and for anything else raise ``InvalidInput`` (never another
exception). The safety state is what a restarted replica trusts not to vote twice, so
its codec and its files (``SafetyStore``) are held to the same standard.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian import codec
from meridian.consensus.core import SafetyState
from meridian.consensus.messages import (
    MAX_MESSAGE_BYTES,
    MAX_SYNC_BLOCKS,
    Message,
    Phase,
    QuorumCert,
    Status,
    SyncRequest,
    SyncResponse,
    TimeoutCert,
    TxForward,
    compute_proposal_digest,
    compute_timeout_digest,
    compute_vote_digest,
    decode_message,
    encode_message,
)
from meridian.crypto.hashing import Digest
from meridian.errors import InvalidInput
from meridian.node.ordering import SafetyStore
from meridian.types import Event, KVRead, KVWrite, NsRWSet, Transaction, TxResult, Version
from tests.sim.simulator import APP, NETWORK, compute_sim_block, make_tx
from tests.unit.test_consensus_core import (
    GENESIS,
    NOW,
    compute_tip_after,
    make_block,
    make_qc,
    make_tc,
    sign_proposal,
    sign_timeout,
    sign_vote,
)

BLOCK = make_block()
HASH = BLOCK.header.hash
PREPARE_QC = make_qc(Phase.PREPARE, 0, 1, HASH)
COMMIT_QC = make_qc(Phase.COMMIT, 0, 0, HASH)
TC = make_tc(0, 1, high_qc=PREPARE_QC)
EMPTY_TC = make_tc(0, 0)
NEXT = make_block(compute_tip_after(BLOCK), ts=BLOCK.header.timestamp_ms + 1)

MESSAGES: dict[str, Message] = {
    "vote": sign_vote("n1", Phase.PREPARE, 0, 0, HASH),
    "commit_vote": sign_vote("n2", Phase.COMMIT, 7, 3, HASH),
    "timeout": sign_timeout("n1", 0, 0),
    "timeout_with_qc_and_tc": sign_timeout("n3", 0, 2, high_qc=PREPARE_QC, last_tc=TC),
    "proposal": sign_proposal("n1", 0, BLOCK),
    "proposal_justified": sign_proposal("n3", 2, BLOCK, justify=PREPARE_QC, tc=TC),
    "proposal_empty_block": sign_proposal("n2", 1, make_block(proposer="n2"), tc=EMPTY_TC),
    "status": Status(APP, 42),
    "sync_request": SyncRequest(APP, 3),
    "sync_response": SyncResponse(
        APP, ((BLOCK, COMMIT_QC), (NEXT, make_qc(Phase.COMMIT, 1, 0, NEXT.header.hash)))
    ),
    "sync_response_empty": SyncResponse(APP, ()),
    "txs": TxForward(APP, tuple(make_tx(i, 5) for i in range(3))),
}


def wire(name: str) -> dict[str, Any]:
    """The JSON form of one of MESSAGES, to tamper with."""
    return orjson.loads(encode_message(MESSAGES[name]))


def assert_invalid(value: Any) -> InvalidInput:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    with pytest.raises(InvalidInput) as exc:
        decode_message(data)
    return exc.value


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_encode_decode_round_trip(name: str) -> None:
    msg = MESSAGES[name]
    data = encode_message(msg)
    back = decode_message(data)
    assert back == msg
    assert type(back) is type(msg)
    assert encode_message(back) == data


def test_quorum_cert_round_trip() -> None:
    assert QuorumCert.decode(PREPARE_QC.encode()) == PREPARE_QC


def test_timeout_certificate_reports_its_highest_round() -> None:
    assert TC.max_high_qc_round == 1
    assert EMPTY_TC.max_high_qc_round == -1
    assert TimeoutCert.from_dict(TC.to_dict()) == TC


# --------------------------------------------------------------------------- invalid


@pytest.mark.parametrize("data", [b"", b"{", b"\xff\xfe", b"[1,2]", b"null", b'"vote"', b"{}"])
def test_invalid_not_a_message_object(data: bytes) -> None:
    assert_invalid(data)


def test_invalid_unknown_kind() -> None:
    d = wire("vote")
    d["kind"] = "ballot"
    assert_invalid(d)


@pytest.mark.parametrize("field", ["app", "kind", "body"])
def test_invalid_envelope_missing_field(field: str) -> None:
    d = wire("vote")
    del d[field]
    assert_invalid(d)


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("vote", "phase"),
        ("vote", "height"),
        ("vote", "round"),
        ("vote", "block"),
        ("vote", "voter"),
        ("vote", "signature"),
        ("timeout", "height"),
        ("timeout", "round"),
        ("timeout", "high_qc"),
        ("timeout", "voter"),
        ("timeout", "signature"),
        ("proposal", "round"),
        ("proposal", "block"),
        ("proposal", "justify"),
        ("proposal", "tc"),
        ("proposal", "proposer"),
        ("proposal", "signature"),
        ("status", "height"),
        ("sync_request", "from_height"),
        ("sync_response", "blocks"),
        ("txs", "transactions"),
    ],
)
def test_invalid_body_missing_field(name: str, field: str) -> None:
    d = wire(name)
    del d["body"][field]
    assert_invalid(d)


@pytest.mark.parametrize("field", ["app", "phase", "height", "round", "block", "signatures"])
def test_invalid_certificate_missing_field(field: str) -> None:
    d = wire("proposal_justified")
    del d["body"]["justify"][field]
    assert_invalid(d)


@pytest.mark.parametrize("field", ["app", "height", "round", "entries", "high_qc"])
def test_invalid_timeout_certificate_missing_field(field: str) -> None:
    d = wire("proposal_justified")
    del d["body"]["tc"][field]
    assert_invalid(d)


def test_invalid_qc_voters_unsorted() -> None:
    d = wire("proposal_justified")
    sigs = d["body"]["justify"]["signatures"]
    sigs.reverse()
    assert_invalid(d)


def test_invalid_qc_voters_duplicate() -> None:
    d = wire("timeout_with_qc_and_tc")
    sigs = d["body"]["high_qc"]["signatures"]
    sigs[1] = sigs[0]
    assert_invalid(d)


def test_invalid_tc_voters_duplicate() -> None:
    d = wire("proposal_justified")
    entries = d["body"]["tc"]["entries"]
    entries[1] = entries[0]
    assert_invalid(d)


def test_invalid_oversized_message() -> None:
    data = encode_message(MESSAGES["status"])
    padded = data[:-1] + b" " * (MAX_MESSAGE_BYTES + 1 - len(data)) + b"}"
    assert len(padded) == MAX_MESSAGE_BYTES + 1
    assert assert_invalid(padded).code == "too_large"


def test_invalid_too_many_sync_blocks() -> None:
    d = wire("sync_response")
    d["body"]["blocks"] = d["body"]["blocks"][:1] * (MAX_SYNC_BLOCKS + 1)
    assert assert_invalid(d).code == "too_large"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("vote", ("height",)),
        ("vote", ("round",)),
        ("status", ("height",)),
        ("timeout", ("round",)),
        ("proposal_justified", ("justify", "round")),
    ],
)
def test_invalid_float(name: str, path: tuple[str, ...]) -> None:
    d = wire(name)
    target = d["body"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = 1.0
    assert_invalid(d)


def _rich_forward() -> dict[str, Any]:
    """A ``txs`` message whose transaction has a value in every kind of place."""
    tx = make_tx(0, 9)
    result = TxResult(
        {"ok": 1},
        (
            NsRWSet(
                "asset",
                reads=(KVRead("k", Version(1, 2)),),
                writes=(KVWrite("k", {"v": 1}),),
            ),
        ),
        (Event("asset", "made", {"id": "k"}),),
        "asset@1",
    )
    rich = Transaction(tx.signed_proposal, result, tx.endorsements)
    return orjson.loads(encode_message(TxForward(APP, (rich,))))


@pytest.mark.parametrize(
    "path",
    [
        ("signed_proposal", "proposal", "args", 0),
        ("signed_proposal", "proposal", "timestamp_ms"),
        ("result", "response"),
        ("result", "response", "ok"),
        ("result", "rwsets", 0, "writes", 0, "value", "v"),
        ("result", "rwsets", 0, "reads", 0, "version", 0),
        ("result", "events", 0, "payload", "id"),
    ],
)
def test_invalid_float_in_forwarded_transaction(path: tuple[Any, ...]) -> None:
    """Forwarded transactions skip the whole-message value check: every value a
    transaction keeps is still checked by its own parser."""
    d = _rich_forward()
    assert isinstance(decode_message(orjson.dumps(d)), TxForward)
    target = d["body"]["transactions"][0]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = 1.5
    assert_invalid(d)


def _deepest() -> Transaction:
    """A transaction with a written value and an argument nested as deep as the
    gateway and the contract runtime accept (MAX_DEPTH from their own roots)."""
    deep: Any = 1
    for _ in range(codec.MAX_DEPTH):
        deep = [deep]
    codec.validate_value(deep)  # what simulation checks, from the value's root
    tx = make_tx(0, 11)
    proposal = replace(tx.proposal, args=(deep[0],))  # arguments: from the list's root
    result = TxResult(None, (NsRWSet("asset", writes=(KVWrite("k", deep),)),), (), "asset@1")
    return Transaction(replace(tx.signed_proposal, proposal=proposal), result, tx.endorsements)


def test_the_deepest_values_travel_in_every_container(tmp_path: Path) -> None:
    """Depth counts from each value's root wherever a transaction travels: forwarded,
    in a proposal's block, in a sync response, in voted.json, in the pending queue. (A
    check from the container's root would refuse a committed block to a node that
    missed it, for ever.)"""
    tx = _deepest()
    block = compute_sim_block(GENESIS, [tx], NOW, "n1")
    qc = make_qc(Phase.COMMIT, 0, 0, block.header.hash)
    for msg in (
        TxForward(APP, (tx,)),
        sign_proposal("n1", 0, block),
        SyncResponse(APP, ((block, qc),)),
    ):
        assert decode_message(encode_message(msg)) == msg
    store = SafetyStore(tmp_path, APP)
    store.save_block(block)
    assert store.load_block() == block
    assert Transaction.decode(tx.encode()) == tx


@pytest.mark.parametrize("kind", ["proposal", "sync_response"])
def test_invalid_float_in_a_transaction_of_a_block(kind: str) -> None:
    d = wire(kind)
    block = d["body"]["block"] if kind == "proposal" else d["body"]["blocks"][0]["block"]
    block["transactions"][0]["signed_proposal"]["proposal"]["args"][0] = 1.5
    assert_invalid(d)


def test_forwarded_transaction_drops_unknown_fields() -> None:
    d = _rich_forward()
    clean = decode_message(orjson.dumps(d))
    d["body"]["transactions"][0]["extra"] = {"x": 1.5}
    msg = decode_message(orjson.dumps(d))
    assert isinstance(msg, TxForward) and isinstance(clean, TxForward)
    assert msg.transactions[0].encode() == clean.transactions[0].encode()


WRONG_VALUES = [
    ("vote", "height", "1"),
    ("vote", "height", True),
    ("vote", "height", -1),
    ("vote", "height", 2**63),
    ("vote", "round", None),
    ("vote", "phase", 0),
    ("vote", "phase", 3),
    ("vote", "block", "AB" * 32),  # upper-case hex
    ("vote", "block", "ab" * 31),  # 31 bytes
    ("vote", "voter", "N1"),
    ("vote", "voter", 1),
    ("vote", "signature", "not base64!"),
    ("vote", "signature", ""),
    ("vote", "signature", "QUFB" * 200),  # 600 bytes
    ("timeout", "high_qc", "none"),
    ("timeout", "high_qc", []),
    ("timeout", "last_tc", {"round": 0}),
    ("proposal", "block", []),
    ("proposal", "justify", 5),
    ("proposal", "tc", "tc"),
    ("proposal", "round", [0]),
    ("status", "height", {}),
    ("sync_response", "blocks", {}),
    ("sync_response", "blocks", [{"block": {}, "qc": {}}]),
    ("txs", "transactions", [{}]),
    ("txs", "transactions", "tx"),
]


@pytest.mark.parametrize(("name", "field", "value"), WRONG_VALUES)
def test_invalid_wrong_type(name: str, field: str, value: Any) -> None:
    d = wire(name)
    d["body"][field] = value
    assert_invalid(d)


@pytest.mark.parametrize("app", ["", "Simapp", "1app", 7, None, "a" * 65])
def test_invalid_channel_name(app: Any) -> None:
    d = wire("status")
    d["app"] = app
    assert_invalid(d)


def test_invalid_body_not_an_object() -> None:
    d = wire("vote")
    d["body"] = [d["body"]]
    assert_invalid(d)


def test_invalid_block_transaction_count() -> None:
    d = wire("proposal")
    d["body"]["block"]["header"]["tx_count"] += 1
    assert_invalid(d)


# ----------------------------------------------------------------------------- fuzz

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.text(max_size=12)
    | st.sampled_from(["", "n1", APP, "AAAA", HASH.hex(), "vote", "timeout"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def decode_or_invalid(data: bytes) -> None:
    """Either a well-formed message (of some channel) or InvalidInput; anything else fails."""
    try:
        msg = decode_message(data)
    except InvalidInput:
        return
    assert decode_message(encode_message(msg)) == msg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_invalid_input(data: bytes) -> None:
    decode_or_invalid(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["vote", "timeout", "proposal", "status", "sync_request", "sync_response", "txs", "x"]
    ),
    JSON,
)
def test_fuzz_random_bodies_only_raise_invalid_input(kind: str, body: Any) -> None:
    decode_or_invalid(orjson.dumps({"app": APP, "kind": kind, "body": body}))


def all_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += all_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += all_paths(item, (*prefix, index))
    return paths


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(MESSAGES)), st.data())
def test_fuzz_one_field_replaced_only_raises_invalid_input(name: str, data: Any) -> None:
    d = wire(name)
    path = data.draw(st.sampled_from(all_paths(d)[1:]))
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JSON)
    decode_or_invalid(orjson.dumps(d))


# --------------------------------------------------------------------- signing digests

OTHER_VALUES = {
    "network": "othernet",
    "app": "otherapp",
    "phase": Phase.COMMIT,
    "block": Digest(bytes(32)),
}


@pytest.mark.parametrize("field", ["network", "app", "phase", "height", "round_", "block"])
def test_vote_digest_covers_every_field(field: str) -> None:
    base = {
        "network": NETWORK,
        "app": APP,
        "phase": Phase.PREPARE,
        "height": 0,
        "round_": 0,
        "block": HASH,
    }
    other = OTHER_VALUES.get(field, 1)
    assert compute_vote_digest(**base) != compute_vote_digest(**{**base, field: other})


@pytest.mark.parametrize("field", ["network", "app", "height", "round_", "high_qc_round"])
def test_timeout_digest_covers_every_field(field: str) -> None:
    base = {"network": NETWORK, "app": APP, "height": 0, "round_": 0, "high_qc_round": -1}
    other = OTHER_VALUES.get(field, 1)
    assert compute_timeout_digest(**base) != compute_timeout_digest(**{**base, field: other})


@pytest.mark.parametrize("field", ["network", "app", "height", "round_", "block"])
def test_proposal_digest_covers_every_field(field: str) -> None:
    base = {"network": NETWORK, "app": APP, "height": 0, "round_": 0, "block": HASH}
    other = OTHER_VALUES.get(field, 1)
    assert compute_proposal_digest(**base) != compute_proposal_digest(**{**base, field: other})


def test_digests_are_domain_separated() -> None:
    vote = compute_vote_digest(NETWORK, APP, Phase.PREPARE, 0, 0, HASH)
    proposal = compute_proposal_digest(NETWORK, APP, 0, 0, HASH)
    timeout = compute_timeout_digest(NETWORK, APP, 0, 0, 0)
    assert len({vote, proposal, timeout}) == 3
    assert compute_vote_digest(NETWORK, APP, Phase.PREPARE, 0, 0, HASH) == vote  # deterministic


# ---------------------------------------------------------------------- safety state

FULL_STATE = SafetyState(
    height=0,
    round=2,
    proposed=1,
    prepare_voted=2,
    commit_voted=1,
    timed_out=1,
    lock=PREPARE_QC,
    last_tc=TC,
)
STATE_DICT = FULL_STATE.to_dict()


@pytest.mark.parametrize("state", [SafetyState(height=5), FULL_STATE])
def test_safety_state_round_trip(state: SafetyState) -> None:
    assert SafetyState.decode(state.encode()) == state


BAD_STATES = [
    pytest.param(b"not json", id="not_json"),
    pytest.param(b"[]", id="list"),
    pytest.param(b"null", id="null"),
    pytest.param(orjson.dumps({"height": 0}), id="missing_fields"),
    pytest.param(orjson.dumps({**STATE_DICT, "prepare_voted": -2}), id="round_below_none"),
    pytest.param(orjson.dumps({**STATE_DICT, "timed_out": "1"}), id="round_as_text"),
    pytest.param(orjson.dumps({**STATE_DICT, "height": [0]}), id="height_list"),
    pytest.param(orjson.dumps({**STATE_DICT, "lock": {"app": APP}}), id="lock_malformed"),
    pytest.param(orjson.dumps({**STATE_DICT, "last_tc": 3}), id="tc_malformed"),
    pytest.param(b'{"height": 1.5}', id="float"),
    pytest.param(orjson.dumps({**STATE_DICT, "height": "7"}), id="height_as_text"),
    pytest.param(orjson.dumps({**STATE_DICT, "height": -3}), id="height_negative"),
    pytest.param(orjson.dumps({**STATE_DICT, "round": -5}), id="round_negative"),
    pytest.param(orjson.dumps({**STATE_DICT, "prepare_voted": True}), id="round_as_bool"),
]


@pytest.mark.parametrize("data", BAD_STATES)
def test_invalid_safety_state(data: bytes) -> None:
    with pytest.raises(InvalidInput):
        SafetyState.decode(data)


def test_safety_store_starts_empty(tmp_path: Path) -> None:
    store = SafetyStore(tmp_path, APP)
    assert store.load() is None and store.load_block() is None


def test_safety_store_round_trip(tmp_path: Path) -> None:
    store = SafetyStore(tmp_path / "safety", APP)
    store.save(SafetyState(height=0, prepare_voted=0))
    store.save(FULL_STATE)  # replaces the first
    store.save_block(BLOCK)
    again = SafetyStore(tmp_path / "safety", APP)
    assert again.load() == FULL_STATE
    assert again.load_block() == BLOCK
    assert sorted(p.name for p in (tmp_path / "safety").iterdir()) == [
        f"{APP}.safety.json",
        f"{APP}.voted.json",
    ]


def test_safety_store_ignores_a_leftover_temporary_file(tmp_path: Path) -> None:
    store = SafetyStore(tmp_path, APP)
    store.save(FULL_STATE)
    store.save_block(BLOCK)
    for path in (store.path, store.block_path):  # a crash between write and rename
        path.with_name(path.name + ".tmp").write_bytes(b'{"height": 9, "trunc')
    assert store.load() == FULL_STATE
    assert store.load_block() == BLOCK
    store.save(SafetyState(height=1))  # and the next save overwrites it
    assert store.load() == SafetyState(height=1)


def test_invalid_safety_store_file(tmp_path: Path) -> None:
    store = SafetyStore(tmp_path, APP)
    store.path.write_bytes(b'{"height": 0, "rou')
    with pytest.raises(InvalidInput):
        store.load()
