"""``meridian gov`` (network governance) and ``meridian node`` (adding and running nodes).

Every change to the network is a proposal on the governance channel, decided by the
org admins its policy names (see docs and :mod:`meridian.network.governance`)::

    meridian --as org1/admin gov propose --file zone.json     # {"kind": "add_zone", ...}
    meridian gov approve 3f2a... --as org2/admin
    meridian gov accept 9c1d... --role auditor --as bank1/admin  # an invitation to an app
    meridian gov proposals --status executed
    meridian node add node5 --org org1 --zone sz             # identity + add_node proposal
    meridian node start node5 --detach

Commands sign as ``--as ORG/NAME`` (given before the command, as everywhere, or after
it) and talk to the first node of that org (or ``--url``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import typer
from rich.markup import escape

from ..client.governance import Governance
from ..crypto.certs import CertificateAuthority, Role
from ..errors import Conflict, InvalidInput, MeridianError, NotFound, Unavailable
from ..network.config import (
    GOVERNANCE_APP,
    NODE_ORG_TYPES,
    NetworkConfig,
    NetworkLayout,
    NodeEntry,
    write_file,
)
from ..network.governance import DEFAULT_TTL_S, MAX_TTL_S
from ..network.history import BOOTSTRAP_FILE, load_bootstrap, save_bootstrap
from .common import Settings, console, handle_errors, output, settings
from .procs import NodeProcess, start_node_process, wait_healthy

T = TypeVar("T")

app = typer.Typer(
    help="Network governance: configuration, proposals and approvals.", no_args_is_help=True
)
node_app = typer.Typer(help="Add nodes to a running network and run them.", no_args_is_help=True)

MAX_CHANGE_FILE_BYTES = 64 * 1024
AS_HELP = "Identity ORG/NAME or a folder (default: the global --as)."
STATUSES = "open, executed, rejected, withdrawn, expired or all"


def connect_governance(s: Settings, who: str | None = None) -> Governance:
    """Governance as ``who`` (default: the global identity) through ``--url`` or the
    first node of the identity's org (every operator node hosts the governance
    channel; a regulator's node is an observer, which takes no transactions), else the
    first node."""
    spec = who or s.identity or s.default_identity()
    config = s.config()
    org = spec.split("/")[0]
    url = s.url or next((n.url for n in config.nodes if n.org == org and not n.is_observer), None)
    return Governance(s.gateway(spec, url=url))


def _on_governance(
    ctx: typer.Context, who: str | None, call: Callable[[Governance], T]
) -> tuple[Settings, T]:
    """``call(governance)`` as ``who`` (errors: the CLI's typed output)."""
    s = settings(ctx)
    with handle_errors(s.json):
        gov = connect_governance(s, who)
        with gov.gateway:
            return s, call(gov)


def _describe(proposal: dict[str, Any]) -> str:
    approvals = ", ".join(proposal["approvals"]) or "none"
    rejections = ", ".join(proposal["rejections"]) or "none"
    return (
        f"proposal {proposal['id']}: {proposal['change']['kind']} [bold]{proposal['status']}[/]\n"
        f"  policy {escape(' and '.join(proposal['policy']))}; approved by {approvals}; "
        f"rejected by {rejections}"
    )


# ------------------------------------------------------------------------ gov reads


@app.command("config")
def config_cmd(
    ctx: typer.Context, who: str | None = typer.Option(None, "--as", help=AS_HELP)
) -> None:
    """The current network configuration: zones, orgs, nodes, apps, plans, policies."""
    s, config = _on_governance(ctx, who, lambda gov: gov.config())
    output(s, config.to_dict(), lambda: _print_config(config))


def _print_config(config: NetworkConfig) -> None:
    from rich.table import Table

    console.print(f"network [bold]{config.network}[/]")
    zones = Table("zone", "name", "kind", title="zones")
    for z in config.zones:
        zones.add_row(z.id, escape(z.name), z.kind)
    orgs = Table("org", "type", "name", title="organisations")
    for o in config.orgs:
        orgs.add_row(o.id, o.type, escape(o.name))
    nodes = Table("node", "org", "zone", "status", "gateway", "p2p port", title="nodes")
    for n in config.nodes:
        nodes.add_row(n.id, n.org, n.zone or "-", n.status, n.url, str(n.p2p_port))
    apps = Table("app", "owner", "members", "nodes", "plan", "keys", "status", title="apps")
    for a in config.apps:
        hosts = ", ".join(a.nodes) or "(members' nodes)"
        apps.add_row(
            a.name, a.owner or "-", ", ".join(a.members), hosts, a.plan or "-", a.key_mode, a.status
        )
    plans = Table("plan", "name", "price (fen/month)", "tps", "storage bytes", title="plans")
    for p in config.plans:
        plans.add_row(p.id, escape(p.name), str(p.price_fen), str(p.tps), str(p.storage_bytes))
    for table in (zones, orgs, nodes, apps, plans):
        if table.row_count:
            console.print(table)
    if config.policies:
        console.print("policies (others: the defaults):")
        for kind, requirements in config.policies:
            console.print(f"  {kind}: {escape(' and '.join(requirements))}")


@app.command("proposals")
def proposals_cmd(
    ctx: typer.Context,
    status: str = typer.Option("open", help=f"Which proposals: {STATUSES}."),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Proposals with a status (default: the open ones)."""
    from rich.table import Table

    s, rows = _on_governance(ctx, who, lambda gov: gov.proposals(status))

    def human() -> None:
        table = Table("id", "change", "by", "approvals", "rejections", "status")
        for p in rows:
            table.add_row(
                p["id"][:16],
                p["change"]["kind"],
                p["proposer"]["org"],
                ", ".join(p["approvals"]),
                ", ".join(p["rejections"]),
                p["status"],
            )
        console.print(table)

    output(s, {"proposals": rows}, human)


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    proposal_id: str = typer.Argument(..., help="Proposal id (its transaction id)."),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """One proposal: its change, policy, approvals, rejections and status."""
    s, proposal = _on_governance(ctx, who, lambda gov: gov.proposal(proposal_id))

    def human() -> None:
        console.print(_describe(proposal))
        console.print_json(data=proposal["change"])

    output(s, proposal, human)


# ---------------------------------------------------------------------- gov actions


def read_change(path: Path) -> dict[str, Any]:
    """A change from a JSON file (``-``: standard input); InvalidInput if it isn't one."""
    if str(path) == "-":
        raw = sys.stdin.buffer.read(MAX_CHANGE_FILE_BYTES + 1)
    elif path.is_file():
        raw = path.read_bytes()
    else:
        raise NotFound(f"{path} does not exist", code="no_file")
    if len(raw) > MAX_CHANGE_FILE_BYTES:
        raise InvalidInput(f"{path} is over {MAX_CHANGE_FILE_BYTES} bytes", code="bad_change")
    try:
        change = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not JSON: {exc}", code="bad_change") from exc
    if not isinstance(change, dict) or not isinstance(change.get("kind"), str):
        raise InvalidInput(
            f"{path} must hold a JSON object with a 'kind'",
            code="bad_change",
            hint='e.g. {"kind": "add_zone", "id": "sz", "name": "Shenzhen"}',
        )
    return change


@app.command("propose")
def propose_cmd(
    ctx: typer.Context,
    file: Path = typer.Option(..., "--file", "-f", help="JSON file with the change ('-': stdin)."),
    ttl: int = typer.Option(
        DEFAULT_TTL_S, "--ttl", min=60, max=MAX_TTL_S, help="Seconds until it expires."
    ),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Propose a change (as an org admin); your org's approval counts at once."""
    with handle_errors(settings(ctx).json):
        change = read_change(file)
    s, proposal = _on_governance(ctx, who, lambda gov: gov.propose(change, ttl))
    output(s, proposal, lambda: console.print(_describe(proposal)))


def _decision_cmd(function: str) -> Any:
    def command(
        ctx: typer.Context,
        proposal_id: str = typer.Argument(..., help="Proposal id (its transaction id)."),
        who: str | None = typer.Option(None, "--as", help=AS_HELP),
    ) -> None:
        s, proposal = _on_governance(ctx, who, lambda gov: getattr(gov, function)(proposal_id))
        output(s, proposal, lambda: console.print(_describe(proposal)))

    command.__doc__ = {
        "approve": "Approve for your org (as its admin); the approval that meets the policy "
        "executes the change.",
        "reject": "Reject for your org (as its admin); rejected once the policy can't be met.",
        "withdraw": "Withdraw a proposal your org made (as its admin).",
    }[function]
    return command


for _function in ("approve", "reject", "withdraw"):
    app.command(_function)(_decision_cmd(_function))


@app.command("accept")
def accept_cmd(
    ctx: typer.Context,
    proposal_id: str = typer.Argument(..., help="The add_member proposal inviting your org."),
    role: str = typer.Option(
        "participant", help="Your org's role in the app: participant (uses it) or auditor."
    ),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Accept an invitation to an app for your org (as its admin), choosing its role."""
    s, proposal = _on_governance(ctx, who, lambda gov: gov.accept(proposal_id, role))
    output(s, proposal, lambda: console.print(_describe(proposal)))


# ------------------------------------------------------------------------ node add


def issue_node_identity(layout: NetworkLayout, node_id: str, org: str) -> bytes:
    """The node's certificate PEM: the one in ``nodes/ID`` if present, else a new
    one issued by the org's CA in the network directory (key 0600 beside it)."""
    folder = layout.node_dir(node_id)
    if (folder / "cert.pem").is_file() and (folder / "key.pem").is_file():
        layout.data_dir(node_id).mkdir(parents=True, exist_ok=True)
        return (folder / "cert.pem").read_bytes()
    ca_dir = layout.ca_dir(org)
    if not (ca_dir / "ca.pem").is_file() or not (ca_dir / "ca.key").is_file():
        raise NotFound(  # before anything is written for the node
            f"no CA of {org} in {ca_dir} (ca.pem and ca.key)",
            code="no_ca",
            hint="run 'node add' where the org's CA key is, or put the node's "
            "cert.pem and key.pem in nodes/ID yourself",
        )
    layout.data_dir(node_id).mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.load(
        (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    )
    issued = ca.issue(node_id, Role.NODE)
    if issued.key_pem is None:
        raise MeridianError("the CA returned no key for the node", code="internal")
    write_file(folder / "key.pem", issued.key_pem, secret=True)
    write_file(folder / "cert.pem", issued.cert_pem)
    return issued.cert_pem


def compute_free_ports(config: NetworkConfig, host: str) -> tuple[int, int]:
    """The two ports after the highest any node on ``host`` uses."""
    used = [p for n in config.nodes if n.host == host for p in (n.port, n.p2p_port)]
    port = max(used, default=7048) + 1
    return port, port + 1


def _open_add_node(gov: Governance, node_id: str) -> dict[str, Any] | None:
    for proposal in gov.proposals("open"):
        change = proposal["change"]
        if change.get("kind") == "add_node" and change.get("id") == node_id:
            return proposal
    return None


def _write_bootstrap(layout: NetworkLayout, gov: Governance, node_id: str) -> Path:
    """The joining node's bootstrap: the configuration now, and the governance height
    it must sync to before it acts on its own ledger's view."""
    snapshot = gov.gateway.request("GET", "/v1/network")  # height, version, view at once
    config = dataclasses.replace(
        NetworkConfig.from_dict(snapshot["config"]), version=int(snapshot["version"])
    )
    config.node(node_id)
    save_bootstrap(layout.data_dir(node_id), int(snapshot["height"]), config)
    return layout.data_dir(node_id) / BOOTSTRAP_FILE


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What ``node add`` was asked for (ports 0: choose free ones)."""

    id: str
    org: str
    zone: str
    host: str
    port: int
    p2p_port: int


@node_app.command("add")
def node_add(
    ctx: typer.Context,
    node_id: str = typer.Argument(..., help="New node id."),
    org: str = typer.Option(
        ...,
        "--org",
        help="Operator org that runs it, or the regulator (an observer node); proposes "
        "as ORG/admin.",
    ),
    zone: str = typer.Option("", "--zone", help="Zone the node is in."),
    host: str = typer.Option("127.0.0.1", "--host", help="Host its ports listen on."),
    port: int = typer.Option(0, "--port", help="Gateway port (0: after the highest in use)."),
    p2p_port: int = typer.Option(0, "--p2p-port", help="Peer-to-peer port (0: port + 1)."),
    ttl: int = typer.Option(DEFAULT_TTL_S, "--ttl", min=60, max=MAX_TTL_S, help="Proposal TTL, s."),
    wait: float = typer.Option(
        0.0, "--wait", min=0.0, help="Seconds to wait for the other operators' approvals."
    ),
) -> None:
    """Issue a node identity from the org's CA, propose add_node as the org's admin,
    and once executed write the node's bootstrap file ('node start ID' runs it).

    While the proposal waits for approvals ('meridian gov approve ID --as orgN/admin'),
    run the same command again (or pass --wait) to write the bootstrap file. An
    operator's node joins as a follower ('node activate' makes it order); a regulator's
    node is an observer: it holds and checks every open channel and serves reads, but
    never endorses nor orders.
    """
    s = settings(ctx)
    with handle_errors(s.json):
        gov = connect_governance(s, f"{org}/admin")
        with gov.gateway:
            spec = NodeSpec(node_id, org, zone, host, port, p2p_port)
            result = _add_node(s.layout, gov, spec, ttl, wait)
    output(s, result, lambda: _print_node_added(result))


def _add_node(
    layout: NetworkLayout, gov: Governance, spec: NodeSpec, ttl: int, wait: float
) -> dict[str, Any]:
    """Propose the node (or find its open proposal), wait if asked, and write the
    bootstrap file once the node is in the configuration."""
    current = gov.config()
    proposal: dict[str, Any] | None = None
    org_type = current.org(spec.org).type
    if org_type not in NODE_ORG_TYPES:  # before an identity is issued for nothing
        raise InvalidInput(
            f"{spec.org} is {org_type}: only operator and regulator orgs run nodes",
            code="bad_change",
            hint="other orgs use the operators' nodes (their gateways)",
        )
    if spec.id in {n.id for n in current.nodes}:
        if current.node(spec.id).org != spec.org:
            raise Conflict(
                f"node {spec.id} belongs to {current.node(spec.id).org}", code="duplicate_name"
            )
    else:
        proposal = _open_add_node(gov, spec.id) or gov.propose(
            _add_node_change(layout, gov, current, spec), ttl
        )
        if proposal["status"] == "open" and wait > 0:
            proposal = gov.wait_decided(proposal["id"], wait)
        if proposal["status"] not in ("open", "executed"):
            raise Conflict(
                f"the add_node proposal {proposal['id']} is {proposal['status']}",
                code="proposal_closed",
                hint="run 'node add' again to make a new proposal",
            )
    executed = proposal is None or proposal["status"] == "executed"
    bootstrap = _write_bootstrap(layout, gov, spec.id) if executed else None
    return {
        "node": spec.id,
        "status": "observer" if org_type == "regulator" else "joining",
        "proposal": proposal,
        "bootstrap": None if bootstrap is None else str(bootstrap),
    }


def _add_node_change(
    layout: NetworkLayout, gov: Governance, current: NetworkConfig, spec: NodeSpec
) -> dict[str, Any]:
    cert_pem = issue_node_identity(layout, spec.id, spec.org)
    port = spec.port or compute_free_ports(current, spec.host)[0]
    return gov.add_node(
        spec.id,
        org=spec.org,
        host=spec.host,
        port=port,
        p2p_port=spec.p2p_port or port + 1,
        cert_pem=cert_pem,
        zone=spec.zone,
    )


def _print_node_added(result: dict[str, Any]) -> None:
    proposal, node_id = result["proposal"], result["node"]
    if proposal is not None:
        console.print(_describe(proposal))
    if result["bootstrap"] is None:
        console.print(
            f"waiting for approvals: 'meridian gov approve {proposal['id']} --as ORG/admin' by "
            f"the other operators, then run this command again"
        )
        return
    if result["status"] == "observer":
        console.print(
            f"[green]{node_id} is in the configuration (observer)[/]; wrote "
            f"{result['bootstrap']}\nnext: meridian node start {node_id} (it syncs every "
            "open channel and serves reads; it never orders, so there is nothing to activate)"
        )
        return
    console.print(
        f"[green]{node_id} is in the configuration (joining)[/]; wrote {result['bootstrap']}\n"
        f"next: meridian node start {node_id}, then, once it has synced, "
        f"meridian node activate {node_id}"
    )


@node_app.command("activate")
def node_activate(
    ctx: typer.Context,
    node_id: str = typer.Argument(..., help="A joining node (added with 'node add')."),
) -> None:
    """Propose that a joining node orders the channels it hosts (as its operator's admin;
    the operators approve it like any network change).

    A node added by governance joins as a follower: it syncs but is no consenter, so
    that nodes not yet running never hold up a quorum. Activate it once it runs and has
    caught up; this checks that its governance height is the network's first.
    """
    s = settings(ctx)
    with handle_errors(s.json):
        config = s.config()
        entry = config.node(node_id)
        if entry.is_observer:
            raise Conflict(
                f"node {node_id} is an observer (a regulator's node): it never orders",
                code="observer_node",
                hint="observers hold and validate every open channel without activation",
            )
        gov = connect_governance(s, f"{entry.org}/admin")
        with gov.gateway, s.gateway(f"{entry.org}/admin", url=entry.url) as own:
            here = gov.gateway.status()["apps"][GOVERNANCE_APP]["height"]
            there = own.status()["apps"].get(GOVERNANCE_APP, {}).get("height", -1)
            if there < here:
                raise Unavailable(
                    f"{node_id} has {there} governance blocks, the network {here}",
                    code="node_behind",
                    hint=f"wait until {node_id} has caught up, then activate it",
                )
            result = gov.propose(gov.activate_node(node_id))
    output(s, result, lambda: console.print(_describe(result)))


# ----------------------------------------------------------------------- node start


def get_node_entry(layout: NetworkLayout, node_id: str) -> NodeEntry:
    """The node's entry: from its bootstrap file (a node that joined), else network.json."""
    bootstrap = load_bootstrap(layout.data_dir(node_id))
    config = layout.load() if bootstrap is None else bootstrap[1]
    return config.node(node_id)


@node_app.command("start")
def node_start(
    ctx: typer.Context,
    node_id: str = typer.Argument(..., help="Node id (in network.json or added with 'node add')."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background."),
    sandbox: str = typer.Option("auto", help="Contract sandbox: auto, bwrap or none."),
) -> None:
    """Run one node of the network directory (foreground until Ctrl-C, or --detach).

    It logs to <network>/nodes/<node>/data/node.log and writes node.pid there.
    """
    s = settings(ctx)
    with handle_errors(s.json):
        entry = get_node_entry(s.layout, node_id)
        if sandbox not in ("auto", "bwrap", "none"):
            raise InvalidInput("--sandbox is auto, bwrap or none", code="bad_sandbox")
        if not detach:
            from ..contracts.sandbox import SandboxLimits
            from ..node.main import run_node
            from ..node.node import NodeOptions

            options = NodeOptions(limits=SandboxLimits(mode=sandbox))
            run_node(s.layout.root, node_id, options=options)
            return
        proc = _spawn(s.layout, entry, sandbox)
        try:
            wait_healthy([proc])
        except MeridianError:
            proc.proc.kill()
            raise
    output(
        s,
        {"node": node_id, "pid": proc.proc.pid, "url": entry.url},
        lambda: console.print(
            f"[green]up[/] {node_id} ({entry.org}) at {entry.url} pid {proc.proc.pid}"
        ),
    )


def _spawn(layout: NetworkLayout, entry: NodeEntry, sandbox: str) -> NodeProcess:
    return start_node_process(layout, entry, detach=True, sandbox=sandbox)


__all__ = ["app", "node_app"]
