"""``meridian bench``: committed tx/s and submit-to-commit latency on a local network.

A fresh network of N nodes (one process each, N orgs, BFT consensus; N = 1 runs the
same code with one consenter), all on this machine, with the asset-transfer
contract; clients are spread over the nodes' gateways. Three runs:

1. **throughput** — pre-signed ``create`` proposals sent through the gateway's batch
   path by several concurrent clients; committed tx/s = transactions / wall time
   until the last commit.
2. **latency at half load** — batches paced to half the measured throughput; each
   transaction's submit-to-commit latency is its request's round trip (the gateway
   answers when the block with it is committed). p50 / p99.
3. **lone transaction** — one ``submit`` at a time, p50 / p99.

Proposals are signed before the clock starts: the numbers measure the node, not the
client's signing. The client shares the machine with the node.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from ..cli.procs import free_port_block, start_nodes, stop_processes, wait_healthy
from ..client import Gateway, Identity, connect
from ..client.lifecycle import deploy
from ..errors import MeridianError
from ..network.config import BlockConfig, NetworkLayout
from ..network.init import InitOptions, init_network

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "asset_transfer"
BATCH = 500
CLIENTS = 4
console = Console()


@dataclass
class BenchResult:
    nodes: int
    transactions: int
    seconds: float
    tps: float
    half_load_tps: float
    p50_ms: float
    p99_ms: float
    lone_p50_ms: float
    lone_p99_ms: float
    sandbox: str


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _presign(gw: Gateway, prefix: str, n: int) -> list[dict[str, Any]]:
    calls = [("create", (f"{prefix}-{i}", f"owner-{i % 100}", i)) for i in range(n)]
    return [s.to_dict() for s in gw.builder.build_many("demo", "asset-transfer", calls)]


def _post_batch(gw: Gateway, proposals: list[dict[str, Any]]) -> int:
    body = gw.request(
        "POST",
        "/v1/apps/demo/transactions/batch",
        {"proposals": proposals, "wait": True, "timeout_ms": 120_000},
    )
    bad = [r for r in body["results"] if not r["ok"]]
    if bad:
        raise MeridianError(f"{len(bad)} transactions failed, e.g. {bad[0]}", code="bench_failed")
    return len(body["results"])


def _throughput(gws: list[Gateway], n: int) -> float:
    per_client = n // len(gws)
    signed = [_presign(gw, f"t{i}", per_client) for i, gw in enumerate(gws)]
    done = [0]
    lock = threading.Lock()

    def client(gw: Gateway, proposals: list[dict[str, Any]]) -> None:
        for i in range(0, len(proposals), BATCH):
            count = _post_batch(gw, proposals[i : i + BATCH])
            with lock:
                done[0] += count

    threads = [
        threading.Thread(target=client, args=(gw, s)) for gw, s in zip(gws, signed, strict=True)
    ]
    start = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("throughput", total=per_client * len(gws))
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            bar.update(task, completed=done[0])
            time.sleep(0.1)
    elapsed = time.perf_counter() - start
    return elapsed


def _paced_latency(gw: Gateway, rate: float, seconds: float) -> list[float]:
    ticks_per_s = 20
    per_tick = max(1, int(rate / ticks_per_s))
    total = int(ticks_per_s * seconds)
    signed = _presign(gw, "lat", per_tick * total)
    latencies: list[float] = []
    lock = threading.Lock()
    threads = []

    def send(batch: list[dict[str, Any]]) -> None:
        start = time.perf_counter()
        _post_batch(gw, batch)
        took = (time.perf_counter() - start) * 1000
        with lock:
            latencies.extend([took] * len(batch))

    begin = time.perf_counter()
    for k in range(total):
        time.sleep(max(0.0, begin + k / ticks_per_s - time.perf_counter()))
        t = threading.Thread(target=send, args=(signed[k * per_tick : (k + 1) * per_tick],))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return latencies


def _lone(gw: Gateway, count: int) -> list[float]:
    contract = gw.app("demo").contract("asset-transfer")
    out = []
    for i in range(count):
        start = time.perf_counter()
        contract.submit("create", f"lone-{i}", "solo", i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def run_bench(*, transactions: int, nodes: int = 4, output: Path | None = None) -> BenchResult:
    root = Path(tempfile.mkdtemp(prefix="meridian-bench-"))
    layout = NetworkLayout(root / "network")
    config = init_network(
        layout.root,
        InitOptions(
            orgs=max(2, nodes),
            nodes=nodes,
            base_port=free_port_block(2 * nodes),
            block=BlockConfig(max_txs=2000, timeout_ms=20),
        ),
    )
    procs = start_nodes(layout, config, detach=True)
    try:
        wait_healthy(procs)

        def gateway(url: str, org: str, who: str, timeout_s: float = 60) -> Gateway:
            identity = Identity.from_dir(layout.user_dir(org, who))
            return connect(url, identity, network=config.network, timeout_s=timeout_s)

        node_of = {n.org: n.url for n in config.nodes}  # each org uses its own node
        admins = [
            gateway(node_of.get(o.id, config.nodes[0].url), o.id, "admin") for o in config.orgs
        ]
        installers = [gw for gw, o in zip(admins, config.orgs, strict=True) if o.id in node_of]
        deploy(admins, "demo", EXAMPLE, install_on=installers)
        clients = [config.nodes[k % nodes] for k in range(CLIENTS)]
        gws = [gateway(n.url, n.org, "user1", timeout_s=300) for n in clients]
        _post_batch(gws[0], _presign(gws[0], "warm", 1000))
        elapsed = _throughput(gws, transactions)
        tps = transactions / elapsed
        console.print(f"throughput: {transactions} tx in {elapsed:.2f} s = {tps:,.0f} tx/s")
        latencies = _paced_latency(gws[0], tps / 2, 10.0)
        lone = _lone(gws[0], 50)
        sandbox = admins[0].status()["sandbox"]
    finally:
        stop_processes(procs)
        shutil.rmtree(root, ignore_errors=True)
    result = BenchResult(
        nodes,
        transactions,
        elapsed,
        tps,
        tps / 2,
        _percentile(latencies, 0.5),
        _percentile(latencies, 0.99),
        _percentile(lone, 0.5),
        _percentile(lone, 0.99),
        sandbox,
    )
    console.print(
        f"latency at {result.half_load_tps:,.0f} tx/s: p50 {result.p50_ms:.0f} ms, "
        f"p99 {result.p99_ms:.0f} ms; lone tx: p50 {result.lone_p50_ms:.1f} ms, "
        f"p99 {result.lone_p99_ms:.1f} ms (sandbox {sandbox})"
    )
    if output:
        _append_report(output, result)
    return result


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def _append_report(path: Path, r: BenchResult) -> None:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"\n### {r.nodes} node(s), asset-transfer `create` — {when}\n\n"
        f"- machine: {_machine()}\n- command: `make bench` (`meridian bench --nodes {r.nodes} "
        f"--transactions {r.transactions}`), all nodes and the clients on this machine, "
        f"sandbox `{r.sandbox}`\n\n"
        "| measure | value |\n|---|---|\n"
        f"| committed throughput (batch path, {CLIENTS} clients, {BATCH} per request) "
        f"| {r.tps:,.0f} tx/s |\n"
        f"| submit-to-commit latency at {r.half_load_tps:,.0f} tx/s (half load), p50 / p99 "
        f"| {r.p50_ms:.0f} ms / {r.p99_ms:.0f} ms |\n"
        f"| lone transaction, p50 / p99 | {r.lone_p50_ms:.1f} ms / {r.lone_p99_ms:.1f} ms |\n"
    )
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\nNumbers appended by `make bench`; see "
            "`src/meridian/bench/run.py` for what each run does.\n"
        )
    with path.open("a") as f:
        f.write(text)
