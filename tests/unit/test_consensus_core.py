"""The consensus core driven directly: replica n0 of four, the test playing n1..n3.

Every input is a method call on :class:`Replica`; every assertion is about what comes
back in :class:`Output` (votes sent, state persisted, blocks committed, reasons for
rejecting) or about ``round`` / ``halted``. At genesis (no last proposer, height 0 a
multiple of the leader term) the leader of round r is ``IDS[(1 + r) % 4]``: n1, n2,
n3, then n0.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.consensus.core import (
    ChainTip,
    Consenters,
    Output,
    Replica,
    SafetyState,
    Timing,
    check_certificate,
    check_commit_certificate,
    compute_leader,
    compute_round_timeout_ms,
)
from meridian.consensus.messages import (
    NO_ROUND,
    Phase,
    ProposalMsg,
    QuorumCert,
    SyncResponse,
    TimeoutCert,
    TimeoutMsg,
    Vote,
    compute_proposal_digest,
    compute_timeout_digest,
    compute_vote_digest,
)
from meridian.consensus.quorum import Quorum
from meridian.crypto.hashing import Digest
from meridian.crypto.suites import ED25519, Ed25519Signer
from meridian.errors import InvalidInput
from meridian.types import ZERO_DIGEST, Block
from tests.sim.simulator import APP, NETWORK, compute_sim_block, make_tx

IDS = ("n0", "n1", "n2", "n3")
SIGNERS = {i: Ed25519Signer(hashlib.sha256(f"unit/{i}".encode()).digest()) for i in IDS}
CONSENTERS = Consenters({i: (ED25519, s.public_key_bytes()) for i, s in SIGNERS.items()})
OUTSIDER = Ed25519Signer(hashlib.sha256(b"unit/n9").digest())
TIMING = Timing(
    round_timeout_ms=1_000,
    max_round_timeout_ms=8_000,
    max_clock_skew_ms=5_000,
    leader_term=64,
    sync_retry_ms=500,
)
NOW = 1_000_000
SKEW = TIMING.max_clock_skew_ms
GENESIS = ChainTip(0, ZERO_DIGEST, ZERO_DIGEST, 0, "")
OTHERS = ("n1", "n2", "n3")


# ---------------------------------------------------------------------------- helpers


def compute_test_root(label: int) -> Digest:
    return Digest(hashlib.sha256(b"root/%d" % label).digest())


def make_block(
    tip: ChainTip = GENESIS,
    *,
    ts: int = NOW,
    proposer: str = "n1",
    salt: int = 0,
    root: Digest | None = None,
) -> Block:
    """A one-transaction block over ``tip`` (``salt`` makes conflicting siblings)."""
    if root is not None:
        tip = replace(tip, last_result_root=root)
    return compute_sim_block(tip, [make_tx(tip.height, salt)], ts, proposer)


def compute_tip_after(block: Block, root: Digest = ZERO_DIGEST) -> ChainTip:
    header = block.header
    return ChainTip(header.number + 1, header.hash, root, header.timestamp_ms, header.proposer)


def sign_vote(voter: str, phase: Phase, height: int, round_: int, block: Digest) -> Vote:
    digest = compute_vote_digest(NETWORK, APP, phase, height, round_, block)
    return Vote(APP, phase, height, round_, block, voter, SIGNERS[voter].sign(bytes(digest)))


def make_qc(
    phase: Phase, height: int, round_: int, block: Digest, voters: tuple[str, ...] = OTHERS
) -> QuorumCert:
    sigs = tuple((v, sign_vote(v, phase, height, round_, block).signature) for v in sorted(voters))
    return QuorumCert(APP, phase, height, round_, block, sigs)


def sign_timeout(
    voter: str,
    height: int,
    round_: int,
    high_qc: QuorumCert | None = None,
    last_tc: TimeoutCert | None = None,
) -> TimeoutMsg:
    high = NO_ROUND if high_qc is None else high_qc.round
    digest = compute_timeout_digest(NETWORK, APP, height, round_, high)
    sig = SIGNERS[voter].sign(bytes(digest))
    return TimeoutMsg(APP, height, round_, high_qc, voter, sig, last_tc)


def make_tc(
    height: int,
    round_: int,
    voters: tuple[str, ...] = OTHERS,
    high_qc: QuorumCert | None = None,
) -> TimeoutCert:
    """Every voter reports ``high_qc`` (or none)."""
    entries = tuple(
        (v, (m := sign_timeout(v, height, round_, high_qc)).high_qc_round, m.signature)
        for v in sorted(voters)
    )
    return TimeoutCert(APP, height, round_, entries, high_qc)


def sign_proposal(
    proposer: str,
    round_: int,
    block: Block,
    justify: QuorumCert | None = None,
    tc: TimeoutCert | None = None,
) -> ProposalMsg:
    digest = compute_proposal_digest(NETWORK, APP, block.header.number, round_, block.header.hash)
    sig = SIGNERS[proposer].sign(bytes(digest))
    return ProposalMsg(APP, round_, block, justify, tc, proposer, sig)


def new_replica(
    *,
    tip: ChainTip = GENESIS,
    safety: SafetyState | None = None,
    voted_block: Block | None = None,
) -> Replica:
    return Replica(
        network=NETWORK,
        app=APP,
        me="n0",
        signer=SIGNERS["n0"],
        consenters=CONSENTERS,
        tip=tip,
        safety=safety,
        voted_block=voted_block,
        timing=TIMING,
        now_ms=NOW,
    )


def sent_votes(out: Output, phase: Phase | None = None) -> list[Vote]:
    return [m for _, m in out.send if isinstance(m, Vote) and (phase is None or m.phase is phase)]


def sent_timeouts(out: Output) -> list[TimeoutMsg]:
    return [m for _, m in out.send if isinstance(m, TimeoutMsg)]


def sent_proposals(out: Output) -> list[ProposalMsg]:
    return [m for _, m in out.send if isinstance(m, ProposalMsg)]


def with_bad_signature(msg: Vote | TimeoutMsg | ProposalMsg) -> Vote | TimeoutMsg | ProposalMsg:
    return replace(msg, signature=bytes([msg.signature[0] ^ 1]) + msg.signature[1:])


def deliver_votes(
    replica: Replica, phase: Phase, round_: int, block: Block, voters: tuple[str, ...]
) -> list[Output]:
    h = block.header.number
    return [
        replica.on_message(v, sign_vote(v, phase, h, round_, block.header.hash), NOW)
        for v in voters
    ]


def lock_on(block: Block) -> Replica:
    """A replica that voted for ``block`` in round 0 and saw its prepare certificate."""
    replica = new_replica()
    replica.on_message("n1", sign_proposal("n1", 0, block), NOW)
    deliver_votes(replica, Phase.PREPARE, 0, block, ("n1", "n2"))
    assert replica.safety.lock is not None and replica.safety.lock.block == block.header.hash
    return replica


# ----------------------------------------------------------------------------- quorum

QUORUM_TABLE = [
    # n, f, strong (n - f), weak (f + 1)
    (1, 0, 1, 1),
    (2, 0, 2, 1),
    (3, 0, 3, 1),
    (4, 1, 3, 2),
    (5, 1, 4, 2),
    (6, 1, 5, 2),
    (7, 2, 5, 3),
    (8, 2, 6, 3),
    (9, 2, 7, 3),
    (10, 3, 7, 4),
]


@pytest.mark.parametrize(("n", "f", "strong", "weak"), QUORUM_TABLE)
def test_quorum_sizes(n: int, f: int, strong: int, weak: int) -> None:
    q = Quorum(n)
    assert (q.f, q.strong, q.weak) == (f, strong, weak)


@given(st.integers(min_value=1, max_value=300))
def test_two_strong_quorums_intersect_in_an_honest_replica(n: int) -> None:
    q = Quorum(n)
    assert 2 * q.strong - n >= q.f + 1  # the smallest possible intersection
    assert q.strong + q.f <= n  # reachable with f replicas silent
    assert 3 * q.f < n


def test_invalid_quorum_of_no_replicas() -> None:
    with pytest.raises(InvalidInput):
        Quorum(0)


# ---------------------------------------------------------------------- one replica


def test_single_replica_proposes_and_commits_in_one_step() -> None:
    signer = SIGNERS["n0"]
    alone = Consenters({"n0": (ED25519, signer.public_key_bytes())})
    replica = Replica(
        network=NETWORK,
        app=APP,
        me="n0",
        signer=signer,
        consenters=alone,
        tip=GENESIS,
        safety=None,
        timing=TIMING,
        now_ms=NOW,
    )
    assert replica.on_pending(True, NOW).propose == (0, 0)
    block = make_block(proposer="n0")
    out = replica.on_payload(block, NOW)
    assert out.send == []  # nobody to send to
    assert [b for b, _ in out.commits] == [block]
    (_, qc) = out.commits[0]
    assert qc.phase is Phase.COMMIT and len(qc.signatures) == 1
    assert check_commit_certificate(NETWORK, alone, block.header, qc) is None
    assert out.persist is not None and out.persist.commit_voted == 0


# ------------------------------------------------------------------------ happy path


def test_happy_path_prepare_lock_commit_then_next_height() -> None:
    replica = new_replica()
    block = make_block()
    out = replica.on_message("n1", sign_proposal("n1", 0, block), NOW)
    (vote,) = sent_votes(out)
    assert (vote.phase, vote.round, vote.block, vote.voter) == (
        Phase.PREPARE,
        0,
        block.header.hash,
        "n0",
    )
    assert out.persist is not None and out.persist.prepare_voted == 0
    assert out.persist_block == block

    first, second = deliver_votes(replica, Phase.PREPARE, 0, block, ("n1", "n2"))
    assert sent_votes(first) == [] and first.persist is None  # two votes: no certificate
    (commit_vote,) = sent_votes(second, Phase.COMMIT)
    assert commit_vote.block == block.header.hash
    assert second.persist is not None and second.persist.commit_voted == 0
    assert second.persist.lock is not None and second.persist.lock.block == block.header.hash

    first, second = deliver_votes(replica, Phase.COMMIT, 0, block, ("n1", "n2"))
    assert first.commits == []
    assert [b for b, _ in second.commits] == [block]
    qc = second.commits[0][1]
    assert check_commit_certificate(NETWORK, CONSENTERS, block.header, qc) is None
    assert "decided" in second.events

    out = replica.on_applied(compute_tip_after(block), NOW + 10)
    assert (replica.height, replica.round) == (1, 0)
    assert replica.leader(0) == "n1"  # the last proposer keeps the lead
    following = make_block(compute_tip_after(block), ts=NOW + 20)
    out = replica.on_message("n1", sign_proposal("n1", 0, following), NOW + 20)
    assert [(v.height, v.round) for v in sent_votes(out)] == [(1, 0)]


def test_late_vote_after_quorum_does_not_form_a_second_certificate() -> None:
    replica = new_replica()
    block = make_block()
    replica.on_message("n1", sign_proposal("n1", 0, block), NOW)
    deliver_votes(replica, Phase.PREPARE, 0, block, ("n1", "n2"))
    (late,) = deliver_votes(replica, Phase.PREPARE, 0, block, ("n3",))
    assert sent_votes(late) == [] and late.persist is None


# ------------------------------------------------------------- persist before send


class Disk:
    """The driver's side of the contract: persist first, then check what leaves."""

    def __init__(self) -> None:
        self.state: SafetyState | None = None
        self.sent: set[tuple[str, int, int, int]] = set()

    def process(self, out: Output) -> None:
        fresh = {self.key(m) for _, m in out.send if self.key(m)[0] != "other"} - self.sent
        if fresh:
            assert out.persist is not None, f"{fresh} sent without a state to persist"
        if out.persist is not None:
            self.state = out.persist
        for _, msg in out.send:
            self.check_covered(msg)
            self.sent.add(self.key(msg))

    @staticmethod
    def key(msg: object) -> tuple[str, int, int, int]:
        if isinstance(msg, Vote):
            return ("vote", int(msg.phase), msg.height, msg.round)
        if isinstance(msg, TimeoutMsg):
            return ("timeout", 0, msg.height, msg.round)
        if isinstance(msg, ProposalMsg):
            return ("proposal", 0, msg.height, msg.round)
        return ("other", 0, 0, 0)

    def check_covered(self, msg: object) -> None:
        kind, phase, height, round_ = self.key(msg)
        if kind == "other":
            return
        state = self.state
        assert state is not None and state.height == height, f"{kind} at {height} not durable"
        covered = {
            ("vote", int(Phase.PREPARE)): state.prepare_voted,
            ("vote", int(Phase.COMMIT)): state.commit_voted,
            ("timeout", 0): state.timed_out,
            ("proposal", 0): state.proposed,
        }[(kind, phase)]
        assert covered >= round_, f"{kind} of round {round_} sent, durable: {state}"


