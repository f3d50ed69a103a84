"""Consensus messages: votes, certificates, timeouts, proposals, and block sync.

Signed messages are signed over ``compute_signing_digest(domain, network, payload)``
where the payload names the channel (app), height and round, so a vote can be
replayed neither on another network, nor on another channel, nor in another round
or phase. Certificates (:class:`QuorumCert`, :class:`TimeoutCert`) are self-proving:
they carry the signatures of a quorum and are checked against the consenters' keys.

On the wire a message is a JSON envelope ``{"app", "kind", "body"}``; it is bounded
(``MAX_MESSAGE_BYTES``) and every field is validated on decode (``InvalidInput`` on
anything else). The envelope itself is not signed: the link is authenticated by
mutual TLS, and everything that must be transferable carries its own signatures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

from .. import codec
from ..crypto.hashing import DIGEST_BYTES, Digest, compute_signing_digest
from ..errors import InvalidInput
from ..types import (
    MAX_BLOCK_TXS,
    MAX_SIGNATURE_BYTES,
    Block,
    BlockHeader,
    Transaction,
    _field,
    _name,
    _nonneg,
    compute_tx_hash,
)

DOMAIN_VOTE = "consensus-vote"
DOMAIN_TIMEOUT = "consensus-timeout"
DOMAIN_PROPOSE = "consensus-proposal"

MAX_CONSENTERS = 64
MAX_SYNC_BLOCKS = 64
MAX_FORWARD_TXS = 2_000
MAX_MESSAGE_BYTES = 64 * 2**20
NO_ROUND = -1  # "no certificate" where a round number is expected


class Phase(IntEnum):
    PREPARE = 1
    COMMIT = 2


def _round(value: Any, what: str) -> int:
    return _nonneg(value, what)


def _sig(value: Any, what: str) -> bytes:
    sig = codec.unb64(value, what=what)
    if not sig or len(sig) > MAX_SIGNATURE_BYTES:
        raise InvalidInput(f"{what} has an impossible length", code="malformed")
    return sig


def _hash(value: Any, what: str) -> Digest:
    return Digest(codec.unhex(value, what=what, length=DIGEST_BYTES))


def _list(d: Any, name: str, limit: int, what: str) -> list[Any]:
    value = _field(d, name, list, what)
    if len(value) > limit:
        raise InvalidInput(f"{what}.{name} has too many entries", code="too_large")
    return value


# ---------------------------------------------------------------------------- votes


def compute_vote_digest(
    network: str, app: str, phase: Phase, height: int, round_: int, block: Digest
) -> Digest:
    payload = codec.encode(
        {"app": app, "phase": int(phase), "height": height, "round": round_, "block": block.hex()}
    )
    return compute_signing_digest(DOMAIN_VOTE, network, payload)


def compute_timeout_digest(
    network: str, app: str, height: int, round_: int, high_qc_round: int
) -> Digest:
    payload = codec.encode(
        {"app": app, "height": height, "round": round_, "high_qc_round": high_qc_round}
    )
    return compute_signing_digest(DOMAIN_TIMEOUT, network, payload)


def compute_proposal_digest(
    network: str, app: str, height: int, round_: int, block: Digest
) -> Digest:
    payload = codec.encode({"app": app, "height": height, "round": round_, "block": block.hex()})
    return compute_signing_digest(DOMAIN_PROPOSE, network, payload)


@dataclass(frozen=True, slots=True)
class Vote:
    app: str
    phase: Phase
    height: int
    round: int
    block: Digest
    voter: str
    signature: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": int(self.phase),
            "height": self.height,
            "round": self.round,
            "block": self.block.hex(),
            "voter": self.voter,
            "signature": codec.b64(self.signature),
        }

    @classmethod
    def from_dict(cls, app: str, d: Any) -> Vote:
        what = "vote"
        phase = _field(d, "phase", int, what)
        if phase not in (Phase.PREPARE, Phase.COMMIT):
            raise InvalidInput("vote.phase is not a phase", code="malformed")
        return cls(
            app,
            Phase(phase),
            _nonneg(_field(d, "height", int, what), "vote.height"),
            _round(_field(d, "round", int, what), "vote.round"),
            _hash(_field(d, "block", str, what), "vote.block"),
            _name(_field(d, "voter", str, what), "vote.voter"),
            _sig(_field(d, "signature", str, what), "vote.signature"),
        )


@dataclass(frozen=True, slots=True)
class QuorumCert:
    """A quorum's votes of one phase for one block at (height, round)."""

    app: str
    phase: Phase
    height: int
    round: int
    block: Digest
    signatures: tuple[tuple[str, bytes], ...]  # (voter, signature), sorted by voter

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "phase": int(self.phase),
            "height": self.height,
            "round": self.round,
            "block": self.block.hex(),
            "signatures": [[voter, codec.b64(sig)] for voter, sig in self.signatures],
        }

    @classmethod
    def from_dict(cls, d: Any) -> QuorumCert:
        what = "certificate"
        phase = _field(d, "phase", int, what)
        if phase not in (Phase.PREPARE, Phase.COMMIT):
            raise InvalidInput("certificate.phase is not a phase", code="malformed")
        sigs = []
        for item in _list(d, "signatures", MAX_CONSENTERS, what):
            if not isinstance(item, list) or len(item) != 2:
                raise InvalidInput("certificate signature entries are pairs", code="malformed")
            sigs.append((_name(item[0], "certificate voter"), _sig(item[1], "certificate sig")))
        voters = [voter for voter, _ in sigs]
        if voters != sorted(set(voters)):
            raise InvalidInput("certificate voters must be sorted and unique", code="malformed")
        return cls(
            _name(_field(d, "app", str, what), "certificate.app"),
            Phase(phase),
            _nonneg(_field(d, "height", int, what), "certificate.height"),
            _round(_field(d, "round", int, what), "certificate.round"),
            _hash(_field(d, "block", str, what), "certificate.block"),
            tuple(sigs),
        )

    def encode(self) -> bytes:
        return codec.encode(self.to_dict())

    @classmethod
    def decode(cls, data: bytes) -> QuorumCert:
        return cls.from_dict(codec.decode(data, max_bytes=64 * 1024, what="certificate"))


