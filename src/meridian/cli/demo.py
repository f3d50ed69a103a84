"""The showcase behind ``make demo``: a local network running the example contract."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rich.rule import Rule

from ..client import Gateway, Identity, connect
from ..client.core import Receipt
from ..client.lifecycle import deploy
from ..errors import MeridianError
from ..network.config import NetworkConfig, NetworkLayout
from ..network.init import InitOptions, init_network
from ..node.verify import verify_node
from .common import console
from .procs import free_port_block, start_nodes, stop_processes, wait_healthy

DEMO_NODES = 4
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "asset_transfer"


def _show(label: str, receipt: Receipt) -> None:
    colour = "green" if receipt.valid else "red"
    console.print(
        f"  [{colour}]{receipt.code:<20}[/] block {receipt.block:<3} "
        f"tx {receipt.tx_id[:12]}…  {label}"
    )


def run_demo(*, keep: bool = False) -> None:
    """Init a 4-org, 4-node network, start its nodes, deploy, run the scenario, verify."""
    root = Path(tempfile.mkdtemp(prefix="meridian-demo-"))
    layout = NetworkLayout(root / "network")
    config = init_network(
        layout.root, InitOptions(orgs=DEMO_NODES, nodes=DEMO_NODES, base_port=free_port_block(8))
    )
    console.print(Rule("Meridian demo"))
    console.print(
        f"network [bold]{config.network}[/] in {layout.root}: orgs "
        f"{', '.join(o.id for o in config.orgs)}, app [bold]demo[/]; nodes (one process "
        "each, BFT consensus tolerating 1 faulty node):"
    )
    for entry in config.nodes:
        console.print(f"  {entry.id} of {entry.org}: gateway {entry.url}, peers :{entry.p2p_port}")
    procs = start_nodes(layout, config, detach=True)
    try:
        with console.status("starting the nodes..."):
            wait_healthy(procs)
        _scenario(layout, config)
    finally:
        stop_processes(procs)
    _verify(layout)
    if keep:
        console.print(f"network kept in {layout.root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    console.print(Rule("[green]demo finished[/]"))


def _gateway(layout: NetworkLayout, url: str, network: str, org: str, name: str) -> Gateway:
    return connect(url, Identity.from_dir(layout.user_dir(org, name)), network=network)


def _scenario(layout: NetworkLayout, config: NetworkConfig) -> None:
    network, url = config.network, config.nodes[0].url
    admins = [_gateway(layout, entry.url, network, entry.org, "admin") for entry in config.nodes]
    user = _gateway(layout, url, network, "org1", "user1")
    try:
        orgs = ", ".join(entry.org for entry in config.nodes)
        console.print(Rule(f"1. deploy asset-transfer: install and approve ({orgs}), commit"))
        definition = deploy(admins, "demo", EXAMPLE, install_on=admins)
        console.print(
            f"  committed {definition['name']} v{definition['version']} sequence "
            f"{definition['sequence']}, policy {definition['policy']}"
        )
        contract = user.app("demo").contract("asset-transfer")

        console.print(Rule("2. transactions through the gateway (SDK)"))
        for asset, owner, value in (
            ("car-1", "alice", 30_000),
            ("bike-7", "alice", 900),
            ("boat-3", "bob", 120_000),
        ):
            _show(
                f"create {asset} for {owner}",
                contract.submit_receipt("create", asset, owner, value),
            )
        _show(
            "transfer car-1 alice -> carol", contract.submit_receipt("transfer", "car-1", "carol")
        )
        console.print(
            f"  by_owner('alice') = {[a['id'] for a in contract.evaluate('by_owner', 'alice')]}"
        )
        console.print(f"  count() = {contract.evaluate('count')}")
        history = contract.evaluate("history", "car-1")
        console.print(
            "  history(car-1) = "
            + " -> ".join(f"{h['value']['owner']}@block{h['block']}" for h in history)
        )

        console.print(Rule("3. an MVCC conflict: two transfers of bike-7 in one block"))
        results = contract.submit_many(
            [("transfer", ["bike-7", "dave"]), ("transfer", ["bike-7", "erin"])]
        )
        for result, who in zip(results, ("dave", "erin"), strict=True):
            if isinstance(result, Receipt):
                _show(f"transfer bike-7 -> {who}", result)
            else:
                receipt = (result.details or {}).get("receipt") or {}
                console.print(
                    f"  [red]{receipt.get('code', result.code):<20}[/] block "
                    f"{receipt.get('block')!s:<3} rejected: transfer bike-7 -> {who} "
                    f"([bold]{result.code}[/])"
                )
        console.print(f"  bike-7 is owned by {contract.evaluate('read', 'bike-7')['owner']}")

        console.print(Rule("4. one ledger on every node"))
        _show_heights(layout, config)

        console.print(Rule("5. bad input gets a clear error"))
        for call in (("transfer", "ghost-1", "zoe"), ("create", "x", "y", "not-a-number")):
            try:
                contract.submit(*call)
            except MeridianError as exc:
                console.print(f"  {call[0]}{call[1:]} -> [yellow]{exc.code}[/]: {exc.message}")
    finally:
        for gw in (*admins, user):
            gw.close()


def _show_heights(layout: NetworkLayout, config: NetworkConfig) -> None:
    """Each node's height and latest block hash: the same everywhere once committed."""
    for entry in config.nodes:
        with _gateway(layout, entry.url, config.network, entry.org, "user1") as gw:
            app = gw.status()["apps"]["demo"]
            block = gw.app("demo").block("latest")
        header = block["block"]["header"]
        console.print(
            f"  {entry.id}: height {app['height']}, block {header['number']} proposed by "
            f"{header['proposer']}, leader {app['consensus']['leader']}, peers "
            f"{sum(app['consensus']['peers'].values())}/{len(app['consensus']['peers'])}"
        )


def _verify(layout: NetworkLayout) -> None:
    console.print(Rule("6. meridian ledger verify (every node)"))
    config = layout.load()
    for entry in config.nodes:
        reports = dict(verify_node(layout, entry.id))
        problems = [f"{app}: {p}" for app, r in reports.items() for p in r.problems]
        if problems:
            raise MeridianError("; ".join(problems), code="verify_failed")
        report = reports[config.apps[0].name]
        console.print(
            f"  [green]ok[/] {entry.id}: {report.blocks} blocks, {report.transactions} txs "
            f"({report.valid} valid), {report.state_keys} state keys; hash chain, "
            "Merkle roots, commit certificates, verdicts and state re-checked"
        )