def test_every_vote_timeout_and_proposal_is_durable_before_it_is_sent() -> None:
    disk = Disk()
    replica = new_replica()
    block = make_block()
    disk.process(replica.on_message("n1", sign_proposal("n1", 0, block), NOW))
    for out in deliver_votes(replica, Phase.PREPARE, 0, block, ("n1", "n2")):
        disk.process(out)
    for out in deliver_votes(replica, Phase.COMMIT, 0, block, ("n1", "n2")):
        disk.process(out)
    tip = replace(compute_tip_after(block), last_proposer="n3")  # n0 leads round 1
    disk.process(replica.on_applied(tip, NOW))
    disk.process(replica.on_pending(True, NOW))
    disk.process(replica.on_tick(NOW + 1_000))  # own timeout
    disk.process(replica.on_tick(NOW + 2_000))  # re-sent
    disk.process(replica.on_message("n1", sign_timeout("n1", 1, 0), NOW + 2_001))
    out = replica.on_message("n2", sign_timeout("n2", 1, 0), NOW + 2_002)
    disk.process(out)
    assert replica.round == 1 and out.propose == (1, 1)
    out = replica.on_payload(make_block(tip, ts=NOW + 2_003, proposer="n0"), NOW + 2_003)
    disk.process(out)
    kinds = {key[0] for key in disk.sent}
    assert kinds == {"vote", "timeout", "proposal"}
    assert ("vote", int(Phase.PREPARE), 1, 1) in disk.sent  # voted for its own proposal


