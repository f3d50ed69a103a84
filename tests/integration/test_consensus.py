"""Four node processes of four orgs on loopback, ordering with BFT consensus.

Every node commits the same blocks whichever gateway a transaction came through;
the network keeps committing with one node killed; with two of four down it stops
(no quorum) but loses nothing acknowledged; restarted nodes catch up; a node whose
ledger was wiped syncs again from genesis; garbage on the peer port is refused and
counted. At the end every ledger passes `meridian ledger verify` (certificates too).
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from meridian.client import Gateway, Receipt
from meridian.client.lifecycle import set_consenters
from meridian.errors import MeridianError
from meridian.types import Proposal

from .conftest import RunningNetwork, make_network, verify_ledgers

pytestmark = pytest.mark.slow
APP = "demo"
CONTRACT = "asset-transfer"


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    net = make_network(tmp_path_factory.mktemp("quad"), orgs=4, nodes=4)
    net.start()
    try:
        net.deploy()
        yield net
    finally:
        net.kill()


def _status(net: RunningNetwork, node_id: str) -> dict[str, Any]:
    entry = net.config.node(node_id)
    with net.gateway(f"{entry.org}/user1", url=entry.url, timeout_s=5) as gw:
        return gw.status()["apps"][APP]


def _wait_same_height(net: RunningNetwork, nodes: list[str], timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        heights = {n: _status(net, n)["height"] for n in nodes}
        if len(set(heights.values())) == 1:
            return heights[nodes[0]]
        assert time.monotonic() < deadline, f"nodes did not converge: {heights}"
        time.sleep(0.2)


def _block_hashes(net: RunningNetwork, node_id: str, height: int) -> list[str]:
    entry = net.config.node(node_id)
    with net.gateway(f"{entry.org}/user1", url=entry.url) as gw:
        return [gw.app(APP).block(n)["hash"] for n in range(height)]


def test_every_node_commits_the_same_blocks(quad: RunningNetwork) -> None:
    receipts = []
    for entry in quad.config.nodes:  # each org's client through its own node
        with quad.gateway(f"{entry.org}/user1", url=entry.url) as gw:
            contract = gw.app(APP).contract(CONTRACT)
            for i in range(3):
                receipts.append(contract.submit_receipt("create", f"{entry.id}-{i}", entry.org, i))
    with quad.gateway("org3/user1", url=quad.config.node("node3").url) as gw:
        # batch-signed by the client and endorsed in a signed batch by node3: every
        # other node must judge them the same (a divergence would halt it, below)
        calls = [("create", [f"batch-{i}", "org3", i]) for i in range(20)]
        receipts += gw.app(APP).contract(CONTRACT).submit_many(calls)
    assert all(isinstance(r, Receipt) and r.valid for r in receipts), receipts
    ids = [n.id for n in quad.config.nodes]
    height = _wait_same_height(quad, ids)
    reference = _block_hashes(quad, ids[0], height)
    for node_id in ids[1:]:
        assert _block_hashes(quad, node_id, height) == reference
    for node_id in ids:
        consensus = _status(quad, node_id)["consensus"]
        assert consensus["halted"] is None
        assert all(consensus["peers"].values()), consensus["peers"]
        assert consensus["consenters"] == ids
    with quad.gateway("org2/user1", url=quad.config.node("node2").url) as gw:
        block = gw.app(APP).block(receipts[0].block)
        certificate = block["certificate"]
        assert certificate["phase"] == 2 and certificate["block"] == block["hash"]
        assert len(certificate["signatures"]) >= 3  # a quorum of 4
        evaluated = gw.app(APP).contract(CONTRACT).evaluate("read", "node1-0")
        assert evaluated["owner"] == "org1"
    metrics = httpx.get(f"{quad.config.node('node3').url}/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line and not line.startswith("#")
    }
    assert values['meridian_blocks_committed_total{app="demo"}'] >= height - 1
    assert values['meridian_ledger_height{app="demo"}'] == height
    assert values['meridian_mempool_transactions{app="demo"}'] == 0
    assert values['meridian_commit_latency_seconds_count{app="demo"}'] >= 3  # its own txs
    assert values["meridian_p2p_peers_connected"] == 3


def test_invalid_peer_traffic_is_refused_and_counted(quad: RunningNetwork) -> None:
    target = quad.config.node("node2")
    with socket.create_connection((target.host, target.p2p_port), timeout=5) as raw:
        raw.sendall(b"\x16\x03\x01 this is not a TLS client hello" * 10)
        raw.settimeout(5)
        with pytest.raises((OSError, TimeoutError)):
            while raw.recv(4096):
                pass
            raise OSError("closed")
    # a valid org certificate that is not a node's: TLS succeeds, the node refuses it
    user = quad.layout.user_dir("org1", "user1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(user / "cert.pem", user / "key.pem")
    with socket.create_connection((target.host, target.p2p_port), timeout=5) as plain:
        plain.settimeout(5)
        greeting = plain.recv(64)
        assert greeting.startswith(b"MERIDIAN")
        try:
            with ctx.wrap_socket(plain) as tls:
                tls.settimeout(5)
                assert tls.recv(64) == b""  # closed without a preamble
        except (ssl.SSLError, OSError):
            pass  # refused during the handshake: also fine
    metrics = httpx.get(f"{target.url}/metrics").text
    counters = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("meridian_p2p{")
    }
    assert counters["handshake_failures"] >= 1
    assert counters["handshake_failures"] + counters["rejected_peers"] >= 2
    with quad.gateway("org2/user1", url=target.url) as gw:  # still committing
        assert gw.app(APP).contract(CONTRACT).submit_receipt("create", "after-junk", "x", 1).valid


# ------------------------------------------------------------------ crash and catch-up


def _submit_loop(
    gateways: list[Gateway],
    prefix: str,
    acked: dict[str, str],
    lock: threading.Lock,
    stop: threading.Event,
) -> None:
    """Submit through the gateways in turn; a dead node is skipped (never acknowledged)."""
    i = 0
    while not stop.is_set():
        gw = gateways[i % len(gateways)]
        i += 1
        try:
            receipt = gw.app(APP).contract(CONTRACT).submit_async("create", f"{prefix}-{i}", "c", i)
        except (httpx.TransportError, MeridianError):
            time.sleep(0.05)
            continue
        with lock:
            acked[receipt.tx_id] = f"{prefix}-{i}"


def _committed(ledger: Path) -> Counter[str]:
    """How many times each transaction id occurs in the stored blocks of a ledger."""
    seen: Counter[str] = Counter()
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as conn:
        for (body,) in conn.execute("SELECT body FROM blocks ORDER BY number"):
            for tx in orjson.loads(body):
                seen[Proposal.from_dict(tx["signed_proposal"]["proposal"]).tx_id] += 1
    return seen


def test_leader_and_another_node_killed_then_restarted_lose_nothing(tmp_path: Path) -> None:
    net = make_network(tmp_path, orgs=4, nodes=4)
    net.start()
    try:
        net.deploy()
        ids = [n.id for n in net.config.nodes]
        acked: dict[str, str] = {}
        lock, stop = threading.Lock(), threading.Event()
        gateways = [net.gateway(f"{n.org}/user1", url=n.url, timeout_s=5) for n in net.config.nodes]
        threads = [
            threading.Thread(
                target=_submit_loop, args=(gateways[k:] + gateways[:k], f"c{k}", acked, lock, stop)
            )
            for k in range(2)
        ]
        for t in threads:
            t.start()
        time.sleep(2.0)
        leader = _status(net, ids[0])["consensus"]["leader"]
        net.kill_node(leader)
        survivors = [n for n in ids if n != leader]
        time.sleep(3.0)  # three of four: still a quorum, commits continue
        before = {n: _status(net, n)["height"] for n in survivors}
        time.sleep(2.0)
        after = {n: _status(net, n)["height"] for n in survivors}
        assert all(after[n] > before[n] for n in survivors), (before, after)
        second = survivors[0]
        net.kill_node(second)
        time.sleep(2.0)  # two of four: no quorum; acknowledged transactions wait
        net.start_node(leader)
        net.start_node(second)
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(30)
        for gw in gateways:
            gw.close()
        assert len(acked) > 50, len(acked)
        deadline = time.monotonic() + 90
        while True:  # every acknowledged transaction commits, on every node
            pending = 0
            for entry in net.config.nodes:
                ledger = net.layout.data_dir(entry.id) / "ledgers" / f"{APP}.sqlite"
                pending += len(set(acked) - set(_committed(ledger)))
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        height = _wait_same_height(net, ids)

        # a node that lost its ledger joins again by syncing from genesis
        net.kill_node("node4")
        ledgers = net.layout.data_dir("node4") / "ledgers"
        shutil.rmtree(ledgers)
        net.start_node("node4")
        assert _wait_same_height(net, ids) >= height
    finally:
        net.kill()
    for entry in net.config.nodes:
        counts = _committed(net.layout.data_dir(entry.id) / "ledgers" / f"{APP}.sqlite")
        missing = set(acked) - set(counts)
        assert not missing, f"{entry.id} lacks {len(missing)} acknowledged transactions"
        assert all(counts[tx] == 1 for tx in acked), f"{entry.id} committed a tx twice"
    verify_ledgers(net)


# ------------------------------------------------------------------ reconfiguration


def _set_consenters(net: RunningNetwork, nodes: list[str], sequence: int) -> int:
    """Approve by every member admin (each through its own node), commit; the height
    from which the new set orders."""
    admins = [net.gateway(f"{n.org}/admin", url=n.url) for n in net.config.nodes]
    try:
        committed = set_consenters(admins, APP, nodes)
        assert committed == {"nodes": sorted(nodes), "sequence": sequence}
        return admins[0].seen.body(APP, {})["after_block"]
    finally:
        for gw in admins:
            gw.close()


def _signers(net: RunningNetwork, block: int, via: str = "node3") -> set[str]:
    entry = net.config.node(via)
    with net.gateway(f"{entry.org}/user1", url=entry.url) as gw:
        certificate = gw.app(APP).block(block)["certificate"]
    return {voter for voter, _ in certificate["signatures"]}


def test_consenters_change_by_configuration_transaction(tmp_path: Path) -> None:
    net = make_network(tmp_path, orgs=4, nodes=4)
    net.start()
    ids = [n.id for n in net.config.nodes]
    try:
        net.deploy()
        changed_at = _set_consenters(net, ["node1", "node2", "node3"], 1)
        with net.gateway("org1/user1") as gw:
            contract = gw.app(APP).contract(CONTRACT)
            later = [contract.submit_receipt("create", f"three-{i}", "x", i) for i in range(3)]
        assert all(r.valid for r in later)
        for receipt in later:
            assert receipt.block is not None and receipt.block > changed_at
            assert _signers(net, receipt.block) <= {"node1", "node2", "node3"}
        _wait_same_height(net, ids)  # node4 follows as a non-voting node
        assert _status(net, "node4")["consensus"]["consenters"] == ["node1", "node2", "node3"]

        net.kill_node("node4")  # not a consenter: the network does not notice
        with net.gateway("org2/user1", url=net.config.node("node2").url) as gw:
            assert gw.app(APP).contract(CONTRACT).submit_receipt("create", "no4", "x", 1).valid
        net.start_node("node4")
        _wait_same_height(net, ids)

        _set_consenters(net, ids, 2)  # node4 back as a consenter
        net.kill_node("node1")  # 3 of 4 consenters (node4 among them) keep committing
        with net.gateway("org3/user1", url=net.config.node("node3").url) as gw:
            receipt = gw.app(APP).contract(CONTRACT).submit_receipt("create", "back", "x", 1)
        assert receipt.valid and receipt.block is not None
        assert _signers(net, receipt.block) == {"node2", "node3", "node4"}  # node1 is down
        net.start_node("node1")
        _wait_same_height(net, ids)
    finally:
        net.kill()
    verify_ledgers(net)
