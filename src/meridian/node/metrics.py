"""Prometheus metrics of one node (served at ``GET /metrics`` by the gateway).

Each node has its own registry, so that several nodes in one process (tests) keep
their numbers apart. Names follow Prometheus conventions: ``_total`` for counters,
base units (seconds, bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NodeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.blocks = Counter("meridian_blocks_committed", "Blocks committed", ["app"], registry=r)
        self.txs = Counter(
            "meridian_transactions_committed",
            "Transactions committed (valid or not)",
            ["app"],
            registry=r,
        )
        self.height = Gauge("meridian_ledger_height", "Blocks in the ledger", ["app"], registry=r)
        self.round = Gauge("meridian_consensus_round", "Current round", ["app"], registry=r)
        self.rounds = Counter(
            "meridian_consensus_round_changes", "Round changes (failed rounds)", ["app"], registry=r
        )
        self.timeouts = Counter(
            "meridian_consensus_timeouts", "Timeouts this node sent", ["app"], registry=r
        )
        self.rejected = Counter(
            "meridian_consensus_rejected_messages",
            "Consensus messages rejected, by reason",
            ["app", "reason"],
            registry=r,
        )
        self.mempool = Gauge(
            "meridian_mempool_transactions",
            "Transactions waiting to be ordered",
            ["app"],
            registry=r,
        )
        self.halted = Gauge(
            "meridian_channel_halted",
            "1 if the channel stopped (divergence, disk)",
            ["app"],
            registry=r,
        )
        self.commit_latency = Histogram(
            "meridian_commit_latency_seconds",
            "From acceptance by this node to commit, for transactions it accepted",
            ["app"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.p2p = Gauge(
            "meridian_p2p", "Peer-to-peer transport counters, by name", ["counter"], registry=r
        )
        self.peers = Gauge("meridian_p2p_peers_connected", "Connected peers", registry=r)
        self._refresh: list[Callable[[], None]] = []

    def watch_transport(
        self, stats: Callable[[], Mapping[str, int]], peers: Callable[[], int]
    ) -> None:
        """Read the transport's counters at every scrape."""

        def refresh() -> None:
            for name, value in stats().items():
                self.p2p.labels(name).set(value)
            self.peers.set(peers())

        self._refresh.append(refresh)

    def render(self) -> bytes:
        for refresh in self._refresh:
            refresh()
        return generate_latest(self.registry)