# ------------------------------------------------------------------------- restarts


def test_restarted_replica_never_votes_twice_in_a_round() -> None:
    block = make_block()
    first = new_replica()
    out = first.on_message("n1", sign_proposal("n1", 0, block), NOW)
    assert len(sent_votes(out)) == 1
    saved, saved_block = out.persist, out.persist_block
    assert saved is not None and saved_block == block

    conflicting = make_block(salt=1)
    assert conflicting.header.hash != block.header.hash
    again = new_replica(safety=saved, voted_block=saved_block)
    assert sent_votes(again.on_message("n1", sign_proposal("n1", 0, block), NOW)) == []
    assert sent_votes(again.on_message("n1", sign_proposal("n1", 0, conflicting), NOW)) == []

    fresh = new_replica(safety=saved, voted_block=saved_block)  # the conflict arrives first
    out = fresh.on_message("n1", sign_proposal("n1", 0, conflicting), NOW)
    assert sent_votes(out) == []


def test_restarted_replica_keeps_its_lock_and_commit_vote() -> None:
    block = make_block()
    replica = lock_on(block)
    saved = replica.safety
    assert saved.commit_voted == 0
    again = new_replica(safety=saved)
    outs = deliver_votes(again, Phase.PREPARE, 0, block, OTHERS)
    assert all(sent_votes(o) == [] for o in outs)  # certificate seen again: no second vote
    other = make_block(salt=1, proposer="n2")
    tc = make_tc(0, 0)  # n1..n3 report no certificate; n0 (locked) is not among them
    out = again.on_message("n2", sign_proposal("n2", 1, other, tc=tc), NOW)
    assert again.safety.lock is not None and again.safety.lock.block == block.header.hash
    assert [v.block for v in sent_votes(out)] == [other.header.hash]


