"""The records of the ledger, as frozen slotted dataclasses.

Each record has ``to_dict()`` (its canonical JSON form, see :mod:`meridian.codec`) and
``from_dict()`` which validates every field, bounds every collection and size, and
raises :class:`meridian.errors.InvalidInput` on anything else. Byte strings are
lowercase hex when they are digests or ids and base64 otherwise.

Identifiers:

* a transaction's id is the hex digest of its *unsigned* proposal (creator, nonce and
  timestamp included, signature excluded: a re-signed proposal is the same
  transaction, and signature malleability cannot mint new ids);
* a block's hash is the digest of its canonical header;
* the header's ``data_hash`` is the Merkle root of the transaction hashes
  (:mod:`meridian.ledger.merkle`), so one transaction's inclusion is provable from
  the header alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NewType, TypeVar

from . import codec
from .crypto.hashing import DIGEST_BYTES, Digest, compute_digest, compute_signing_digest
from .crypto.suites import Signer
from .errors import InvalidInput
from .ledger.merkle import compute_root_and_proofs, compute_root_from_proof

TxId = NewType("TxId", str)
Height = NewType("Height", int)
AppName = NewType("AppName", str)
ContractName = NewType("ContractName", str)
OrgId = NewType("OrgId", str)
NodeId = NewType("NodeId", str)

MAX_TX_BYTES = 256 * 1024
MAX_BLOCK_TXS = 10_000
MAX_ARGS = 64
MAX_ARG_BYTES = 64 * 1024
MAX_KEY_CHARS = 512
MAX_RWSET_ENTRIES = 4_096
MAX_RANGE_READS = 64  # per namespace and transaction
MAX_NAMESPACES = 16  # contracts one transaction may touch
MAX_EVENTS = 64
MAX_ENDORSEMENTS = 64
MAX_CERT_BYTES = 8 * 1024
MAX_SIGNATURE_BYTES = 512
MAX_NONCE_BYTES = 64
MAX_NAME_CHARS = 64
MAX_SIGNED_BATCH = 1024  # digests one batch signature may cover (a proof of ≤ 10 hashes)
SIGNED_BATCH = 16  # what this code signs at once: 1/16 of the verifications, 4-hash proofs

# Domains of signing digests (see crypto.hashing.compute_signing_digest).
DOMAIN_PROPOSAL = "proposal"
DOMAIN_ENDORSEMENT = "endorsement"
DOMAIN_REQUEST = "request"
DOMAIN_BATCH = "batch"

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
FUNCTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
SYSTEM_CONTRACT_RE = re.compile(r"^_[a-z][a-z0-9_]{0,62}$")

T = TypeVar("T")


class TxCode(IntEnum):
    """Validation verdict of one transaction; stored with the block, never changes."""

    VALID = 0
    MVCC_READ_CONFLICT = 1
    PHANTOM_READ_CONFLICT = 2
    DUPLICATE_TXID = 3
    BAD_CREATOR_SIGNATURE = 4
    BAD_CREATOR_CERTIFICATE = 5
    BAD_ENDORSEMENT = 6
    ENDORSEMENT_POLICY_FAILURE = 7
    UNKNOWN_CONTRACT = 8
    CONTRACT_VERSION_MISMATCH = 9
    INVALID_DELTA = 10
    BAD_PROPOSAL = 11
    APP_NOT_ACTIVE = 12  # the app was suspended or closed at the block's config height
    SYSTEM_CONTRACT_MISMATCH = 13  # re-running the system contract gives another result
    STORAGE_QUOTA_EXCEEDED = 14  # the app's ledger would outgrow its plan's storage quota


# ----------------------------------------------------------------------------- helpers


def _field(d: Any, name: str, kind: type[T] | tuple[type, ...], what: str) -> T:
    if not isinstance(d, dict):
        raise InvalidInput(f"{what} must be a JSON object", code="malformed")
    if name not in d:
        raise InvalidInput(f"{what} is missing field '{name}'", code="malformed")
    value = d[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"{what}.{name} has the wrong type", code="malformed")
    return value  # type: ignore[return-value]


def _name(value: Any, what: str, pattern: re.Pattern[str] = NAME_RE) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidInput(
            f"{what} must match {pattern.pattern}", code="malformed", hint="use a short slug"
        )
    return value


def _bounded_list(value: Any, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"{what} must be a list", code="malformed")
    if len(value) > limit:
        raise InvalidInput(f"{what} has {len(value)} entries, over {limit}", code="too_large")
    return value


def _key(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_CHARS:
        raise InvalidInput(f"{what} must be a non-empty string of ≤{MAX_KEY_CHARS} chars")
    if "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL", code="malformed")
    return value


def _nonneg(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**63:
        raise InvalidInput(f"{what} must be a non-negative integer", code="malformed")
    return value


def _digest(value: Any, what: str) -> Digest:
    return Digest(codec.unhex(value, what=what, length=DIGEST_BYTES))


def _list_of(value: Any, limit: int, what: str, parse: Callable[[Any], T]) -> tuple[T, ...]:
    return tuple(parse(item) for item in _bounded_list(value, limit, what))


# ---------------------------------------------------------------------------- versions


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """Where a key was last written: (block number, transaction index in it)."""

    block: int
    tx: int

    def to_list(self) -> list[int]:
        return [self.block, self.tx]

    @classmethod
    def from_list(cls, value: Any) -> Version | None:
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != 2:
            raise InvalidInput("version must be [block, tx] or null", code="malformed")
        return cls(_nonneg(value[0], "version.block"), _nonneg(value[1], "version.tx"))


# ------------------------------------------------------------------ batch signatures


@dataclass(frozen=True, slots=True)
class BatchProof:
    """Where a signed digest sits among digests whose Merkle root was signed once.

    A signer with many digests to sign (a client's batch of proposals, an endorser's
    batch of results) may sign, instead of each digest, the root of an RFC 6962 tree
    over them (:mod:`meridian.ledger.merkle`) together with the tree's size, bound to
    its domain and network; each signature then travels with this proof. The size is
    signed because an RFC 6962 path alone fits several (index, size) pairs: without it,
    anyone could re-state a proof at another position and mint a different encoding of
    the same transaction. A verifier recomputes the root from the
    digest and the proof and checks the one signature over it, which its verification
    cache then answers for every other digest of the batch.
    """

    index: int
    size: int
    path: tuple[Digest, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "path": [h.hex() for h in self.path]}

    @classmethod
    def from_dict(cls, d: Any) -> BatchProof:
        what = "batch proof"
        size = _field(d, "size", int, what)
        index = _field(d, "index", int, what)
        if not 2 <= size <= MAX_SIGNED_BATCH or not 0 <= index < size:
            raise InvalidInput(
                f"batch proof index {index} of {size} is impossible (size 2..{MAX_SIGNED_BATCH})",
                code="malformed",
            )
        path = _bounded_list(_field(d, "path", list, what), 10, "batch proof path")
        return cls(index, size, tuple(_digest(h, "batch proof path") for h in path))

    def signed_message(self, digest: bytes, network: str) -> bytes | None:
        """What the batch signature covers if ``digest`` is in the batch at this
        position, or None if the proof cannot be one (never a valid signature)."""
        root = compute_root_from_proof(digest, self.index, self.size, self.path)
        if root is None:
            return None
        return _batch_message(root, self.size, network)


def _batch_message(root: bytes, size: int, network: str) -> bytes:
    """What a batch signature covers: the tree's size and root, domain and network."""
    return bytes(compute_signing_digest(DOMAIN_BATCH, network, size.to_bytes(2, "big") + root))


