"""A pinned attack on the commit-vote rule (found in review, fixed in core._on_qc).

n = 4 with one Byzantine replica (z), before the network stabilises. The honest H
proposes B in round 0 and alone forms its prepare certificate. z moves h' and h3 to
round 1 with a timeout carrying TC(0), then proposes X there without the TC; h' and
h3 (not locked) prepare-vote X. When round 0's prepare votes finally reach h', a
replica that commit-voted for *older* rounds would commit-vote B in round 0 — and B
(round 0) and X (round 1) would both be decided. A replica now commit-votes only in
its current round.
"""

from __future__ import annotations

import hashlib

from meridian.consensus.core import ChainTip, Consenters, Output, Replica, Timing
from meridian.consensus.messages import (
    NO_ROUND,
    Message,
    Phase,
    ProposalMsg,
    TimeoutMsg,
    Vote,
    compute_proposal_digest,
    compute_timeout_digest,
    compute_vote_digest,
)
from meridian.crypto.hashing import Digest
from meridian.crypto.suites import ED25519, Ed25519Signer
from meridian.types import ZERO_DIGEST

from ..sim.simulator import APP, NETWORK, compute_sim_block, make_tx

IDS = [f"n{i}" for i in range(4)]
SIGNERS = {i: Ed25519Signer(hashlib.sha256(i.encode()).digest()) for i in IDS}
CONSENTERS = Consenters({i: (ED25519, s.public_key_bytes()) for i, s in SIGNERS.items()})
TIP = ChainTip(0, ZERO_DIGEST, ZERO_DIGEST, 0, "")


def _vote(voter: str, phase: Phase, round_: int, block: Digest) -> Vote:
    digest = compute_vote_digest(NETWORK, APP, phase, 0, round_, block)
    return Vote(APP, phase, 0, round_, block, voter, SIGNERS[voter].sign(bytes(digest)))


def test_invalid_late_commit_vote_cannot_fork() -> None:
    replicas = {
        i: Replica(
            network=NETWORK,
            app=APP,
            me=i,
            signer=SIGNERS[i],
            consenters=CONSENTERS,
            tip=TIP,
            safety=None,
            timing=Timing(),
            now_ms=0,
        )
        for i in IDS
    }
    sent: dict[str, list[Message]] = {i: [] for i in IDS}
    decided: dict[str, set[Digest]] = {i: set() for i in IDS}

    def record(i: str, out: Output) -> Output:
        sent[i] += [m for _, m in out.send]
        decided[i] |= {b.header.hash for b, _ in out.commits}
        return out

    def feed(i: str, sender: str, msg: Message, t: int) -> None:
        record(i, replicas[i].on_message(sender, msg, t))

    def first(i: str, kind: type, **attrs: object) -> Message:
        return next(
            m
            for m in sent[i]
            if isinstance(m, kind) and all(getattr(m, k) == v for k, v in attrs.items())
        )

    leader, hp, z, h3 = "n1", "n0", "n2", "n3"
    assert replicas[leader].leader(0) == leader and replicas[leader].leader(1) == z
    t = 10
    for i in IDS:
        replicas[i].on_pending(True, 0)
    b = compute_sim_block(TIP, [make_tx(1, 1)], t, leader)
    record(leader, replicas[leader].on_payload(b, t))
    proposal_b = first(leader, ProposalMsg)
    feed(hp, leader, proposal_b, t)
    feed(z, leader, proposal_b, t)  # h3 never sees B
    prepare0 = {i: first(i, Vote, phase=Phase.PREPARE, round=0) for i in (leader, hp, z)}
    feed(leader, hp, prepare0[hp], t)
    feed(leader, z, prepare0[z], t)  # only the leader forms QC(B, 0)

    t = 1200  # round 0 times out at the leader, h3 and z; h' hears none of it
    for i in (leader, h3, z):
        record(i, replicas[i].on_tick(t))
    feed(z, leader, first(leader, TimeoutMsg, round=0), t)
    feed(z, h3, first(h3, TimeoutMsg, round=0), t)
    tc0 = replicas[z].safety.last_tc
    assert tc0 is not None and tc0.round == 0
    digest = compute_timeout_digest(NETWORK, APP, 0, 1, NO_ROUND)
    z_timeout = TimeoutMsg(APP, 0, 1, None, z, SIGNERS[z].sign(bytes(digest)), tc0)
    feed(hp, z, z_timeout, t)
    feed(h3, z, z_timeout, t)

    x = compute_sim_block(TIP, [make_tx(2, 2)], t, z)  # z proposes X in round 1, no TC
    digest = compute_proposal_digest(NETWORK, APP, 0, 1, x.header.hash)
    proposal_x = ProposalMsg(APP, 1, x, None, None, z, SIGNERS[z].sign(bytes(digest)))
    feed(hp, z, proposal_x, t)
    feed(h3, z, proposal_x, t)

    feed(hp, leader, prepare0[leader], t)  # round 0's prepare votes reach h' late
    feed(hp, z, prepare0[z], t)
    commit_b = [m for m in sent[hp] if isinstance(m, Vote) and m.phase is Phase.COMMIT]
    prepare_x = [m for m in sent[hp] if isinstance(m, Vote) and m.block == x.header.hash]
    assert not (commit_b and prepare_x), "h' voted for X in round 1 and committed B in round 0"
    for vote in commit_b:
        feed(leader, hp, vote, t)
    feed(leader, z, _vote(z, Phase.COMMIT, 0, b.header.hash), t)

    # round 1: prepare and commit X at h3
    for vote in prepare_x:
        feed(h3, hp, vote, t)
    feed(h3, z, _vote(z, Phase.PREPARE, 1, x.header.hash), t)
    for vote in [m for m in sent[hp] if isinstance(m, Vote) and m.phase is Phase.COMMIT]:
        feed(h3, hp, vote, t)
    feed(h3, z, _vote(z, Phase.COMMIT, 1, x.header.hash), t)

    all_decided = set().union(*decided.values())
    assert len(all_decided) <= 1, "two different blocks were decided at height 0"