def _qc_or_none(value: Any) -> QuorumCert | None:
    return None if value is None else QuorumCert.from_dict(value)


@dataclass(frozen=True, slots=True)
class TimeoutCert:
    """A quorum's timeouts for (height, round), with the highest certificate among them."""

    app: str
    height: int
    round: int
    entries: tuple[tuple[str, int, bytes], ...]  # (voter, its high_qc round, signature)
    high_qc: QuorumCert | None

    @property
    def max_high_qc_round(self) -> int:
        return max((entry[1] for entry in self.entries), default=NO_ROUND)

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "height": self.height,
            "round": self.round,
            "entries": [[v, r, codec.b64(sig)] for v, r, sig in self.entries],
            "high_qc": None if self.high_qc is None else self.high_qc.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any) -> TimeoutCert:
        what = "timeout certificate"
        entries = []
        for item in _list(d, "entries", MAX_CONSENTERS, what):
            if not isinstance(item, list) or len(item) != 3:
                raise InvalidInput("timeout certificate entries are triples", code="malformed")
            high = item[1]
            if not isinstance(high, int) or isinstance(high, bool) or high < NO_ROUND:
                raise InvalidInput("timeout certificate round is malformed", code="malformed")
            entries.append((_name(item[0], "tc voter"), high, _sig(item[2], "tc signature")))
        voters = [entry[0] for entry in entries]
        if voters != sorted(set(voters)):
            raise InvalidInput(
                "timeout certificate voters must be sorted, unique", code="malformed"
            )
        if not isinstance(d, dict) or "high_qc" not in d:
            raise InvalidInput("timeout certificate is missing 'high_qc'", code="malformed")
        return cls(
            _name(_field(d, "app", str, what), "tc.app"),
            _nonneg(_field(d, "height", int, what), "tc.height"),
            _round(_field(d, "round", int, what), "tc.round"),
            tuple(entries),
            _qc_or_none(d["high_qc"]),
        )