def sign_batch(
    signer: Signer, digests: Sequence[bytes], network: str
) -> list[tuple[bytes, BatchProof | None]]:
    """Signatures over ``digests``, one per ``SIGNED_BATCH`` of them (in order): each
    digest's signature and proof. A lone digest is signed as itself, with no proof."""
    out: list[tuple[bytes, BatchProof | None]] = []
    for start in range(0, len(digests), SIGNED_BATCH):
        chunk = digests[start : start + SIGNED_BATCH]
        if len(chunk) == 1:
            out.append((signer.sign(bytes(chunk[0])), None))
            continue
        root, proofs = compute_root_and_proofs(chunk)
        signature = signer.sign(_batch_message(root, len(chunk), network))
        out += [
            (signature, BatchProof(i, len(chunk), tuple(path))) for i, path in enumerate(proofs)
        ]
    return out


def _signed_message(digest: bytes, batch: BatchProof | None, network: str) -> bytes | None:
    return digest if batch is None else batch.signed_message(digest, network)


# --------------------------------------------------------------------------- proposals


@dataclass(frozen=True, slots=True)
class Proposal:
    """What a client asks for: call ``contract.function(*args)`` on ``app``."""

    network: str
    app: str
    contract: str
    function: str
    args: tuple[Any, ...]
    nonce: bytes
    timestamp_ms: int
    creator: bytes  # the creator's X.509 certificate, DER
    _encoded: bytes = field(init=False, repr=False, compare=False, default=b"")
    _tx_id: TxId = field(init=False, repr=False, compare=False, default=TxId(""))
    _signing_digest: Digest = field(init=False, repr=False, compare=False, default=Digest(b""))

    def __post_init__(self) -> None:
        encoded = codec.encode(self.to_dict())
        object.__setattr__(self, "_encoded", encoded)
        object.__setattr__(self, "_tx_id", compute_digest(encoded).hex())

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "app": self.app,
            "contract": self.contract,
            "function": self.function,
            "args": list(self.args),
            "nonce": self.nonce.hex(),
            "timestamp_ms": self.timestamp_ms,
            "creator": codec.b64_cert(self.creator),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Proposal:
        what = "proposal"
        args = _bounded_list(_field(d, "args", list, what), MAX_ARGS, "proposal.args")
        codec.validate_value(args, what="proposal.args")
        if len(codec.encode(args)) > MAX_ARG_BYTES:
            raise InvalidInput(f"arguments exceed {MAX_ARG_BYTES} bytes", code="too_large")
        nonce = codec.unhex(_field(d, "nonce", str, what), what="proposal.nonce")
        if not 8 <= len(nonce) <= MAX_NONCE_BYTES:
            raise InvalidInput("proposal.nonce must be 8..64 bytes", code="malformed")
        creator = codec.unb64_cert(_field(d, "creator", str, what), what="proposal.creator")
        if len(creator) > MAX_CERT_BYTES:
            raise InvalidInput("proposal.creator certificate is too large", code="too_large")
        contract = _field(d, "contract", str, what)
        if not (NAME_RE.match(contract) or SYSTEM_CONTRACT_RE.match(contract)):
            raise InvalidInput("proposal.contract is not a valid contract name", code="malformed")
        return cls(
            network=_name(_field(d, "network", str, what), "proposal.network"),
            app=_name(_field(d, "app", str, what), "proposal.app"),
            contract=contract,
            function=_name(_field(d, "function", str, what), "proposal.function", FUNCTION_RE),
            args=tuple(args),
            nonce=nonce,
            timestamp_ms=_nonneg(_field(d, "timestamp_ms", int, what), "proposal.timestamp_ms"),
            creator=creator,
        )

    def encode(self) -> bytes:
        return self._encoded

    @property
    def tx_id(self) -> TxId:
        return self._tx_id

    def signing_digest(self) -> Digest:
        """What the creator signs (computed once: proposals are immutable)."""
        if not self._signing_digest:
            object.__setattr__(self, "_signing_digest", self._compute_signing_digest())
        return self._signing_digest

    def _compute_signing_digest(self) -> Digest:
        return compute_signing_digest(DOMAIN_PROPOSAL, self.network, self.encode())