def test_safety_state_of_an_older_height_is_ignored() -> None:
    block = make_block()
    old = SafetyState(height=0, round=3, prepare_voted=3, timed_out=2)
    tip = compute_tip_after(block)
    replica = new_replica(tip=tip, safety=old)
    assert replica.round == 0
    following = make_block(tip, ts=NOW + 1)
    out = replica.on_message("n1", sign_proposal("n1", 0, following), NOW + 1)
    assert [(v.height, v.round) for v in sent_votes(out)] == [(1, 0)]


# ---------------------------------------------------------------- faulty messages


def test_invalid_equivocating_proposal() -> None:
    replica = new_replica()
    replica.on_message("n1", sign_proposal("n1", 0, make_block()), NOW)
    out = replica.on_message("n1", sign_proposal("n1", 0, make_block(salt=1)), NOW)
    assert out.rejected == ["equivocation"]
    assert sent_votes(out) == [] and out.persist is None


def test_invalid_double_vote() -> None:
    replica = new_replica()
    block, other = make_block(), make_block(salt=1)
    replica.on_message("n1", sign_proposal("n1", 0, block), NOW)  # n0 votes for block
    deliver_votes(replica, Phase.PREPARE, 0, block, ("n1",))
    out = replica.on_message("n1", sign_vote("n1", Phase.PREPARE, 0, 0, other.header.hash), NOW)
    assert out.rejected == ["double_vote"]
    outs = deliver_votes(replica, Phase.PREPARE, 0, other, ("n2", "n3"))
    # Counted, n1's second vote would make a certificate for `other` (n1, n2, n3).
    assert all(sent_votes(o) == [] for o in outs)
    assert replica.safety.lock is None


def test_invalid_bad_signature_on_vote() -> None:
    replica = new_replica()
    block = make_block()
    replica.on_message("n1", sign_proposal("n1", 0, block), NOW)
    bad = with_bad_signature(sign_vote("n1", Phase.PREPARE, 0, 0, block.header.hash))
    out = replica.on_message("n1", bad, NOW)
    assert out.rejected == ["vote_bad_signature"]
    (after,) = deliver_votes(replica, Phase.PREPARE, 0, block, ("n2",))
    assert sent_votes(after) == [] and replica.safety.lock is None  # n0 + n2 only


def test_invalid_bad_signature_on_proposal() -> None:
    replica = new_replica()
    out = replica.on_message("n1", with_bad_signature(sign_proposal("n1", 0, make_block())), NOW)
    assert out.rejected == ["proposal_bad_signature"]
    assert out.send == [] and out.persist is None


def test_invalid_bad_signature_on_timeout() -> None:
    replica = new_replica()
    out = replica.on_message("n1", with_bad_signature(sign_timeout("n1", 0, 0)), NOW)
    assert out.rejected == ["timeout_bad_signature"]
    out = replica.on_message("n2", sign_timeout("n2", 0, 0), NOW)
    assert sent_timeouts(out) == []  # one valid timeout is not f + 1


def test_invalid_qc_too_few_signatures_in_a_proposal() -> None:
    replica = new_replica()
    block = make_block(proposer="n1")
    justify = make_qc(Phase.PREPARE, 0, 0, block.header.hash, ("n1", "n2"))
    out = replica.on_message("n2", sign_proposal("n2", 1, block, justify=justify), NOW)
    assert out.rejected == ["qc_too_few_signatures"]
    assert out.send == [] and replica.round == 0 and replica.safety.lock is None


def test_invalid_qc_too_few_signatures_in_a_sync_response() -> None:
    replica = new_replica()
    block = make_block()
    qc = make_qc(Phase.COMMIT, 0, 0, block.header.hash, ("n1", "n2"))
    out = replica.on_synced("n1", SyncResponse(APP, ((block, qc),)), NOW)
    assert out.rejected == ["sync:qc_too_few_signatures"]
    assert out.commits == []


