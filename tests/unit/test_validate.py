"""Block validation: one verdict per transaction, with real certificates and signatures."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meridian.contracts.lifecycle import LIFECYCLE, ContractDefinition, definition_key
from meridian.crypto.certs import (
    CertificateAuthority,
    Membership,
    Role,
    load_cert_der,
    load_signer,
)
from meridian.crypto.suites import Signer
from meridian.ledger.merkle import compute_root, compute_root_from_proof
from meridian.ledger.store import CommitBatch, SqliteLedger, StateWrite
from meridian.node.channel import WriterState
from meridian.node.policy import parse_policy
from meridian.node.validate import AppRules, compute_result_root, validate_block
from meridian.types import (
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
    TxCode,
    TxId,
    TxResult,
    Version,
    compute_endorsement_digest,
    compute_tx_hash,
    sign_batch,
)

NET, APP, NS = "testnet", "trade", "asset"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
BLOCK_TIME = T0 + timedelta(days=1)
BLOCK_MS = int(BLOCK_TIME.timestamp() * 1000)
PKG = "asset:" + "ab" * 32
LABEL = "asset@1"
RULES = AppRules(NET, APP, frozenset({"org1", "org2"}), parse_policy("MAJORITY"))
V0 = Version(0, 0)
_nonces = itertools.count(1)


@dataclass(frozen=True)
class Actor:
    cert_der: bytes
    signer: Signer
    serial: int


def _actor(ca: CertificateAuthority, name: str, role: Role, now: datetime = T0) -> Actor:
    issued = ca.issue(name, role, now=now)
    assert issued.key_pem is not None
    der = load_cert_der(issued.cert_pem)
    serial = x509.load_der_x509_certificate(der).serial_number
    return Actor(der, load_signer(issued.key_pem), serial)


@dataclass(frozen=True)
class World:
    """org1 and org2 are app members; org3 is known to the network but not a member of
    the app; org4 is unknown to the membership service."""

    cas: dict[str, CertificateAuthority]
    node1: Actor
    node2: Actor
    node3: Actor
    client1: Actor
    client2: Actor
    client3: Actor
    client4: Actor
    admin1: Actor


@pytest.fixture(scope="module")
def world() -> World:
    cas = {
        org: CertificateAuthority.create(org, now=T0) for org in ("org1", "org2", "org3", "org4")
    }
    return World(
        cas,
        node1=_actor(cas["org1"], "peer1", Role.NODE),
        node2=_actor(cas["org2"], "peer2", Role.NODE),
        node3=_actor(cas["org3"], "peer3", Role.NODE),
        client1=_actor(cas["org1"], "alice", Role.CLIENT),
        client2=_actor(cas["org2"], "bob", Role.CLIENT),
        client3=_actor(cas["org3"], "carol", Role.CLIENT),
        client4=_actor(cas["org4"], "dave", Role.CLIENT),
        admin1=_actor(cas["org1"], "admin", Role.ADMIN),
    )


@pytest.fixture
def msp(world: World) -> Membership:
    return Membership({org: world.cas[org].cert_pem for org in ("org1", "org2", "org3")})


class MemState:
    """A CommittedState over a dict of (namespace, key) -> (value, version)."""

    def __init__(
        self,
        rows: dict[tuple[str, str], tuple[Any, Version]] | None = None,
        committed: Iterable[str] = (),
        stored: int = 0,
    ) -> None:
        self.rows = dict(rows or {})
        self.committed = set(committed)
        self.stored = stored

    def stored_bytes(self) -> int:
        return self.stored

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None:
        return self.rows.get((ns, key))

    def get_range(
        self, ns: str, start: str, end: str, limit: int
    ) -> list[tuple[str, Any, Version]]:
        keys = sorted(k for n, k in self.rows if n == ns and k >= start and (not end or k < end))
        return [(k, *self.rows[(ns, k)]) for k in keys[:limit]]

    def committed_among(self, tx_ids: Sequence[str]) -> set[str]:
        return set(tx_ids) & set(self.committed)


def _definition(name: str = NS, policy: str = "ANY", sequence: int = 1) -> dict[str, Any]:
    return ContractDefinition(
        name, "1.0", sequence, f"{name}:" + "ab" * 32, parse_policy(policy)
    ).to_dict()


def _state(
    policy: str = "ANY",
    rows: dict[tuple[str, str], Any] | None = None,
    committed: Iterable[str] = (),
) -> MemState:
    base = {(LIFECYCLE, definition_key(NS)): (_definition(policy=policy), V0)}
    base.update({k: (v, V0) for k, v in (rows or {}).items()})
    return MemState(base, committed)


def _rw(ns: str = NS, **parts: Sequence[Any]) -> NsRWSet:
    return NsRWSet(ns, **{k: tuple(v) for k, v in parts.items()})


def _endorse(node: Actor, tx_id: str, result: TxResult, network: str = NET) -> Endorsement:
    digest = compute_endorsement_digest(TxId(tx_id), result, network)
    return Endorsement(node.cert_der, node.signer.sign(digest))


def _tx(
    creator: Actor,
    *rwsets: NsRWSet,
    endorsers: Sequence[Actor] = (),
    contract: str = NS,
    version: str = LABEL,
    network: str = NET,
    app: str = APP,
    events: Sequence[Event] = (),
    signer: Signer | None = None,
) -> Transaction:
    proposal = Proposal(
        network,
        app,
        contract,
        "invoke",
        (),
        next(_nonces).to_bytes(16, "big"),
        BLOCK_MS - 1000,
        creator.cert_der,
    )
    signature = (signer or creator.signer).sign(bytes(proposal.signing_digest()))
    result = TxResult(None, tuple(rwsets), tuple(events), version)
    endorsements = tuple(_endorse(node, proposal.tx_id, result) for node in endorsers)
    return Transaction(SignedProposal(proposal, signature), result, endorsements)


def _block(txs: Sequence[Transaction], number: int = 1, ms: int = BLOCK_MS) -> Block:
    header = BlockHeader(
        NET,
        APP,
        number,
        ZERO_DIGEST,
        compute_root([compute_tx_hash(t) for t in txs]),
        ZERO_DIGEST,
        ms,
        len(txs),
        "node1",
    )
    return Block(header, tuple(txs))


def _validate(
    txs: Sequence[Transaction], state: MemState, msp: Membership, rules: AppRules = RULES
) -> CommitBatch:
    return validate_block(_block(txs), state, msp, rules)


def _codes(batch: CommitBatch) -> list[TxCode]:
    return list(batch.codes)


def _put(world: World, key: str, value: Any, *reads: KVRead, **kw: Any) -> Transaction:
    kw.setdefault("endorsers", [world.node1])
    return _tx(world.client1, _rw(reads=reads, writes=[KVWrite(key, value)]), **kw)


# ------------------------------------------------------------------------------- valid


def test_valid_transaction_yields_its_writes_and_events(world: World, msp: Membership) -> None:
    tx = _tx(
        world.client1,
        _rw(
            reads=[KVRead("car-1", V0), KVRead("car-2", None)],
            writes=[KVWrite("car-1", {"owner": "bob"}), KVWrite("old", None, True)],
        ),
        endorsers=[world.node1],
        events=[Event(NS, "moved", {"car": "car-1"})],
    )
    batch = _validate([tx], _state(rows={(NS, "car-1"): {"owner": "alice"}}), msp)
    assert _codes(batch) == [TxCode.VALID]
    assert batch.writes == (
        StateWrite(NS, "car-1", {"owner": "bob"}, False, Version(1, 0), tx.tx_id),
        StateWrite(NS, "old", None, True, Version(1, 0), tx.tx_id),
    )
    [event] = batch.events
    assert (event.block, event.tx, event.idx, event.tx_id, event.name, event.payload) == (
        1,
        0,
        0,
        tx.tx_id,
        "moved",
        {"car": "car-1"},
    )
    assert batch.block.header.number == 1


def test_validation_writes_nothing_to_the_state(world: World, msp: Membership) -> None:
    state = _state()
    before = dict(state.rows)
    _validate([_put(world, "car-1", 1)], state, msp)
    assert state.rows == before


# ------------------------------------------------------------------------ BAD_PROPOSAL


@pytest.mark.parametrize("change", [{"network": "othernet"}, {"app": "other"}])
def test_invalid_proposal_for_another_network_or_app(
    world: World, msp: Membership, change: dict[str, str]
) -> None:
    tx = _put(world, "car-1", 1, **change)
    batch = _validate([tx], _state(), msp)
    assert _codes(batch) == [TxCode.BAD_PROPOSAL]
    assert batch.writes == () and batch.events == ()


def test_invalid_first_failure_wins(world: World, msp: Membership) -> None:
    tx = _put(world, "car-1", 1, app="other", signer=world.client2.signer, endorsers=[])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_PROPOSAL]


# ---------------------------------------------------------------------- DUPLICATE_TXID


def test_invalid_duplicate_tx_in_the_same_block(world: World, msp: Membership) -> None:
    tx = _put(world, "counter", 1)
    batch = _validate([tx, tx], _state(), msp)
    assert _codes(batch) == [TxCode.VALID, TxCode.DUPLICATE_TXID]
    assert len(batch.writes) == 1


def test_invalid_duplicate_of_an_invalid_tx_in_the_same_block(
    world: World, msp: Membership
) -> None:
    tx = _put(world, "counter", 1)
    badly_signed = Transaction(
        SignedProposal(tx.proposal, b"\x00" * 64), tx.result, tx.endorsements
    )
    assert badly_signed.tx_id == tx.tx_id
    assert _codes(_validate([badly_signed, tx], _state(), msp)) == [
        TxCode.BAD_CREATOR_SIGNATURE,
        TxCode.DUPLICATE_TXID,
    ]


def test_invalid_duplicate_of_a_committed_tx(world: World, msp: Membership) -> None:
    tx = _put(world, "counter", 1)
    batch = _validate([tx], _state(committed=[tx.tx_id]), msp)
    assert _codes(batch) == [TxCode.DUPLICATE_TXID]
    assert batch.writes == ()


# ------------------------------------------------------------- BAD_CREATOR_CERTIFICATE


def test_invalid_creator_of_an_unknown_org(world: World, msp: Membership) -> None:
    tx = _tx(world.client4, _rw(writes=[KVWrite("k", 1)]), endorsers=[world.node1])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_CREATOR_CERTIFICATE]


def test_invalid_creator_of_an_org_that_is_not_an_app_member(world: World, msp: Membership) -> None:
    tx = _tx(world.client3, _rw(writes=[KVWrite("k", 1)]), endorsers=[world.node1])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_CREATOR_CERTIFICATE]


def test_invalid_creator_certificate_not_yet_valid_at_block_time(
    world: World, msp: Membership
) -> None:
    late = _actor(world.cas["org1"], "late", Role.CLIENT, now=BLOCK_TIME + timedelta(days=2))
    tx = _tx(late, _rw(writes=[KVWrite("k", 1)]), endorsers=[world.node1])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_CREATOR_CERTIFICATE]


def test_invalid_creator_bytes_not_a_certificate(world: World, msp: Membership) -> None:
    fake = Actor(b"\x30\x03\x02\x01\x01", world.client1.signer, 1)
    tx = _tx(fake, _rw(writes=[KVWrite("k", 1)]), endorsers=[world.node1])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_CREATOR_CERTIFICATE]


def test_invalid_creator_revoked_before_block_time(world: World, msp: Membership) -> None:
    ca = world.cas["org1"]
    revoked = _actor(ca, "revoked-early", Role.CLIENT)
    msp.update_crl("org1", ca.revoke([revoked.serial], now=BLOCK_TIME - timedelta(hours=1)))
    tx = _tx(revoked, _rw(writes=[KVWrite("k", 1)]), endorsers=[world.node1])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_CREATOR_CERTIFICATE]


def test_creator_revoked_after_block_time_is_still_valid_in_that_block(
    world: World, msp: Membership
) -> None:
    ca = world.cas["org1"]
    revoked = _actor(ca, "revoked-late", Role.CLIENT)
    msp.update_crl("org1", ca.revoke([revoked.serial], now=BLOCK_TIME + timedelta(hours=1)))
    tx = _tx(revoked, _rw(writes=[KVWrite("k", 1)]), endorsers=[world.node1])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.VALID]
    later = validate_block(_block([tx], ms=BLOCK_MS + 2 * 3600 * 1000), _state(), msp, RULES)
    assert _codes(later) == [TxCode.BAD_CREATOR_CERTIFICATE]


# --------------------------------------------------------------- BAD_CREATOR_SIGNATURE


def test_invalid_creator_signature_by_another_key(world: World, msp: Membership) -> None:
    tx = _put(world, "k", 1, signer=world.client2.signer)
    batch = _validate([tx], _state(), msp)
    assert _codes(batch) == [TxCode.BAD_CREATOR_SIGNATURE]
    assert batch.writes == ()


def test_invalid_creator_signature_over_another_proposal(world: World, msp: Membership) -> None:
    tx = _put(world, "k", 1)
    other = _put(world, "k", 1)
    forged = Transaction(
        SignedProposal(tx.proposal, other.signed_proposal.signature), tx.result, tx.endorsements
    )
    assert _codes(_validate([forged], _state(), msp)) == [TxCode.BAD_CREATOR_SIGNATURE]


# ------------------------------------------------------------------- batch signatures


def _batch_signed(world: World, n: int) -> list[Transaction]:
    """``n`` transactions whose creator and endorser each signed them in one batch."""
    txs = [_put(world, f"b-{i}", i) for i in range(n)]
    creator = sign_batch(
        world.client1.signer, [bytes(t.proposal.signing_digest()) for t in txs], NET
    )
    digests = [compute_endorsement_digest(t.tx_id, t.result, NET) for t in txs]
    endorser = sign_batch(world.node1.signer, digests, NET)
    return [
        Transaction(
            SignedProposal(t.proposal, c_sig, c_batch),
            t.result,
            (Endorsement(world.node1.cert_der, e_sig, e_batch),),
        )
        for t, (c_sig, c_batch), (e_sig, e_batch) in zip(txs, creator, endorser, strict=True)
    ]


def test_batch_signed_transactions_are_valid(world: World, msp: Membership) -> None:
    txs = _batch_signed(world, 17)  # one batch of 16, and a lone one signed as itself
    assert len({t.signed_proposal.signature for t in txs}) == 2
    assert [t.signed_proposal.batch is None for t in txs] == [False] * 16 + [True]
    assert _codes(_validate(txs, _state(), msp)) == [TxCode.VALID] * 17


def _with_proof(proof: BatchProof, **change: Any) -> BatchProof:
    return dataclasses.replace(proof, **change)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: _with_proof(p, index=(p.index + 1) % p.size),  # another position
        lambda p: _with_proof(p, size=p.size + 1),  # another tree shape
        lambda p: _with_proof(p, path=(ZERO_DIGEST, *p.path[1:])),  # another sibling
        lambda p: _with_proof(p, path=p.path[:-1]),  # a proof too short for its position
    ],
)
def test_invalid_batch_signature_with_a_tampered_proof(
    world: World, msp: Membership, tamper: Any
) -> None:
    tx = _batch_signed(world, 4)[1]
    signed = tx.signed_proposal
    assert signed.batch is not None
    creator = SignedProposal(signed.proposal, signed.signature, tamper(signed.batch))
    bad_creator = Transaction(creator, tx.result, tx.endorsements)
    [endorsement] = tx.endorsements
    assert endorsement.batch is not None
    bad = Endorsement(endorsement.endorser, endorsement.signature, tamper(endorsement.batch))
    bad_endorser = Transaction(signed, tx.result, (bad,))
    assert _codes(_validate([bad_creator], _state(), msp)) == [TxCode.BAD_CREATOR_SIGNATURE]
    assert _codes(_validate([bad_endorser], _state(), msp)) == [TxCode.BAD_ENDORSEMENT]


def test_invalid_batch_proof_restated_at_an_equivalent_position(
    world: World, msp: Membership
) -> None:
    """An RFC 6962 path fits several (index, size) pairs — the last leaf of 16 climbs to
    the same root as leaf 23 of 24 — so the signature covers the size too: a relayer
    cannot mint another encoding of a transaction from its proof."""
    tx = _batch_signed(world, 16)[15]
    signed = tx.signed_proposal
    assert signed.batch is not None and (signed.batch.index, signed.batch.size) == (15, 16)
    digest = bytes(tx.proposal.signing_digest())
    moved = _with_proof(signed.batch, index=23, size=24)
    assert compute_root_from_proof(digest, 23, 24, moved.path) == compute_root_from_proof(
        digest, 15, 16, signed.batch.path
    )
    forged = Transaction(
        SignedProposal(tx.proposal, signed.signature, moved), tx.result, tx.endorsements
    )
    assert _codes(_validate([forged], _state(), msp)) == [TxCode.BAD_CREATOR_SIGNATURE]
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.VALID]


def test_invalid_batch_signature_carried_to_a_proposal_outside_the_batch(
    world: World, msp: Membership
) -> None:
    batch = _batch_signed(world, 2)
    outsider = _put(world, "x", 1)
    signed = batch[0].signed_proposal
    forged = SignedProposal(outsider.proposal, signed.signature, signed.batch)
    tx = Transaction(forged, outsider.result, outsider.endorsements)
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_CREATOR_SIGNATURE]


def test_a_batch_signature_is_not_a_plain_signature(world: World, msp: Membership) -> None:
    """The root is signed under its own domain: dropping the proof never verifies."""
    tx = _batch_signed(world, 2)[0]
    bare = SignedProposal(tx.proposal, tx.signed_proposal.signature)
    assert _codes(_validate([Transaction(bare, tx.result, tx.endorsements)], _state(), msp)) == [
        TxCode.BAD_CREATOR_SIGNATURE
    ]


# --------------------------------------------------------------------- BAD_ENDORSEMENT


def test_invalid_endorsement_signature_over_another_result(world: World, msp: Membership) -> None:
    tx = _put(world, "car-1", "honest")
    tampered = TxResult(None, (_rw(writes=[KVWrite("car-1", "stolen")]),), (), LABEL)
    forged = Transaction(tx.signed_proposal, tampered, tx.endorsements)
    batch = _validate([forged], _state(), msp)
    assert _codes(batch) == [TxCode.BAD_ENDORSEMENT]
    assert batch.writes == ()


def test_invalid_endorsement_for_another_network(world: World, msp: Membership) -> None:
    tx = _put(world, "k", 1, endorsers=[])
    bad = _endorse(world.node1, tx.tx_id, tx.result, network="othernet")
    forged = Transaction(tx.signed_proposal, tx.result, (bad,))
    assert _codes(_validate([forged], _state(), msp)) == [TxCode.BAD_ENDORSEMENT]


@pytest.mark.parametrize("who", ["client1", "admin1", "node3"])
def test_invalid_endorser_is_not_a_member_node(world: World, msp: Membership, who: str) -> None:
    tx = _put(world, "k", 1, endorsers=[getattr(world, who)])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_ENDORSEMENT]


def test_invalid_one_bad_endorsement_spoils_the_tx(world: World, msp: Membership) -> None:
    tx = _put(world, "k", 1, endorsers=[world.node1, world.client2])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_ENDORSEMENT]


def test_invalid_no_endorsements(world: World, msp: Membership) -> None:
    tx = _put(world, "k", 1, endorsers=[])
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.BAD_ENDORSEMENT]


# --------------------------------------------------- UNKNOWN_CONTRACT / VERSION_MISMATCH


def test_invalid_unknown_contract(world: World, msp: Membership) -> None:
    tx = _tx(
        world.client1,
        _rw("ghost", writes=[KVWrite("k", 1)]),
        contract="ghost",
        version="ghost@1",
        endorsers=[world.node1],
    )
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.UNKNOWN_CONTRACT]


def test_invalid_write_into_an_undefined_namespace(world: World, msp: Membership) -> None:
    tx = _tx(
        world.client1,
        _rw(writes=[KVWrite("k", 1)]),
        _rw("ghost", writes=[KVWrite("k", 1)]),
        endorsers=[world.node1],
    )
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.UNKNOWN_CONTRACT]


def test_invalid_unknown_system_namespace(world: World, msp: Membership) -> None:
    tx = _tx(
        world.client1,
        _rw("_admin", writes=[KVWrite("k", 1)]),
        contract="_admin",
        version="_admin@0",
        endorsers=[world.node1, world.node2],
    )
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.UNKNOWN_CONTRACT]


@pytest.mark.parametrize("version", ["asset@2", "asset@0", "asset", "token@1", ""])
def test_invalid_contract_version_mismatch(world: World, msp: Membership, version: str) -> None:
    tx = _put(world, "k", 1, version=version)
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.CONTRACT_VERSION_MISMATCH]


def test_contract_version_follows_the_committed_sequence(world: World, msp: Membership) -> None:
    state = _state()
    state.rows[(LIFECYCLE, definition_key(NS))] = (_definition(sequence=2), V0)
    assert _codes(_validate([_put(world, "k", 1, version="asset@2")], state, msp)) == [TxCode.VALID]
    assert _codes(_validate([_put(world, "k", 1)], state, msp)) == [
        TxCode.CONTRACT_VERSION_MISMATCH
    ]


def test_definition_committed_earlier_in_the_block_applies(world: World, msp: Membership) -> None:
    define = _tx(
        world.admin1,
        _rw(LIFECYCLE, writes=[KVWrite(definition_key("token"), _definition("token"))]),
        contract=LIFECYCLE,
        version=f"{LIFECYCLE}@0",
        endorsers=[world.node1, world.node2],
    )
    use = _tx(
        world.client1,
        _rw("token", writes=[KVWrite("k", 1)]),
        contract="token",
        version="token@1",
        endorsers=[world.node1],
    )
    assert _codes(_validate([use, define, use], _state(), msp)) == [
        TxCode.UNKNOWN_CONTRACT,
        TxCode.VALID,
        TxCode.DUPLICATE_TXID,
    ]
    use_again = _tx(
        world.client1,
        _rw("token", writes=[KVWrite("k", 1)]),
        contract="token",
        version="token@1",
        endorsers=[world.node1],
    )
    assert _codes(_validate([define, use_again], _state(), msp)) == [TxCode.VALID, TxCode.VALID]


# ---------------------------------------------------------- ENDORSEMENT_POLICY_FAILURE


def test_invalid_policy_all_with_one_org_endorsing(world: World, msp: Membership) -> None:
    tx = _put(world, "k", 1, endorsers=[world.node1])
    batch = _validate([tx], _state(policy="ALL"), msp)
    assert _codes(batch) == [TxCode.ENDORSEMENT_POLICY_FAILURE]
    assert batch.writes == ()


def test_policy_all_with_every_org_endorsing(world: World, msp: Membership) -> None:
    tx = _put(world, "k", 1, endorsers=[world.node1, world.node2])
    assert _codes(_validate([tx], _state(policy="ALL"), msp)) == [TxCode.VALID]


def test_invalid_two_endorsements_from_one_org_count_once(world: World, msp: Membership) -> None:
    other_node = _actor(world.cas["org1"], "peer1b", Role.NODE)
    tx = _put(world, "k", 1, endorsers=[world.node1, other_node])
    assert _codes(_validate([tx], _state(policy="ALL"), msp)) == [TxCode.ENDORSEMENT_POLICY_FAILURE]


def test_invalid_policy_of_another_written_namespace(world: World, msp: Membership) -> None:
    state = _state(policy="ANY")
    state.rows[(LIFECYCLE, definition_key("token"))] = (_definition("token", "ALL"), V0)
    tx = _tx(
        world.client1,
        _rw(writes=[KVWrite("k", 1)]),
        _rw("token", writes=[KVWrite("k", 1)]),
        endorsers=[world.node1],
        version=f"{LABEL},token@1",
    )
    assert _codes(_validate([tx], state, msp)) == [TxCode.ENDORSEMENT_POLICY_FAILURE]


def test_invalid_write_to_a_contract_that_did_not_run(world: World, msp: Membership) -> None:
    state = _state(policy="ANY")
    state.rows[(LIFECYCLE, definition_key("token"))] = (_definition("token", "ANY"), V0)
    tx = _tx(world.client1, _rw("token", writes=[KVWrite("k", 1)]), endorsers=[world.node1])
    assert _codes(_validate([tx], state, msp)) == [TxCode.CONTRACT_VERSION_MISMATCH]


def test_invalid_nested_contract_upgraded_after_simulation(world: World, msp: Membership) -> None:
    """The invoked contract called `token`, which was upgraded before the commit."""
    state = _state(policy="ANY")
    state.rows[(LIFECYCLE, definition_key("token"))] = (_definition("token", "ANY", sequence=2), V0)
    ran = f"{LABEL},token@1"
    tx = _tx(world.client1, _rw(writes=[KVWrite("k", 1)]), endorsers=[world.node1], version=ran)
    assert _codes(_validate([tx], state, msp)) == [TxCode.CONTRACT_VERSION_MISMATCH]
    current = _tx(
        world.client1,
        _rw(writes=[KVWrite("k", 2)]),
        endorsers=[world.node1],
        version=f"{LABEL},token@2",
    )
    assert _codes(_validate([current], state, msp)) == [TxCode.VALID]


def test_invalid_lifecycle_tx_below_the_system_policy(world: World, msp: Membership) -> None:
    def define(endorsers: list[Actor]) -> Transaction:
        return _tx(
            world.admin1,
            _rw(LIFECYCLE, writes=[KVWrite(definition_key("token"), _definition("token"))]),
            contract=LIFECYCLE,
            version=f"{LIFECYCLE}@0",
            endorsers=endorsers,
        )

    assert _codes(_validate([define([world.node1])], _state(), msp)) == [
        TxCode.ENDORSEMENT_POLICY_FAILURE
    ]
    assert _codes(_validate([define([world.node1, world.node2])], _state(), msp)) == [TxCode.VALID]


# ------------------------------------------------------------------ MVCC_READ_CONFLICT


def test_invalid_second_of_two_txs_reading_and_writing_one_key(
    world: World, msp: Membership
) -> None:
    state = _state(rows={(NS, "balance"): 100})
    first = _put(world, "balance", 90, KVRead("balance", V0))
    second = _put(world, "balance", 80, KVRead("balance", V0))
    batch = _validate([first, second], state, msp)
    assert _codes(batch) == [TxCode.VALID, TxCode.MVCC_READ_CONFLICT]
    assert [(w.key, w.value, w.tx_id) for w in batch.writes] == [("balance", 90, first.tx_id)]


def test_read_of_a_key_written_earlier_in_the_block_at_its_new_version(
    world: World, msp: Membership
) -> None:
    first = _put(world, "balance", 90, KVRead("balance", V0))
    second = _put(world, "balance", 80, KVRead("balance", Version(1, 0)))
    assert _codes(_validate([first, second], _state(rows={(NS, "balance"): 100}), msp)) == [
        TxCode.VALID,
        TxCode.VALID,
    ]


@pytest.mark.parametrize(
    ("committed", "read"),
    [
        ({(NS, "k"): 1}, Version(0, 1)),  # stale version
        ({(NS, "k"): 1}, None),  # read as absent, but it exists
        ({}, V0),  # read at a version, but it no longer exists
    ],
)
def test_invalid_read_of_a_changed_committed_key(
    world: World, msp: Membership, committed: dict[tuple[str, str], Any], read: Version | None
) -> None:
    tx = _put(world, "other", 1, KVRead("k", read))
    assert _codes(_validate([tx], _state(rows=committed), msp)) == [TxCode.MVCC_READ_CONFLICT]


def test_read_of_an_absent_key_that_is_still_absent(world: World, msp: Membership) -> None:
    tx = _put(world, "k", 1, KVRead("k", None))
    assert _codes(_validate([tx], _state(), msp)) == [TxCode.VALID]


def test_invalid_read_of_a_key_deleted_earlier_in_the_block(world: World, msp: Membership) -> None:
    delete = _tx(world.client1, _rw(writes=[KVWrite("k", None, True)]), endorsers=[world.node1])
    read = _put(world, "j", 1, KVRead("k", V0))
    assert _codes(_validate([delete, read], _state(rows={(NS, "k"): 1}), msp)) == [
        TxCode.VALID,
        TxCode.MVCC_READ_CONFLICT,
    ]


def test_invalid_tx_does_not_change_what_later_txs_see(world: World, msp: Membership) -> None:
    rejected = _put(world, "balance", 0, KVRead("balance", Version(0, 5)))
    later = _put(world, "balance", 50, KVRead("balance", V0))
    batch = _validate([rejected, later], _state(rows={(NS, "balance"): 100}), msp)
    assert _codes(batch) == [TxCode.MVCC_READ_CONFLICT, TxCode.VALID]


# --------------------------------------------------------------- PHANTOM_READ_CONFLICT


def _range_tx(world: World, rng: RangeRead) -> Transaction:
    return _tx(
        world.client1,
        _rw(range_reads=[rng], writes=[KVWrite("summary", 1)]),
        endorsers=[world.node1],
    )


CARS = {(NS, "car/1"): "a", (NS, "car/3"): "c"}
CARS_READ = (KVRead("car/1", V0), KVRead("car/3", V0))


def test_unchanged_range_is_valid(world: World, msp: Membership) -> None:
    tx = _range_tx(world, RangeRead("car/", "car0", CARS_READ, True))
    assert _codes(_validate([tx], _state(rows=CARS), msp)) == [TxCode.VALID]


def test_invalid_range_with_a_key_inserted_earlier_in_the_block(
    world: World, msp: Membership
) -> None:
    insert = _put(world, "car/2", "b")
    scan = _range_tx(world, RangeRead("car/", "car0", CARS_READ, True))
    batch = _validate([insert, scan], _state(rows=CARS), msp)
    assert _codes(batch) == [TxCode.VALID, TxCode.PHANTOM_READ_CONFLICT]


def test_invalid_range_with_a_key_deleted_earlier_in_the_block(
    world: World, msp: Membership
) -> None:
    delete = _tx(world.client1, _rw(writes=[KVWrite("car/3", None, True)]), endorsers=[world.node1])
    scan = _range_tx(world, RangeRead("car/", "car0", CARS_READ, True))
    assert _codes(_validate([delete, scan], _state(rows=CARS), msp)) == [
        TxCode.VALID,
        TxCode.PHANTOM_READ_CONFLICT,
    ]


def test_invalid_range_with_a_key_updated_earlier_in_the_block(
    world: World, msp: Membership
) -> None:
    update = _put(world, "car/1", "new")
    scan = _range_tx(world, RangeRead("car/", "car0", CARS_READ, True))
    assert _codes(_validate([update, scan], _state(rows=CARS), msp)) == [
        TxCode.VALID,
        TxCode.PHANTOM_READ_CONFLICT,
    ]


def test_invalid_range_changed_in_committed_state(world: World, msp: Membership) -> None:
    scan = _range_tx(world, RangeRead("car/", "car0", CARS_READ[:1], True))
    assert _codes(_validate([scan], _state(rows=CARS), msp)) == [TxCode.PHANTOM_READ_CONFLICT]


def test_insert_outside_the_range_does_not_conflict(world: World, msp: Membership) -> None:
    insert = _put(world, "car0", "outside")
    scan = _range_tx(world, RangeRead("car/", "car0", CARS_READ, True))
    assert _codes(_validate([insert, scan], _state(rows=CARS), msp)) == [TxCode.VALID, TxCode.VALID]


def test_limited_range_checks_only_the_returned_prefix(world: World, msp: Membership) -> None:
    after = _put(world, "car/4", "d")
    before = _put(world, "car/0", "z")
    prefix = RangeRead("car/", "car0", CARS_READ[:1], False)
    assert _codes(_validate([after, _range_tx(world, prefix)], _state(rows=CARS), msp)) == [
        TxCode.VALID,
        TxCode.VALID,
    ]
    assert _codes(_validate([before, _range_tx(world, prefix)], _state(rows=CARS), msp)) == [
        TxCode.VALID,
        TxCode.PHANTOM_READ_CONFLICT,
    ]


# ------------------------------------------------------------ deltas and INVALID_DELTA


def _add(world: World, key: str, delta: int) -> Transaction:
    return _tx(world.client1, _rw(deltas=[KVDelta(key, delta)]), endorsers=[world.node1])


def test_many_deltas_to_one_counter_in_one_block_all_commit(world: World, msp: Membership) -> None:
    txs = [_add(world, "counter", n) for n in range(1, 21)]
    batch = _validate(txs, _state(rows={(NS, "counter"): 100}), msp)
    assert _codes(batch) == [TxCode.VALID] * 20
    final = batch.writes[-1]
    assert (final.key, final.value, final.version) == ("counter", 100 + 210, Version(1, 19))


def test_delta_onto_an_absent_key_starts_at_zero(world: World, msp: Membership) -> None:
    batch = _validate([_add(world, "fresh", -5), _add(world, "fresh", 2)], _state(), msp)
    assert [w.value for w in batch.writes] == [-5, -3]


def test_delta_after_a_read_is_still_subject_to_mvcc(world: World, msp: Membership) -> None:
    add = _add(world, "counter", 1)
    read = _put(world, "copy", 1, KVRead("counter", V0))
    assert _codes(_validate([add, read], _state(rows={(NS, "counter"): 1}), msp)) == [
        TxCode.VALID,
        TxCode.MVCC_READ_CONFLICT,
    ]


# ---------------------------------------------------- storage quota (step 12)


def test_stored_bytes_advance_by_the_size_of_valid_transactions(
    world: World, msp: Membership
) -> None:
    good, bad = _put(world, "a", 1), _put(world, "b", 2, KVRead("b", V0))  # b is absent
    state = _state()
    state.stored = 1000
    batch = _validate([good, bad], state, msp)
    assert _codes(batch) == [TxCode.VALID, TxCode.MVCC_READ_CONFLICT]
    assert batch.stored_bytes == 1000 + len(good.encode())  # invalid ones are not counted


def test_storage_quota_refuses_the_transaction_that_would_exceed_it(
    world: World, msp: Membership
) -> None:
    txs = [_put(world, f"k{i}", "x" * 100) for i in range(4)]
    sizes = [len(tx.encode()) for tx in txs]
    state = _state()
    state.stored = 500
    limit = 500 + sizes[0] + sizes[1]  # room for exactly two
    rules = dataclasses.replace(RULES, storage_limit=limit)
    batch = _validate(txs, state, msp, rules)
    assert _codes(batch) == [TxCode.VALID] * 2 + [TxCode.STORAGE_QUOTA_EXCEEDED] * 2
    assert batch.stored_bytes == limit
    assert {w.key for w in batch.writes} == {"k0", "k1"}  # the refused ones write nothing
    # a small transaction that still fits after a refused big one is valid: first fit
    small = _put(world, "s", 1)
    state.stored = limit - len(small.encode())
    big = _put(world, "big", "x" * 1000)
    assert _codes(_validate([big, small], state, msp, rules)) == [
        TxCode.STORAGE_QUOTA_EXCEEDED,
        TxCode.VALID,
    ]


def test_no_plan_means_no_storage_limit(world: World, msp: Membership) -> None:
    state = _state()
    state.stored = 2**40
    assert _codes(_validate([_put(world, "a", 1)], state, msp)) == [TxCode.VALID]


def test_storage_check_comes_after_the_other_checks(world: World, msp: Membership) -> None:
    """An app at its quota still gets the first failing code for a bad transaction."""
    state = _state(rows={(NS, "b"): 1})
    state.stored = 10
    rules = dataclasses.replace(RULES, storage_limit=10)
    stale = _put(world, "b", 2, KVRead("b", Version(0, 7)))
    assert _codes(_validate([stale, _put(world, "c", 1)], state, msp, rules)) == [
        TxCode.MVCC_READ_CONFLICT,
        TxCode.STORAGE_QUOTA_EXCEEDED,
    ]


@pytest.mark.parametrize("value", ["ten", True, {"n": 1}, [1], None])
def test_invalid_delta_onto_a_non_integer(world: World, msp: Membership, value: Any) -> None:
    state = _state(rows={(NS, "counter"): value})
    batch = _validate([_add(world, "counter", 1)], state, msp)
    assert _codes(batch) == [TxCode.INVALID_DELTA]
    assert batch.writes == ()


def test_invalid_delta_overflowing_64_bits(world: World, msp: Membership) -> None:
    state = _state(rows={(NS, "counter"): 2**63 - 1})
    assert _codes(_validate([_add(world, "counter", 1)], state, msp)) == [TxCode.INVALID_DELTA]


def test_invalid_delta_writes_nothing_of_its_tx(world: World, msp: Membership) -> None:
    tx = _tx(
        world.client1,
        _rw(writes=[KVWrite("a", 1)], deltas=[KVDelta("name", 1)]),
        endorsers=[world.node1],
        events=[Event(NS, "e", None)],
    )
    batch = _validate([tx], _state(rows={(NS, "name"): "alice"}), msp)
    assert _codes(batch) == [TxCode.INVALID_DELTA]
    assert batch.writes == () and batch.events == ()


# ------------------------------------------------------------------------- result root


def _mixed_block(world: World) -> list[Transaction]:
    return [
        _put(world, "balance", 90, KVRead("balance", V0)),
        _put(world, "balance", 80, KVRead("balance", V0)),
        _add(world, "counter", 3),
    ]


def test_result_root_is_deterministic(world: World, msp: Membership) -> None:
    txs = _mixed_block(world)
    rows = {(NS, "balance"): 100}
    first = _validate(txs, _state(rows=rows), msp)
    second = _validate(txs, _state(rows=rows), msp)
    assert first == second
    assert first.result_root == compute_result_root(first.codes, first.writes)


def test_result_root_differs_when_codes_differ(world: World, msp: Membership) -> None:
    txs = _mixed_block(world)
    ok = _validate(txs, _state(rows={(NS, "balance"): 100}), msp)
    conflicted = _validate(txs, _state(rows={(NS, "balance"): 100}, committed=[txs[2].tx_id]), msp)
    assert ok.codes != conflicted.codes
    assert ok.result_root != conflicted.result_root
    assert compute_result_root([TxCode.VALID], ()) != compute_result_root([TxCode.BAD_PROPOSAL], ())


def test_result_root_differs_when_writes_differ() -> None:
    w = StateWrite(NS, "k", 1, False, Version(1, 0), "t")
    assert compute_result_root([TxCode.VALID], [w]) != compute_result_root(
        [TxCode.VALID], [StateWrite(NS, "k", 2, False, Version(1, 0), "t")]
    )


# ----------------------------------------------------- against a real SqliteLedger


def test_validate_and_commit_over_sqlite(world: World, msp: Membership, tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "trade.db")
    try:
        setup = [StateWrite(LIFECYCLE, definition_key(NS), _definition(), False, V0, "genesis")]
        genesis = _block([], number=0)
        ledger.commit_block(
            CommitBatch(genesis, (), tuple(setup), (), compute_result_root((), setup), 0)
        )
        txs = [_add(world, "counter", 2) for _ in range(5)]
        batch = validate_block(_block(txs), WriterState(ledger), msp, RULES)
        assert _codes(batch) == [TxCode.VALID] * 5
        ledger.commit_block(batch)
        assert ledger.get(NS, "counter") == (10, Version(1, 4))

        replay = validate_block(
            _block([txs[0], _add(world, "counter", 1)], number=2), WriterState(ledger), msp, RULES
        )
        assert _codes(replay) == [TxCode.DUPLICATE_TXID, TxCode.VALID]
        assert replay.writes[0].value == 11
    finally:
        ledger.close()