@dataclass(frozen=True, slots=True)
class SignedProposal:
    """A proposal and its creator's signature: over the proposal's signing digest, or
    (with ``batch``) over a batch of them (see :class:`BatchProof`)."""

    proposal: Proposal
    signature: bytes
    batch: BatchProof | None = None
    _message: bytes | None = field(init=False, repr=False, compare=False, default=b"")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "proposal": self.proposal.to_dict(),
            "signature": codec.b64(self.signature),
        }
        if self.batch is not None:
            d["batch"] = self.batch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> SignedProposal:
        sig = codec.unb64(_field(d, "signature", str, "signed proposal"), what="signature")
        if not sig or len(sig) > MAX_SIGNATURE_BYTES:
            raise InvalidInput("signature has an impossible length", code="malformed")
        batch = BatchProof.from_dict(d["batch"]) if "batch" in d else None
        return cls(Proposal.from_dict(_field(d, "proposal", dict, "signed proposal")), sig, batch)

    def signed_message(self) -> bytes | None:
        """What the creator's signature covers (None: an impossible batch proof)."""
        if self._message == b"":
            digest = bytes(self.proposal.signing_digest())
            message = _signed_message(digest, self.batch, self.proposal.network)
            object.__setattr__(self, "_message", message)
        return self._message