def test_invalid_qc_forged_signature() -> None:
    replica = new_replica()
    block = make_block(proposer="n1")
    good = make_qc(Phase.PREPARE, 0, 0, block.header.hash)
    n3_other_round = sign_vote("n3", Phase.PREPARE, 0, 5, block.header.hash).signature
    forged = replace(good, signatures=(*good.signatures[:2], ("n3", n3_other_round)))
    out = replica.on_message("n2", sign_proposal("n2", 1, block, justify=forged), NOW)
    assert out.rejected == ["qc_bad_signature"]
    assert out.send == [] and replica.round == 0
    assert check_certificate(NETWORK, CONSENTERS, good) is None
    assert check_certificate("othernet", CONSENTERS, good) == "qc_bad_signature"


def test_invalid_qc_signed_by_a_non_member() -> None:
    block = make_block()
    qc = make_qc(Phase.COMMIT, 0, 0, block.header.hash, ("n1", "n2"))
    digest = compute_vote_digest(NETWORK, APP, Phase.COMMIT, 0, 0, block.header.hash)
    outsider = OUTSIDER.sign(bytes(digest))
    padded = replace(qc, signatures=(*qc.signatures, ("n9", outsider)))
    assert check_commit_certificate(NETWORK, CONSENTERS, block.header, padded) == (
        "qc_bad_signature"
    )


def test_invalid_qc_with_a_repeated_voter() -> None:
    block = make_block()
    qc = make_qc(Phase.COMMIT, 0, 0, block.header.hash, ("n1", "n2"))
    repeated = replace(qc, signatures=(*qc.signatures, qc.signatures[0]))
    assert check_certificate(NETWORK, CONSENTERS, repeated) == "qc_too_few_signatures"


def test_invalid_commit_certificate_for_another_block() -> None:
    block, other = make_block(), make_block(salt=1)
    qc = make_qc(Phase.COMMIT, 0, 0, block.header.hash)
    prepare = make_qc(Phase.PREPARE, 0, 0, block.header.hash)
    assert check_commit_certificate(NETWORK, CONSENTERS, block.header, qc) is None
    assert check_commit_certificate(NETWORK, CONSENTERS, other.header, qc) == "qc_not_for_block"
    assert check_commit_certificate(NETWORK, CONSENTERS, block.header, prepare) == (
        "qc_not_for_block"
    )


def test_invalid_tc_with_a_repeated_voter() -> None:
    replica = lock_on(make_block())
    entry = make_tc(0, 0, ("n2",)).entries[0]
    fake = TimeoutCert(APP, 0, 0, (entry, entry, entry), None)
    other = make_block(salt=1, proposer="n2")
    out = replica.on_message("n2", sign_proposal("n2", 1, other, tc=fake), NOW)
    assert out.rejected == ["tc_too_few_signatures"]
    assert sent_votes(out) == [] and replica.round == 0


def test_invalid_message_from_non_member() -> None:
    replica = new_replica()
    vote = sign_vote("n1", Phase.PREPARE, 0, 0, make_block().header.hash)
    out = replica.on_message("n9", vote, NOW)
    assert out.rejected == ["not_a_consenter"]
    assert out.send == [] and out.persist is None


def test_invalid_vote_by_a_non_member_relayed_by_a_member() -> None:
    replica = new_replica()
    block = make_block()
    digest = compute_vote_digest(NETWORK, APP, Phase.PREPARE, 0, 0, block.header.hash)
    vote = Vote(APP, Phase.PREPARE, 0, 0, block.header.hash, "n9", OUTSIDER.sign(bytes(digest)))
    assert replica.on_message("n1", vote, NOW).rejected == ["vote_bad_signature"]


def test_invalid_wrong_channel() -> None:
    replica = new_replica()
    block = make_block()
    digest = compute_vote_digest(NETWORK, "otherapp", Phase.PREPARE, 0, 0, block.header.hash)
    sig = SIGNERS["n1"].sign(bytes(digest))
    vote = Vote("otherapp", Phase.PREPARE, 0, 0, block.header.hash, "n1", sig)
    out = replica.on_message("n1", vote, NOW)
    assert out.rejected == ["wrong_channel"]
    assert out.send == []


def test_invalid_proposal_not_from_leader() -> None:
    replica = new_replica()
    out = replica.on_message("n2", sign_proposal("n2", 0, make_block(proposer="n2")), NOW)
    assert out.rejected == ["proposal_not_from_leader"]
    assert out.send == [] and out.persist is None


def test_invalid_proposal_block_for_another_network() -> None:
    replica = new_replica()
    block = make_block()
    alien = Block(replace(block.header, network="othernet"), block.transactions)
    out = replica.on_message("n1", sign_proposal("n1", 0, alien), NOW)
    assert out.rejected == ["block_wrong_channel"]
    assert out.send == []


