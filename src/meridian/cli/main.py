"""``meridian``: run a network, deploy contracts, submit transactions, check ledgers.

Global options come before the command (``meridian --as org1/admin contract list``)
and can also be set with environment variables (MERIDIAN_NETWORK, MERIDIAN_IDENTITY,
MERIDIAN_URL, MERIDIAN_APP).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from enum import StrEnum
from pathlib import Path

import typer

from ..errors import InvalidInput, MeridianError, NotFound
from ..network.config import BlockConfig
from ..network.init import InitOptions, InitProfile, init_network
from . import consenters, contract, governance, ledger, onboarding, tx
from .common import Settings, console, handle_errors, output, settings
from .procs import running_pids, start_nodes, stop_pids, stop_processes, wait_healthy

DEFAULT_NODES = 4


class SandboxMode(StrEnum):
    AUTO = "auto"
    BWRAP = "bwrap"
    NONE = "none"


app = typer.Typer(
    name="meridian",
    help="Meridian: an open blockchain-based service network. Start with "
    "'meridian network init ./network' then 'meridian up'.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
network_app = typer.Typer(help="Create and inspect network directories.", no_args_is_help=True)
app.add_typer(network_app, name="network")
app.add_typer(contract.app, name="contract")
app.add_typer(consenters.app, name="consenters")
app.add_typer(governance.app, name="gov")
app.add_typer(governance.node_app, name="node")
app.add_typer(tx.app, name="tx")
app.add_typer(tx.block_app, name="block")
app.add_typer(ledger.app, name="ledger")
app.add_typer(onboarding.developer_app, name="developer")
app.add_typer(onboarding.app, name="app")
app.command("events")(tx.events)


@app.callback()
def main(
    ctx: typer.Context,
    network: Path = typer.Option(
        Path("network"),
        "--network",
        "-n",
        envvar="MERIDIAN_NETWORK",
        help="Network directory (made by 'network init').",
    ),
    identity: str = typer.Option(
        None,
        "--as",
        envvar="MERIDIAN_IDENTITY",
        help="Identity: ORG/NAME in the network directory, or a folder with cert.pem and key.pem "
        "(default: user1 of the first operator org, org1/user1 on a default network).",
    ),
    url: str | None = typer.Option(
        None, "--url", envvar="MERIDIAN_URL", help="Gateway URL (default: the first node)."
    ),
    app_name: str | None = typer.Option(
        None, "--app", envvar="MERIDIAN_APP", help="Application (channel); default: the first."
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON output."),
) -> None:
    ctx.obj = Settings(network, identity, url, app_name, json_out)


@network_app.command("init")
def network_init(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="New (empty) network directory."),
    profile: InitProfile = typer.Option(
        InitProfile.DEFAULT,
        "--profile",
        help="default: N operator orgs (org1..), N nodes and one app. pilot: the service "
        "network at one machine's scale: 4 zones (beijing, shanghai, shenzhen, hongkong), "
        "one operator and node per zone, a central bank, 3 banks, a regulator, 12 "
        "enterprises and 8 developers, plans, no apps (--orgs, --nodes, --app-name do "
        "not apply).",
    ),
    orgs: int | None = typer.Option(
        None, help="Number of organisations (each gets a CA, admin, user1); default 4."
    ),
    nodes: int | None = typer.Option(
        None,
        help="Number of nodes (assigned to orgs round robin); 3f+1 nodes tolerate f faulty; "
        "default 4.",
    ),
    app_name: str | None = typer.Option(
        None, "--app-name", help="Name of the first application; default demo."
    ),
    network_id: str = typer.Option("meridian", help="Network id (bound into signatures)."),
    base_port: int = typer.Option(
        7050, help="Gateway port of node1; node N serves its gateway on base+2(N-1), peers on +1."
    ),
    block_max_txs: int = typer.Option(1000, help="Cut a block at this many transactions."),
    block_timeout_ms: int = typer.Option(
        20, help="...or this long after the leader starts building it."
    ),
) -> None:
    """Generate a network: org CAs, node/admin/client identities and genesis config."""
    s = settings(ctx)
    with handle_errors(s.json):
        if profile == InitProfile.PILOT and (orgs, nodes, app_name) != (None, None, None):
            raise InvalidInput(
                "the pilot profile fixes its orgs, nodes and apps",
                code="bad_config",
                hint="drop --orgs, --nodes and --app-name, or use --profile default",
            )
        config = init_network(
            directory,
            InitOptions(
                network=network_id,
                orgs=4 if orgs is None else orgs,
                nodes=4 if nodes is None else nodes,
                app="demo" if app_name is None else app_name,
                base_port=base_port,
                block=BlockConfig(block_max_txs, block_timeout_ms),
                profile=profile.value,
            ),
        )
    by_type = Counter(o.type for o in config.orgs)
    zones = ", ".join(f"{z.id} ({z.kind})" for z in config.zones)
    summary = [
        f"[green]created[/] network [bold]{config.network}[/] ({profile.value} profile) "
        f"in {directory}",
        *([f"zones: {zones}"] if zones else []),
        f"orgs: {len(config.orgs)} ({', '.join(f'{n} {t}' for t, n in by_type.items())})",
        f"nodes: {len(config.nodes)}",
        *(
            f"  {n.id} ({n.org}{', ' + n.zone if n.zone else ''}) at {n.url}, p2p {n.p2p_port}"
            for n in config.nodes
        ),
        f"apps: {', '.join(a.name for a in config.apps) or 'none yet (created via governance)'}",
        f"next: meridian -n {directory} up",
    ]
    output(
        s,
        config.to_dict() | {"directory": str(directory), "profile": profile.value},
        lambda: console.print("\n".join(summary), highlight=False),
    )


@app.command()
def up(
    ctx: typer.Context,
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Start in the background and return once healthy."
    ),
    sandbox: SandboxMode = typer.Option(SandboxMode.AUTO, help="Contract sandbox."),
    nodes: int | None = typer.Option(
        None,
        "--nodes",
        min=1,
        max=64,
        help="If the network directory does not exist yet: create it with this many nodes, "
        "one org each (default 4). An existing network keeps its nodes.",
    ),
) -> None:
    """Run the network's nodes, each its own process (foreground until Ctrl-C, or --detach).

    Creates the network directory first if it does not exist (4 nodes of 4 orgs,
    one app 'demo'); each node logs to <network>/nodes/<node>/data/node.log.
    """
    s = settings(ctx)
    with handle_errors(s.json):
        if not s.layout.config_file.is_file():
            count = nodes or DEFAULT_NODES
            init_network(s.layout.root, InitOptions(orgs=count, nodes=count))
            console.print(f"created network {s.layout.root} ({count} nodes, {count} orgs)")
        config = s.config()
        if nodes is not None and nodes != len(config.nodes):
            raise MeridianError(
                f"network {s.layout.root} has {len(config.nodes)} nodes, not {nodes}",
                code="bad_config",
                hint="drop --nodes, or create a new network with 'network init --nodes N'",
            )
        already = running_pids(s.layout, config)
        if already:
            raise MeridianError(
                f"nodes already running: {', '.join(already)}",
                code="already_running",
                hint="stop them with 'meridian down'",
            )
        with console.status("starting nodes..."):
            procs = start_nodes(s.layout, config, detach=detach, sandbox=sandbox.value)
            try:
                wait_healthy(procs)
            except MeridianError:
                stop_processes(procs)
                raise
        for p in procs:
            console.print(
                f"[green]up[/] {p.entry.id} ({p.entry.org}) at {p.entry.url} pid {p.proc.pid}"
            )
    if detach:
        return
    console.print("running; Ctrl-C stops the network")
    stop = False

    def _on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    while not stop and all(p.proc.poll() is None for p in procs):
        time.sleep(0.2)
    stop_processes(procs)
    console.print("stopped")


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the network's nodes started with 'up --detach'."""
    s = settings(ctx)
    with handle_errors(s.json):
        pids = running_pids(s.layout, s.config())
        if not pids:
            raise NotFound("no running nodes found", code="not_running")
        stop_pids(pids)
    output(
        s,
        {"stopped": sorted(pids)},
        lambda: console.print(f"[green]stopped[/] {', '.join(sorted(pids))}"),
    )


