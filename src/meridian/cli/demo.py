"""The showcase behind ``make demo``: the pilot service network, one developer's journey.

Four operators run one node each in four zones; a developer registers through an
operator's portal, creates an app on two of the nodes, invites a partner enterprise,
deploys the example contract with both members' approvals, issues a user, runs
transactions (one MVCC conflict among them), exceeds its plan's rate, upgrades its
plan and prints its invoice; the regulator reads the app and the audit log; every
node's ledgers are verified.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from rich.rule import Rule

from ..client import Gateway, Identity, connect
from ..client.core import Receipt
from ..client.lifecycle import deploy
from ..client.onboarding import invoice_text
from ..crypto.certs import load_cert_der
from ..crypto.suites import load_signer
from ..errors import Busy, MeridianError, Unavailable
from ..network.config import GOVERNANCE_APP, NetworkConfig, NetworkLayout
from ..network.init import InitOptions, InitProfile, init_network
from ..network.plans import format_cny
from ..node.verify import verify_node
from .common import console
from .procs import free_port_block, start_nodes, stop_processes, wait_healthy

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "asset_transfer"
APP = "tea-trace"
DEVELOPER = "acme-studio"
PARTNER = "greenleaf-tea"
HOSTS = ("node1", "node2")  # Beijing and Shanghai


def _show(label: str, receipt: Receipt) -> None:
    colour = "green" if receipt.valid else "red"
    console.print(
        f"  [{colour}]{receipt.code:<20}[/] block {receipt.block:<3} "
        f"tx {receipt.tx_id[:12]}…  {label}"
    )


def run_demo(*, keep: bool = False) -> None:
    """Init the pilot network, start its nodes, run the journey, verify every ledger."""
    root = Path(tempfile.mkdtemp(prefix="meridian-demo-"))
    layout = NetworkLayout(root / "network")
    config = init_network(
        layout.root, InitOptions(profile=InitProfile.PILOT, base_port=free_port_block(8))
    )
    console.print(Rule("Meridian demo: the pilot service network"))
    _describe(layout, config)
    procs = start_nodes(layout, config, detach=True)
    try:
        with console.status("starting the nodes..."):
            wait_healthy(procs)
        Journey(layout, config).run()
    finally:
        stop_processes(procs)
    _verify(layout)
    if keep:
        console.print(f"network kept in {layout.root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    console.print(Rule("[green]demo finished[/]"))


def _describe(layout: NetworkLayout, config: NetworkConfig) -> None:
    types = Counter(o.type for o in config.orgs)
    console.print(f"network [bold]{config.network}[/] in {layout.root}")
    console.print(
        "  orgs: " + ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in types.items())
    )
    for entry in config.nodes:
        zone = config.zone(entry.zone).name
        console.print(f"  {entry.id} in {zone}, run by {entry.org}: gateway {entry.url}")
    console.print(
        "  plans: "
        + ", ".join(f"{p.id} {format_cny(p.price_fen)}/month ({p.tps} tx/s)" for p in config.plans)
    )


class Journey:
    """One developer's path through the service network, narrated."""

    def __init__(self, layout: NetworkLayout, config: NetworkConfig) -> None:
        self.layout = layout
        self.config = config
        self.url = config.node(HOSTS[0]).url

    def gateway(self, identity: Identity | str, node: str = HOSTS[0]) -> Gateway:
        if isinstance(identity, str):
            org, name = identity.split("/")
            identity = Identity.from_dir(self.layout.user_dir(org, name))
        return connect(self.config.node(node).url, identity, network=self.config.network)

    def run(self) -> None:
        developer = self.register()
        with self.gateway(developer) as dev, self.gateway(f"{PARTNER}/admin") as partner:
            self.create_app(dev)
            self.invite(dev, partner)
            self.deploy(dev, partner)
            user = self.issue_user(dev)
        with self.gateway(user) as shop, self.gateway(f"{PARTNER}/user1") as partner_user:
            self.transact(shop, partner_user)
        self.show_heights(developer)
        with self.gateway(user) as shop, self.gateway(developer) as dev:
            self.exceed_rate(shop)
            self.upgrade_and_invoice(dev)
        self.regulate()

    def register(self) -> Identity:
        console.print(Rule(f"1. {DEVELOPER} registers through the Beijing operator's portal"))
        body = {
            "org": DEVELOPER,
            "type": "developer",
            "name": "Acme Studio (Haidian) Co., Ltd.",
            "details": {"registration_no": "91110108MA01ACME7X", "contact": "dev@acme.example"},
        }
        reply = httpx.post(f"{self.url}/v1/developers", json=body, timeout=60)
        if reply.status_code != 200:
            raise MeridianError(f"registration failed: {reply.text}", code="demo_failed")
        out = reply.json()
        console.print(
            f"  org {out['org']} registered (governance proposal {out['proposal']['status']}, "
            f"policy {', '.join(out['proposal']['policy'])}); its CA is kept sealed by node1; "
            "the admin's key is returned once"
        )
        admin = out["admin"]
        return Identity(load_cert_der(admin["cert"].encode()), load_signer(admin["key"].encode()))

    def propose(self, gw: Gateway, change: dict[str, Any]) -> dict[str, Any]:
        proposal: dict[str, Any] = (
            gw.app(GOVERNANCE_APP).contract("_governance").submit("propose", change, 3600)
        )
        return proposal

    def create_app(self, dev: Gateway) -> None:
        console.print(Rule(f"2. {DEVELOPER} creates app {APP} on the Beijing and Shanghai nodes"))
        change = {
            "kind": "create_app",
            "name": APP,
            "owner": DEVELOPER,
            "nodes": list(HOSTS),
            "plan": "free",
            "key_mode": "own",
        }
        proposal = self.propose(dev, change)
        console.print(f"  create_app: {proposal['status']} (policy {proposal['policy'][0]})")
        for node in HOSTS:
            with self.gateway(dev.builder.identity, node) as gw:
                _wait(
                    lambda gw=gw: APP in [a["name"] for a in gw.request("GET", "/v1/apps")["apps"]]
                )
        console.print(f"  {' and '.join(HOSTS)} host {APP} (free plan, users bring their own keys)")

    def invite(self, dev: Gateway, partner: Gateway) -> None:
        console.print(Rule(f"3. {DEVELOPER} invites {PARTNER}, which accepts"))
        proposal = self.propose(dev, {"kind": "add_member", "app": APP, "org": PARTNER})
        console.print(f"  add_member: {proposal['status']} — waits for the invitee's approval")
        accepted = (
            partner.app(GOVERNANCE_APP).contract("_governance").submit("approve", proposal["id"])
        )
        console.print(f"  {PARTNER} approves: {accepted['status']}")

    def deploy(self, dev: Gateway, partner: Gateway) -> None:
        console.print(Rule("4. deploy asset-transfer: install on both hosts, both members approve"))
        with self.gateway(dev.builder.identity, HOSTS[1]) as dev2:
            _wait(lambda: self._is_member(partner))
            definition = deploy([dev, partner], APP, EXAMPLE, install_on=[dev, dev2])
        console.print(
            f"  committed {definition['name']} v{definition['version']} sequence "
            f"{definition['sequence']}, endorsement policy {definition['policy']}"
        )

    def _is_member(self, gw: Gateway) -> bool:
        return any(a["name"] == APP for a in gw.request("GET", "/v1/apps")["apps"])

    def issue_user(self, dev: Gateway) -> Identity:
        console.print(Rule(f"5. {DEVELOPER} issues user shopfront@{APP} for its own key (CSR)"))
        key = ed25519.Ed25519PrivateKey.generate()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "shopfront"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEVELOPER),
            ]
        )
        csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, None)
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        issued = dev.request("POST", f"/v1/apps/{APP}/users", {"name": "shopfront", "csr": pem})
        console.print(f"  {issued['user']} certified by {DEVELOPER}'s CA; the key never left it")
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return Identity(load_cert_der(issued["cert"].encode()), load_signer(private))

    def transact(self, shop: Gateway, partner: Gateway) -> None:
        console.print(Rule("6. transactions, and an MVCC conflict"))
        contract = shop.app(APP).contract("asset-transfer")
        for asset, owner in (("tea-lot-1", "acme"), ("tea-lot-2", "acme")):
            _show(
                f"create {asset} for {owner}", contract.submit_receipt("create", asset, owner, 50)
            )
        theirs = partner.app(APP).contract("asset-transfer")
        _show(
            f"{PARTNER}: transfer tea-lot-1 -> greenleaf",
            theirs.submit_receipt("transfer", "tea-lot-1", "greenleaf"),
        )
        time.sleep(1.0)
        results = contract.submit_many(
            [("transfer", ["tea-lot-2", "shop-a"]), ("transfer", ["tea-lot-2", "shop-b"])]
        )
        for result, who in zip(results, ("shop-a", "shop-b"), strict=True):
            if isinstance(result, Receipt):
                _show(f"transfer tea-lot-2 -> {who}", result)
            else:
                console.print(f"  [red]{result.code:<20}[/] transfer tea-lot-2 -> {who} refused")
        console.print(f"  tea-lot-2 is owned by {contract.evaluate('read', 'tea-lot-2')['owner']}")

    def show_heights(self, developer: Identity) -> None:
        console.print(Rule(f"7. one ledger of {APP} on its two hosts; the others don't hold it"))
        for entry in self.config.nodes:
            with self.gateway(developer, entry.id) as gw:
                apps = {a["name"]: a for a in gw.request("GET", "/v1/apps")["apps"]}
                if APP not in apps:
                    console.print(f"  {entry.id}: does not host {APP}")
                    continue
                header = gw.app(APP).block("latest")["block"]["header"]
                console.print(
                    f"  {entry.id}: height {apps[APP]['height']}, block {header['number']} "
                    f"proposed by {header['proposer']}"
                )

    def exceed_rate(self, shop: Gateway) -> None:
        console.print(Rule("8. the free plan allows 5 tx/s: a burst goes over it"))
        contract = shop.app(APP).contract("asset-transfer")
        time.sleep(1.0)  # a full bucket
        for i in range(20):
            try:
                contract.submit_async("create", f"burst-{i}", "acme", 1)
            except Busy as exc:
                console.print(
                    f"  request {i + 1}: [yellow]429 {exc.code}[/]: {exc.message} "
                    f"(Retry-After: {exc.retry_after_s:.0f} s)"
                )
                return
        raise MeridianError("the rate limit did not apply", code="demo_failed")

    def upgrade_and_invoice(self, dev: Gateway) -> None:
        console.print(Rule(f"9. {DEVELOPER} moves to the basic plan and reads its invoice"))
        proposal = self.propose(dev, {"kind": "set_app_plan", "app": APP, "plan": "basic"})
        console.print(f"  set_app_plan basic: {proposal['status']}")
        _wait(lambda: dev.request("GET", f"/v1/apps/{APP}/invoice")["plan"]["id"] == "basic")
        console.print(invoice_text(dev, APP), markup=False, highlight=False)

    def regulate(self) -> None:
        console.print(Rule("10. the regulator reads the app and the audit log"))
        with self.gateway("regulator/admin") as reg:
            block = reg.app(APP).block("latest")
            console.print(
                f"  regulator reads {APP} block {block['block']['header']['number']} "
                f"({len(block['block']['transactions'])} txs)"
            )
            actions = reg.request("GET", "/v1/audit", params={"limit": 12})["actions"]
        for row in actions:
            details = row["details"] or {}
            what = details.get("kind") or details.get("name") or ""
            console.print(
                f"  {row['channel']:<10} block {row['block']:<3} {row['action']:<20} {what:<14} "
                f"{details.get('org', '')}"
            )


def _wait(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except MeridianError:
            pass
        if time.monotonic() > deadline:
            raise Unavailable("the network did not reach the expected state", code="demo_failed")
        time.sleep(0.2)


def _verify(layout: NetworkLayout) -> None:
    console.print(Rule("11. meridian ledger verify (every node, every channel)"))
    config = layout.load()
    for entry in config.nodes:
        reports = verify_node(layout, entry.id)
        problems = [f"{app}: {p}" for app, r in reports for p in r.problems]
        if problems:
            raise MeridianError("; ".join(problems), code="verify_failed")
        summary = ", ".join(f"{app} {r.blocks} blocks" for app, r in reports)
        console.print(
            f"  [green]ok[/] {entry.id}: {summary}; hash chains, Merkle roots, commit "
            "certificates, verdicts and state re-checked"
        )