# ------------------------------------------------------------------ read / write sets


@dataclass(frozen=True, slots=True)
class KVRead:
    key: str
    version: Version | None  # None: the key did not exist

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "version": self.version.to_list() if self.version else None}

    @classmethod
    def from_dict(cls, d: Any) -> KVRead:
        return cls(
            _key(_field(d, "key", str, "read"), "read.key"), Version.from_list(d.get("version"))
        )


@dataclass(frozen=True, slots=True)
class RangeRead:
    """A range scan ``[start, end)`` and what it returned; re-run at validation."""

    start: str
    end: str
    reads: tuple[KVRead, ...]
    exhausted: bool  # False: stopped at a limit, only the returned prefix is checked

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "reads": [r.to_dict() for r in self.reads],
            "exhausted": self.exhausted,
        }

    @classmethod
    def from_dict(cls, d: Any) -> RangeRead:
        what = "range read"
        return cls(
            start=_field(d, "start", str, what),
            end=_field(d, "end", str, what),
            reads=_list_of(
                _field(d, "reads", list, what), MAX_RWSET_ENTRIES, what, KVRead.from_dict
            ),
            exhausted=_field(d, "exhausted", bool, what),
        )


@dataclass(frozen=True, slots=True)
class KVWrite:
    key: str
    value: Any  # a canonical JSON value; ignored when ``delete``
    delete: bool = False

    def to_dict(self) -> dict[str, Any]:
        if self.delete:
            return {"key": self.key, "delete": True}
        return {"key": self.key, "value": self.value}

    @classmethod
    def from_dict(cls, d: Any) -> KVWrite:
        key = _key(_field(d, "key", str, "write"), "write.key")
        if d.get("delete") is True:
            return cls(key, None, True)
        value = d.get("value")
        codec.validate_value(value, what="write.value")
        return cls(key, value)


@dataclass(frozen=True, slots=True)
class KVDelta:
    """A commutative increment: applied at commit without a read, never conflicts."""

    key: str
    delta: int

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "delta": self.delta}

    @classmethod
    def from_dict(cls, d: Any) -> KVDelta:
        delta = _field(d, "delta", int, "delta")
        if not -(2**62) <= delta <= 2**62:
            raise InvalidInput("delta out of range", code="malformed")
        return cls(_key(_field(d, "key", str, "delta"), "delta.key"), delta)


