"""A deterministic simulator for the consensus core.

Everything is driven by one seeded ``random.Random`` and a virtual clock: message
delays, losses, duplicates and reorderings; partitions that heal; crashes and
restarts (a restarted replica gets back only what it persisted: its ledger and its
safety state); and Byzantine replicas. Before ``gst_ms`` (global stabilisation time)
the network is hostile; after it every message between live honest replicas arrives
within ``stable_delay_ms``. A run returns a :class:`Report`; :func:`check_safety` and
:func:`check_liveness` turn it into assertions. The same seed always gives the same
run, so a failing seed printed by a test replays exactly.

Each simulated node runs the same driver logic as production in miniature: a
:class:`~meridian.node.mempool.Mempool` with forwarding, blocks built from it on
``Output.propose``, decided blocks applied after a short delay, sync served from
the ledger, and the safety state persisted before messages leave. As production
(:mod:`meridian.node.ordering`) it can send every proposal compact (the block's
transactions by hash, rebuilt from the receiver's mempool or fetched from the sender
with ``TxRequest``: ``Scenario.compact``), it changes the consenter set when a block
holding a configuration transaction is applied (``Scenario.reconfigure``; a node out
of the set follows by sync), and every node says its height now and then
(``Scenario.status_every_ms``).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field
from typing import Any

from meridian.consensus.core import (
    ChainTip,
    Consenters,
    Output,
    Replica,
    SafetyState,
    Timing,
    check_commit_certificate,
)
from meridian.consensus.messages import (
    CompactProposal,
    Message,
    Phase,
    ProposalMsg,
    QuorumCert,
    Status,
    SyncRequest,
    SyncResponse,
    TimeoutMsg,
    TxForward,
    TxRequest,
    Vote,
    compute_proposal_digest,
    compute_vote_digest,
    decode_message,
    encode_message,
)
from meridian.crypto.hashing import Digest
from meridian.crypto.suites import ED25519, Ed25519Signer
from meridian.errors import MeridianError
from meridian.ledger.merkle import compute_root
from meridian.node.mempool import Mempool
from meridian.node.ordering import MAX_INCOMPLETE
from meridian.types import (
    ZERO_DIGEST,
    Block,
    BlockHeader,
    Proposal,
    SignedProposal,
    Transaction,
    TxResult,
    compute_tx_hash,
)

NETWORK = "simnet"
APP = "simapp"
BYZANTINE_KINDS = (
    "silent",
    "equivocate",
    "double_vote",
    "bad_signature",
    "forge_certificate",
    "replay",
    "garbage",
)
# Drawn separately by Scenario.random (see there): sends its own proposals whole, with
# a transaction only it holds (test_whole_byzantine_proposal_then_compact_reproposal...).
EXTRA_BYZANTINE_KINDS = ("full_proposal",)
_CREATOR = b"\x30" * 40  # the core never reads transactions' contents


def make_tx(i: int, seed: int) -> Transaction:
    proposal = Proposal(
        NETWORK, APP, "asset", "create", (f"a{seed}-{i}",), i.to_bytes(8, "big"), 1, _CREATOR
    )
    result = TxResult(None, (), (), "asset@1")
    return Transaction(SignedProposal(proposal, b"s"), result, ())


def make_config_tx(k: int, seed: int, ids: tuple[str, ...]) -> Transaction:
    """A configuration transaction: from the block after the one holding it, ``ids``
    are the consenters (the simulator keeps a side table tx id -> set, standing for
    the committed ``_lifecycle`` state production reads)."""
    proposal = Proposal(
        NETWORK,
        APP,
        "_lifecycle",
        "set_consenters",
        (f"c{seed}-{k}", *ids),
        b"config-%d" % k,
        1,
        _CREATOR,
    )
    return Transaction(SignedProposal(proposal, b"s"), TxResult(None, (), (), "lc@1"), ())


def compute_consenter_ids(
    ledger: list[Block], configs: dict[str, tuple[str, ...]], initial: tuple[str, ...]
) -> list[tuple[str, ...]]:
    """The consenters of each height ``0 .. len(ledger)`` (the last one orders the next
    block): a configuration transaction counts once, the first time it is committed."""
    ids = tuple(sorted(initial))
    sets = [ids]
    seen: set[str] = set()
    for block in ledger:
        for tx in block.transactions:
            if tx.tx_id in seen:
                continue
            seen.add(tx.tx_id)
            if tx.tx_id in configs:
                ids = tuple(sorted(configs[tx.tx_id]))
        sets.append(ids)
    return sets


@dataclass
class Scenario:
    seed: int
    n: int = 4
    byzantine: dict[str, str] = field(default_factory=dict)  # node id -> behaviour
    gst_ms: int = 4_000
    end_ms: int = 40_000
    loss: float = 0.1
    duplicate: float = 0.05
    max_delay_ms: int = 400  # before GST
    stable_delay_ms: int = 15  # after GST
    txs: int = 24
    crashes: list[tuple[str, int, int]] = field(default_factory=list)  # node, down, up
    partitions: list[tuple[int, int, frozenset[str]]] = field(default_factory=list)
    diverge: str | None = None  # a node whose execution results differ from the others
    wire: bool = True  # send every message through the wire codec
    max_block_txs: int = 8
    compact: bool = False  # proposals travel as CompactProposal (as in production)
    # (virtual time, new consenter set): a configuration transaction submitted then
    reconfigure: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    status_every_ms: int = 1_000  # each node's Status + re-forward (production: 2 s); 0: off
    submit_to: str | None = None  # every transaction to this node (default: a random one)
    drops: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, src, dst): lost

    @classmethod
    def random(cls, seed: int, *, byzantine: bool = True) -> Scenario:
        rng = random.Random(seed * 7919 + 1)
        n = rng.choice([1, 3, 4, 4, 4, 5, 7])
        ids = [f"n{i}" for i in range(n)]
        f = (n - 1) // 3
        scenario = cls(seed, n=n, loss=rng.choice([0.0, 0.05, 0.2]), txs=rng.randint(5, 30))
        scenario.duplicate = rng.choice([0.0, 0.1])
        scenario.max_delay_ms = rng.choice([50, 400, 1500])
        bad = rng.sample(ids, rng.randint(0, f)) if byzantine else []
        scenario.byzantine = {b: rng.choice(BYZANTINE_KINDS) for b in bad}
        honest = [i for i in ids if i not in bad]
        for _ in range(rng.randint(0, 2)):
            victim = rng.choice(honest)
            down = rng.randint(0, scenario.gst_ms - 500)
            scenario.crashes.append((victim, down, rng.randint(down + 1, scenario.gst_ms)))
        if n > 1 and rng.random() < 0.5:
            side = frozenset(rng.sample(ids, rng.randint(1, n - 1)))
            start = rng.randint(0, scenario.gst_ms // 2)
            scenario.partitions.append((start, rng.randint(start, scenario.gst_ms), side))
        scenario.compact = rng.random() < 0.5
        if n >= 4 and rng.random() < 1 / 3:
            # Remove one node (and maybe add it back): the smaller set must still have at
            # most f of its own Byzantine members; every honest node is up after GST.
            f_new = (n - 2) // 3
            fits = [v for v in ids if len([b for b in bad if b != v]) <= f_new]
            victim = rng.choice(fits)
            out = rng.randint(0, scenario.gst_ms + 1_500)
            scenario.reconfigure.append((out, tuple(i for i in ids if i != victim)))
            if rng.random() < 0.5:
                scenario.reconfigure.append(
                    (rng.randint(out + 1, scenario.gst_ms + 2_000), tuple(ids))
                )
        # Drawn apart, so that the draws above (and the pinned seeds) stay as they were.
        extra = random.Random(seed * 104_729 + 3)
        tamperers = [b for b, kind in scenario.byzantine.items() if kind != "silent"]
        if tamperers and extra.random() < 0.25:
            scenario.byzantine[tamperers[0]] = extra.choice(EXTRA_BYZANTINE_KINDS)
        return scenario

    def describe(self) -> str:
        return (
            f"seed={self.seed} n={self.n} byzantine={self.byzantine} loss={self.loss} "
            f"dup={self.duplicate} delay={self.max_delay_ms} crashes={self.crashes} "
            f"partitions={[(a, b, sorted(s)) for a, b, s in self.partitions]} "
            f"compact={self.compact} reconfigure={self.reconfigure}"
            + (f" submit_to={self.submit_to}" if self.submit_to else "")
            + (f" drops={self.drops}" if self.drops else "")
            + (f" status_every_ms={self.status_every_ms}" if self.status_every_ms != 1_000 else "")
        )


@dataclass
class Report:
    scenario: Scenario
    ledgers: dict[str, list[Block]]
    certificates: dict[str, list[QuorumCert]]
    submitted: dict[str, int]  # tx id -> submit time
    honest: list[str]
    halted: dict[str, str | None]
    rejected: dict[str, int]
    decided_at: dict[str, int]  # tx id -> first commit time (virtual ms)
    keys: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # every node's key
    configs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # config tx -> set
    views: dict[str, tuple[str, ...]] = field(default_factory=dict)  # replicas' consenters
    stats: dict[str, int] = field(default_factory=dict)  # "what" and "what@node" counts
    restarts: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)


class SimNode:
    """One replica and its miniature driver."""

    def __init__(self, sim: Simulator, node_id: str, signer: Ed25519Signer) -> None:
        self.sim = sim
        self.id = node_id
        self.signer = signer
        self.ledger: list[Block] = []
        self.certs: list[QuorumCert] = []
        self.roots: list[Digest] = []
        self.committed: set[str] = set()  # tx ids in the ledger (derived from it)
        self.disk_safety: SafetyState | None = None
        self.disk_block: Block | None = None
        self.mempool = Mempool(max_txs=10_000, max_bytes=1 << 30)
        self.pending_disk: dict[str, Transaction] = {}  # acknowledged: survives a crash
        self.incomplete: list[tuple[str, CompactProposal]] = []  # waiting for txs
        self.up = True
        self.epoch = 0  # bumped on crash: stale timers and deliveries are ignored
        self.replica = self._new_replica()

    def tip(self) -> ChainTip:
        if not self.ledger:
            return ChainTip(0, ZERO_DIGEST, ZERO_DIGEST, 0, "")
        header = self.ledger[-1].header
        return ChainTip(
            len(self.ledger), header.hash, self.roots[-1], header.timestamp_ms, header.proposer
        )

    def _new_replica(self) -> Replica:
        # As production reads the set from committed state: recomputed from the ledger.
        ids = compute_consenter_ids(self.ledger, self.sim.configs, self.sim.initial_ids)[-1]
        return Replica(
            network=NETWORK,
            app=APP,
            me=self.id,
            signer=self.signer,
            consenters=self.sim.consenters_of(ids),
            tip=self.tip(),
            safety=self.disk_safety,
            voted_block=self.disk_block,
            timing=self.sim.timing,
            now_ms=self.sim.now,
        )

    def others(self) -> list[str]:
        """Where the replica's broadcasts and forwarded transactions go: the other
        consenters (as production's ``Orderer._others``)."""
        keys = self.replica.consenters.keys
        return [p for p in self.sim.nodes if p != self.id and p in keys]

    def broadcast(self, msg: Any) -> None:
        self.sim.multicast(self, self.others(), msg)

    # ------------------------------------------------------------------ events

    def crash(self) -> None:
        self.up = False
        self.epoch += 1
        self.mempool = Mempool(max_txs=10_000, max_bytes=1 << 30)  # memory is lost
        self.incomplete = []

    def restart(self) -> None:
        self.up = True
        self.replica = self._new_replica()
        self.sim.restarts.append((self.id, self.sim.now, self.replica.consenters.ids))
        voted, added = self.disk_block, []
        if self.sim.scenario.compact and voted and voted.header.number == len(self.ledger):
            # not committed yet: peers may ask for its transactions (as production)
            fresh = [tx for tx in voted.transactions if tx.tx_id not in self.committed]
            added = self.mempool.add(fresh, self.sim.now, own=False)
        redo = [tx for tx in self.pending_disk.values() if tx.tx_id not in self.committed]
        self.mempool.add(redo, self.sim.now, own=True)
        self.process(self.replica.on_pending(bool(redo or added), self.sim.now))
        self.broadcast_status()

    def broadcast_status(self) -> None:
        self.sim.broadcast(self, Status(APP, len(self.ledger)))

    def housekeeping(self) -> None:
        """Production's ``Orderer._housekeeping``: re-forward own transactions still
        waiting, and tell every node this one's height."""
        due = self.mempool.due_for_forward(self.sim.now, 1_000)
        if due:
            self.broadcast(TxForward(APP, tuple(due)))
        self.broadcast_status()

    def submit(self, tx: Transaction) -> None:
        self.pending_disk[tx.tx_id] = tx
        added = self.mempool.add([tx], self.sim.now, own=True)
        if added:
            self.broadcast(TxForward(APP, tuple(added)))
        self.process(self.replica.on_pending(True, self.sim.now))

    def receive(self, sender: str, msg: Message) -> None:
        now = self.sim.now
        if isinstance(msg, TxForward):
            fresh = [tx for tx in msg.transactions if tx.tx_id not in self.committed]
            needed = {h for _, m in self.incomplete for h in m.tx_hashes}
            if self.mempool.add(fresh, now, own=False, needed=needed):
                self.process(self.replica.on_pending(True, now))
                self.retry_incomplete()
        elif isinstance(msg, CompactProposal):
            self.on_compact(sender, msg)
        elif isinstance(msg, TxRequest):
            found = self.lookup(msg.tx_hashes)
            if found:
                self.sim.count("tx_served", self.id)
                self.sim.send(self, sender, TxForward(APP, tuple(found)))
        elif isinstance(msg, SyncRequest):
            self.serve(sender, msg.from_height)
        elif isinstance(msg, SyncResponse):
            self.sim.count("synced", self.id)
            self.process(self.replica.on_synced(sender, msg, now))
        else:
            self.process(self.replica.on_message(sender, msg, now))
            accepted = isinstance(msg, ProposalMsg) and self.replica.holds_block(
                msg.block.header.hash
            )
            if accepted:  # production's Orderer._keep_transactions
                fresh = [tx for tx in msg.block.transactions if tx.tx_id not in self.committed]
                needed = {compute_tx_hash(tx) for tx in fresh}
                if self.mempool.add(fresh, now, own=False, needed=needed):
                    self.process(self.replica.on_pending(True, now))

    def lookup(self, hashes: tuple[Digest, ...]) -> list[Transaction]:
        found, _ = self.mempool.find(hashes)
        return found

    def on_compact(self, sender: str, msg: CompactProposal, retry: bool = False) -> None:
        """Production's ``Orderer._on_compact``: rebuild from the mempool, or ask the
        sender for what is missing (retried as transactions arrive)."""
        found, missing = self.mempool.find(msg.tx_hashes)
        if not missing:
            if retry:
                self.sim.count("compact_completed", self.id)
            self.process(self.replica.on_message(sender, msg.expand(found), self.sim.now))
            return
        current = [(s, m) for s, m in self.incomplete if m.height >= self.replica.height]
        self.incomplete = [*current[-MAX_INCOMPLETE + 1 :], (sender, msg)]
        if not retry:  # asked once; retried here as transactions arrive
            self.sim.count("tx_request", self.id)
            self.sim.send(self, sender, TxRequest(APP, tuple(missing)))

    def retry_incomplete(self) -> None:
        waiting, self.incomplete = self.incomplete, []
        for sender, msg in waiting:
            if msg.height >= self.replica.height:
                self.on_compact(sender, msg, retry=True)

    def serve(self, peer: str, from_height: int) -> None:
        blocks = tuple(
            zip(
                self.ledger[from_height : from_height + 16],
                self.certs[from_height : from_height + 16],
                strict=True,
            )
        )
        if blocks:
            self.sim.send(self, peer, SyncResponse(APP, blocks))

    def tick(self, epoch: int) -> None:
        if epoch != self.epoch or not self.up:
            return
        now = self.sim.now
        due = self.mempool.due_for_forward(now, 1_000)
        if due:
            self.broadcast(TxForward(APP, tuple(due)))
        self.process(self.replica.on_tick(now))

    def process(self, out: Output) -> None:
        """The driver's contract: persist first, then send, then apply and propose."""
        if out.persist is not None:
            self.disk_safety = out.persist
        if out.persist_block is not None:
            self.disk_block = out.persist_block
        for dest, msg in out.send:
            if self.sim.scenario.compact and isinstance(msg, ProposalMsg):
                msg = CompactProposal.of(msg)  # peers hold the transactions already
                self.sim.count("compact_sent")
            if dest is None:
                self.broadcast(msg)
            else:
                self.sim.send(self, dest, msg)
        for reason in out.rejected:
            self.sim.rejected[reason] = self.sim.rejected.get(reason, 0) + 1
        for peer, height in out.sync:
            self.sim.send(self, peer, SyncRequest(APP, height))
        for peer, height in out.serve:
            self.serve(peer, height)
        for block, qc in out.commits:
            self.sim.schedule(self.sim.rng.randint(1, 5), "apply", self.id, (self.epoch, block, qc))
        if out.propose is not None:
            self.sim.schedule(
                self.sim.rng.randint(0, 3), "payload", self.id, (self.epoch, out.propose)
            )
        if out.timer_ms is not None:
            self.sim.schedule(max(1, out.timer_ms - self.sim.now), "tick", self.id, self.epoch)

    def apply(self, epoch: int, block: Block, qc: QuorumCert) -> None:
        if epoch != self.epoch or not self.up or block.header.number != len(self.ledger):
            return
        previous = self.roots[-1] if self.roots else ZERO_DIGEST
        salt = b"diverged" if self.sim.scenario.diverge == self.id else b""
        root = Digest(hashlib.sha256(previous + block.header.hash + salt).digest())
        self.ledger.append(block)
        self.certs.append(qc)
        self.roots.append(root)
        changed: tuple[str, ...] | None = None
        for tx in block.transactions:
            self.sim.decided_at.setdefault(tx.tx_id, self.sim.now)
            if tx.tx_id not in self.committed:  # a duplicate is not executed again
                self.committed.add(tx.tx_id)
                changed = self.sim.configs.get(tx.tx_id, changed)
        self.mempool.remove(tx.tx_id for tx in block.transactions)
        self.process(self.replica.on_pending(len(self.mempool) > 0, self.sim.now))
        consenters = None
        if changed is not None and tuple(sorted(changed)) != self.replica.consenters.ids:
            consenters = self.sim.consenters_of(changed)
            self.sim.count("reconfigured", self.id)
        self.process(self.replica.on_applied(self.tip(), self.sim.now, consenters))
        keys = self.replica.consenters.keys
        for follower in self.sim.nodes:
            if follower != self.id and follower not in keys:
                self.sim.send(self, follower, Status(APP, len(self.ledger)))  # it syncs

    def build_payload(self, epoch: int, height_round: tuple[int, int]) -> None:
        if epoch != self.epoch or not self.up:
            return
        tip = self.tip()
        if height_round[0] != tip.height:
            return
        txs = self.mempool.take(self.sim.scenario.max_block_txs, 1 << 30)
        now = self.sim.now + self.sim.clock_skew[self.id]
        block = compute_sim_block(tip, txs, max(now, tip.last_timestamp_ms + 1), self.id)
        self.process(self.replica.on_payload(block, self.sim.now))


def compute_sim_block(tip: ChainTip, txs: list[Transaction], ts: int, proposer: str) -> Block:
    header = BlockHeader(
        network=NETWORK,
        app=APP,
        number=tip.height,
        previous_hash=tip.previous_hash,
        data_hash=compute_root([compute_tx_hash(tx) for tx in txs]),
        last_result_root=tip.last_result_root,
        timestamp_ms=ts,
        tx_count=len(txs),
        proposer=proposer,
    )
    return Block(header, tuple(txs))


class ByzantineNode(SimNode):
    """A replica that runs the honest code but tampers with what it sends."""

    def __init__(self, sim: Simulator, node_id: str, signer: Ed25519Signer, kind: str) -> None:
        super().__init__(sim, node_id, signer)
        self.kind = kind
        self.seen: list[Message] = []
        self.made: dict[Digest, Transaction] = {}  # transactions of its twin blocks

    def receive(self, sender: str, msg: Message) -> None:
        if self.kind == "silent":
            return
        replayable = isinstance(msg, Vote | TimeoutMsg | ProposalMsg | CompactProposal)
        if self.kind == "replay" and replayable and len(self.seen) < 500:
            self.seen.append(msg)
        super().receive(sender, msg)

    def process(self, out: Output) -> None:
        if self.kind == "silent":
            return
        sends, out.send = out.send, []
        super().process(out)
        for dest, msg in sends:
            for peer, tampered in self.tamper(msg):
                if dest is None or peer == dest:
                    self.sim.send(self, peer, tampered)

    def peers(self) -> list[str]:
        return [p for p in self.sim.nodes if p != self.id]

    def lookup(self, hashes: tuple[Digest, ...]) -> list[Transaction]:
        """It serves the transactions of its twin blocks too (or peers could not even
        rebuild them, and see no equivocation)."""
        found, missing = self.mempool.find(hashes)
        return found + [self.made[h] for h in missing if h in self.made]

    def tamper(self, msg: Message) -> list[tuple[str, Any]]:
        if self.kind == "full_proposal" and isinstance(msg, ProposalMsg) and msg.justify is None:
            # Its block, plus a transaction only it holds, sent whole (not compact): a
            # consenter accepts a full ProposalMsg, judged without the mempool.
            extra = make_tx(20_000 + self.sim.rng.randint(0, 10**6), 0)
            txs = [*msg.block.transactions, extra]
            block = compute_sim_block(self.tip(), txs, msg.block.header.timestamp_ms, self.id)
            digest = compute_proposal_digest(NETWORK, APP, msg.height, msg.round, block.header.hash)
            sig = self.signer.sign(bytes(digest))
            full = ProposalMsg(APP, msg.round, block, None, msg.tc, self.id, sig)
            return [(p, full) for p in self.peers()]
        out = self._tamper(msg)
        if not self.sim.scenario.compact:
            return out
        return [(p, CompactProposal.of(m) if isinstance(m, ProposalMsg) else m) for p, m in out]

    def _tamper(self, msg: Message) -> list[tuple[str, Any]]:
        rng, peers = self.sim.rng, self.peers()
        out: list[tuple[str, Any]] = [(p, msg) for p in peers]
        if self.kind == "equivocate" and isinstance(msg, ProposalMsg) and msg.justify is None:
            extra = make_tx(10_000 + rng.randint(0, 10**6), 0)
            self.made[compute_tx_hash(extra)] = extra
            other = compute_sim_block(
                self.tip(), [extra], msg.block.header.timestamp_ms + 1, self.id
            )
            digest = compute_proposal_digest(NETWORK, APP, msg.height, msg.round, other.header.hash)
            twin = ProposalMsg(
                APP, msg.round, other, None, msg.tc, self.id, self.signer.sign(bytes(digest))
            )
            half = set(rng.sample(peers, len(peers) // 2))  # these get both, in either order
            out = [(p, twin if p in half else msg) for p in peers]
            out += [(p, msg) for p in peers if p in half]  # not set order: PYTHONHASHSEED
        elif self.kind == "double_vote" and isinstance(msg, Vote):
            fake = Digest(rng.randbytes(32))
            digest = compute_vote_digest(NETWORK, APP, msg.phase, msg.height, msg.round, fake)
            twin = Vote(
                APP,
                msg.phase,
                msg.height,
                msg.round,
                fake,
                self.id,
                self.signer.sign(bytes(digest)),
            )
            out = [(p, twin) for p in peers] + out
        elif self.kind == "bad_signature" and isinstance(msg, Vote | TimeoutMsg | ProposalMsg):
            bad = bytes([msg.signature[0] ^ 1]) + msg.signature[1:]
            out = [(p, _with_signature(msg, bad)) for p in peers]
        elif self.kind == "forge_certificate" and isinstance(msg, Vote):
            forged = QuorumCert(
                APP,
                Phase.COMMIT,
                msg.height,
                msg.round,
                Digest(rng.randbytes(32)),
                ((self.id, b"x" * 64),),
            )
            fake_block = compute_sim_block(self.tip(), [], self.sim.now, self.id)
            digest = compute_proposal_digest(
                NETWORK, APP, msg.height, msg.round + 1, fake_block.header.hash
            )
            forged_prepare = QuorumCert(
                APP,
                Phase.PREPARE,
                msg.height,
                msg.round,
                fake_block.header.hash,
                ((self.id, b"x" * 64),),
            )
            prop = ProposalMsg(
                APP,
                msg.round + 1,
                fake_block,
                forged_prepare,
                None,
                self.id,
                self.signer.sign(bytes(digest)),
            )
            out += [(p, SyncResponse(APP, ((fake_block, forged),))) for p in peers]
            out += [(p, prop) for p in peers]
        elif self.kind == "replay" and self.seen:
            out += [(rng.choice(peers), rng.choice(self.seen)) for _ in range(3)]
        elif self.kind == "garbage":
            out += [(rng.choice(peers), rng.randbytes(rng.randint(0, 200)))]
            out += [(rng.choice(peers), Status("otherapp", 10**9))]
        return out


def _with_signature(msg: Any, sig: bytes) -> Any:
    from dataclasses import replace

    return replace(msg, signature=sig)


class Simulator:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.now = 0
        self._queue: list[tuple[int, int, str, str, Any]] = []
        self._seq = 0
        ids = [f"n{i}" for i in range(scenario.n)]
        signers = {
            i: Ed25519Signer(hashlib.sha256(f"{scenario.seed}/{i}".encode()).digest()) for i in ids
        }
        self.keys = {i: (ED25519, s.public_key_bytes()) for i, s in signers.items()}
        self.initial_ids = tuple(ids)
        self._consenters: dict[tuple[str, ...], Consenters] = {}
        self.consenters = self.consenters_of(self.initial_ids)
        self.configs: dict[str, tuple[str, ...]] = {}  # config tx id -> consenters
        self.stats: dict[str, int] = {}
        self.restarts: list[tuple[str, int, tuple[str, ...]]] = []
        self._busy = 0  # queued events other than the periodic housekeeping
        self.timing = Timing(
            round_timeout_ms=300,
            max_round_timeout_ms=4_000,
            max_clock_skew_ms=500,
            leader_term=8,
            sync_retry_ms=200,
        )
        self.clock_skew = {i: self.rng.randint(-100, 100) for i in ids}
        self.rejected: dict[str, int] = {}
        self.decided_at: dict[str, int] = {}
        self.nodes: dict[str, SimNode] = {}
        for i in ids:
            kind = scenario.byzantine.get(i)
            self.nodes[i] = (
                SimNode(self, i, signers[i])
                if kind is None
                else ByzantineNode(self, i, signers[i], kind)
            )
        self.honest = [i for i in ids if i not in scenario.byzantine]
        self.submitted: dict[str, int] = {}

    # ----------------------------------------------------------------- network

    def consenters_of(self, ids: tuple[str, ...]) -> Consenters:
        key = tuple(sorted(ids))
        found = self._consenters.get(key)
        if found is None:
            found = self._consenters[key] = Consenters({i: self.keys[i] for i in key})
        return found

    def count(self, what: str, node: str | None = None) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1
        if node is not None:
            self.stats[f"{what}@{node}"] = self.stats.get(f"{what}@{node}", 0) + 1

    def schedule(self, delay: int, kind: str, node: str, payload: Any) -> None:
        self._seq += 1
        if kind != "housekeeping":
            self._busy += 1
        heapq.heappush(self._queue, (self.now + delay, self._seq, kind, node, payload))

    def broadcast(self, src: SimNode, msg: Any) -> None:
        """To every other node (a Status: any node that follows the channel)."""
        self.multicast(src, [p for p in self.nodes if p != src.id], msg)

    def multicast(self, src: SimNode, peers: list[str], msg: Any) -> None:
        data = encode_message(msg) if self.scenario.wire and peers else None
        for peer in peers:
            self.send(src, peer, msg, data)

    def _cut(self, a: str, b: str) -> bool:
        for start, end, side in self.scenario.partitions:
            if start <= self.now < end and ((a in side) != (b in side)):
                return True
        return False

    def send(self, src: SimNode, dst: str, msg: Any, data: bytes | None = None) -> None:
        sc = self.scenario
        if sc.drops and (type(msg).__name__, src.id, dst) in sc.drops:
            return
        stable = self.now >= sc.gst_ms
        if not stable and (self.rng.random() < sc.loss or self._cut(src.id, dst)):
            return
        copies = 2 if not stable and self.rng.random() < sc.duplicate else 1
        if data is None:
            data = msg if isinstance(msg, bytes) or not sc.wire else encode_message(msg)
        for _ in range(copies):
            delay = self.rng.randint(1, sc.stable_delay_ms if stable else sc.max_delay_ms)
            self.schedule(delay, "deliver", dst, (src.id, data))

    # -------------------------------------------------------------------- run

    def deliver(self, dst: SimNode, sender: str, data: Any) -> None:
        if not dst.up:
            return
        if isinstance(data, bytes):
            try:
                data = decode_message(data)
            except MeridianError:
                self.rejected["malformed"] = self.rejected.get("malformed", 0) + 1
                return
        if data.app != APP:
            self.rejected["unknown_channel"] = self.rejected.get("unknown_channel", 0) + 1
            return
        dst.receive(sender, data)

    def run(self) -> Report:
        sc = self.scenario
        submit_until = sc.gst_ms + 2_000
        for k in range(sc.txs):
            self.schedule(self.rng.randint(0, submit_until), "submit", "", make_tx(k, sc.seed))
        for k, (at, ids) in enumerate(sc.reconfigure):
            tx = make_config_tx(k, sc.seed, ids)
            self.configs[tx.tx_id] = tuple(sorted(ids))
            self.schedule(at, "submit", "", tx)
        for node, down, up in sc.crashes:
            self.schedule(down, "crash", node, None)
            self.schedule(up, "restart", node, None)
        for k, i in enumerate(self.nodes):
            self.schedule(0, "tick", i, 0)
            self.schedule(sc.gst_ms, "status", i, None)
            if sc.status_every_ms > 0:  # staggered, as independent nodes would be
                first = sc.status_every_ms + k * sc.status_every_ms // len(self.nodes)
                self.schedule(first, "housekeeping", i, None)
        while self._queue:
            at, _, kind, node_id, payload = heapq.heappop(self._queue)
            if at > sc.end_ms:
                break
            self.now = at
            if kind != "housekeeping":
                self._busy -= 1
            elif self._busy == 0 and self._settled():
                break  # nothing left to happen but Status hints nobody needs
            self._dispatch(kind, node_id, payload)
        return Report(
            sc,
            {i: list(n.ledger) for i, n in self.nodes.items()},
            {i: list(n.certs) for i, n in self.nodes.items()},
            self.submitted,
            self.honest,
            {i: n.replica.halted for i, n in self.nodes.items()},
            self.rejected,
            self.decided_at,
            self.keys,
            self.configs,
            {i: n.replica.consenters.ids for i, n in self.nodes.items()},
            self.stats,
            self.restarts,
        )

    def _settled(self) -> bool:
        """Only periodic events are left: honest nodes up, at one height, mempools empty."""
        nodes = [self.nodes[i] for i in self.honest]
        heights = {len(n.ledger) for n in nodes}
        return len(heights) == 1 and all(n.up and not len(n.mempool) for n in nodes)

    def _dispatch(self, kind: str, node_id: str, payload: Any) -> None:
        if kind == "submit":
            up = [i for i in self.honest if self.nodes[i].up]
            if not up:
                self.schedule(100, "submit", "", payload)
                return
            self.submitted[payload.tx_id] = self.now
            target = self.scenario.submit_to
            if target is None or target not in up:
                target = self.rng.choice(up)
            self.nodes[target].submit(payload)
            return
        node = self.nodes[node_id]
        if kind == "deliver":
            self.deliver(node, *payload)
        elif kind == "tick":
            node.tick(payload)
        elif kind == "apply":
            node.apply(*payload)
        elif kind == "payload":
            node.build_payload(*payload)
        elif kind == "crash":
            node.crash()
        elif kind == "restart":
            node.restart()
        elif kind == "status" and node.up:
            node.broadcast_status()
        elif kind == "housekeeping":
            if node.up:
                node.housekeeping()
            self.schedule(self.scenario.status_every_ms, "housekeeping", node_id, None)


# --------------------------------------------------------------------- checks


def check_safety(report: Report) -> None:
    """No two honest replicas committed different blocks at the same height; every
    commit carries a certificate signed by a quorum of the consenters of its height
    (the set the blocks before it configured), and a block proposed by one of them;
    block numbers and links are consistent; each replica's consenters are those its
    ledger configures."""
    honest = [report.ledgers[i] for i in report.honest]
    longest = max(honest, key=len)
    initial = tuple(sorted(report.keys))
    sets = compute_consenter_ids(longest, report.configs, initial) if report.keys else []
    by_ids: dict[tuple[str, ...], Consenters] = {}
    for node_id in report.honest:
        ledger = report.ledgers[node_id]
        for height, block in enumerate(ledger):
            assert block.header.hash == longest[height].header.hash, (
                f"{node_id} committed a different block at height {height}"
            )
            cert = report.certificates[node_id][height]
            assert cert.phase is Phase.COMMIT and cert.block == block.header.hash
            if sets:
                ids = sets[height]
                consenters = by_ids.get(ids)
                if consenters is None:
                    consenters = by_ids[ids] = Consenters({i: report.keys[i] for i in ids})
                reason = check_commit_certificate(NETWORK, consenters, block.header, cert)
                assert reason is None, (
                    f"{node_id}: certificate of height {height} invalid for consenters "
                    f"{ids}: {reason}"
                )
                assert block.header.proposer in ids, (
                    f"{node_id}: block {height} proposed by {block.header.proposer}, "
                    f"not a consenter of {ids}"
                )
            if height:
                assert block.header.previous_hash == ledger[height - 1].header.hash
                assert block.header.timestamp_ms > ledger[height - 1].header.timestamp_ms
        if sets and node_id in report.views:
            assert report.views[node_id] == sets[len(ledger)], (
                f"{node_id} orders height {len(ledger)} with {report.views[node_id]}, "
                f"its ledger configures {sets[len(ledger)]}"
            )


def check_liveness(report: Report) -> None:
    """After the network stabilised, every submitted transaction was committed once on
    every honest replica (followers outside the consenter set included)."""
    for node_id in report.honest:
        assert report.halted[node_id] is None, f"{node_id} halted: {report.halted[node_id]}"
        committed = [tx.tx_id for block in report.ledgers[node_id] for tx in block.transactions]
        missing = set(report.submitted) - set(committed)
        assert not missing, f"{node_id} lacks {len(missing)} of {len(report.submitted)} txs"
        honest_blocks = [
            tx.tx_id
            for block in report.ledgers[node_id]
            if block.header.proposer in report.honest
            for tx in block.transactions
        ]
        assert len(honest_blocks) == len(set(honest_blocks)), f"{node_id}: a tx committed twice"


def run_scenario(scenario: Scenario) -> Report:
    return Simulator(scenario).run()


__all__ = [
    "Report",
    "Scenario",
    "Simulator",
    "SyncResponse",
    "check_liveness",
    "check_safety",
    "compute_consenter_ids",
    "make_config_tx",
    "run_scenario",
]
