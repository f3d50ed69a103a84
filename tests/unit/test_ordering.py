"""The consensus driver reports a halt everywhere an operator looks, and then stays silent."""

from __future__ import annotations

import asyncio
from pathlib import Path

from meridian.consensus.core import Output
from meridian.consensus.messages import Status, TxForward
from meridian.ledger.store import SqliteLedger
from meridian.node.metrics import NodeMetrics
from meridian.node.ordering import Orderer, OrderingConfig, SafetyStore
from tests.sim.simulator import APP, NETWORK, Scenario, Simulator, make_tx


class RecordingPeers:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def send(self, peer: str, payload: bytes) -> bool:
        self.sent.append((peer, payload))
        return True

    def connected(self) -> list[str]:
        return []


def _orderer(
    tmp_path: Path, ledger: SqliteLedger, peers: RecordingPeers, metrics: NodeMetrics, *extra: str
) -> Orderer:
    """n0 of a 4-node channel (plus ``extra`` member nodes) that never signs."""
    consenters = Simulator(Scenario(seed=1, n=4)).consenters
    return Orderer(
        network=NETWORK,
        app=APP,
        me="n0",
        signer=None,  # type: ignore[arg-type]  # never signs here
        consenters=lambda: consenters,
        members=(*consenters.ids, *extra),
        config=OrderingConfig(),
        safety=SafetyStore(tmp_path, APP),
        ledger=ledger,
        peers=peers,
        metrics=metrics,
    )


def test_a_halted_channel_is_reported_and_says_nothing_more(tmp_path: Path) -> None:
    peers, metrics = RecordingPeers(), NodeMetrics()
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    orderer = _orderer(tmp_path, ledger, peers, metrics)

    async def scenario() -> None:
        orderer._process(Output(halted="divergence at height 3: certified result root differs"))
        orderer._process(Output(send=[(None, Status(APP, 3))]))

    try:
        asyncio.run(scenario())
    finally:
        ledger.close()
    assert orderer.halted is not None and "divergence" in orderer.halted
    assert orderer.status()["halted"] == orderer.halted
    assert b'meridian_channel_halted{app="simapp"} 1.0' in metrics.render()
    assert peers.sent == []  # nothing leaves a halted channel


class _IdleReplica:
    """Just what Orderer.on_message needs of a running replica for forwarded txs."""

    height = round = 0

    def on_pending(self, has_work: bool, now: int) -> Output:
        return Output()


def test_transactions_forwarded_by_an_observer_are_refused(tmp_path: Path) -> None:
    """An observer (a regulator's node) follows the channel but never feeds its
    mempool: its gateway refuses writes, and so do the channel's other nodes."""
    metrics = NodeMetrics()
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    orderer = _orderer(tmp_path, ledger, RecordingPeers(), metrics, "obs")
    orderer.observers = frozenset({"obs"})
    orderer.replica = _IdleReplica()  # type: ignore[assignment]

    async def scenario() -> None:
        orderer.on_message("obs", TxForward(APP, (make_tx(0, 1),)))
        assert len(orderer.mempool) == 0
        orderer.on_message("n1", TxForward(APP, (make_tx(0, 2),)))
        assert len(orderer.mempool) == 1

    try:
        asyncio.run(scenario())
    finally:
        ledger.close()
    assert b'reason="forwarded_tx_from_observer"} 1.0' in metrics.render()


def test_the_safety_store_sweeps_temp_files_a_crash_left(tmp_path: Path) -> None:
    (tmp_path / f".{APP}.voted.json.k2j3.tmp").write_bytes(b"half a block")
    (tmp_path / f".{APP}.safety.json.x9.tmp").write_bytes(b"{")
    (tmp_path / ".other.voted.json.a1.tmp").write_bytes(b"another channel's")
    store = SafetyStore(tmp_path, APP)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.voted.json.a1.tmp"]
    assert store.load() is None and store.load_block() is None