@app.command()
def status(ctx: typer.Context) -> None:
    """Per node and app: height, consensus round and leader, peers connected, pending
    transactions, last commit age (or why the app halted)."""
    from rich.table import Table

    s = settings(ctx)
    with handle_errors(s.json):
        config = s.config()
        rows = []
        for entry in config.nodes:
            try:
                with s.gateway(url=entry.url) as gw:
                    rows.append(gw.status())
            except Exception as exc:
                rows.append({"node": entry.id, "org": entry.org, "down": str(exc)[:80]})

    def human() -> None:
        table = Table(
            "node", "org", "app", "height", "round", "leader", "peers", "pending", "last commit"
        )
        for row in rows:
            if "down" in row:
                table.add_row(row["node"], row["org"], "-", "-", "-", "-", "-", "-", "[red]down[/]")
                continue
            for app_name, a in row["apps"].items():
                age = a["last_commit_age_ms"]
                consensus = a.get("consensus", {})
                peers = consensus.get("peers", {})
                halted = a["halted"]
                table.add_row(
                    row["node"],
                    row["org"],
                    app_name,
                    str(a["height"]),
                    str(consensus.get("round", "-")),
                    str(consensus.get("leader", "-")),
                    f"{sum(peers.values())}/{len(peers)}",
                    str(a["pending"]),
                    f"[red]HALTED: {halted}[/]"
                    if halted
                    else "-"
                    if age is None
                    else f"{age / 1000:.1f}s ago",
                )
        console.print(table)

    output(s, {"nodes": rows}, human)


@app.command()
def demo(
    ctx: typer.Context,
    keep: bool = typer.Option(False, help="Keep the demo network directory afterwards."),
) -> None:
    """Run the showcase on a local pilot network (4 zones, 4 operator nodes): a developer
    registers, creates an app, invites a partner, deploys asset-transfer, transacts, hits
    its plan's rate limit, upgrades and prints its invoice; the regulator audits; every
    ledger is verified."""
    from .demo import run_demo

    s = settings(ctx)
    with handle_errors(s.json):
        run_demo(keep=keep)


@app.command()
def bench(
    ctx: typer.Context,
    transactions: int = typer.Option(
        60_000,
        help="Transactions for the throughput run (enough that filling and draining the "
        "pipeline, about a second, is a small share of it).",
    ),
    nodes: int = typer.Option(
        DEFAULT_NODES, min=1, max=16, help="Nodes (one process and one org each)."
    ),
    output_file: Path | None = typer.Option(None, "--output", help="Append results here."),
) -> None:
    """Measure committed tx/s and submit-to-commit latency on a local network (all nodes
    and the load generator on this machine)."""
    from ..bench.run import run_bench

    s = settings(ctx)
    with handle_errors(s.json):
        run_bench(transactions=transactions, nodes=nodes, output=output_file)


def run() -> None:
    """Console entry point; ``--json`` is accepted anywhere on the command line."""
    import sys

    args = sys.argv[1:]
    if "--json" in args and args.index("--json") > 0:
        args = ["--json", *[a for a in args if a != "--json"]]
    app(args=args, prog_name="meridian")


if __name__ == "__main__":
    run()
