"""The consensus core: one replica of one channel, as a pure state machine (sans-IO).

Inputs are method calls (:meth:`Replica.on_message`, :meth:`~Replica.on_tick`,
:meth:`~Replica.on_payload`, :meth:`~Replica.on_applied`, …), each given the current
time; each returns an :class:`Output`: the safety state to persist, messages to send,
blocks decided, and when to be ticked next. The driver must make ``persist`` durable
*before* it sends any of ``send`` — that is what makes a restarted replica unable
to vote twice. The production driver is :mod:`meridian.node.ordering`; the tests
drive the same code in a deterministic simulator (``tests/sim``). One replica alone
(n = 1) runs the same steps, all messages being its own.

The protocol (``docs/consensus.md`` has the argument): heights are decided one at a
time, each in rounds with a two-phase vote, in the HotStuff-2 / Jolteon family.

* **Propose.** The leader of (h, r) proposes a block extending the last committed
  one, with its highest prepare certificate (``justify``; the block must then be the
  certified one) and, after a round change, the timeout certificate of r - 1.
* **Prepare vote** (rule ``_is_safe_to_prepare``): once per round, never after timing
  out in it, and only if the replica is not locked, or locked on this block, or the
  justify is at least as high as its lock, or the TC of r - 1 shows that no quorum
  member held a higher certificate than the justify.
* **Lock and commit vote.** A prepare certificate (n - f prepare votes) locks the
  replica on the block (highest lock wins); if that round is the replica's current
  one and it did not time out there, it sends a commit vote.
* **Decide.** A commit certificate (n - f commit votes) decides the block; the
  driver applies it and reports the new tip, which starts the next height at round 0.
* **Round change.** When a round's timer expires (exponential back-off) the replica
  sends a timeout carrying its lock; f + 1 timeouts make it join; n - f form a
  timeout certificate that moves everyone to r + 1, whose leader is the next
  consenter after the current one — a crashed leader costs one timeout.
* **Leader.** The proposer of the previous block keeps the lead (no leader change
  while things work), rotating every ``leader_term`` heights for fairness.
* **Consenters.** Fixed per height; a configuration committed in block h names the
  set of h + 1 (:meth:`Replica.on_applied`). A replica outside the set follows by
  sync and votes nowhere.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .. import codec
from ..crypto.hashing import Digest
from ..crypto.suites import verify_cached
from ..errors import InvalidInput
from ..ledger.merkle import compute_root
from ..types import MAX_BLOCK_TXS, Block, BlockHeader, compute_tx_hash
from .messages import (
    NO_ROUND,
    Message,
    Phase,
    ProposalMsg,
    QuorumCert,
    Status,
    SyncResponse,
    TimeoutCert,
    TimeoutMsg,
    Vote,
    compute_proposal_digest,
    compute_timeout_digest,
    compute_vote_digest,
)
from .quorum import Quorum

MAX_ROUNDS_AHEAD = 16  # votes and timeouts further ahead than this are ignored
MAX_FUTURE_MESSAGES = 1024  # next-height messages kept while a block is being applied
MAX_FUTURE_PER_SENDER = 16
MAX_SYNCED_BLOCKS = 128


@dataclass(frozen=True, slots=True)
class ChainTip:
    """What the next block builds on (the last committed block's outcome)."""

    height: int  # the next block's number
    previous_hash: Digest
    last_result_root: Digest
    last_timestamp_ms: int
    last_proposer: str = ""


class Signer(Protocol):
    """What the core needs to sign (a :class:`meridian.crypto.suites.Signer` fits)."""

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Consenters:
    """The replicas of one channel at some height, with their verification keys."""

    keys: Mapping[str, tuple[str, bytes]]  # node id -> (suite, public key)
    ids: tuple[str, ...] = field(init=False)
    quorum: Quorum = field(init=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise InvalidInput("a channel needs at least one consenter", code="bad_config")
        object.__setattr__(self, "ids", tuple(sorted(self.keys)))
        object.__setattr__(self, "quorum", Quorum(len(self.keys)))

    def verify(self, voter: str, digest: Digest, signature: bytes) -> bool:
        key = self.keys.get(voter)
        return key is not None and verify_cached(key[0], key[1], bytes(digest), signature)


@dataclass(frozen=True, slots=True)
class Timing:
    round_timeout_ms: int = 1_000  # round 0; doubles each round, up to the max
    max_round_timeout_ms: int = 30_000
    max_clock_skew_ms: int = 5_000  # how far a proposer's block time may be from ours
    leader_term: int = 64  # heights one leader keeps the lead when nothing fails
    sync_retry_ms: int = 500
    max_block_txs: int = MAX_BLOCK_TXS  # voters refuse bigger blocks (network.json block)
    max_block_bytes: int = 16 * 2**20  # ... and heavier ones (transaction bytes)


@dataclass(frozen=True, slots=True)
class SafetyState:
    """What must survive a crash for this replica never to vote twice in a round."""

    height: int
    round: int = 0
    proposed: int = NO_ROUND  # highest round this replica proposed in
    prepare_voted: int = NO_ROUND
    commit_voted: int = NO_ROUND
    timed_out: int = NO_ROUND
    lock: QuorumCert | None = None
    last_tc: TimeoutCert | None = None  # how the replica reached its round (others may need it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "round": self.round,
            "proposed": self.proposed,
            "prepare_voted": self.prepare_voted,
            "commit_voted": self.commit_voted,
            "timed_out": self.timed_out,
            "lock": None if self.lock is None else self.lock.to_dict(),
            "last_tc": None if self.last_tc is None else self.last_tc.to_dict(),
        }

    def encode(self) -> bytes:
        return codec.encode(self.to_dict())

    @classmethod
    def decode(cls, data: bytes) -> SafetyState:
        d = codec.decode(data, max_bytes=1 << 20, what="safety state")
        try:
            lock, last_tc = d["lock"], d.get("last_tc")
            rounds = {k: d[k] for k in ("proposed", "prepare_voted", "commit_voted", "timed_out")}
            if not all(_is_int(r) and r >= NO_ROUND for r in rounds.values()):
                raise ValueError("bad round")
            height, round_ = d["height"], d["round"]
            if not (_is_int(height) and _is_int(round_) and height >= 0 and round_ >= 0):
                raise ValueError("bad height or round")
            return cls(
                height=height,
                round=round_,
                lock=None if lock is None else QuorumCert.from_dict(lock),
                last_tc=None if last_tc is None else TimeoutCert.from_dict(last_tc),
                **rounds,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"safety state is malformed: {exc!r}", code="malformed") from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(slots=True)
class Output:
    """What one input asks of the driver (persist first, then send)."""

    persist: SafetyState | None = None
    persist_block: Block | None = None  # the block voted for or proposed (its body is
    # needed to re-propose it after a restart: all replicas holding a lock may crash)
    send: list[tuple[str | None, Message]] = field(default_factory=list)  # None: all peers
    commits: list[tuple[Block, QuorumCert]] = field(default_factory=list)
    propose: tuple[int, int] | None = None  # (height, round): build a block, call on_payload
    sync: list[tuple[str, int]] = field(default_factory=list)  # ask peer for blocks from h
    serve: list[tuple[str, int]] = field(default_factory=list)  # send peer blocks from h
    rejected: list[str] = field(default_factory=list)  # reasons, one per rejected message
    events: list[str] = field(default_factory=list)  # "new_round", "timeout", "decided", …
    timer_ms: int | None = None
    halted: str | None = None


def check_certificate(network: str, consenters: Consenters, qc: QuorumCert) -> str | None:
    """None if a quorum of ``consenters`` signed ``qc``, else why not."""
    voters = [voter for voter, _ in qc.signatures]
    if len(set(voters)) < consenters.quorum.strong:
        return "qc_too_few_signatures"
    digest = compute_vote_digest(network, qc.app, qc.phase, qc.height, qc.round, qc.block)
    for voter, sig in qc.signatures:
        if not consenters.verify(voter, digest, sig):
            return "qc_bad_signature"
    return None


def check_commit_certificate(
    network: str, consenters: Consenters, header: BlockHeader, qc: QuorumCert
) -> str | None:
    """None if ``qc`` proves that ``header``'s block was committed, else why not.

    This is what a third party checks (``ledger verify``, a cross-chain proof): the
    certificate names the block by its header hash and carries a quorum's commit votes.
    """
    if qc.phase is not Phase.COMMIT or qc.app != header.app:
        return "qc_not_for_block"
    if qc.height != header.number or qc.block != header.hash:
        return "qc_not_for_block"
    return check_certificate(network, consenters, qc)


def compute_leader(ids: Sequence[str], height: int, round_: int, last: str, term: int) -> str:
    """The leader of (height, round): the last proposer keeps the lead, the next one
    takes it after each failed round and every ``term`` heights."""
    start = ids.index(last) if last in ids else 0
    if height % term == 0:
        start += 1
    return ids[(start + round_) % len(ids)]


def compute_round_timeout_ms(timing: Timing, round_: int) -> int:
    return min(timing.max_round_timeout_ms, timing.round_timeout_ms << min(round_, 20))


class Replica:
    """One consensus replica of one channel (see the module docstring)."""

    def __init__(
        self,
        *,
        network: str,
        app: str,
        me: str,
        signer: Signer,
        consenters: Consenters,
        tip: ChainTip,
        safety: SafetyState | None,
        voted_block: Block | None = None,
        timing: Timing | None = None,
        now_ms: int = 0,
    ) -> None:
        self.network = network
        self.app = app
        self.me = me
        self.signer = signer
        self.consenters = consenters
        self.timing = timing or Timing()
        self.tip = tip
        self.halted: str | None = None
        self.has_pending = False
        self.peer_heights: dict[str, int] = {}
        self._out = Output()
        self._inbox: deque[tuple[str, Message]] = deque()
        self._future: list[tuple[str, Message]] = []
        self._synced: dict[int, tuple[Block, QuorumCert]] = {}
        self._last_sync_ms = -(10**12)
        self._sync_turn = 0
        self._served: dict[str, int] = {}
        self._now = now_ms
        self._reset_height(now_ms)
        if safety is not None and safety.height == tip.height:
            self.safety = safety  # restarted mid-height: keep every vote it already cast
            self.round = safety.round
            if voted_block is not None and voted_block.header.number == tip.height:
                self._blocks[voted_block.header.hash] = voted_block

    # ------------------------------------------------------------------ inputs

    def on_message(self, sender: str, msg: Message, now_ms: int) -> Output:
        self._now = now_ms
        self._inbox.append((sender, msg))
        self._drain()
        return self._flush()

    def on_tick(self, now_ms: int) -> Output:
        self._now = now_ms
        if not self.halted and not self.applying:
            self._check_timers()
        self._drain()
        return self._flush()

    def on_pending(self, has_pending: bool, now_ms: int) -> Output:
        """The mempool became (non-)empty: a leader proposes, a follower starts waiting."""
        self._now = now_ms
        if has_pending and self.idle:
            self.round_started_ms = now_ms  # the wait for a proposal starts now
        self.has_pending = has_pending
        self._try_propose()
        self._drain()
        return self._flush()

    def on_payload(self, block: Block, now_ms: int) -> Output:
        """The block the driver built for our proposal (after ``Output.propose``)."""
        self._now = now_ms
        header = block.header
        if (
            self.halted
            or self.applying
            or header.number != self.tip.height
            or self.safety.proposed >= self.round
            or self.leader(self.round) != self.me
        ):
            return self._flush()  # the moment passed; nothing to do
        self._propose(block, None)
        self._drain()
        return self._flush()

    def on_applied(
        self, tip: ChainTip, now_ms: int, consenters: Consenters | None = None
    ) -> Output:
        """The decided block is committed locally; ``tip`` is what the next builds on.

        ``consenters``: the set that orders the next block, when the committed block
        changed it (a configuration transaction); it takes effect at exactly this
        height on every replica, since all commit the same blocks.
        """
        self._now = now_ms
        self.tip = tip
        if consenters is not None:
            self.consenters = consenters
        self._reset_height(now_ms)
        self._decide_synced()
        future, self._future = self._future, []
        for item in future:
            self._inbox.append(item)
        self._drain()
        self._try_propose()
        self._drain()
        if not self.applying:
            self._request_sync_if_behind()
        return self._flush()

    def on_synced(self, sender: str, response: SyncResponse, now_ms: int) -> Output:
        """Blocks with commit certificates from a peer (catch-up)."""
        self._now = now_ms
        for block, qc in response.blocks:
            number = block.header.number
            if number < self.tip.height or number in self._synced:
                continue
            if len(self._synced) >= MAX_SYNCED_BLOCKS:
                break
            reason = self._check_commit_qc(block, qc) or self._check_block_body(block)
            if reason:
                self._out.rejected.append(f"sync:{reason}")
                break
            self._synced[number] = (block, qc)
            self.peer_heights[sender] = max(self.peer_heights.get(sender, 0), number + 1)
        if not self.applying:
            self._decide_synced()
        self._drain()
        return self._flush()

    # --------------------------------------------------------------- properties

    @property
    def height(self) -> int:
        return self.tip.height

    @property
    def idle(self) -> bool:
        """Nothing to order and nothing seen at this height: no timer runs."""
        return (
            not self.has_pending
            and self.round == 0
            and self.safety.lock is None
            and not self._proposals
            and not self._votes
            and not self._timeouts
        )

    def is_plausible_proposal(
        self, height: int, round_: int, proposer: str, block_hash: Digest, signature: bytes
    ) -> bool:
        """Whether a proposal's envelope could be accepted here (right height, round in
        range, the round's leader, its signature): checked before this node spends
        anything (pool room, requests) on rebuilding a compact proposal."""
        # The next height's proposal often arrives while this node still applies the
        # last block; its leader is not known yet, so the signature must do.
        current = height == self.tip.height and round_ <= self.round + MAX_ROUNDS_AHEAD
        if height != self.tip.height + 1 and not (current and proposer == self.leader(round_)):
            return False
        digest = compute_proposal_digest(self.network, self.app, height, round_, block_hash)
        return self.consenters.verify(proposer, digest, signature)

    def holds_block(self, block_hash: Digest) -> bool:
        """Whether a proposal of this block at the current height was accepted here."""
        return block_hash in self._blocks

    @property
    def is_consenter(self) -> bool:
        """False for a node that only follows the channel (it votes and leads nowhere)."""
        return self.me in self.consenters.keys

    def leader(self, round_: int) -> str:
        return compute_leader(
            self.consenters.ids,
            self.tip.height,
            round_,
            self.tip.last_proposer,
            self.timing.leader_term,
        )

    def status(self) -> dict[str, Any]:
        return {
            "height": self.tip.height,
            "round": self.round,
            "leader": self.leader(self.round),
            "locked_round": None if self.safety.lock is None else self.safety.lock.round,
            "consenters": list(self.consenters.ids),
            "halted": self.halted,
        }

    # ----------------------------------------------------------------- plumbing

    def _reset_height(self, now_ms: int) -> None:
        self.safety = SafetyState(self.tip.height)
        self.round = 0
        self.round_started_ms = now_ms
        self.applying = False
        self._awaiting: QuorumCert | None = None  # decided, body not yet here
        self._proposals: dict[int, ProposalMsg] = {}
        self._blocks: dict[Digest, Block] = {}
        self._votes: dict[tuple[Phase, int], dict[str, Vote]] = {}
        self._timeouts: dict[int, dict[str, TimeoutMsg]] = {}
        self._last_timeout_sent_ms = 0

    def _flush(self) -> Output:
        out, self._out = self._out, Output()
        out.halted = self.halted
        out.timer_ms = self._next_timer()
        return out

    def _save(self, **changes: Any) -> None:
        self.safety = replace(self.safety, **changes)
        self._out.persist = self.safety

    def _broadcast(self, msg: Message) -> None:
        """Send to every other consenter and handle it here too."""
        if len(self.consenters.ids) > 1:
            self._out.send.append((None, msg))
        self._inbox.append((self.me, msg))

    def _drain(self) -> None:
        while self._inbox and not self.halted:
            sender, msg = self._inbox.popleft()
            self._handle(sender, msg)

    def _reject(self, reason: str) -> None:
        self._out.rejected.append(reason)

    def _halt(self, reason: str) -> None:
        self.halted = reason
        self._out.events.append("halted")

    # ------------------------------------------------------------------ routing

    def _handle(self, sender: str, msg: Message) -> None:
        if msg.app != self.app:
            self._reject("wrong_channel")
            return
        if isinstance(msg, Status):  # a hint, from any node that follows the channel
            self._on_status(sender, msg)
            return
        if not isinstance(msg, Vote | TimeoutMsg | ProposalMsg):
            self._reject("unexpected_kind")
            return
        # Heights first, consenters after: the set may differ at other heights. A laggard
        # that was a consenter at its height gets blocks; a message for the next height
        # waits and is judged against that height's set when it is replayed.
        height = msg.height
        if height < self.tip.height:
            if not isinstance(msg, Vote):  # late votes are normal; these mean a laggard
                self._reject("stale_height")
                self._serve(sender, height)
            return
        if height > self.tip.height:  # the sender committed what we have not
            self._note_peer_height(sender, height)
        if self.applying or height > self.tip.height:
            if height == self.tip.height + 1 and self._has_future_room(sender, msg):
                self._future.append((sender, msg))  # replayed once we reach that height
            if not self.applying:
                self._request_sync_if_behind()
            return
        if sender not in self.consenters.keys:
            self._reject("not_a_consenter")
            return
        if self.idle:
            self.round_started_ms = self._now  # the round's clock starts with its first sign
        if isinstance(msg, Vote):
            self._on_vote(msg)
        elif isinstance(msg, TimeoutMsg):
            self._on_timeout(sender, msg)
        else:
            self._on_proposal(msg)

    def _has_future_room(self, sender: str, msg: Message) -> bool:
        """Room to keep one more next-height message from ``sender``: each sender has
        its share (no node crowds out the others), and whole proposals (the big
        messages) are kept only from current consenters."""
        if len(self._future) >= MAX_FUTURE_MESSAGES:
            return False
        if isinstance(msg, ProposalMsg) and sender not in self.consenters.keys:
            return False
        return sum(1 for s, _ in self._future if s == sender) < MAX_FUTURE_PER_SENDER

    def _serve(self, sender: str, height: int) -> None:
        """Offer a lagging peer the blocks it misses (at most every ``sync_retry_ms``)."""
        if sender == self.me or self._now - self._served.get(sender, -(10**12)) < (
            self.timing.sync_retry_ms
        ):
            return
        self._served[sender] = self._now
        self._out.serve.append((sender, height))

    def _on_status(self, sender: str, msg: Status) -> None:
        if msg.height > self.tip.height:
            self._note_peer_height(sender, msg.height)
            self._request_sync_if_behind()

    def _note_peer_height(self, sender: str, height: int) -> None:
        if height > self.peer_heights.get(sender, 0):
            self.peer_heights[sender] = height

    def _peers_ahead(self) -> list[str]:
        """Peers known to have committed blocks we need to fetch.

        One block behind is the normal state of a replica still collecting the last
        commit votes while faster ones move on: it is fetched only when this replica
        is idle at that height or has been decided without the body; two or more
        behind always are. A node that is not a consenter learns blocks only this way.
        """
        lag = 0 if self.idle or self._awaiting is not None or not self.is_consenter else 1
        return sorted(
            p for p, h in self.peer_heights.items() if h > self.tip.height + lag and p != self.me
        )

    def _request_sync_if_behind(self) -> None:
        """Ask a peer that is ahead for blocks, at most every ``sync_retry_ms``."""
        if self.applying:
            return
        ahead = self._peers_ahead()
        if not ahead or self._now - self._last_sync_ms < self.timing.sync_retry_ms:
            return
        self._last_sync_ms = self._now
        self._sync_turn += 1  # take turns: a peer that lies about its height costs little
        self._out.sync.append((ahead[self._sync_turn % len(ahead)], self.tip.height))

    # ------------------------------------------------------------- certificates

    def _check_qc(self, qc: QuorumCert) -> str | None:
        """None if ``qc`` is a valid certificate for this channel, else why not."""
        if qc.app != self.app:
            return "qc_wrong_channel"
        return check_certificate(self.network, self.consenters, qc)

    def _check_tc(self, tc: TimeoutCert) -> str | None:
        if tc.app != self.app or tc.height != self.tip.height:
            return "tc_wrong_height"
        if len({voter for voter, _, _ in tc.entries}) < self.consenters.quorum.strong:
            return "tc_too_few_signatures"
        for voter, high_round, sig in tc.entries:
            digest = compute_timeout_digest(self.network, self.app, tc.height, tc.round, high_round)
            if not self.consenters.verify(voter, digest, sig):
                return "tc_bad_signature"
        if tc.max_high_qc_round == NO_ROUND:
            return None if tc.high_qc is None else "tc_bad_high_qc"
        high = tc.high_qc
        if high is None or high.round != tc.max_high_qc_round or high.phase is not Phase.PREPARE:
            return "tc_bad_high_qc"
        if high.height != tc.height:
            return "tc_bad_high_qc"
        return self._check_qc(high)

    def _check_commit_qc(self, block: Block, qc: QuorumCert) -> str | None:
        if qc.app != self.app:
            return "qc_wrong_channel"
        return check_commit_certificate(self.network, self.consenters, block.header, qc)

    def _check_block_body(self, block: Block) -> str | None:
        header = block.header
        if header.network != self.network or header.app != self.app:
            return "block_wrong_channel"
        if header.proposer not in self.consenters.keys:
            return "block_bad_proposer"
        if len(block.transactions) > self.timing.max_block_txs or (
            sum(len(tx.encode()) for tx in block.transactions) > self.timing.max_block_bytes
        ):
            return "block_too_large"
        if header.data_hash != compute_root([compute_tx_hash(tx) for tx in block.transactions]):
            return "block_bad_data_hash"
        if len({tx.tx_id for tx in block.transactions}) != len(block.transactions):
            return "block_duplicate_tx"
        return None

    def _check_block_link(self, block: Block, fresh: bool) -> str | None:
        """Does ``block`` extend our tip, with a time we accept?"""
        header, tip = block.header, self.tip
        if header.number != tip.height or header.previous_hash != tip.previous_hash:
            return "block_does_not_extend_tip"
        if header.timestamp_ms <= tip.last_timestamp_ms:
            return "block_time_not_increasing"
        skew = self.timing.max_clock_skew_ms
        if header.timestamp_ms > self._now + skew:
            return "block_time_in_future"
        if fresh and header.timestamp_ms < self._now - skew:
            return "block_time_too_old"
        return None

    # ---------------------------------------------------------------- proposals

    def _on_proposal(self, msg: ProposalMsg) -> None:
        r = msg.round
        if msg.proposer != self.leader(r):
            self._reject("proposal_not_from_leader")
            return
        block_hash = msg.block.header.hash
        digest = compute_proposal_digest(self.network, self.app, msg.height, r, block_hash)
        if not self.consenters.verify(msg.proposer, digest, msg.signature):
            self._reject("proposal_bad_signature")
            return
        known = self._proposals.get(r)
        if known is not None:
            if known.block.header.hash != block_hash:
                self._reject("equivocation")
            return
        reason = self._check_proposal(msg, block_hash)
        if reason:
            self._reject(reason)
            return
        self._blocks[block_hash] = msg.block
        if r < self.round:
            self._proposals[r] = msg
            self._decide_if_awaited(block_hash)
            return
        if r > self.round:
            if msg.tc is not None and msg.tc.round == r - 1:
                self._enter_round(r, msg.tc)
            elif msg.justify is not None and msg.justify.round == r - 1:
                self._enter_round(r, None)
            else:
                self._reject("proposal_round_ahead")
                return
        self._proposals[r] = msg
        self._decide_if_awaited(block_hash)
        for qc in (msg.justify, None if msg.tc is None else msg.tc.high_qc):
            if qc is not None and not self.halted:
                self._on_qc(qc)
        self._maybe_prepare_vote(msg, block_hash)

    def _check_proposal(self, msg: ProposalMsg, block_hash: Digest) -> str | None:
        justify, tc = msg.justify, msg.tc
        if justify is not None:
            if justify.phase is not Phase.PREPARE or justify.height != msg.height:
                return "justify_not_prepare"
            if justify.round >= msg.round or justify.block != block_hash:
                return "justify_mismatch"
            reason = self._check_qc(justify)
            if reason:
                return reason
        elif msg.block.header.proposer != msg.proposer:
            return "block_bad_proposer"
        if tc is not None:
            if tc.round != msg.round - 1:
                return "tc_wrong_round"
            reason = self._check_tc(tc)
            if reason:
                return reason
        return self._check_block_body(msg.block) or self._check_block_link(
            msg.block, fresh=justify is None
        )

    def _maybe_prepare_vote(self, msg: ProposalMsg, block_hash: Digest) -> None:
        r = msg.round
        if r != self.round or self.safety.prepare_voted >= r or self.safety.timed_out >= r:
            return
        if msg.block.header.last_result_root != self.tip.last_result_root:
            self._reject("result_root_mismatch")  # certified anyway? _on_qc halts then
            return
        if not self._is_safe_to_prepare(msg, block_hash):
            self._reject("unsafe_proposal")
            return
        self._save(prepare_voted=r, round=r)
        self._out.persist_block = msg.block
        self._vote(Phase.PREPARE, r, block_hash)

    def _is_safe_to_prepare(self, msg: ProposalMsg, block_hash: Digest) -> bool:
        lock = self.safety.lock
        if lock is None or lock.block == block_hash:
            return True
        justify_round = NO_ROUND if msg.justify is None else msg.justify.round
        if justify_round >= lock.round:
            return True
        tc = msg.tc
        return (
            tc is not None and tc.round == msg.round - 1 and justify_round >= tc.max_high_qc_round
        )

    def _vote(self, phase: Phase, round_: int, block_hash: Digest) -> None:
        if not self.is_consenter:
            return
        h = self.tip.height
        digest = compute_vote_digest(self.network, self.app, phase, h, round_, block_hash)
        sig = self.signer.sign(bytes(digest))
        self._broadcast(Vote(self.app, phase, h, round_, block_hash, self.me, sig))

    # -------------------------------------------------------------------- votes

    def _on_vote(self, vote: Vote) -> None:
        if vote.round > self.round + MAX_ROUNDS_AHEAD:
            self._reject("round_too_far_ahead")
            return
        box = self._votes.setdefault((vote.phase, vote.round), {})
        known = box.get(vote.voter)
        if known is not None and known.block == vote.block:
            return  # a duplicate
        digest = compute_vote_digest(
            self.network, self.app, vote.phase, vote.height, vote.round, vote.block
        )
        if not self.consenters.verify(vote.voter, digest, vote.signature):
            self._reject("vote_bad_signature")  # checked first: a forgery blames no one
            return
        if known is not None:
            self._reject("double_vote")
            return
        box[vote.voter] = vote
        same = sorted((v.voter, v.signature) for v in box.values() if v.block == vote.block)
        if len(same) == self.consenters.quorum.strong:  # exactly once per (phase, round)
            qc = QuorumCert(self.app, vote.phase, vote.height, vote.round, vote.block, tuple(same))
            self._on_qc(qc)

    def _on_qc(self, qc: QuorumCert) -> None:
        """A verified certificate for this height."""
        block = self._blocks.get(qc.block)
        if block is not None and block.header.last_result_root != self.tip.last_result_root:
            self._halt(
                f"divergence at height {qc.height}: a quorum certified result root "
                f"{block.header.last_result_root.hex()[:16]}…, ours is "
                f"{self.tip.last_result_root.hex()[:16]}…"
            )
            return
        if qc.phase is Phase.COMMIT:
            self._decide(qc)
            return
        lock = self.safety.lock
        if lock is None or qc.round > lock.round:
            self._save(lock=qc)
        if qc.round > self.round:
            self._enter_round(qc.round, None)
        # Commit-vote only in the current round: a replica already in a later round may
        # have prepare-voted another block there, unlocked; a late commit vote for an
        # older round would let both blocks be decided (see docs/consensus.md).
        r = qc.round
        if r == self.round and self.safety.commit_voted < r and self.safety.timed_out < r:
            self._save(commit_voted=r)
            self._vote(Phase.COMMIT, r, qc.block)

    def _decide(self, qc: QuorumCert) -> None:
        if self.applying:
            return
        block = self._blocks.get(qc.block)
        if block is None:  # decided without the body: fetch it with the certificate
            self._awaiting = qc
            for voter, _ in qc.signatures:
                self._note_peer_height(voter, qc.height + 1)
            self._request_sync_if_behind()
            return
        self._commit(block, qc)

    def _decide_if_awaited(self, block_hash: Digest) -> None:
        if self._awaiting is not None and self._awaiting.block == block_hash:
            self._decide(self._awaiting)

    def _decide_synced(self) -> None:
        found = self._synced.pop(self.tip.height, None)
        for number in [n for n in self._synced if n < self.tip.height]:
            del self._synced[number]
        if found is None:
            return
        block, qc = found
        # Checked again: the consenters may have changed since it arrived (a certificate
        # must carry the votes of the set of *its* height).
        reason = self._check_commit_qc(block, qc) or self._check_block_link(block, fresh=False)
        if reason == "block_time_in_future":
            reason = None  # a certified block: a quorum accepted its time
        if reason == "block_does_not_extend_tip":
            self._halt(
                f"fork at height {block.header.number}: a quorum certified a block that does "
                "not extend this node's chain"
            )
            return
        if reason:
            self._out.rejected.append(f"sync:{reason}")
            self._synced.clear()
            return
        if block.header.last_result_root != self.tip.last_result_root:
            self._halt(f"divergence at height {block.header.number}: certified result root differs")
            return
        self._commit(block, qc)

    def _commit(self, block: Block, qc: QuorumCert) -> None:
        self.applying = True
        self._out.commits.append((block, qc))
        self._out.events.append("decided")

    # ----------------------------------------------------------------- timeouts

    def _on_timeout(self, sender: str, msg: TimeoutMsg) -> None:
        r = msg.round
        if r > self.round + MAX_ROUNDS_AHEAD:
            self._reject("round_too_far_ahead")
            return
        box = self._timeouts.setdefault(r, {})
        if msg.voter in box:
            return
        digest = compute_timeout_digest(self.network, self.app, msg.height, r, msg.high_qc_round)
        if not self.consenters.verify(msg.voter, digest, msg.signature):
            self._reject("timeout_bad_signature")
            return
        high = msg.high_qc
        if high is not None:
            if high.phase is not Phase.PREPARE or high.height != msg.height or high.round > r:
                self._reject("timeout_bad_high_qc")
                return
            reason = self._check_qc(high)
            if reason:
                self._reject(reason)
                return
        box[msg.voter] = msg
        if high is not None:
            self._on_qc(high)
        last_tc = msg.last_tc
        if last_tc is not None and last_tc.round >= self.round and not self.halted:
            reason = self._check_tc(last_tc)
            if reason:
                self._reject(reason)
                return
            if last_tc.high_qc is not None:
                self._on_qc(last_tc.high_qc)  # the highest lock the TC proves
            if not self.halted and not self.applying:
                self._enter_round(last_tc.round + 1, last_tc)
        if self.halted or self.applying:
            return
        count = len(box)
        if count >= self.consenters.quorum.weak and r >= self.round and self.safety.timed_out < r:
            self._send_timeout(r)  # f + 1 gave up on r: at least one honest one; join them
        if count == self.consenters.quorum.strong and r >= self.round:
            self._enter_round(r + 1, self._form_tc(r, box))

    def _form_tc(self, r: int, box: Mapping[str, TimeoutMsg]) -> TimeoutCert:
        entries = tuple(sorted((m.voter, m.high_qc_round, m.signature) for m in box.values()))
        highs = [m.high_qc for m in box.values() if m.high_qc is not None]
        high = max(highs, key=lambda qc: qc.round) if highs else None
        return TimeoutCert(self.app, self.tip.height, r, entries, high)

    def _send_timeout(self, r: int) -> None:
        if not self.is_consenter:
            return
        if self.safety.timed_out < r:
            self._save(timed_out=r)
        lock = self.safety.lock
        digest = compute_timeout_digest(
            self.network, self.app, self.tip.height, r, NO_ROUND if lock is None else lock.round
        )
        sig = self.signer.sign(bytes(digest))
        self._last_timeout_sent_ms = self._now
        self._out.events.append("timeout")
        self._broadcast(
            TimeoutMsg(self.app, self.tip.height, r, lock, self.me, sig, self.safety.last_tc)
        )

    # ------------------------------------------------------------------- rounds

    def _enter_round(self, r: int, tc: TimeoutCert | None) -> None:
        last = self.safety.last_tc
        if tc is not None and (last is None or tc.round > last.round):
            self._save(last_tc=tc)
        if r <= self.round:
            return
        self.round = r
        self.round_started_ms = self._now
        self._save(round=r)
        self._out.events.append("new_round")
        self._try_propose()

    def _try_propose(self) -> None:
        if self.halted or self.applying or self.leader(self.round) != self.me:
            return
        if self.safety.proposed >= self.round:
            return
        lock = self.safety.lock
        if lock is not None:
            block = self._blocks.get(lock.block)
            if block is not None:
                self._propose(block, lock)
            return  # without the certified block's body this leader cannot propose
        if self.has_pending or self.round > 0:
            self._out.propose = (self.tip.height, self.round)

    def _propose(self, block: Block, justify: QuorumCert | None) -> None:
        r = self.round
        last = self.safety.last_tc
        tc = last if last is not None and last.round == r - 1 else None
        block_hash = block.header.hash
        digest = compute_proposal_digest(self.network, self.app, self.tip.height, r, block_hash)
        self._save(proposed=r)
        self._out.persist_block = block
        sig = self.signer.sign(bytes(digest))
        self._broadcast(ProposalMsg(self.app, r, block, justify, tc, self.me, sig))

    def _next_timer(self) -> int | None:
        if self.halted or self.applying:
            return None
        deadlines = []
        if self._peers_ahead():
            deadlines.append(self._last_sync_ms + self.timing.sync_retry_ms)
        if not self.idle and self.is_consenter:
            timeout = compute_round_timeout_ms(self.timing, self.round)
            if self.safety.timed_out >= self.round:  # re-send our timeout until the round moves
                deadlines.append(self._last_timeout_sent_ms + timeout)
            else:
                deadlines.append(self.round_started_ms + timeout)
        return min(deadlines) if deadlines else None

    def _check_timers(self) -> None:
        self._request_sync_if_behind()
        if self.idle or not self.is_consenter:
            return
        timeout = compute_round_timeout_ms(self.timing, self.round)
        if self.safety.timed_out >= self.round:
            if self._now - self._last_timeout_sent_ms >= timeout:
                self._send_timeout(self.round)
        elif self._now - self.round_started_ms >= timeout:
            self._send_timeout(self.round)