def test_invalid_replayed_old_message() -> None:
    replica = new_replica()
    block = make_block()
    proposal = sign_proposal("n1", 0, block)
    replica.on_message("n1", proposal, NOW)
    deliver_votes(replica, Phase.PREPARE, 0, block, ("n1", "n2"))
    (_, decided) = deliver_votes(replica, Phase.COMMIT, 0, block, ("n1", "n2"))
    assert len(decided.commits) == 1
    replica.on_applied(compute_tip_after(block), NOW + 1)

    out = replica.on_message("n1", proposal, NOW + 2)
    assert out.rejected == ["stale_height"]
    assert out.serve == [("n1", 0)]
    assert (out.send, out.commits, out.persist) == ([], [], None)
    out = replica.on_message("n2", sign_timeout("n2", 0, 0), NOW + 3)
    assert out.rejected == ["stale_height"]
    assert out.serve == [("n2", 0)]
    assert (out.send, out.persist) == ([], None)
    assert (replica.height, replica.round) == (1, 0)
    # A late vote of the old height is normal: silently dropped.
    late = sign_vote("n3", Phase.COMMIT, 0, 0, block.header.hash)
    out = replica.on_message("n3", late, NOW + 4)
    assert (out.rejected, out.send, out.commits) == ([], [], [])


# ------------------------------------------------------------------------- timeouts


def test_round_timer_sends_a_timeout_when_no_proposal_comes() -> None:
    replica = new_replica()
    out = replica.on_pending(True, NOW)
    assert out.propose is None  # n1 leads round 0
    assert out.timer_ms == NOW + 1_000
    assert sent_timeouts(replica.on_tick(NOW + 999)) == []
    out = replica.on_tick(NOW + 1_000)
    (timeout,) = sent_timeouts(out)
    assert (timeout.height, timeout.round, timeout.high_qc, timeout.voter) == (0, 0, None, "n0")
    assert out.persist is not None and out.persist.timed_out == 0
    assert "timeout" in out.events
    again = replica.on_tick(NOW + 2_000)  # re-sent until the round moves
    assert [t.round for t in sent_timeouts(again)] == [0]


def test_idle_replica_never_times_out() -> None:
    replica = new_replica()
    out = replica.on_tick(NOW + 10**6)
    assert out.send == [] and out.timer_ms is None


def test_f_plus_one_timeouts_make_the_replica_join_and_n_minus_f_change_round() -> None:
    replica = new_replica()
    out = replica.on_message("n1", sign_timeout("n1", 0, 0), NOW)
    assert sent_timeouts(out) == [] and replica.round == 0
    out = replica.on_message("n2", sign_timeout("n2", 0, 0), NOW + 5)
    assert [t.round for t in sent_timeouts(out)] == [0]  # joined: f + 1 = 2
    assert replica.round == 1  # its own timeout made n - f = 3
    assert out.persist is not None and out.persist.round == 1
    tc = out.persist.last_tc
    assert tc is not None and tc.round == 0
    assert [voter for voter, _, _ in tc.entries] == ["n0", "n1", "n2"]
    assert "new_round" in out.events
    assert out.timer_ms == NOW + 5 + 2_000  # round 1 waits twice as long


def test_timeouts_after_own_timeout_form_a_certificate() -> None:
    replica = new_replica()
    replica.on_pending(True, NOW)
    replica.on_tick(NOW + 1_000)
    out = replica.on_message("n1", sign_timeout("n1", 0, 0), NOW + 1_001)
    assert replica.round == 0 and sent_timeouts(out) == []
    replica.on_message("n2", sign_timeout("n2", 0, 0), NOW + 1_002)
    assert replica.round == 1


def test_timeout_certificate_from_a_peer_moves_the_replica_forward() -> None:
    replica = new_replica()
    msg = sign_timeout("n1", 0, 3, last_tc=make_tc(0, 2))
    out = replica.on_message("n1", msg, NOW)
    assert replica.round == 3 and out.rejected == []
    assert out.persist is not None and out.persist.last_tc == make_tc(0, 2)


def test_round_timeout_doubles_and_is_capped() -> None:
    timeouts = [compute_round_timeout_ms(TIMING, r) for r in range(6)]
    assert timeouts == [1_000, 2_000, 4_000, 8_000, 8_000, 8_000]
    assert compute_round_timeout_ms(TIMING, 10**9) == 8_000


def test_after_a_timeout_the_next_consenter_leads() -> None:
    replica = new_replica()
    replica.on_message("n1", sign_timeout("n1", 0, 0), NOW)
    replica.on_message("n2", sign_timeout("n2", 0, 0), NOW)
    assert replica.round == 1 and replica.leader(1) == "n2"
    block = make_block(proposer="n1")
    out = replica.on_message("n1", sign_proposal("n1", 1, block), NOW)
    assert out.rejected == ["proposal_not_from_leader"]
    block = make_block(proposer="n2")
    out = replica.on_message("n2", sign_proposal("n2", 1, block), NOW)
    assert [(v.round, v.block) for v in sent_votes(out)] == [(1, block.header.hash)]


def test_replica_leads_the_round_after_its_predecessor_failed() -> None:
    tip = replace(compute_tip_after(make_block()), last_proposer="n3")
    replica = new_replica(tip=tip)
    assert replica.leader(0) == "n3" and replica.leader(1) == "n0"
    replica.on_pending(True, NOW)
    replica.on_message("n1", sign_timeout("n1", 1, 0), NOW)
    out = replica.on_message("n2", sign_timeout("n2", 1, 0), NOW)
    assert out.propose == (1, 1)
    block = make_block(tip, ts=NOW + 1, proposer="n0")
    out = replica.on_payload(block, NOW + 1)
    (proposal,) = sent_proposals(out)
    assert proposal.round == 1 and proposal.block == block
    assert proposal.tc is not None and proposal.tc.round == 0
    assert out.persist is not None and out.persist.proposed == 1


