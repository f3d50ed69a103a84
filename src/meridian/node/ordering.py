"""Ordering: the asyncio driver of one channel's consensus replica.

:class:`Orderer` is the shell around :class:`meridian.consensus.core.Replica` (the
sans-IO protocol). It owns the channel's :class:`~meridian.node.mempool.Mempool`,
forwards the transactions this node accepted to the other consenters, builds a block
when the replica asks for one (as soon as ``max_txs`` wait, or ``timeout_ms`` after
the build started), persists the safety state *before* sending what the replica says
(so a restarted node never votes twice), applies decided blocks one at a time
through the channel's commit, answers peers' sync requests from the ledger, and
keeps the replica's timer. A single node is the same code with one consenter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import codec
from ..consensus.core import ChainTip, Consenters, Output, Replica, SafetyState, Signer, Timing
from ..consensus.messages import (
    MAX_FORWARD_TXS,
    MAX_SYNC_BLOCKS,
    CompactProposal,
    Message,
    ProposalMsg,
    QuorumCert,
    Status,
    SyncRequest,
    SyncResponse,
    TxForward,
    TxRequest,
    encode_block,
    encode_message,
)
from ..ledger.merkle import compute_root
from ..ledger.store import LedgerStore
from ..network.config import write_file
from ..types import Block, BlockHeader, Transaction, compute_tx_hash
from .mempool import Mempool
from .metrics import NodeMetrics

log = logging.getLogger("meridian.consensus")

MAX_BLOCK_BYTES = 16 * 2**20
MAX_FORWARD_BYTES = 8 * 2**20
MAX_SYNC_BYTES = 16 * 2**20
STATUS_EVERY_S = 2.0
SERVE_EVERY_S = 0.1
MAX_INCOMPLETE = 8  # compact proposals waiting for transactions
MAX_PARKED_PER_SENDER = 2  # proposals waiting for this node's governance height

__all__ = ["ChainTip", "Deliver", "Orderer", "OrderingConfig", "Peers", "SafetyStore"]

Deliver = Callable[[Block, bytes], Awaitable[None]]  # (block, commit certificate)


class Peers(Protocol):
    """The node's links to other nodes (see :mod:`meridian.p2p.transport`)."""

    def send(self, peer: str, payload: bytes) -> bool: ...

    def connected(self) -> list[str]: ...


class NoPeers:
    """The links of a node with no other consenter."""

    def send(self, peer: str, payload: bytes) -> bool:
        return False

    def connected(self) -> list[str]:
        return []


@dataclass(frozen=True, slots=True)
class OrderingConfig:
    max_txs: int = 1000
    timeout_ms: int = 20
    max_block_bytes: int = MAX_BLOCK_BYTES
    mempool_txs: int = 50_000
    mempool_bytes: int = 512 * 2**20
    timing: Timing = field(default_factory=Timing)


class SafetyStore:
    """The replica's safety state, and the block it last voted for, in two files
    (``<app>.safety.json``, ``<app>.voted.json``), each replaced atomically and fsynced."""

    def __init__(self, folder: Path, app: str) -> None:
        self.path = folder / f"{app}.safety.json"
        self.block_path = folder / f"{app}.voted.json"
        for path in (self.path, self.block_path):  # temp files of writes a crash cut
            for leftover in folder.glob(f".{path.name}.*.tmp"):
                leftover.unlink(missing_ok=True)

    def load(self) -> SafetyState | None:
        if not self.path.is_file():
            return None
        return SafetyState.decode(self.path.read_bytes())

    def load_block(self) -> Block | None:
        if not self.block_path.is_file():
            return None
        data = self.block_path.read_bytes()
        doc = codec.decode(
            data, max_bytes=2 * MAX_BLOCK_BYTES, what="block", check_values=False
        )  # Block.from_dict checks each transaction's values from their own roots
        return Block.from_dict(doc)

    def save(self, state: SafetyState) -> None:
        write_file(self.path, state.encode(), secret=True)

    def save_block(self, block: Block) -> None:
        write_file(self.block_path, encode_block(block), secret=True)