@dataclass(frozen=True, slots=True)
class NsRWSet:
    """Everything one transaction read and wrote in one contract's namespace."""

    namespace: str
    reads: tuple[KVRead, ...] = ()
    range_reads: tuple[RangeRead, ...] = ()
    writes: tuple[KVWrite, ...] = ()
    deltas: tuple[KVDelta, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "reads": [r.to_dict() for r in self.reads],
            "range_reads": [r.to_dict() for r in self.range_reads],
            "writes": [w.to_dict() for w in self.writes],
            "deltas": [x.to_dict() for x in self.deltas],
        }

    @classmethod
    def from_dict(cls, d: Any) -> NsRWSet:
        what = "rwset"
        ns = _field(d, "namespace", str, what)
        if not (NAME_RE.match(ns) or SYSTEM_CONTRACT_RE.match(ns)):
            raise InvalidInput("rwset.namespace is not a contract name", code="malformed")
        lim = MAX_RWSET_ENTRIES
        rwset = cls(
            namespace=ns,
            reads=_list_of(_field(d, "reads", list, what), lim, what, KVRead.from_dict),
            range_reads=_list_of(
                _field(d, "range_reads", list, what), MAX_RANGE_READS, what, RangeRead.from_dict
            ),
            writes=_list_of(_field(d, "writes", list, what), lim, what, KVWrite.from_dict),
            deltas=_list_of(_field(d, "deltas", list, what), lim, what, KVDelta.from_dict),
        )
        check_unique([r.key for r in rwset.reads], "rwset.reads")
        check_unique(
            [w.key for w in rwset.writes] + [x.key for x in rwset.deltas], "rwset writes and deltas"
        )
        return rwset


@dataclass(frozen=True, slots=True)
class Event:
    contract: str
    name: str
    payload: Any

    def to_dict(self) -> dict[str, Any]:
        return {"contract": self.contract, "name": self.name, "payload": self.payload}

    @classmethod
    def from_dict(cls, d: Any) -> Event:
        payload = d.get("payload") if isinstance(d, dict) else None
        codec.validate_value(payload, what="event.payload")
        name = _field(d, "name", str, "event")
        if not name or len(name) > MAX_NAME_CHARS:
            raise InvalidInput("event.name must be 1..64 chars", code="malformed")
        contract = _field(d, "contract", str, "event")
        if not (NAME_RE.match(contract) or SYSTEM_CONTRACT_RE.match(contract)):
            raise InvalidInput("event.contract is not a contract name", code="malformed")
        return cls(contract, name, payload)


@dataclass(frozen=True, slots=True)
class TxResult:
    """What endorsers computed: the response, read/write sets and events."""

    response: Any
    rwsets: tuple[NsRWSet, ...]
    events: tuple[Event, ...]
    contract_version: str  # the committed definition the endorsers ran (name@sequence)
    _encoded: bytes = field(init=False, repr=False, compare=False, default=b"")
    _digest: Digest = field(init=False, repr=False, compare=False, default=Digest(b""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "response": self.response,
            "rwsets": [r.to_dict() for r in self.rwsets],
            "events": [e.to_dict() for e in self.events],
            "contract_version": self.contract_version,
        }

    @classmethod
    def from_dict(cls, d: Any) -> TxResult:
        what = "result"
        response = d.get("response") if isinstance(d, dict) else None
        codec.validate_value(response, what="result.response")
        return cls(
            response=response,
            rwsets=_list_of(
                _field(d, "rwsets", list, what), MAX_NAMESPACES, what, NsRWSet.from_dict
            ),
            events=_list_of(_field(d, "events", list, what), MAX_EVENTS, what, Event.from_dict),
            contract_version=_field(d, "contract_version", str, what),
        )

    def encode(self) -> bytes:
        """Canonical bytes (computed once: records are immutable)."""
        if not self._encoded:
            object.__setattr__(self, "_encoded", codec.encode(self.to_dict()))
        return self._encoded

    @property
    def digest(self) -> Digest:
        if not self._digest:
            object.__setattr__(self, "_digest", compute_digest(self.encode()))
        return self._digest


@dataclass(frozen=True, slots=True)
class Endorsement:
    """A node's signature over (tx id, result digest): over its signing digest, or
    (with ``batch``) over a batch of them (see :class:`BatchProof`)."""

    endorser: bytes  # the endorsing node's certificate, DER
    signature: bytes
    batch: BatchProof | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "endorser": codec.b64_cert(self.endorser),
            "signature": codec.b64(self.signature),
        }
        if self.batch is not None:
            d["batch"] = self.batch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Endorsement:
        endorser = codec.unb64_cert(_field(d, "endorser", str, "endorsement"), what="endorser")
        sig = codec.unb64(_field(d, "signature", str, "endorsement"), what="signature")
        if len(endorser) > MAX_CERT_BYTES or not sig or len(sig) > MAX_SIGNATURE_BYTES:
            raise InvalidInput("endorsement fields have impossible sizes", code="malformed")
        batch = BatchProof.from_dict(d["batch"]) if "batch" in d else None
        return cls(endorser, sig, batch)

    def signed_message(self, digest: bytes, network: str) -> bytes | None:
        """What the signature covers, given the endorsement signing digest of its
        transaction (None: an impossible batch proof)."""
        return _signed_message(digest, self.batch, network)