@pytest.mark.parametrize(
    ("height", "round_", "last", "leader"),
    [
        (1, 0, "n1", "n1"),  # the last proposer keeps the lead
        (3, 0, "n1", "n1"),
        (4, 0, "n1", "n2"),  # every term (4) heights the next one takes it
        (8, 0, "n3", "n0"),
        (1, 1, "n1", "n2"),  # each failed round passes it on
        (1, 3, "n1", "n0"),
        (1, 4, "n1", "n1"),
        (5, 2, "n2", "n0"),
        (2, 0, "", "n0"),  # unknown last proposer: the first consenter
    ],
)
def test_compute_leader(height: int, round_: int, last: str, leader: str) -> None:
    assert compute_leader(IDS, height, round_, last, 4) == leader


# ------------------------------------------------------------------------ lock rule


def test_invalid_unsafe_proposal_without_justification() -> None:
    replica = lock_on(make_block())
    replica.on_message("n1", sign_timeout("n1", 0, 1, last_tc=make_tc(0, 0)), NOW)
    assert replica.round == 1
    other = make_block(salt=1, proposer="n2")
    out = replica.on_message("n2", sign_proposal("n2", 1, other), NOW)
    assert out.rejected == ["unsafe_proposal"]
    assert sent_votes(out) == []


def test_invalid_unsafe_proposal_when_the_tc_shows_the_lock() -> None:
    block = make_block()
    replica = lock_on(block)
    lock = make_qc(Phase.PREPARE, 0, 0, block.header.hash)
    tc = make_tc(0, 0, high_qc=lock)  # the quorum reported a certificate at round 0
    other = make_block(salt=1, proposer="n2")
    out = replica.on_message("n2", sign_proposal("n2", 1, other, tc=tc), NOW)
    assert replica.round == 1
    assert out.rejected == ["unsafe_proposal"]
    assert sent_votes(out, Phase.PREPARE) == []


def test_locked_replica_accepts_a_proposal_whose_tc_shows_no_higher_certificate() -> None:
    replica = lock_on(make_block())
    other = make_block(salt=1, proposer="n2")
    out = replica.on_message("n2", sign_proposal("n2", 1, other, tc=make_tc(0, 0)), NOW)
    assert out.rejected == []
    assert [(v.round, v.block) for v in sent_votes(out)] == [(1, other.header.hash)]
    assert out.persist is not None and out.persist.prepare_voted == 1


def test_locked_replica_accepts_a_proposal_justified_above_its_lock() -> None:
    replica = lock_on(make_block())
    other = make_block(salt=1, proposer="n2")
    justify = make_qc(Phase.PREPARE, 0, 1, other.header.hash)
    out = replica.on_message("n3", sign_proposal("n3", 2, other, justify=justify), NOW)
    assert replica.round == 2
    prepares = sent_votes(out, Phase.PREPARE)
    assert [(v.round, v.block) for v in prepares] == [(2, other.header.hash)]
    assert replica.safety.lock == justify


def test_invalid_proposal_justify_for_another_block() -> None:
    replica = new_replica()
    block, other = make_block(), make_block(salt=1)
    justify = make_qc(Phase.PREPARE, 0, 0, other.header.hash)
    out = replica.on_message("n2", sign_proposal("n2", 1, block, justify=justify), NOW)
    assert out.rejected == ["justify_mismatch"]
    assert out.send == []


# ----------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("tip_ts", "block_ts", "reason"),
    [
        (0, NOW + SKEW + 1, "block_time_in_future"),
        (NOW, NOW, "block_time_not_increasing"),
        (NOW, NOW - 1, "block_time_not_increasing"),
        (0, NOW - SKEW - 1, "block_time_too_old"),
    ],
)
def test_invalid_block_time(tip_ts: int, block_ts: int, reason: str) -> None:
    tip = replace(GENESIS, last_timestamp_ms=tip_ts)
    replica = new_replica(tip=tip)
    out = replica.on_message("n1", sign_proposal("n1", 0, make_block(tip, ts=block_ts)), NOW)
    assert out.rejected == [reason]
    assert out.send == [] and out.persist is None


@pytest.mark.parametrize("block_ts", [NOW + SKEW, NOW - SKEW])
def test_block_time_within_the_allowed_skew_is_accepted(block_ts: int) -> None:
    replica = new_replica()
    out = replica.on_message("n1", sign_proposal("n1", 0, make_block(ts=block_ts)), NOW)
    assert out.rejected == [] and len(sent_votes(out)) == 1


# ----------------------------------------------------------------------- divergence