@dataclass(frozen=True, slots=True)
class TimeoutMsg:
    """A replica gives up on (height, round) and reports its highest prepare certificate.

    ``last_tc`` (not covered by the signature: it proves itself) is how the replica
    reached its round, so that a replica still in an earlier round catches up.
    """

    app: str
    height: int
    round: int
    high_qc: QuorumCert | None
    voter: str
    signature: bytes
    last_tc: TimeoutCert | None = None

    @property
    def high_qc_round(self) -> int:
        return NO_ROUND if self.high_qc is None else self.high_qc.round

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "round": self.round,
            "high_qc": None if self.high_qc is None else self.high_qc.to_dict(),
            "voter": self.voter,
            "signature": codec.b64(self.signature),
            "last_tc": None if self.last_tc is None else self.last_tc.to_dict(),
        }

    @classmethod
    def from_dict(cls, app: str, d: Any) -> TimeoutMsg:
        what = "timeout"
        if not isinstance(d, dict) or "high_qc" not in d:
            raise InvalidInput("timeout is missing field 'high_qc'", code="malformed")
        return cls(
            app,
            _nonneg(_field(d, "height", int, what), "timeout.height"),
            _round(_field(d, "round", int, what), "timeout.round"),
            _qc_or_none(d["high_qc"]),
            _name(_field(d, "voter", str, what), "timeout.voter"),
            _sig(_field(d, "signature", str, what), "timeout.signature"),
            None if d.get("last_tc") is None else TimeoutCert.from_dict(d["last_tc"]),
        )


def _proposal_wire(
    round_: int, justify: QuorumCert | None, tc: TimeoutCert | None, proposer: str, sig: bytes
) -> dict[str, Any]:
    """The wire fields every form of a proposal shares."""
    return {
        "round": round_,
        "justify": None if justify is None else justify.to_dict(),
        "tc": None if tc is None else tc.to_dict(),
        "proposer": proposer,
        "signature": codec.b64(sig),
    }


def _proposal_parts(
    d: Any,
) -> tuple[int, QuorumCert | None, TimeoutCert | None, str, bytes]:
    """(round, justify, tc, proposer, signature) from a proposal's wire fields."""
    what = "proposal"
    if not isinstance(d, dict) or "justify" not in d or "tc" not in d:
        raise InvalidInput("proposal is missing 'justify' or 'tc'", code="malformed")
    tc = d["tc"]
    return (
        _round(_field(d, "round", int, what), "proposal.round"),
        _qc_or_none(d["justify"]),
        None if tc is None else TimeoutCert.from_dict(tc),
        _name(_field(d, "proposer", str, what), "proposal.proposer"),
        _sig(_field(d, "signature", str, what), "proposal.signature"),
    )


@dataclass(frozen=True, slots=True)
class ProposalMsg:
    """The leader of (height, round) proposes ``block``.

    ``justify`` is the leader's highest prepare certificate at this height (the
    block must then be the certified one); ``tc`` is the timeout certificate of the
    previous round when the leader got there by a round change.
    """

    app: str
    round: int
    block: Block
    justify: QuorumCert | None
    tc: TimeoutCert | None
    proposer: str
    signature: bytes

    @property
    def height(self) -> int:
        return self.block.header.number

    def to_wire(self) -> dict[str, Any]:
        return {
            "block": orjson.Fragment(encode_block(self.block)),
            **_proposal_wire(self.round, self.justify, self.tc, self.proposer, self.signature),
        }

    @classmethod
    def from_dict(cls, app: str, d: Any) -> ProposalMsg:
        block = Block.from_dict(_field(d, "block", dict, "proposal"))
        round_, justify, tc, proposer, signature = _proposal_parts(d)
        return cls(app, round_, block, justify, tc, proposer, signature)


