"""Governance end to end: four operator orgs' node processes on loopback.

A network change needs a majority of the operators and is then on every node;
rejections, refused actions and forged approvals change nothing; a developer org
registered by one operator creates an app on two chosen nodes, deploys a contract on
it, moves it to a third node (which syncs the ledger), invites and removes a member;
an operator adds a node through the CLI and the new node joins and syncs; the
regulator runs an observer node that syncs and serves reads but takes no writes.
Every ledger passes ``ledger verify`` afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from meridian.cli.main import app as cli
from meridian.cli.procs import free_port_block
from meridian.client import Gateway, Identity, connect
from meridian.client.core import ProposalBuilder
from meridian.client.governance import Governance, wait_hosted
from meridian.client.lifecycle import deploy, load_package
from meridian.crypto.certs import CertificateAuthority, Role, load_cert_der
from meridian.crypto.suites import load_signer
from meridian.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidInput,
    MeridianError,
    NotFound,
)
from meridian.network.config import GOVERNANCE_APP, Zone, write_file
from meridian.network.history import load_bootstrap
from meridian.network.plans import DEFAULT_PLANS
from meridian.node.verify import verify_node
from meridian.types import SignedProposal

from .conftest import EXAMPLE, RunningNetwork, make_network, verify_ledgers

pytestmark = pytest.mark.slow
OPERATORS = ("org1", "org2", "org3", "org4")
CONTRACT = "asset-transfer"
HOSTING_TIMEOUT_S = 15.0


# ------------------------------------------------------------------------- helpers


def make_zoned_network(tmp: Path) -> RunningNetwork:
    """Four orgs, four nodes: node1, node2 in zone z1 and node3, node4 in z2.

    ``network init`` makes nodes without zones, and no change moves a node into a
    zone, so the zones apps are placed by (``create_app(zones=...)``) are in the
    genesis here.
    """
    net = make_network(tmp, orgs=4, nodes=4)
    zone_of = {"node1": "z1", "node2": "z1", "node3": "z2", "node4": "z2"}
    net.config = dataclasses.replace(
        net.config,
        zones=(Zone("z1", "Zone one"), Zone("z2", "Zone two", "region")),
        nodes=tuple(dataclasses.replace(n, zone=zone_of[n.id]) for n in net.config.nodes),
    )
    net.layout.save(net.config)
    return net


def admins(net: RunningNetwork) -> dict[str, Governance]:
    """Each operator org's admin, through that org's own node."""
    return {org: Governance(net.gateway(f"{org}/admin")) for org in OPERATORS}


def close_all(govs: dict[str, Governance]) -> None:
    for gov in govs.values():
        gov.gateway.close()


def expect(error: type[MeridianError], code: str, action: Callable[[], Any]) -> MeridianError:
    with pytest.raises(error) as exc:
        action()
    assert exc.value.code == code, exc.value
    return exc.value


@dataclasses.dataclass
class Developer:
    """An org outside the genesis: its own CA and an admin identity kept in memory."""

    org: str
    ca: CertificateAuthority
    identity: Identity

    @classmethod
    def create(cls, org: str = "dev") -> Developer:
        ca = CertificateAuthority.create(org)
        issued = ca.issue("admin", Role.ADMIN)
        assert issued.key_pem is not None
        identity = Identity(load_cert_der(issued.cert_pem), load_signer(issued.key_pem))
        return cls(org, ca, identity)

    def gateway(self, net: RunningNetwork, node: str) -> Gateway:
        return connect(net.config.node(node).url, self.identity, network=net.config.network)

    def register(self, net: RunningNetwork, by: Governance) -> Governance:
        """Registered by one operator (``ANY operators``); its admin's Governance
        through node1 (a developer runs no nodes: it uses the operators')."""
        proposal = by.propose(by.register_org(self.org, self.ca.cert_pem, name="Dev Ltd"))
        assert proposal["status"] == "executed", proposal
        return Governance(self.gateway(net, "node1")).observe(by)


def apps_listed(net: RunningNetwork, identity: Identity, node: str) -> list[str]:
    with connect(net.config.node(node).url, identity, network=net.config.network) as gw:
        return [a["name"] for a in gw.request("GET", "/v1/apps")["apps"]]


# -------------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def gov_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    net = make_zoned_network(tmp_path_factory.mktemp("gov"))
    net.start()
    try:
        yield net
    finally:
        net.kill()


@pytest.fixture()
def govs(gov_net: RunningNetwork) -> Iterator[dict[str, Governance]]:
    found = admins(gov_net)
    try:
        yield found
    finally:
        close_all(found)


# ---------------------------------------------------------- network-wide decisions


def test_network_change_needs_a_majority_of_operators(
    gov_net: RunningNetwork, govs: dict[str, Governance]
) -> None:
    before = govs["org1"].config()
    proposal = govs["org1"].propose(govs["org1"].add_zone("z-maj", "Majority", "region"))
    assert (proposal["status"], proposal["approvals"]) == ("open", ["org1"])
    assert proposal["policy"] == ["MAJORITY operators"]
    assert govs["org2"].observe(govs["org1"]).config() == before

    proposal = govs["org2"].approve(proposal["id"])
    assert (proposal["status"], proposal["approvals"]) == ("open", ["org1", "org2"])
    assert govs["org3"].observe(govs["org2"]).config() == before

    proposal = govs["org3"].approve(proposal["id"])
    assert proposal["status"] == "executed"
    for entry in gov_net.config.nodes:  # every node, as a client of another org
        with gov_net.gateway("org4/user1", url=entry.url) as reader:
            view = Governance(reader).observe(govs["org3"])
            assert view.config().zone("z-maj").kind == "region", entry.id
            assert view.proposal(proposal["id"])["status"] == "executed"
    assert proposal["id"] in [p["id"] for p in govs["org4"].proposals("executed")]
    with pytest.raises(Conflict):  # decided: no more approvals
        govs["org4"].observe(govs["org3"]).approve(proposal["id"])


def test_rejected_by_operators_leaves_the_config(govs: dict[str, Governance]) -> None:
    before = govs["org1"].config()
    proposal = govs["org1"].propose(govs["org1"].add_zone("z-rej", "Rejected"))
    proposal = govs["org2"].observe(govs["org1"]).reject(proposal["id"])
    assert (proposal["status"], proposal["rejections"]) == ("open", ["org2"])
    # org1 and org4 alone can no longer make 3 of 4: rejected at once
    proposal = govs["org3"].observe(govs["org2"]).reject(proposal["id"])
    assert (proposal["status"], proposal["rejections"]) == ("rejected", ["org2", "org3"])
    expect(
        Conflict,
        "proposal_closed",
        lambda: govs["org4"].observe(govs["org3"]).reject(proposal["id"]),
    )
    assert govs["org4"].proposal(proposal["id"])["status"] == "rejected"
    assert govs["org4"].config() == before
    open_now = govs["org1"].observe(govs["org4"]).proposals("open")
    assert proposal["id"] not in [p["id"] for p in open_now]


@pytest.fixture(scope="module")
def developer(gov_net: RunningNetwork) -> Iterator[Governance]:
    """Org ``dev`` registered on the shared network; its admin's Governance."""
    org1 = Governance(gov_net.gateway("org1/admin"))
    dev = Developer.create().register(gov_net, org1)
    try:
        yield dev
    finally:
        org1.gateway.close()
        dev.gateway.close()


def test_invalid_governance_actions_change_nothing(
    gov_net: RunningNetwork, govs: dict[str, Governance], developer: Governance
) -> None:
    org1 = govs["org1"].observe(developer)
    before, proposals_before = org1.config(), org1.proposals("all")
    with gov_net.gateway("org1/user1") as user:
        client = Governance(user).observe(org1)
        expect(Forbidden, "not_an_admin", lambda: client.propose(client.add_zone("zc", "Mine")))
    proposal = org1.propose(org1.add_zone("z-inv", "Invalid actions"))
    expect(Conflict, "already_decided", lambda: org1.approve(proposal["id"]))
    expect(Conflict, "already_decided", lambda: org1.reject(proposal["id"]))
    developer.observe(org1)
    expect(Forbidden, "not_an_approver", lambda: developer.approve(proposal["id"]))
    expect(
        Forbidden, "not_the_proposer", lambda: govs["org2"].observe(org1).withdraw(proposal["id"])
    )
    refused: list[tuple[Governance, dict[str, Any]]] = [
        (org1, org1.add_zone("z1", "Zone one again")),
        (org1, org1.register_org("org2", CertificateAuthority.create("org2").cert_pem)),
        (developer, developer.create_app("demo", nodes=["node1"], plan="basic")),
        (developer, developer.create_app(GOVERNANCE_APP, nodes=["node1"], plan="basic")),
    ]
    for gov, change in refused:
        expect(Conflict, "duplicate_name", lambda g=gov, c=change: g.propose(c))
    expect(InvalidInput, "bad_change", lambda: org1.propose({"kind": "add_galaxy", "id": "g1"}))
    expect(InvalidInput, "bad_change", lambda: org1.propose(org1.add_zone("z-ttl", "x"), 30))
    expect(InvalidInput, "bad_change", lambda: org1.propose(org1.set_app_status("demo", "gone")))
    assert org1.config() == before
    after = org1.proposals("all")
    assert [p["id"] for p in after] == sorted(
        [*(p["id"] for p in proposals_before), proposal["id"]]
    )
    assert org1.proposal(proposal["id"])["approvals"] == ["org1"]


def test_invalid_forged_approval(gov_net: RunningNetwork, govs: dict[str, Governance]) -> None:
    org1, org2, org3 = govs["org1"], govs["org2"], govs["org3"]
    before = org1.config()
    proposal = org1.propose(org1.add_zone("z-forged", "Forged"))
    path = f"/v1/apps/{GOVERNANCE_APP}/transactions"
    signed = org2.gateway.builder.build(GOVERNANCE_APP, "_governance", "approve", (proposal["id"],))
    corrupted = SignedProposal(
        signed.proposal, bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    )
    org2.observe(org1)
    expect(
        AuthError,
        "bad_signature",
        lambda: org2.gateway.request("POST", path, {"proposal": corrupted.to_dict(), "wait": True}),
    )
    # org3's admin signs a proposal that names org2's admin as its creator
    impostor = ProposalBuilder(
        Identity(org2.gateway.identity.cert_der, org3.gateway.identity.signer),
        gov_net.config.network,
    ).build(GOVERNANCE_APP, "_governance", "approve", (proposal["id"],))
    org3.observe(org1)
    expect(
        AuthError,
        "bad_signature",
        lambda: org3.gateway.request("POST", path, {"proposal": impostor.to_dict(), "wait": True}),
    )
    found = org2.proposal(proposal["id"])
    assert (found["status"], found["approvals"]) == ("open", ["org1"])
    assert org2.config() == before
    # the genuine approval still counts, once
    assert org2.approve(proposal["id"])["approvals"] == ["org1", "org2"]


def test_create_app_helper_picks_the_nodes_of_zones(
    gov_net: RunningNetwork, developer: Governance
) -> None:
    """Offline part of create_app: zones become their nodes (nothing is proposed)."""
    change = developer.create_app("kiosk", zones=["z2", "z1"], plan="basic")
    assert change["nodes"] == ["node3", "node4", "node1", "node2"]
    assert change["owner"] == "dev"
    expect(InvalidInput, "bad_change", lambda: developer.create_app("kiosk", plan="basic"))


# ------------------------------------------------------------------- the CLI


def run_cli(net: RunningNetwork, *args: str, ok: bool = True, json: bool = True) -> Any:
    """``meridian --json ARGS`` in process (its parsed output; without ``json`` the
    text); every call through node1, so that each reads what the previous one wrote
    (each call is a new client session)."""
    common = ["--network", str(net.layout.root), "--url", net.url, *(["--json"] if json else [])]
    result = CliRunner().invoke(cli, [*common, *args], env={"COLUMNS": "200"})
    assert (result.exit_code == 0) is ok, result.output
    return orjson.loads(result.stdout) if json else result.output


def test_cli_propose_approve_withdraw(gov_net: RunningNetwork, tmp_path: Path) -> None:
    config = run_cli(gov_net, "gov", "config")
    assert [z["id"] for z in config["zones"]][:2] == ["z1", "z2"]
    change = tmp_path / "zone.json"
    change.write_bytes(orjson.dumps({"kind": "add_zone", "id": "z-cli", "name": "CLI"}))
    proposal = run_cli(gov_net, "gov", "propose", "--file", str(change), "--as", "org1/admin")
    assert (proposal["status"], proposal["approvals"]) == ("open", ["org1"])
    listed = run_cli(gov_net, "gov", "proposals")["proposals"]
    assert proposal["id"] in [p["id"] for p in listed]
    approved = run_cli(gov_net, "--as", "org2/admin", "gov", "approve", proposal["id"])
    assert approved["approvals"] == ["org1", "org2"]
    refused = run_cli(gov_net, "gov", "approve", proposal["id"], "--as", "org3/user1", ok=False)
    assert refused["error"]["code"] == "not_an_admin"
    assert (
        run_cli(gov_net, "gov", "withdraw", proposal["id"], "--as", "org1/admin")["status"]
        == "withdrawn"
    )
    assert run_cli(gov_net, "gov", "show", proposal["id"])["status"] == "withdrawn"
    text = run_cli(gov_net, "gov", "show", proposal["id"], json=False)
    assert f"proposal {proposal['id']}: add_zone withdrawn" in text
    text = run_cli(gov_net, "gov", "proposals", "--status", "withdrawn", json=False)
    assert proposal["id"][:16] in text
    text = run_cli(gov_net, "gov", "config", json=False)
    assert "Zone one" in text and "node4" in text
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    refused = run_cli(gov_net, "gov", "propose", "-f", str(bad), "--as", "org1/admin", ok=False)
    assert refused["error"]["code"] == "bad_change"


def test_node_joins_through_node_add(gov_net: RunningNetwork) -> None:
    """`node add` issues node5's identity and proposes it; once two more operators
    approve, it writes the bootstrap file; `node start` runs node5, which syncs the
    governance ledger and sees itself in the configuration."""
    port = free_port_block(2)
    add = ("node", "add", "node5", "--org", "org1", "--zone", "z2", "--port", str(port))
    first = run_cli(gov_net, *add)
    assert first["bootstrap"] is None and first["proposal"]["status"] == "open"
    node_dir = gov_net.layout.node_dir("node5")
    assert (node_dir / "cert.pem").is_file() and (node_dir / "key.pem").stat().st_mode & 0o077 == 0
    pid = first["proposal"]["id"]
    assert run_cli(gov_net, *add)["proposal"]["id"] == pid  # again: the same proposal
    run_cli(gov_net, "gov", "approve", pid, "--as", "org2/admin")
    run_cli(gov_net, "gov", "approve", pid, "--as", "org3/admin")
    done = run_cli(gov_net, *add)
    assert done["bootstrap"] == str(gov_net.layout.data_dir("node5") / "bootstrap.json")
    bootstrap = load_bootstrap(gov_net.layout.data_dir("node5"))
    assert bootstrap is not None
    height, config = bootstrap
    assert config.node("node5").port == port and config.node("node5").zone == "z2"

    started = run_cli(gov_net, "node", "start", "node5", "--detach")
    try:
        with gov_net.gateway("org1/user1", url=config.node("node5").url) as gw:
            wait_hosted(gw, GOVERNANCE_APP, HOSTING_TIMEOUT_S, min_height=height)
            assert Governance(gw).config().node("node5").status == "joining"
            status = gw.status()["apps"][GOVERNANCE_APP]["consensus"]
            assert "node5" not in status["consenters"]  # a follower until activated
        activated = run_cli(gov_net, "node", "activate", "node5")
        assert activated["status"] == "open"  # the operators decide (MAJORITY operators)
        run_cli(gov_net, "gov", "approve", activated["id"], "--as", "org2/admin")
        run_cli(gov_net, "gov", "approve", activated["id"], "--as", "org3/admin")
        with gov_net.gateway("org1/user1", url=config.node("node5").url) as gw:
            deadline = time.monotonic() + HOSTING_TIMEOUT_S
            while Governance(gw).config().node("node5").status != "active":
                assert time.monotonic() < deadline, "node5 never saw itself activated"
                time.sleep(0.2)
        with gov_net.gateway("org2/admin") as gw:  # the network keeps deciding with node5
            org2 = Governance(gw)
            later = org2.propose(org2.add_zone("z-after", "After node5"))
            assert later["status"] == "open"
        # node5 is a node of org1, a member of the consortium app "demo": it hosts demo
        # too, syncs it, and orders it with the others (5 consenters now)
        with (
            gov_net.gateway("org1/admin") as node1,
            gov_net.gateway("org1/admin", url=config.node("node5").url) as node5,
        ):
            lifecycle = node1.app("demo").contract("_lifecycle")
            lifecycle.submit("approve", "joined", "1.0", 1, "joined:" + "ab" * 32, "ANY")
            wait_hosted(node5, "demo", HOSTING_TIMEOUT_S)
            target = node1.app("demo").block("latest")
            wait_hosted(
                node5, "demo", HOSTING_TIMEOUT_S, min_height=target["block"]["header"]["number"] + 1
            )
            assert node5.app("demo").block("latest")["hash"] == target["hash"]
            status = node5.status()["apps"]["demo"]["consensus"]
            assert "node5" in status["consenters"]
    finally:
        os.killpg(started["pid"], signal.SIGTERM)
        wait_exit(started["pid"])
    reports = verify_node(gov_net.layout, "node5")
    assert reports and all(report.ok for _, report in reports), reports


def wait_exit(pid: int, timeout_s: float = 15.0) -> None:
    """Reap a node process this test process started (SIGKILL after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def admit_regulator(net: RunningNetwork, org: str) -> CertificateAuthority:
    """The operators' majority admits ``org`` as the regulator (add_org); its CA and
    its admin's and user's identities go in the network directory, as 'network init'
    lays out an org (without the CA key: that is 'node add's business)."""
    ca = CertificateAuthority.create(org)
    for name, role in (("admin", Role.ADMIN), ("user1", Role.CLIENT)):
        issued = ca.issue(name, role)
        assert issued.key_pem is not None
        write_file(net.layout.user_dir(org, name) / "cert.pem", issued.cert_pem)
        write_file(net.layout.user_dir(org, name) / "key.pem", issued.key_pem, secret=True)
    govs = admins(net)
    try:
        change = govs["org1"].add_org(org, ca.cert_pem, type="regulator", name="Supervisor")
        proposal = govs["org1"].propose(change)
        for approver in ("org2", "org3"):
            proposal = govs[approver].observe(govs["org1"]).approve(proposal["id"])
        assert proposal["status"] == "executed", proposal
    finally:
        close_all(govs)
    return ca


def test_regulator_runs_an_observer_node(gov_net: RunningNetwork) -> None:
    """The regulator's own node (`node add --org csrc`, the operators approve) is an
    observer: it syncs the governance channel and the app, whose consenters stay the
    operators' nodes while it keeps committing; the regulator reads blocks and the
    audit log through it; a member's transaction sent to it is refused before
    endorsement and never ordered; its ledgers verify."""
    layout = gov_net.layout
    ca = admit_regulator(gov_net, "csrc")
    add = ("node", "add", "obs1", "--org", "csrc")  # ports after the highest in use
    refused = run_cli(gov_net, *add, ok=False)  # no CA in the network directory yet
    assert refused["error"]["code"] == "no_ca", refused
    assert not layout.node_dir("obs1").exists()  # nothing written for it
    write_file(layout.ca_dir("csrc") / "ca.pem", ca.cert_pem)
    write_file(layout.ca_dir("csrc") / "ca.key", ca.key_pem, secret=True)
    first = run_cli(gov_net, *add)
    proposal = first["proposal"]
    assert (first["status"], proposal["status"], proposal["approvals"]) == (
        "observer",
        "open",
        [],  # the regulator proposes; the operators decide (MAJORITY operators)
    )
    for org in ("org1", "org2", "org3"):
        run_cli(gov_net, "gov", "approve", proposal["id"], "--as", f"{org}/admin")
    done = run_cli(gov_net, *add)
    bootstrap = load_bootstrap(layout.data_dir("obs1"))
    assert done["bootstrap"] is not None and bootstrap is not None
    height, config = bootstrap
    assert config.node("obs1").status == "observer"
    assert run_cli(gov_net, "node", "activate", "obs1", ok=False)["error"]["code"] == (
        "observer_node"
    )
    url = config.node("obs1").url

    started = run_cli(gov_net, "node", "start", "obs1", "--detach")
    try:
        with (
            gov_net.gateway("org1/admin") as node1,
            gov_net.gateway("csrc/user1", url=url) as regulator,
            gov_net.gateway("org1/admin", url=url) as member,
        ):
            wait_hosted(regulator, GOVERNANCE_APP, HOSTING_TIMEOUT_S, min_height=height)
            assert Governance(regulator).config().node("obs1").status == "observer"
            # the app keeps committing with the observer running, ordered by the same
            # consenters (no quorum counts the observer)
            before = node1.status()["apps"]["demo"]["consensus"]["consenters"]
            lifecycle = node1.app("demo").contract("_lifecycle")
            lifecycle.submit("approve", "observed", "1.0", 1, "observed:" + "cd" * 32, "ANY")
            tip = node1.app("demo").block("latest")
            number = tip["block"]["header"]["number"]
            wait_hosted(regulator, "demo", HOSTING_TIMEOUT_S, min_height=number + 1)
            assert regulator.app("demo").block(number)["hash"] == tip["hash"]
            ordering = regulator.status()["apps"]["demo"]["consensus"]["consenters"]
            assert ordering == before == node1.status()["apps"]["demo"]["consensus"]["consenters"]
            assert "obs1" not in ordering
            here = regulator.status()["apps"][GOVERNANCE_APP]["consensus"]
            assert "obs1" not in here["consenters"]
            actions = regulator.request("GET", "/v1/audit")["actions"]
            assert any(
                a["action"] == "executed" and a["details"]["proposal"] == proposal["id"]
                for a in actions
            )
            assert {"approved"} <= {a["action"] for a in actions if a["channel"] == "demo"}

            # a member's write through the observer: refused before endorsement
            signed = member.builder.build(
                "demo", "_lifecycle", "approve", ("refused", "1.0", 1, "r:" + "ef" * 32, "ANY")
            )
            error = expect(
                Forbidden,
                "read_only_node",
                lambda: member.request(
                    "POST", "/v1/apps/demo/transactions", {"proposal": signed.to_dict()}
                ),
            )
            assert "hosts the app" in (error.hint or "")
            lifecycle.submit("approve", "after", "1.0", 1, "after:" + "cd" * 32, "ANY")
            tx_id = signed.proposal.tx_id
            expect(NotFound, "tx_not_found", lambda: node1.app("demo").transaction(tx_id))
            assert member.app("demo").block(number)["hash"] == tip["hash"]  # members read
    finally:
        os.killpg(started["pid"], signal.SIGTERM)
        wait_exit(started["pid"])
    reports = verify_node(layout, "obs1")
    assert {app for app, _ in reports} == {GOVERNANCE_APP, "demo"}
    assert all(report.ok and report.blocks > 0 for _, report in reports), reports


def test_every_ledger_verifies_after_the_changes(gov_net: RunningNetwork) -> None:
    """Last in this module: stops the shared network."""
    gov_net.stop()
    ledgers = verify_ledgers(gov_net)
    assert {entry["app"] for entry in ledgers} >= {GOVERNANCE_APP}


# ---------------------------------------------------------------------- apps


@dataclasses.dataclass
class AppNet:
    net: RunningNetwork
    operators: dict[str, Governance]
    dev: Governance
    identity: Identity


@pytest.fixture()
def app_net(tmp_path: Path) -> Iterator[AppNet]:
    """A network with a registered developer org and a plan it can buy."""
    net = make_zoned_network(tmp_path)
    net.start()
    operators = admins(net)
    try:
        developer = Developer.create()
        dev = developer.register(net, operators["org1"])
        plan = operators["org1"].propose(operators["org1"].set_plan(DEFAULT_PLANS[1]))
        for org in ("org2", "org3"):
            plan = operators[org].observe(*operators.values()).approve(plan["id"])
        assert plan["status"] == "executed"
        dev.observe(operators["org3"])
        yield AppNet(net, operators, dev, developer.identity)
        dev.gateway.close()
    finally:
        close_all(operators)
        net.kill()


def create_shop(a: AppNet) -> None:
    """App ``shop`` on node1 and node2 (zone z1), with asset-transfer deployed."""
    proposal = a.dev.propose(a.dev.create_app("shop", zones=["z1"], plan="basic"))
    assert proposal["status"] == "executed"  # its owner's approval is the policy
    assert proposal["change"]["nodes"] == ["node1", "node2"]
    for node in ("node1", "node2"):
        with connect(a.net.config.node(node).url, a.identity, network=a.net.config.network) as gw:
            wait_hosted(gw, "shop", HOSTING_TIMEOUT_S)
    installers = [  # only a node's own org may install on it
        a.net.gateway("org1/admin", url=a.net.config.node("node1").url),
        a.net.gateway("org2/admin", url=a.net.config.node("node2").url),
    ]
    try:
        deploy([a.dev.gateway], "shop", EXAMPLE, install_on=installers)
    finally:
        for gw in installers:
            gw.close()


def latest_blocks(a: AppNet, nodes: list[str]) -> dict[str, tuple[int, str]]:
    """Each node's (height, hash of its last block) of ``shop``."""
    found = {}
    for node in nodes:
        with connect(a.net.config.node(node).url, a.identity, network=a.net.config.network) as gw:
            latest = gw.app("shop").block("latest")
            found[node] = (latest["block"]["header"]["number"] + 1, latest["hash"])
    return found


def test_app_hosted_on_chosen_nodes_then_moved(app_net: AppNet) -> None:
    a = app_net
    create_shop(a)
    listing = {
        node: apps_listed(a.net, a.identity, node) for node in ("node1", "node2", "node3", "node4")
    }
    assert listing == {
        "node1": [GOVERNANCE_APP, "shop"],
        "node2": [GOVERNANCE_APP, "shop"],
        "node3": [GOVERNANCE_APP],
        "node4": [GOVERNANCE_APP],
    }
    shop = a.dev.gateway.app("shop").contract(CONTRACT)
    assert shop.submit("create", "a1", "alice", 10)["owner"] == "alice"

    moved = a.dev.propose(a.dev.set_app_nodes("shop", ["node1", "node2", "node3"]))
    assert moved["status"] == "executed"
    height = latest_blocks(a, ["node1"])["node1"][0]
    with connect(a.net.config.node("node3").url, a.identity, network=a.net.config.network) as gw:
        wait_hosted(gw, "shop", HOSTING_TIMEOUT_S, min_height=height)
    assert shop.submit("create", "a2", "bob", 5)["owner"] == "bob"
    deadline = time.monotonic() + HOSTING_TIMEOUT_S
    while len(set((blocks := latest_blocks(a, ["node1", "node2", "node3"])).values())) != 1:
        assert time.monotonic() < deadline, blocks
        time.sleep(0.1)
    assert "shop" in apps_listed(a.net, a.identity, "node3")
    assert "shop" not in apps_listed(a.net, a.identity, "node4")

    # move it off its first two nodes entirely: they keep ordering until a block under
    # the new configuration hands over to node3 and node4, then stop hosting it
    moved = a.dev.propose(a.dev.set_app_nodes("shop", ["node3", "node4"]))
    assert moved["status"] == "executed"
    deadline = time.monotonic() + HOSTING_TIMEOUT_S
    while "shop" in apps_listed(a.net, a.identity, "node1") or "shop" in apps_listed(
        a.net, a.identity, "node2"
    ):
        assert time.monotonic() < deadline, "node1 and node2 did not hand shop over"
        time.sleep(0.2)
    _, archive = load_package(EXAMPLE)
    with a.net.gateway("org3/admin", url=a.net.config.node("node3").url) as installer:
        installer.install(archive)  # the new hosts need the contract's package to endorse
    with connect(a.net.config.node("node3").url, a.identity, network=a.net.config.network) as gw:
        gw.seen.merge(a.dev.gateway.seen)
        moved_shop = gw.app("shop").contract(CONTRACT)
        assert moved_shop.submit("create", "a3", "carol", 7)["owner"] == "carol"
        consensus = gw.status()["apps"]["shop"]["consensus"]
        assert sorted(consensus["consenters"]) == ["node3", "node4"]
    deadline = time.monotonic() + HOSTING_TIMEOUT_S
    while len(set((blocks := latest_blocks(a, ["node3", "node4"])).values())) != 1:
        assert time.monotonic() < deadline, blocks
        time.sleep(0.1)
    a.net.stop()
    verify_ledgers(a.net)


def test_app_moved_to_nodes_without_its_ledger(app_net: AppNet) -> None:
    """shop moves from node1+node2 straight to node3+node4, which hold nothing of it:
    the old hosts keep ordering and serving blocks until the new ones have them all."""
    a = app_net
    create_shop(a)
    shop = a.dev.gateway.app("shop").contract(CONTRACT)
    assert shop.submit("create", "m1", "alice", 1)["owner"] == "alice"
    before = latest_blocks(a, ["node1"])["node1"]
    moved = a.dev.propose(a.dev.set_app_nodes("shop", ["node3", "node4"]))
    assert moved["status"] == "executed"
    for node in ("node3", "node4"):
        with connect(a.net.config.node(node).url, a.identity, network=a.net.config.network) as gw:
            wait_hosted(gw, "shop", HOSTING_TIMEOUT_S, min_height=before[0] + 1)
    _, archive = load_package(EXAMPLE)
    with a.net.gateway("org3/admin", url=a.net.config.node("node3").url) as installer:
        installer.install(archive)
    with connect(a.net.config.node("node4").url, a.identity, network=a.net.config.network) as gw:
        gw.seen.merge(a.dev.gateway.seen)
        with a.net.gateway("org4/admin", url=a.net.config.node("node4").url) as installer:
            installer.install(archive)
        moved_shop = gw.app("shop").contract(CONTRACT)
        assert moved_shop.submit("create", "m2", "bob", 2)["owner"] == "bob"
        assert moved_shop.evaluate("read", "m1")["owner"] == "alice"  # the history came along
    deadline = time.monotonic() + HOSTING_TIMEOUT_S
    while "shop" in apps_listed(a.net, a.identity, "node1"):
        assert time.monotonic() < deadline, "node1 never finished handing shop over"
        time.sleep(0.2)
    a.net.stop()
    verify_ledgers(a.net)


def test_invite_then_remove_a_member(app_net: AppNet) -> None:
    a = app_net
    create_shop(a)
    org2_admin = a.operators["org2"]
    invite = a.dev.propose(a.dev.invite("shop", "org2"))
    assert (invite["status"], invite["approvals"]) == ("open", ["dev"])
    assert invite["policy"] == ["MAJORITY members", "ANY subject"]
    assert org2_admin.observe(a.dev).config().app("shop").members == ("dev",)
    invite = org2_admin.approve(invite["id"])
    assert invite["status"] == "executed"

    with a.net.gateway("org2/user1") as user:  # through node2, which hosts shop
        user.seen.merge(org2_admin.gateway.seen)
        shop = user.app("shop").contract(CONTRACT)
        assert shop.submit("create", "b1", "carol", 1)["created_by"] == "user1@org2"

        removal = a.dev.observe(org2_admin).propose(a.dev.remove_member("shop", "org2"))
        assert removal["status"] == "open"  # 1 of the 2 members is no majority
        assert org2_admin.observe(a.dev).approve(removal["id"])["status"] == "executed"
        before = latest_blocks(a, ["node1", "node2"])
        user.seen.merge(org2_admin.gateway.seen)
        expect(Forbidden, "not_a_member", lambda: shop.submit("create", "b2", "carol", 1))
        assert latest_blocks(a, ["node1", "node2"]) == before
        expect(Forbidden, "not_a_member", lambda: shop.evaluate("read", "b1"))
    assert org2_admin.config().app("shop").members == ("dev",)