def test_certified_block_with_another_result_root_halts_the_replica() -> None:
    replica = new_replica()
    theirs = make_block(root=compute_test_root(1))
    out = replica.on_message("n1", sign_proposal("n1", 0, theirs), NOW)
    assert out.rejected == ["result_root_mismatch"] and out.send == []
    outs = deliver_votes(replica, Phase.PREPARE, 0, theirs, OTHERS)
    assert replica.halted is not None and "divergence" in replica.halted
    assert outs[-1].halted == replica.halted and "halted" in outs[-1].events
    outs = deliver_votes(replica, Phase.COMMIT, 0, theirs, OTHERS)
    assert all(o.commits == [] and o.send == [] for o in outs)


def test_synced_block_with_another_result_root_halts_the_replica() -> None:
    replica = new_replica()
    theirs = make_block(root=compute_test_root(1))
    qc = make_qc(Phase.COMMIT, 0, 0, theirs.header.hash)
    out = replica.on_synced("n1", SyncResponse(APP, ((theirs, qc),)), NOW)
    assert out.commits == []
    assert out.halted is not None and "divergence" in out.halted


# ------------------------------------------------------------------------- catch-up


def make_chain(length: int) -> list[tuple[Block, QuorumCert, ChainTip]]:
    """Committed blocks from genesis: (block, commit certificate, tip after it)."""
    chain = []
    tip = GENESIS
    for k in range(length):
        block = make_block(tip, ts=NOW - 100 + k, proposer=IDS[1 + k % 3])
        qc = make_qc(Phase.COMMIT, k, 0, block.header.hash)
        tip = compute_tip_after(block, compute_test_root(k))
        chain.append((block, qc, tip))
    return chain


def test_synced_blocks_commit_one_at_a_time() -> None:
    chain = make_chain(3)
    replica = new_replica()
    response = SyncResponse(APP, tuple((b, qc) for b, qc, _ in chain))
    out = replica.on_synced("n2", response, NOW)
    assert out.commits == [chain[0][:2]] and out.rejected == []
    for k in (1, 2):
        out = replica.on_applied(chain[k - 1][2], NOW)
        assert out.commits == [chain[k][:2]]
    out = replica.on_applied(chain[2][2], NOW)
    assert out.commits == [] and replica.height == 3


def test_invalid_sync_pair_with_a_bad_certificate() -> None:
    chain = make_chain(3)
    weak = make_qc(Phase.COMMIT, 1, 0, chain[1][0].header.hash, ("n1", "n2"))
    response = SyncResponse(APP, ((chain[0][0], chain[0][1]), (chain[1][0], weak)))
    replica = new_replica()
    out = replica.on_synced("n2", response, NOW)
    assert out.rejected == ["sync:qc_too_few_signatures"]
    assert out.commits == [chain[0][:2]]
    out = replica.on_applied(chain[0][2], NOW)
    assert out.commits == []


def test_invalid_sync_pair_whose_certificate_names_another_block() -> None:
    chain = make_chain(2)
    response = SyncResponse(APP, ((chain[0][0], chain[1][1]),))
    out = new_replica().on_synced("n2", response, NOW)
    assert out.rejected == ["sync:qc_not_for_block"] and out.commits == []


# ------------------------------------------------------------ bounds and plausibility


def test_invalid_block_over_the_byte_bound_gets_no_vote() -> None:
    replica = Replica(
        network=NETWORK,
        app=APP,
        me="n0",
        signer=SIGNERS["n0"],
        consenters=CONSENTERS,
        tip=GENESIS,
        safety=None,
        timing=replace(TIMING, max_block_bytes=100),
        now_ms=NOW,
    )
    out = replica.on_message("n1", sign_proposal("n1", 0, make_block()), NOW)
    assert "block_too_large" in out.rejected
    assert not sent_votes(out)


def test_plausible_proposal_envelopes() -> None:
    replica = new_replica()
    block = make_block()
    good = sign_proposal("n1", 0, block)
    assert replica.leader(0) == "n1"
    assert replica.is_plausible_proposal(0, 0, "n1", block.header.hash, good.signature)
    assert not replica.is_plausible_proposal(0, 0, "n2", block.header.hash, good.signature)
    forged = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    assert not replica.is_plausible_proposal(0, 0, "n1", block.header.hash, forged)
    assert not replica.is_plausible_proposal(5, 0, "n1", block.header.hash, good.signature)
    # the next height's leader is not known yet: a consenter's valid signature suffices
    nxt = make_block(compute_tip_after(block), proposer="n2")
    signed = sign_proposal("n2", 0, nxt)
    assert replica.is_plausible_proposal(1, 0, "n2", nxt.header.hash, signed.signature)


def test_invalid_next_height_whole_proposal_from_a_non_consenter_is_not_kept() -> None:
    replica = new_replica()
    block = make_block()
    nxt = make_block(compute_tip_after(block), proposer="n9")
    digest = compute_proposal_digest(NETWORK, APP, 1, 0, nxt.header.hash)
    outsider = ProposalMsg(APP, 0, nxt, None, None, "n9", OUTSIDER.sign(bytes(digest)))
    replica.on_message("n9", outsider, NOW)
    assert not replica._future  # nothing kept for later