@dataclass(frozen=True, slots=True)
class CompactProposal:
    """A :class:`ProposalMsg` on the wire with the block's transactions by hash.

    Consenters already hold the transactions (forwarded to every mempool), so the
    leader sends the header and the transaction hashes; the receiver rebuilds the
    block from its mempool (the header's ``data_hash`` proves it got the right ones)
    and asks the sender for any it lacks (:class:`TxRequest`). The signature is the
    proposal's, over the block hash: nothing is lost by compacting.
    """

    app: str
    round: int
    header: BlockHeader
    tx_hashes: tuple[Digest, ...]
    justify: QuorumCert | None
    tc: TimeoutCert | None
    proposer: str
    signature: bytes

    @property
    def height(self) -> int:
        return self.header.number

    @classmethod
    def of(cls, msg: ProposalMsg) -> CompactProposal:
        hashes = tuple(compute_tx_hash(tx) for tx in msg.block.transactions)
        return cls(
            msg.app,
            msg.round,
            msg.block.header,
            hashes,
            msg.justify,
            msg.tc,
            msg.proposer,
            msg.signature,
        )

    def expand(self, transactions: Sequence[Transaction]) -> ProposalMsg:
        block = Block(self.header, tuple(transactions))
        return ProposalMsg(
            self.app, self.round, block, self.justify, self.tc, self.proposer, self.signature
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "header": self.header.to_dict(),
            "tx_hashes": [h.hex() for h in self.tx_hashes],
            **_proposal_wire(self.round, self.justify, self.tc, self.proposer, self.signature),
        }

    @classmethod
    def from_dict(cls, app: str, d: Any) -> CompactProposal:
        what = "compact proposal"
        header = BlockHeader.from_dict(_field(d, "header", dict, what))
        hashes = tuple(_hash(h, "tx hash") for h in _list(d, "tx_hashes", MAX_BLOCK_TXS, what))
        if len(hashes) != header.tx_count:
            raise InvalidInput("tx_hashes do not match header.tx_count", code="malformed")
        round_, justify, tc, proposer, signature = _proposal_parts(d)
        return cls(app, round_, header, hashes, justify, tc, proposer, signature)


@dataclass(frozen=True, slots=True)
class TxRequest:
    """Ask a peer for transactions (by hash) missing to rebuild a compact proposal."""

    app: str
    tx_hashes: tuple[Digest, ...]


# ------------------------------------------------------------------------ not signed


@dataclass(frozen=True, slots=True)
class Status:
    """A hint: the sender's committed height (a laggard asks it for blocks)."""

    app: str
    height: int


@dataclass(frozen=True, slots=True)
class SyncRequest:
    app: str
    from_height: int


@dataclass(frozen=True, slots=True)
class SyncResponse:
    """Committed blocks with their commit certificates, in order from ``from_height``."""

    app: str
    blocks: tuple[tuple[Block, QuorumCert], ...]


@dataclass(frozen=True, slots=True)
class TxForward:
    """Transactions accepted by the sender, for every consenter's mempool."""

    app: str
    transactions: tuple[Transaction, ...]


Message = (
    Vote
    | TimeoutMsg
    | ProposalMsg
    | CompactProposal
    | TxRequest
    | Status
    | SyncRequest
    | SyncResponse
    | TxForward
)


def encode_block(block: Block) -> bytes:
    """Canonical bytes of a block, spliced from its parts' cached encodings."""
    txs = b",".join(tx.encode() for tx in block.transactions)
    return b'{"header":' + block.header.encode() + b',"transactions":[' + txs + b"]}"


def encode_message(msg: Message) -> bytes:
    """The wire form of ``msg``."""
    kind, body = _body(msg)
    return orjson.dumps({"app": msg.app, "kind": kind, "body": body})