def compute_endorsement_payload(tx_id: TxId, result: TxResult) -> bytes:
    """The bytes an endorser signs: the tx id bound to the digest of the result."""
    return codec.encode({"tx_id": tx_id, "result": result.digest.hex()})


def compute_endorsement_digest(tx_id: TxId, result: TxResult, network: str) -> bytes:
    """What an endorser signs (alone, or as a leaf of a signed batch)."""
    payload = compute_endorsement_payload(tx_id, result)
    return bytes(compute_signing_digest(DOMAIN_ENDORSEMENT, network, payload))


@dataclass(frozen=True, slots=True)
class Transaction:
    """An endorsed transaction as it is ordered and stored."""

    signed_proposal: SignedProposal
    result: TxResult
    endorsements: tuple[Endorsement, ...]
    _encoded: bytes = field(init=False, repr=False, compare=False, default=b"")
    _hash: Digest = field(init=False, repr=False, compare=False, default=Digest(b""))
    _endorsed_messages: tuple[bytes | None, ...] | None = field(
        init=False, repr=False, compare=False, default=None
    )

    def endorsement_messages(self) -> tuple[bytes | None, ...]:
        """What each endorsement's signature covers, on the proposal's network (None:
        an impossible batch proof); computed once — pre-verification and validation
        both ask."""
        if self._endorsed_messages is None:
            network = self.proposal.network
            digest = compute_endorsement_digest(self.tx_id, self.result, network)
            messages = tuple(e.signed_message(digest, network) for e in self.endorsements)
            object.__setattr__(self, "_endorsed_messages", messages)
            return messages
        return self._endorsed_messages

    @property
    def proposal(self) -> Proposal:
        return self.signed_proposal.proposal

    @property
    def tx_id(self) -> TxId:
        return self.signed_proposal.proposal.tx_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "signed_proposal": self.signed_proposal.to_dict(),
            "result": self.result.to_dict(),
            "endorsements": [e.to_dict() for e in self.endorsements],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Transaction:
        what = "transaction"
        return cls(
            signed_proposal=SignedProposal.from_dict(_field(d, "signed_proposal", dict, what)),
            result=TxResult.from_dict(_field(d, "result", dict, what)),
            endorsements=_list_of(
                _field(d, "endorsements", list, what), MAX_ENDORSEMENTS, what, Endorsement.from_dict
            ),
        )

    def encode(self) -> bytes:
        """Canonical bytes (computed once: records are immutable).

        Spliced from the parts' own cached encodings, in canonical key order; equal
        to ``codec.encode(self.to_dict())`` (a unit test holds it to that).
        """
        if not self._encoded:
            signed = self.signed_proposal
            encoded = b"".join(
                (
                    b'{"endorsements":',
                    codec.encode([e.to_dict() for e in self.endorsements]),
                    b',"result":',
                    self.result.encode(),
                    b',"signed_proposal":{',
                    b"" if signed.batch is None else b'"batch":',
                    b"" if signed.batch is None else codec.encode(signed.batch.to_dict()),
                    b"" if signed.batch is None else b",",
                    b'"proposal":',
                    signed.proposal.encode(),
                    b',"signature":',
                    codec.encode(codec.b64(signed.signature)),
                    b"}}",
                )
            )
            object.__setattr__(self, "_encoded", encoded)
        return self._encoded

    @classmethod
    def decode(cls, data: bytes) -> Transaction:
        doc = codec.decode(data, max_bytes=MAX_TX_BYTES, what="transaction", check_values=False)
        return cls.from_dict(doc)  # checks every value it keeps, each from its own root


