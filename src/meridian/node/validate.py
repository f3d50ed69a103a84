"""Validation: the pure verdict on each transaction of an ordered block.

:func:`validate_block` takes a block and a read-only view of committed state and
returns a :class:`~meridian.ledger.store.CommitBatch`: one :class:`TxCode` per
transaction and the state writes and events of the valid ones. It writes nothing;
the committer stores the batch in one atomic step. Every node computes the same
batch from the same block and state, which the next header's ``last_result_root``
lets nodes compare.

Checks, in order, for each transaction (first failure wins):

1. proposal is for this network and app                      BAD_PROPOSAL
   and the app is active (not suspended or closed)           APP_NOT_ACTIVE
2. tx id not already committed or earlier in the block       DUPLICATE_TXID
3. creator certificate valid at block time, member org       BAD_CREATOR_CERTIFICATE
4. creator signature over the proposal                       BAD_CREATOR_SIGNATURE
5. every endorsement: node certificate of a member org and
   a valid signature over (tx id, result digest)             BAD_ENDORSEMENT
6. each written namespace has a definition, and the invoked
   contract's definition is the one endorsers ran           UNKNOWN_CONTRACT /
                                                              CONTRACT_VERSION_MISMATCH
7. endorsing orgs satisfy each namespace's policy            ENDORSEMENT_POLICY_FAILURE
8. every read version is still current (earlier valid
   transactions of the same block included)                  MVCC_READ_CONFLICT
9. every range read returns the same keys and versions       PHANTOM_READ_CONFLICT
10. every incremented key holds an integer (or nothing)      INVALID_DELTA
11. a system namespace (``_lifecycle``, ``_governance``) is
    written only by a call of that system contract, and
    re-running the call here gives exactly the endorsed
    result: one endorser cannot forge approvals or
    configuration                                            SYSTEM_CONTRACT_MISMATCH
12. the app's stored bytes plus this transaction's encoded
    size stay within its plan's storage quota (at the
    block's configuration height)                            STORAGE_QUOTA_EXCEEDED

Step 3 also refuses a user certificate made for another app (attribute ``app``) and
any certificate the governance channel revoked by the block's configuration height.

Step 12 measures what an app stores as the encoded size of its valid transactions
(their write sets, events and proofs stay in every hosting node's ledger for good):
a running total the committed state carries (:meth:`CommittedState.stored_bytes`) and
each batch advances. Invalid transactions are not counted; a transaction refused by
step 12 writes nothing. The total never shrinks (deleting a key appends a
transaction), so an app at its quota moves to a larger plan; the gateway refuses
new transactions of an app already at its quota before they are ordered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .. import codec
from ..contracts.api import CallerIdentity, get_kind
from ..contracts.lifecycle import LIFECYCLE, ContractDefinition, get_definition
from ..contracts.simulation import Simulation
from ..crypto.certs import Identity, Membership
from ..crypto.hashing import Digest, compute_digest
from ..crypto.suites import verify_cached
from ..errors import CertificateError
from ..ledger.store import BlockEvent, CommitBatch, StateWrite
from ..types import (
    Block,
    NsRWSet,
    RangeRead,
    Transaction,
    TxCode,
    TxResult,
    Version,
    compute_endorsement_payload,
)
from .policy import Policy

_LABEL_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,63}@[0-9]{1,18}$")


class CommittedState(Protocol):
    """Committed state as the validator reads it (the committer's connection)."""

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None: ...

    def get_range(
        self, ns: str, start: str, end: str, limit: int
    ) -> list[tuple[str, Any, Version]]: ...

    def committed_among(self, tx_ids: Sequence[str]) -> set[str]:
        """The subset of ``tx_ids`` already in a committed block."""
        ...

    def stored_bytes(self) -> int:
        """The app's stored bytes after the last committed block (step 12)."""
        ...


@dataclass(frozen=True, slots=True)
class AppRules:
    """What validation needs to know about the app (from its configuration at the
    block's ``config_height``)."""

    network: str
    app: str
    members: frozenset[str]  # orgs whose identities may submit (the app's participants)
    system_policy: Policy  # endorsement policy of system namespaces (e.g. _lifecycle)
    # node id -> org of the nodes that may endorse (the hosting nodes); None: any node
    # of a member org (the consortium case)
    endorsers: Mapping[str, str] | None = None
    system_contracts: frozenset[str] = frozenset({LIFECYCLE})
    active: bool = True  # False once the app is suspended or closed
    readers: frozenset[str] = frozenset()  # orgs that may also read (auditors)
    # factories of the system contracts, re-run by validation (step 11); None only in
    # unit tests of the other steps: production rules always name them (node/rules.py)
    system: Mapping[str, Callable[[], Any]] | None = None
    revoked: frozenset[tuple[str, int]] = frozenset()  # (org, serial) revoked by governance
    storage_limit: int | None = None  # the plan's storage quota in bytes; None: no plan

    def is_usable(self, identity: Identity) -> bool:
        """Not revoked by governance, and not a user certificate of another app."""
        if (identity.org, identity.serial) in self.revoked:
            return False
        scope = identity.attrs.get("app")
        return scope is None or scope == self.app

    @property
    def endorsing_orgs(self) -> frozenset[str]:
        """The orgs endorsement policies are judged against."""
        return self.members if self.endorsers is None else frozenset(self.endorsers.values())

    def is_endorser(self, node: Identity) -> bool:
        if node.role != "node":
            return False
        if self.endorsers is None:
            return node.org in self.members
        return self.endorsers.get(node.name) == node.org


_MISSING = object()


class _Overlay:
    """Committed state plus the writes of earlier valid transactions in this block."""

    def __init__(self, state: CommittedState) -> None:
        self.state = state
        self.pending: dict[tuple[str, str], tuple[Any, Version | None]] = {}
        self._definitions: dict[str, ContractDefinition | None] = {}

    def get_definition(self, name: str) -> ContractDefinition | None:
        """A contract's definition as of now in the block (memoised per block)."""
        if name not in self._definitions:
            self._definitions[name] = get_definition(self.get, name)
        return self._definitions[name]

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None:
        hit: Any = self.pending.get((ns, key), _MISSING)
        if hit is _MISSING:
            return self.state.get(ns, key)
        value, version = hit
        return None if version is None else (value, version)

    def get_range(self, ns: str, start: str, end: str, limit: int) -> list[tuple[str, Version]]:
        local = {
            k: v
            for (n, k), v in self.pending.items()
            if n == ns and k >= start and (not end or k < end)
        }
        rows = {k: ver for k, _, ver in self.state.get_range(ns, start, end, limit + len(local))}
        for key, (_, version) in local.items():
            if version is None:
                rows.pop(key, None)
            else:
                rows[key] = version
        return sorted(rows.items())[:limit]

    def put(self, write: StateWrite) -> None:
        if write.ns == LIFECYCLE:
            self._definitions.clear()
        self.pending[(write.ns, write.key)] = (
            None if write.delete else write.value,
            None if write.delete else write.version,
        )


def validate_block(
    block: Block,
    state: CommittedState,
    membership: Membership,
    rules: AppRules,
) -> CommitBatch:
    """Verdicts, state writes and events for ``block``; pure with respect to storage."""
    validator = BlockValidator(block, state, membership, rules)
    while validator.step(len(block.transactions)):
        pass
    return validator.finish()


class BlockValidator:
    """:func:`validate_block` in steps, so that a caller can interleave other work.

    Transactions are validated in order; each sees the writes of the valid ones
    before it. :meth:`finish` gives the same batch as :func:`validate_block`.
    """

    def __init__(
        self, block: Block, state: CommittedState, membership: Membership, rules: AppRules
    ) -> None:
        self.block = block
        self._membership = membership
        self._rules = rules
        self._overlay = _Overlay(state)
        self._seen = state.committed_among([tx.tx_id for tx in block.transactions])
        self._codes: list[TxCode] = []
        self._writes: list[StateWrite] = []
        self._events: list[BlockEvent] = []
        self._time = datetime.fromtimestamp(block.header.timestamp_ms / 1000, UTC)
        self._stored = state.stored_bytes()

    def step(self, count: int) -> bool:
        """Validate up to ``count`` more transactions; False once all are done."""
        txs = self.block.transactions
        for _ in range(count):
            index = len(self._codes)
            if index == len(txs):
                return False
            self._codes.append(self._validate(index, txs[index]))
        return len(self._codes) < len(txs)

    def _validate(self, index: int, tx: Transaction) -> TxCode:
        code = _validate_tx(
            tx, self._overlay, self._membership, self._rules, self._seen, self._time
        )
        number = self.block.header.number
        if code is TxCode.VALID:
            code, tx_writes = _compute_writes(tx, self._overlay, Version(number, index))
            size = len(tx.encode())
            limit = self._rules.storage_limit
            if code is TxCode.VALID and limit is not None and self._stored + size > limit:
                code = TxCode.STORAGE_QUOTA_EXCEEDED
            if code is TxCode.VALID:
                self._stored += size
                for write in tx_writes:
                    self._overlay.put(write)
                self._writes.extend(tx_writes)
                self._events.extend(
                    BlockEvent(number, index, i, tx.tx_id, e.contract, e.name, e.payload)
                    for i, e in enumerate(tx.result.events)
                )
        self._seen.add(tx.tx_id)
        return code

    def finish(self) -> CommitBatch:
        if len(self._codes) != len(self.block.transactions):
            raise ValueError("finish() before every transaction was validated")
        root = compute_result_root(self._codes, self._writes)
        return CommitBatch(
            self.block,
            tuple(self._codes),
            tuple(self._writes),
            tuple(self._events),
            root,
            self._stored,
        )


def compute_result_root(codes: Collection[TxCode], writes: Collection[StateWrite]) -> Digest:
    """Digest of a block's verdicts and state writes (carried by the next header)."""
    return compute_digest(
        codec.encode(
            {
                "codes": [int(c) for c in codes],
                "writes": [
                    [w.ns, w.key, w.version.to_list(), None if w.delete else w.value, w.delete]
                    for w in writes
                ],
            }
        )
    )


def _validate_tx(
    tx: Transaction,
    overlay: _Overlay,
    membership: Membership,
    rules: AppRules,
    seen: set[str],
    when: datetime,
) -> TxCode:
    proposal = tx.proposal
    if proposal.network != rules.network or proposal.app != rules.app:
        return TxCode.BAD_PROPOSAL
    if not rules.active:
        return TxCode.APP_NOT_ACTIVE
    if tx.tx_id in seen:
        return TxCode.DUPLICATE_TXID
    creator = _identity(membership, proposal.creator, when)
    if creator is None or creator.org not in rules.members or not rules.is_usable(creator):
        return TxCode.BAD_CREATOR_CERTIFICATE
    message = tx.signed_proposal.signed_message()
    if message is None or not verify_cached(
        creator.suite, creator.public_key, message, tx.signed_proposal.signature
    ):
        return TxCode.BAD_CREATOR_SIGNATURE
    endorsing = _endorsing_orgs(tx, membership, rules, when)
    if endorsing is None:
        return TxCode.BAD_ENDORSEMENT
    code = _check_definitions(tx, overlay, rules, endorsing)
    if code is not TxCode.VALID:
        return code
    code = _check_reads(tx.result.rwsets, overlay)
    if code is not TxCode.VALID:
        return code
    return _check_system_call(tx, overlay, rules, creator)


class _ReplayState:
    """Committed state plus the block's earlier writes, as a system contract reads it
    (point reads only: their transactions need no more)."""

    def __init__(self, overlay: _Overlay) -> None:
        self._overlay = overlay

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None:
        return self._overlay.get(ns, key)

    def get_range(self, *args: Any) -> Any:
        raise NotImplementedError("system transactions are re-run with point reads only")

    query = get_history = get_range


def _check_system_call(
    tx: Transaction, overlay: _Overlay, rules: AppRules, creator: Identity
) -> TxCode:
    """Step 11: system namespaces are written only by their contract, as re-run here."""
    invoked = tx.proposal.contract
    written = {rw.namespace for rw in tx.result.rwsets if rw.writes or rw.deltas}
    if any(ns.startswith("_") and ns != invoked for ns in written):
        return TxCode.SYSTEM_CONTRACT_MISMATCH
    if not invoked.startswith("_") or rules.system is None:
        return TxCode.VALID
    factory = rules.system.get(invoked)
    if factory is None:
        return TxCode.SYSTEM_CONTRACT_MISMATCH
    replayed = _replay(factory(), tx, overlay, rules, creator)
    if replayed is None or compute_endorsement_payload(
        tx.tx_id, replayed
    ) != compute_endorsement_payload(tx.tx_id, tx.result):
        return TxCode.SYSTEM_CONTRACT_MISMATCH
    return TxCode.VALID


def _replay(
    contract: Any, tx: Transaction, overlay: _Overlay, rules: AppRules, creator: Identity
) -> TxResult | None:
    """The result of re-running the system call of ``tx`` here (None if it fails)."""
    proposal = tx.proposal
    method = getattr(contract, proposal.function, None)
    if method is None or proposal.function.startswith("_") or get_kind(method) != "transaction":
        return None
    caller = CallerIdentity.of(creator)
    sim = Simulation(
        _ReplayState(overlay),
        app=rules.app,
        tx_id=tx.tx_id,
        timestamp_ms=proposal.timestamp_ms,
        caller=caller,
    )
    try:
        response = method(sim.context(proposal.contract), *proposal.args)
        return sim.result(response, f"{proposal.contract}@0")
    except Exception:  # any failure of the re-run is a mismatch
        return None


def _identity(membership: Membership, cert: bytes, when: datetime) -> Identity | None:
    try:
        return membership.validate(cert, now=when)
    except CertificateError:
        return None


def _endorsing_orgs(
    tx: Transaction, membership: Membership, rules: AppRules, when: datetime
) -> set[str] | None:
    if not tx.endorsements:
        return None
    orgs: set[str] = set()  # the proposal's network is the app's (checked before)
    for endorsement, message in zip(tx.endorsements, tx.endorsement_messages(), strict=True):
        node = _identity(membership, endorsement.endorser, when)
        if node is None or not rules.is_endorser(node) or not rules.is_usable(node):
            return None
        if message is None or not verify_cached(
            node.suite, node.public_key, message, endorsement.signature
        ):
            return None
        orgs.add(node.org)
    return orgs


def compute_signature_checks(
    tx: Transaction, membership: Membership, when: datetime
) -> list[tuple[str, bytes, bytes, bytes]]:
    """The signature checks validation will make for ``tx``: (suite, key, message, sig).

    Running them early with :func:`verify_cached` (on other threads, as transactions
    arrive) leaves validation with cache hits; identities that do not validate and
    impossible batch proofs are skipped here and judged by validation itself.
    Transactions of one signed batch yield the same check: callers drop repeats.
    """
    checks = []
    creator = _identity(membership, tx.proposal.creator, when)
    message = tx.signed_proposal.signed_message()
    if creator is not None and message is not None:
        checks.append((creator.suite, creator.public_key, message, tx.signed_proposal.signature))
    for endorsement, message in zip(tx.endorsements, tx.endorsement_messages(), strict=True):
        node = _identity(membership, endorsement.endorser, when)
        if node is not None and message is not None:
            checks.append((node.suite, node.public_key, message, endorsement.signature))
    return checks


def get_governing_definition(
    ns: str, rules: AppRules, get_definition: Callable[[str], ContractDefinition | None]
) -> tuple[Policy, str] | None:
    """(endorsement policy, version label) that govern namespace ``ns``; None if unknown."""
    if ns.startswith("_"):
        return (rules.system_policy, f"{ns}@0") if ns in rules.system_contracts else None
    definition = get_definition(ns)
    return None if definition is None else (definition.policy, definition.label)


def _check_definitions(
    tx: Transaction, overlay: _Overlay, rules: AppRules, endorsing: set[str]
) -> TxCode:
    """Every contract the endorsers ran is still at that version; policies are met.

    ``contract_version`` lists ``name@sequence`` of every contract executed (the
    invoked one and those it called), so an upgrade of any of them between
    simulation and commit invalidates the transaction.
    """
    ran = set(tx.result.contract_version.split(",")) if tx.result.contract_version else set()
    if not all(_LABEL_RE.match(label) for label in ran):
        return TxCode.CONTRACT_VERSION_MISMATCH
    namespaces = {rw.namespace for rw in tx.result.rwsets} | {tx.proposal.contract}
    executed = {label.rpartition("@")[0] for label in ran}
    for ns in sorted(namespaces | executed):
        governing = get_governing_definition(ns, rules, overlay.get_definition)
        if governing is None:
            return TxCode.UNKNOWN_CONTRACT
        policy, label = governing
        if label not in ran:
            return TxCode.CONTRACT_VERSION_MISMATCH
        if ns in namespaces and not policy.is_satisfied(endorsing, rules.endorsing_orgs):
            return TxCode.ENDORSEMENT_POLICY_FAILURE
    return TxCode.VALID


def _check_reads(rwsets: tuple[NsRWSet, ...], overlay: _Overlay) -> TxCode:
    for rw in rwsets:
        for read in rw.reads:
            found = overlay.get(rw.namespace, read.key)
            if (found[1] if found else None) != read.version:
                return TxCode.MVCC_READ_CONFLICT
        for rng in rw.range_reads:
            if not _range_unchanged(rw.namespace, rng, overlay):
                return TxCode.PHANTOM_READ_CONFLICT
    return TxCode.VALID


def _range_unchanged(ns: str, rng: RangeRead, overlay: _Overlay) -> bool:
    limit = len(rng.reads) + (1 if rng.exhausted else 0)
    now = overlay.get_range(ns, rng.start, rng.end, max(limit, 1))
    if not rng.exhausted:
        now = now[: len(rng.reads)]
    return now == [(r.key, r.version) for r in rng.reads]


def _compute_writes(
    tx: Transaction, overlay: _Overlay, version: Version
) -> tuple[TxCode, list[StateWrite]]:
    writes: list[StateWrite] = []
    for rw in tx.result.rwsets:
        for w in rw.writes:
            writes.append(StateWrite(rw.namespace, w.key, w.value, w.delete, version, tx.tx_id))
        for d in rw.deltas:
            found = overlay.get(rw.namespace, d.key)
            current = 0 if found is None else found[0]
            if not isinstance(current, int) or isinstance(current, bool):
                return TxCode.INVALID_DELTA, []
            total = current + d.delta
            if not -(2**63) <= total < 2**63:
                return TxCode.INVALID_DELTA, []
            writes.append(StateWrite(rw.namespace, d.key, total, False, version, tx.tx_id))
    return TxCode.VALID, writes