def _body(msg: Message) -> tuple[str, Any]:
    if isinstance(msg, Vote):
        return "vote", msg.to_dict()
    if isinstance(msg, TimeoutMsg):
        return "timeout", msg.to_dict()
    if isinstance(msg, ProposalMsg):
        return "proposal", msg.to_wire()
    if isinstance(msg, CompactProposal):
        return "compact_proposal", msg.to_wire()
    if isinstance(msg, TxRequest):
        return "tx_request", {"tx_hashes": [h.hex() for h in msg.tx_hashes]}
    if isinstance(msg, Status):
        return "status", {"height": msg.height}
    if isinstance(msg, SyncRequest):
        return "sync_request", {"from_height": msg.from_height}
    if isinstance(msg, SyncResponse):
        return "sync_response", {
            "blocks": [
                {"block": orjson.Fragment(encode_block(b)), "qc": qc.to_dict()}
                for b, qc in msg.blocks
            ]
        }
    return "txs", {"transactions": [orjson.Fragment(tx.encode()) for tx in msg.transactions]}


_CARRY_TRANSACTIONS = frozenset({"txs", "proposal", "sync_response"})


def decode_message(data: bytes) -> Message:
    """Parse one wire message; InvalidInput on anything malformed or oversized."""
    d = codec.decode(
        data, max_bytes=MAX_MESSAGE_BYTES, what="consensus message", check_values=False
    )
    what = "message"
    app = _name(_field(d, "app", str, what), "message.app")
    kind = _field(d, "kind", str, what)
    body = _field(d, "body", dict, what)
    if kind not in _CARRY_TRANSACTIONS:
        codec.validate_value(d, what="consensus message")
    # else: transactions (forwarded, or in the blocks of a proposal or a sync response):
    # Transaction.from_dict checks every value it keeps (arguments, written values,
    # payloads, responses, each nested at most MAX_DEPTH from its own root, as where it
    # entered) and the other fields by type, and a transaction is re-encoded from what
    # it keeps. Checking the whole message would repeat that work and, worse, count
    # depth from the message's root: a value the gateway accepted could then never
    # travel in a block, and a node that missed the block could never sync it.
    if kind == "vote":
        return Vote.from_dict(app, body)
    if kind == "timeout":
        return TimeoutMsg.from_dict(app, body)
    if kind == "proposal":
        return ProposalMsg.from_dict(app, body)
    if kind == "compact_proposal":
        return CompactProposal.from_dict(app, body)
    if kind == "tx_request":
        hashes = _list(body, "tx_hashes", MAX_BLOCK_TXS, what)
        return TxRequest(app, tuple(_hash(h, "tx hash") for h in hashes))
    if kind == "status":
        return Status(app, _nonneg(_field(body, "height", int, what), "status.height"))
    if kind == "sync_request":
        return SyncRequest(app, _nonneg(_field(body, "from_height", int, what), "from_height"))
    if kind == "sync_response":
        return SyncResponse(
            app, tuple(_sync_entry(e) for e in _list(body, "blocks", MAX_SYNC_BLOCKS, what))
        )
    if kind == "txs":
        txs = _list(body, "transactions", MAX_FORWARD_TXS, what)
        return TxForward(app, tuple(Transaction.from_dict(t) for t in txs))
    raise InvalidInput(f"unknown message kind {kind!r}", code="malformed")


def _sync_entry(d: Any) -> tuple[Block, QuorumCert]:
    return Block.from_dict(_field(d, "block", dict, "sync")), QuorumCert.from_dict(
        _field(d, "qc", dict, "sync")
    )


__all__ = [
    "MAX_MESSAGE_BYTES",
    "NO_ROUND",
    "CompactProposal",
    "Message",
    "Phase",
    "ProposalMsg",
    "QuorumCert",
    "Status",
    "SyncRequest",
    "SyncResponse",
    "TimeoutCert",
    "TimeoutMsg",
    "TxForward",
    "TxRequest",
    "Vote",
    "compute_proposal_digest",
    "compute_timeout_digest",
    "compute_vote_digest",
    "decode_message",
    "encode_block",
    "encode_message",
]