def compute_block(
    network: str,
    app: str,
    tip: ChainTip,
    txs: Sequence[Transaction],
    now_ms: int,
    proposer: str,
    config_height: int = 0,
) -> Block:
    """The next block over ``tip`` holding ``txs`` (timestamps strictly increase)."""
    header = BlockHeader(
        network=network,
        app=app,
        number=tip.height,
        previous_hash=tip.previous_hash,
        data_hash=compute_root([compute_tx_hash(tx) for tx in txs]),
        last_result_root=tip.last_result_root,
        timestamp_ms=max(now_ms, tip.last_timestamp_ms + 1),
        tx_count=len(txs),
        proposer=proposer,
        config_height=config_height,
    )
    return Block(header, tuple(txs))


def now_ms() -> int:
    return int(time.time() * 1000)


class Orderer:
    """One channel's consensus replica, driven by asyncio."""

    def __init__(
        self,
        *,
        network: str,
        app: str,
        me: str,
        signer: Signer,
        consenters: Callable[[], Consenters],
        members: Collection[str],
        config: OrderingConfig,
        safety: SafetyStore,
        ledger: LedgerStore,
        peers: Peers | None = None,
        metrics: NodeMetrics | None = None,
        preverify: Callable[[Sequence[Transaction]], None] | None = None,
        config_height: Callable[[], int] | None = None,
        propose_config_height: Callable[[], int] | None = None,
    ) -> None:
        """``consenters()`` gives the consenters of the next height (read again after
        every block); ``config_height()`` the governance height this node has
        committed: the one its proposals name, and the most a proposal may name for
        this node to vote on it now (later ones wait, see :meth:`config_advanced`)."""
        self.network = network
        self.app = app
        self.me = me
        self.signer = signer
        self._get_consenters = consenters
        self.members = frozenset(members)  # the hosting nodes: they may follow the channel
        # members that only follow (the regulators' observer nodes): they never feed the
        # mempool — their gateways refuse writes, and so do the channel's other nodes
        self.observers: frozenset[str] = frozenset()
        self.ledger = ledger
        self.consenters = consenters()
        self._config_height = config_height or (lambda: 0)
        # what this node's proposals name: may hold back a configuration whose new
        # consenters do not have the chain yet (see Node._get_proposal_config_height)
        self._propose_config_height = propose_config_height or self._config_height
        self.reported: dict[str, int] = {}  # peers' heights, as their Status says
        self._parked: dict[str, list[Message]] = {}  # per sender: proposals waiting for
        # governance (a few each, so that no sender can push out another's)
        last = ledger.get_header(ledger.height() - 1) if ledger.height() else None
        self._last_config_height = 0 if last is None else last.config_height
        self._reconfigure_to = 0  # a governance height whose configuration must take over
        self.config = config
        self.safety = safety
        self.peers: Peers = peers or NoPeers()
        self.metrics = metrics or NodeMetrics()
        self._preverify = preverify or (lambda txs: None)
        self.mempool = Mempool(max_txs=config.mempool_txs, max_bytes=config.mempool_bytes)
        self.replica: Replica | None = None
        self.halted: str | None = None
        self._commits: deque[tuple[Block, QuorumCert]] = deque()
        self._wake = asyncio.Event()
        self._timer_ms: int | None = None
        self._building: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._last_status = 0.0
        self._served_at: dict[tuple[str, str], float] = {}
        self._incomplete: list[tuple[str, CompactProposal]] = []
        # Outputs waiting for their safety state to reach the disk (in order; see _process)
        self._outputs: deque[Output] = deque()
        self._persisting: asyncio.Task[None] | None = None
        self._persister: ThreadPoolExecutor | None = None

    @property
    def _others(self) -> list[str]:
        """The other consenters: where transactions and consensus messages go."""
        return [c for c in self.consenters.ids if c != self.me]

    def _consenters_changed(self) -> Consenters | None:
        """The new consenter set if the last committed block changed it."""
        now = self._get_consenters()
        return None if now == self.consenters else now

    # ---------------------------------------------------------------- admission

    def check_room(self, txs: Sequence[Transaction]) -> None:
        """Busy if the mempool cannot take ``txs`` (before they are acknowledged)."""
        self.mempool.check_room(len(txs), sum(len(tx.encode()) for tx in txs))

    def submit(self, txs: Sequence[Transaction]) -> None:
        """Order transactions this node accepted (and made durable)."""
        added = self.mempool.add(txs, now_ms(), own=True)
        self._forward(added)
        self._arrived.set()
        self._after_mempool_change()

    def _forward(self, txs: Sequence[Transaction], to: str | None = None) -> None:
        """Send transactions to every other consenter (or to one), in bounded chunks."""
        if not self._others or not txs:
            return
        chunks: list[list[Transaction]] = [[]]
        size = 0
        for tx in txs:
            n = len(tx.encode())
            if chunks[-1] and (len(chunks[-1]) >= MAX_FORWARD_TXS or size + n > MAX_FORWARD_BYTES):
                chunks.append([])
                size = 0
            chunks[-1].append(tx)
            size += n
        for chunk in chunks:
            msg = TxForward(self.app, tuple(chunk))
            if to is None:
                self._send_all(msg)
            else:
                self._send(to, msg)

    def _on_compact(self, sender: str, msg: CompactProposal, *, retry: bool = False) -> None:
        """Rebuild a compact proposal from the mempool, or ask its sender once for what
        is missing (it is retried here as transactions arrive)."""
        assert self.replica is not None
        found, missing = self.mempool.find(msg.tx_hashes)
        if not missing:
            self._process(self.replica.on_message(sender, msg.expand(found), now_ms()))
            return
        if retry:
            pass  # it was plausible when it arrived
        elif not self.replica.is_plausible_proposal(
            msg.height, msg.round, msg.proposer, msg.header.hash, msg.signature
        ):
            self._count_rejected("implausible_compact_proposal")
            return
        current = [(s, m) for s, m in self._incomplete if m.height >= self.replica.height]
        self._incomplete = [*current[-MAX_INCOMPLETE + 1 :], (sender, msg)]
        if not retry:
            self._send(sender, TxRequest(self.app, tuple(missing)))

    def _retry_incomplete(self) -> None:
        waiting, self._incomplete = self._incomplete, []
        for sender, msg in waiting:
            if self.replica is not None and msg.height >= self.replica.height:
                self._on_compact(sender, msg, retry=True)

    def _after_mempool_change(self) -> None:
        self.metrics.mempool.labels(self.app).set(len(self.mempool))
        if self.replica is not None:
            self._process(self.replica.on_pending(self._has_work(), now_ms()))

    # ---------------------------------------------------------------- messages

    def on_message(self, sender: str, msg: Message) -> None:
        """A message from a peer for this channel (already decoded and bounded)."""
        replica = self.replica
        if replica is None or self.halted:
            return  # not started yet (peers re-send what matters), or stopped for good
        if sender not in self.members and sender not in self.consenters.keys:
            self._count_rejected("not_a_member_node")  # neither hosting nor ordering it
            return
        if isinstance(msg, Status):
            self.reported[sender] = max(self.reported.get(sender, 0), msg.height)
            if self._reconfigure_to > self._last_config_height:  # a successor caught up?
                self._process(replica.on_pending(self._has_work(), now_ms()))
        if isinstance(msg, TxForward) and sender in self.observers:
            self._count_rejected("forwarded_tx_from_observer")
        elif isinstance(msg, TxForward):
            committed = self.ledger.known_tx_ids([tx.tx_id for tx in msg.transactions])
            fresh = [
                tx
                for tx in msg.transactions
                if tx.tx_id not in committed
                and (tx.proposal.network, tx.proposal.app) == (self.network, self.app)
            ]
            if len(fresh) + len(committed) < len(msg.transactions):
                self._count_rejected("forwarded_tx_wrong_channel")
            needed = {h for _, m in self._incomplete for h in m.tx_hashes}
            added = self.mempool.add(fresh, now_ms(), own=False, needed=needed)
            if added:
                self._preverify(added)  # validation of their block then hits the cache
                self._arrived.set()
                self._after_mempool_change()
                self._retry_incomplete()
        elif isinstance(msg, (CompactProposal, ProposalMsg)) and self._is_parked(sender, msg):
            return
        elif isinstance(msg, CompactProposal):
            self._on_compact(sender, msg)
        elif isinstance(msg, TxRequest):
            if self._too_soon(sender, "tx_request"):
                return
            found, _ = self.mempool.find(msg.tx_hashes)
            self._forward(found, to=sender)
        elif isinstance(msg, SyncRequest):
            self._serve(sender, msg.from_height)
        elif isinstance(msg, SyncResponse):
            self._process(replica.on_synced(sender, msg, now_ms()))
        else:
            self._process(replica.on_message(sender, msg, now_ms()))
            if isinstance(msg, ProposalMsg) and replica.holds_block(msg.block.header.hash):
                # a whole block the replica accepted (honest leaders send compact ones):
                # its transactions must be servable, and re-proposable, from the pool
                self._keep_transactions(msg.block)

    def _is_parked(self, sender: str, msg: CompactProposal | ProposalMsg) -> bool:
        """Hold a proposal that names a governance height this node has not committed
        yet: it can't check that block's configuration (bounded; see config_advanced)."""
        header = msg.header if isinstance(msg, CompactProposal) else msg.block.header
        if header.config_height < self._last_config_height:
            self._count_rejected("config_height_regressed")  # never an older configuration
            return True
        if header.config_height <= self._config_height():
            return False
        if sender in self.consenters.keys:
            held = self._parked.setdefault(sender, [])
            self._parked[sender] = [*held[-MAX_PARKED_PER_SENDER + 1 :], msg]
        return True

    @property
    def last_config_height(self) -> int:
        """The configuration height of the last block applied here."""
        return self._last_config_height

    def _has_work(self) -> bool:
        """Transactions to order, or a configuration change to hand over to: then even
        an empty block is worth proposing (it moves the chain to the new configuration,
        e.g. new consenters, which otherwise would wait for the next transaction)."""
        if len(self.mempool):
            return True
        return self._last_config_height < self._reconfigure_to <= self._propose_config_height()

    def request_reconfiguration(self, config_height: int) -> None:
        """The configuration at ``config_height`` changes this channel (its hosting
        nodes): order a block under it soon, even without transactions."""
        self._reconfigure_to = max(self._reconfigure_to, config_height)
        if self.replica is not None and not self.halted:
            self._process(self.replica.on_pending(self._has_work(), now_ms()))

    def config_advanced(self) -> None:
        """This node committed more governance blocks: look at parked proposals again."""
        parked, self._parked = self._parked, {}
        for sender, messages in parked.items():
            for msg in messages:
                self.on_message(sender, msg)

    def _keep_transactions(self, block: Block) -> None:
        """Hold a proposed block's transactions in the pool (even a full one): this node
        may have to re-propose the block, or answer peers' requests for them."""
        txs = block.transactions
        done = self.ledger.known_tx_ids([tx.tx_id for tx in txs])
        fresh = [tx for tx in txs if tx.tx_id not in done]
        hashes = {compute_tx_hash(tx) for tx in fresh}
        if self.mempool.add(fresh, now_ms(), own=False, needed=hashes):
            self._after_mempool_change()

    def _send(self, peer: str, msg: Message) -> None:
        self.peers.send(peer, encode_message(msg))

    def _send_all(self, msg: Message) -> None:
        if isinstance(msg, ProposalMsg):
            msg = CompactProposal.of(msg)  # peers hold the transactions already
        data = encode_message(msg)
        for peer in self._others:
            self.peers.send(peer, data)

    def _serve(self, peer: str, from_height: int) -> None:
        """Send a peer the committed blocks it lacks, with their certificates."""
        if self._too_soon(peer, "sync_request"):
            return
        blocks: list[tuple[Block, QuorumCert]] = []
        size = 0
        for number in range(from_height, from_height + MAX_SYNC_BLOCKS):
            block = self.ledger.get_block(number)
            cert = self.ledger.get_certificate(number)
            if block is None or not cert:
                break
            size += len(encode_block(block))
            if blocks and size > MAX_SYNC_BYTES:
                break
            blocks.append((block, QuorumCert.decode(cert)))
        if blocks:
            self._send(peer, SyncResponse(self.app, tuple(blocks)))

    def _too_soon(self, peer: str, kind: str) -> bool:
        """True (counted) if ``peer`` asked for ``kind`` less than SERVE_EVERY_S ago:
        a peer cannot make this node read and send data in a loop."""
        now = time.monotonic()
        if now - self._served_at.get((peer, kind), -SERVE_EVERY_S) < SERVE_EVERY_S:
            self._count_rejected(f"{kind}_too_soon")
            return True
        self._served_at[(peer, kind)] = now
        return False

    def _count_rejected(self, reason: str) -> None:
        self.metrics.rejected.labels(self.app, reason).inc()

    # ------------------------------------------------------------------ driving

    def _process(self, out: Output) -> None:
        """Carry out what the replica asked: persist first, then send.

        The safety state and the voted block are written (fsync) on a thread of their
        own, so that the event loop goes on serving everything else meanwhile; the rest
        of that output — and of every output after it, in order — is carried out only
        once the write is done. So nothing leaves before the state it depends on is on
        disk, and the disk always holds a prefix of the replica's history.
        """
        if self.halted:
            return  # a halted channel says nothing more (its safety state may be behind)
        if self._outputs or out.persist is not None or out.persist_block is not None:
            self._outputs.append(out)
            if self._persisting is None or self._persisting.done():
                self._persisting = asyncio.get_running_loop().create_task(self._drain())
            return
        self._carry_out(out)

    async def _drain(self) -> None:
        """Persist and carry out the queued outputs, oldest first."""
        loop = asyncio.get_running_loop()
        while self._outputs:
            out = self._outputs[0]
            if self.halted:
                self._outputs.clear()
                return
            if out.persist is not None or out.persist_block is not None:
                if self._persister is None:
                    self._persister = ThreadPoolExecutor(1, thread_name_prefix=f"safety-{self.app}")
                try:
                    await loop.run_in_executor(self._persister, self._persist, out)
                except Exception as exc:  # a vote not recorded must not leave
                    self._outputs.clear()
                    self._halt(f"cannot persist the safety state: {exc!r}")
                    return
            self._outputs.popleft()
            if self.halted:
                continue
            try:
                self._carry_out(out)
            except Exception as exc:  # as if raised in run(): the channel halts, loudly
                self._outputs.clear()
                self._halt(f"ordering stopped: {exc!r}")
                return

    def _persist(self, out: Output) -> None:
        if out.persist_block is not None:
            self.safety.save_block(out.persist_block)
        if out.persist is not None:
            self.safety.save(out.persist)

    def _stop_persisting(self) -> None:
        """Forget outputs not yet persisted (as a crash would), and wait for a write
        under way: a channel hosted again at once must not race it on the same files."""
        self._outputs.clear()
        if self._persisting is not None:
            self._persisting.cancel()
        if self._persister is not None:
            self._persister.shutdown(wait=True)  # at most one write: blocks briefly
            self._persister = None

    def _carry_out(self, out: Output) -> None:
        for dest, msg in out.send:
            if dest is None:
                self._send_all(msg)
            else:
                self._send(dest, msg)
        for peer, height in out.sync:
            self._send(peer, SyncRequest(self.app, height))
        for peer, height in out.serve:
            self._serve(peer, height)
        for reason in out.rejected:
            self._count_rejected(reason)
        for event in out.events:
            if event == "new_round":
                self.metrics.rounds.labels(self.app).inc()
            elif event == "timeout":
                self.metrics.timeouts.labels(self.app).inc()
        if out.halted and not self.halted:
            self._halt(out.halted)
        if out.commits:
            self._commits.extend(out.commits)
            self._wake.set()
        if out.propose is not None and (self._building is None or self._building.done()):
            self._building = asyncio.get_running_loop().create_task(self._build(*out.propose))
            self._building.add_done_callback(self._on_build_done)
        if out.timer_ms != self._timer_ms:
            self._timer_ms = out.timer_ms
            self._wake.set()
        if self.replica is not None:
            self.metrics.round.labels(self.app).set(self.replica.round)

    def _on_build_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._halt(f"building a block failed: {task.exception()!r}")

    def _halt(self, reason: str) -> None:
        self.halted = reason
        if self.replica is not None and self.replica.halted is None:
            self.replica.halted = reason
        self.metrics.halted.labels(self.app).set(1)
        log.error("%s: CONSENSUS HALTED — %s", self.app, reason)

    async def _build(self, height: int, round_: int) -> None:
        """Wait for a full block or the batch timeout, then hand the block over."""
        deadline = time.monotonic() + self.config.timeout_ms / 1000
        while len(self.mempool) < self.config.max_txs and time.monotonic() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())
        replica = self.replica
        if replica is None or replica.height != height or replica.round != round_:
            return
        if round_ == 0 and not self._has_work():
            return  # nothing to order after all (no empty blocks while all is well)
        txs = self.mempool.take(self.config.max_txs, self.config.max_block_bytes)
        block = compute_block(
            self.network,
            self.app,
            replica.tip,
            txs,
            now_ms(),
            self.me,
            max(self._propose_config_height(), self._last_config_height),
        )
        self._process(replica.on_payload(block, now_ms()))

    async def run(self, tip: Callable[[], ChainTip], deliver: Deliver) -> None:
        """Order forever: tick the replica, apply decided blocks in sequence. If
        anything stops it, the channel halts and says why (status, metric, log)."""
        try:
            await self._run(tip, deliver)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.halted:
                self._halt(f"ordering stopped: {exc!r}")
            raise
        finally:
            self._stop_persisting()

    async def _run(self, tip: Callable[[], ChainTip], deliver: Deliver) -> None:
        voted = self.safety.load_block()
        if voted is not None and voted.header.number == tip().height:
            # not committed yet: peers may ask for its transactions (compact proposals)
            done = self.ledger.known_tx_ids([tx.tx_id for tx in voted.transactions])
            fresh = [tx for tx in voted.transactions if tx.tx_id not in done]
            self.mempool.add(fresh, now_ms(), own=False)
        self.replica = Replica(
            network=self.network,
            app=self.app,
            me=self.me,
            signer=self.signer,
            consenters=self.consenters,
            tip=tip(),
            safety=self.safety.load(),
            voted_block=voted,
            timing=self.config.timing,
            now_ms=now_ms(),
        )
        self.metrics.height.labels(self.app).set(self.replica.height)
        self._process(self.replica.on_pending(self._has_work(), now_ms()))
        while True:
            await self._wait()
            while self._commits:
                block, qc = self._commits.popleft()
                await self._apply(block, qc, tip, deliver)
            self._process(self.replica.on_tick(now_ms()))
            self._housekeeping()

    async def _wait(self) -> None:
        timeout = STATUS_EVERY_S
        if self._timer_ms is not None:
            timeout = min(timeout, max(0.0, (self._timer_ms - now_ms()) / 1000))
        if self._commits:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _apply(
        self, block: Block, qc: QuorumCert, tip: Callable[[], ChainTip], deliver: Deliver
    ) -> None:
        assert self.replica is not None
        try:
            await deliver(block, qc.encode())
            self._last_config_height = block.header.config_height
        except Exception as exc:
            self._halt(f"block {block.header.number} could not be committed: {exc!r}")
            raise
        now = now_ms()
        latencies = self.mempool.remove(tx.tx_id for tx in block.transactions)
        for arrived in latencies:
            self.metrics.commit_latency.labels(self.app).observe((now - arrived) / 1000)
        self.metrics.blocks.labels(self.app).inc()
        self.metrics.txs.labels(self.app).inc(len(block.transactions))
        self.metrics.height.labels(self.app).set(block.header.number + 1)
        self.metrics.mempool.labels(self.app).set(len(self.mempool))
        # Pending first: the replica is still applying, so this cannot trigger a stale
        # proposal; then the next height starts with the right view of the mempool.
        self._process(self.replica.on_pending(self._has_work(), now))
        changed = self._consenters_changed()
        if changed is None:
            self._process(self.replica.on_applied(tip(), now))
        else:
            log.warning(
                "%s: consenters from block %d on: %s (were %s)",
                self.app,
                block.header.number + 1,
                ", ".join(changed.ids),
                ", ".join(self.consenters.ids),
            )
            self.consenters = changed
            self._process(self.replica.on_applied(tip(), now, changed))
        for follower in self.members - set(self.consenters.ids) - {self.me}:
            self._send(follower, Status(self.app, self.replica.height))  # it syncs

    def _housekeeping(self) -> None:
        """Re-forward own transactions still waiting; tell peers our height now and then."""
        self._forward(self.mempool.due_for_forward(now_ms()))
        if time.monotonic() - self._last_status >= STATUS_EVERY_S:
            self._last_status = time.monotonic()
            assert self.replica is not None
            status = encode_message(Status(self.app, self.replica.height))
            for peer in self.members - {self.me}:
                self.peers.send(peer, status)

    def announce(self, peer: str) -> None:
        """A link to ``peer`` came up: tell it our height (it may need our blocks)."""
        if self.replica is not None and peer in self.members:
            self._send(peer, Status(self.app, self.replica.height))

    def status(self) -> dict[str, Any]:
        replica = self.replica
        connected = set(self.peers.connected())
        info: dict[str, Any] = {
            "mempool": len(self.mempool),
            "peers": {p: p in connected for p in sorted(self.members - {self.me})},
            "halted": self.halted,
        }
        if replica is not None:
            info.update(replica.status())
            info["halted"] = self.halted or replica.halted
        return info