def compute_tx_hash(tx: Transaction) -> Digest:
    """Leaf of the block's Merkle tree: digest of the whole encoded transaction
    (computed once per record: pools, proposals and blocks all name it)."""
    if not tx._hash:
        object.__setattr__(tx, "_hash", compute_digest(tx.encode()))
    return tx._hash


# ------------------------------------------------------------------------------ blocks


@dataclass(frozen=True, slots=True)
class BlockHeader:
    network: str
    app: str
    number: int
    previous_hash: Digest  # 32 zero bytes for the genesis block
    data_hash: Digest  # Merkle root of the transaction hashes
    last_result_root: Digest  # result root of the previous block (zero for genesis)
    timestamp_ms: int  # the proposer's clock, checked by voters, strictly increasing
    tx_count: int
    proposer: str  # node id of the consenter that proposed the block
    # The governance height whose network configuration validates this block (members,
    # hosting nodes, CAs): the same on every node. 0 in the governance channel itself,
    # which its own state governs.
    config_height: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "app": self.app,
            "number": self.number,
            "proposer": self.proposer,
            "config_height": self.config_height,
            "previous_hash": self.previous_hash.hex(),
            "data_hash": self.data_hash.hex(),
            "last_result_root": self.last_result_root.hex(),
            "timestamp_ms": self.timestamp_ms,
            "tx_count": self.tx_count,
        }

    @classmethod
    def from_dict(cls, d: Any) -> BlockHeader:
        what = "header"
        tx_count = _nonneg(_field(d, "tx_count", int, what), "header.tx_count")
        if tx_count > MAX_BLOCK_TXS:
            raise InvalidInput("header.tx_count too large", code="too_large")
        return cls(
            network=_name(_field(d, "network", str, what), "header.network"),
            app=_name(_field(d, "app", str, what), "header.app"),
            number=_nonneg(_field(d, "number", int, what), "header.number"),
            previous_hash=_digest(_field(d, "previous_hash", str, what), "previous_hash"),
            data_hash=_digest(_field(d, "data_hash", str, what), "data_hash"),
            last_result_root=_digest(_field(d, "last_result_root", str, what), "last_result_root"),
            timestamp_ms=_nonneg(_field(d, "timestamp_ms", int, what), "header.timestamp_ms"),
            tx_count=tx_count,
            proposer=_name(_field(d, "proposer", str, what), "header.proposer"),
            config_height=_nonneg(_field(d, "config_height", int, what), "header.config_height"),
        )

    def encode(self) -> bytes:
        return codec.encode(self.to_dict())

    @property
    def hash(self) -> Digest:
        return compute_digest(self.encode())


ZERO_DIGEST = Digest(bytes(DIGEST_BYTES))


@dataclass(frozen=True, slots=True)
class Block:
    header: BlockHeader
    transactions: tuple[Transaction, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "header": self.header.to_dict(),
            "transactions": [t.to_dict() for t in self.transactions],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Block:
        header = BlockHeader.from_dict(_field(d, "header", dict, "block"))
        txs = _list_of(
            _field(d, "transactions", list, "block"), MAX_BLOCK_TXS, "block", Transaction.from_dict
        )
        if len(txs) != header.tx_count:
            raise InvalidInput("block.tx_count does not match its transactions", code="malformed")
        return cls(header, txs)


def check_unique(items: Sequence[str], what: str) -> None:
    """Raise InvalidInput if ``items`` has duplicates."""
    if len(set(items)) != len(items):
        raise InvalidInput(f"{what} has duplicate entries", code="malformed")
