"""The service-network journey on a four-node network, through the SDK and raw HTTP.

A developer registers through an operator's portal, creates apps on two of the four
nodes (one with key custody, one with own keys), deploys the example contract, issues
users, runs transactions through both hosting nodes, reads the network-wide usage and
invoice from either, exceeds its plan's rate and (network-wide) monthly requests,
receives signed webhooks; the regulator (admitted by the operators' majority) reads
the app and the audit log.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from meridian.client import Gateway, Identity, connect
from meridian.client.core import SeenBlocks
from meridian.client.governance import Governance
from meridian.client.lifecycle import deploy
from meridian.client.onboarding import invoice_text
from meridian.crypto.certs import CertificateAuthority, Membership, Role, load_cert_der
from meridian.crypto.suites import load_signer
from meridian.errors import Busy, Conflict, Forbidden, InvalidInput, MeridianError
from meridian.gateway.webhooks import verify_delivery

from .conftest import EXAMPLE, RunningNetwork, make_network, verify_ledgers, wait_for

GOV = "governance"


def propose(gw: Gateway, change: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = gw.app(GOV).contract("_governance").submit("propose", change, 3600)
    return result


def approve(gw: Gateway, proposal_id: str) -> dict[str, Any]:
    result: dict[str, Any] = gw.app(GOV).contract("_governance").submit("approve", proposal_id)
    return result


def by_operators(net: RunningNetwork, change: dict[str, Any]) -> SeenBlocks:
    """``change`` decided by the operators' majority (3 of 4): proposed by org1's admin,
    approved by org2's and org3's, each reading what the one before wrote (through
    another node); the last session's read position."""
    with net.gateway("org1/admin") as org1, net.gateway("org2/admin") as org2:
        proposal = propose(org1, change)
        assert proposal["status"] == "open"  # one approval of the three needed
        org2.seen.merge(org1.seen)
        assert approve(org2, proposal["id"])["status"] == "open"
        with net.gateway("org3/admin") as org3:
            org3.seen.merge(org2.seen)
            assert approve(org3, proposal["id"])["status"] == "executed"
            return org3.seen


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    running = make_network(tmp_path_factory.mktemp("service"), orgs=4, nodes=4)
    try:
        running.start()  # inside: nodes that did start are stopped if another did not
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def developer(net: RunningNetwork) -> dict[str, Any]:
    """Register org 'acme' over raw HTTP (sign-up needs no identity) at node1."""
    body = {
        "org": "acme",
        "type": "developer",
        "name": "Acme Software Ltd",
        "details": {"registration_no": "91310000MA1FL0001X", "contact": "dev@acme.example"},
    }
    r = httpx.post(f"{net.config.nodes[0].url}/v1/developers", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["proposal"]["status"] == "executed"  # register_org: ANY operator (node1's)
    admin = Identity(
        load_cert_der(out["admin"]["cert"].encode()), load_signer(out["admin"]["key"].encode())
    )
    for entry in net.config.nodes:  # every node learns the org from governance
        with connect(entry.url, admin, network=net.config.network) as gw:
            wait_for(lambda gw=gw: gw.request("GET", "/v1/network"), what="acme known")
    return {"identity": admin, "ca": out["ca"]}


def as_acme(net: RunningNetwork, developer: dict[str, Any], node: int = 0) -> Gateway:
    return connect(net.config.nodes[node].url, developer["identity"], network=net.config.network)


def create_app(
    net: RunningNetwork, developer: dict[str, Any], name: str, key_mode: str, plan: str
) -> None:
    with as_acme(net, developer) as gw:
        change = {
            "kind": "create_app",
            "name": name,
            "owner": "acme",
            "nodes": ["node1", "node2"],
            "plan": plan,
            "key_mode": key_mode,
        }
        assert propose(gw, change)["status"] == "executed"  # ANY owner
    for node in (0, 1):
        with as_acme(net, developer, node) as gw:
            wait_for(
                lambda gw=gw: name in [a["name"] for a in gw.request("GET", "/v1/apps")["apps"]],
                what=f"{name} hosted on node{node + 1}",
            )
    with as_acme(net, developer) as gw1, as_acme(net, developer, 1) as gw2:
        deploy([gw1], name, EXAMPLE, policy="ANY", install_on=[gw1, gw2])


@pytest.fixture(scope="module")
def custody_app(net: RunningNetwork, developer: dict[str, Any]) -> str:
    create_app(net, developer, "shop", "custody", "free")
    return "shop"


@pytest.fixture(scope="module")
def own_key_app(net: RunningNetwork, developer: dict[str, Any]) -> str:
    create_app(net, developer, "ledgerbook", "own", "free")
    return "ledgerbook"


def as_node(net: RunningNetwork, node_id: str, node: int) -> Gateway:
    """Node ``node_id``'s own identity, talking to the gateway of node index ``node``."""
    identity = Identity.from_dir(net.layout.node_dir(node_id))
    return connect(net.config.nodes[node].url, identity, network=net.config.network)


def test_app_is_hosted_only_on_its_nodes(
    net: RunningNetwork, developer: dict[str, Any], custody_app: str
) -> None:
    for node, hosts in ((0, True), (1, True), (2, False), (3, False)):
        with as_acme(net, developer, node) as gw:
            names = [a["name"] for a in gw.request("GET", "/v1/apps")["apps"]]
            assert (custody_app in names) is hosts, (node, names)


def test_key_custody_user_transacts_through_the_gateway(
    net: RunningNetwork, developer: dict[str, Any], custody_app: str
) -> None:
    with as_acme(net, developer) as gw:
        issued = gw.request("POST", f"/v1/apps/{custody_app}/users", {"name": "alice"})
        assert issued["user"] == "alice@shop" and issued["key_mode"] == "custody"
        with pytest.raises(InvalidInput) as info:  # custody apps take no CSR
            gw.request("POST", f"/v1/apps/{custody_app}/users", {"name": "bob", "csr": "x"})
        assert info.value.code == "custody_app"
        out = gw.request(
            "POST",
            f"/v1/apps/{custody_app}/users/alice/transactions",
            {"contract": "asset-transfer", "function": "create", "args": ["car-1", "alice", 5]},
        )
        assert out["receipt"]["code"] == "VALID"
        tx = gw.app(custody_app).transaction(out["receipt"]["tx_id"])
        assert tx.code == "VALID"
    # the creator is alice, certified by acme's CA with the app attribute
    cert = x509.load_pem_x509_certificate(issued["cert"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"


def _csr(key: ed25519.Ed25519PrivateKey, cn: str, org: str) -> str:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, None)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _swapped_key_csr() -> str:
    """A CSR for dave@acme whose key is not the one that signed it."""
    key_a, key_b = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    der = x509.load_pem_x509_csr(_csr(key_a, "dave", "acme").encode()).public_bytes(
        serialization.Encoding.DER
    )
    raw_a, raw_b = key_a.public_key().public_bytes_raw(), key_b.public_key().public_bytes_raw()
    swapped = x509.load_der_x509_csr(der.replace(raw_a, raw_b))
    return swapped.public_bytes(serialization.Encoding.PEM).decode()


def test_own_key_user_sends_a_csr(
    net: RunningNetwork, developer: dict[str, Any], own_key_app: str
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with as_acme(net, developer) as gw:
        with pytest.raises(InvalidInput) as info:  # own-key apps need a CSR
            gw.request("POST", "/v1/apps/ledgerbook/users", {"name": "carol"})
        assert info.value.code == "csr_required"
        wrong_org = _csr(key, "dave", "someone-else")
        with pytest.raises(InvalidInput) as info:
            gw.request("POST", "/v1/apps/ledgerbook/users", {"name": "dave", "csr": wrong_org})
        assert info.value.code == "bad_csr"
        with pytest.raises(InvalidInput) as info:  # names key B, signed by key A
            gw.request(
                "POST", "/v1/apps/ledgerbook/users", {"name": "dave", "csr": _swapped_key_csr()}
            )
        assert info.value.code == "bad_csr" and "mismatched key" in info.value.message
        issued = gw.request(
            "POST",
            "/v1/apps/ledgerbook/users",
            {"name": "carol", "csr": _csr(key, "carol", "acme")},
        )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    carol = Identity(load_cert_der(issued["cert"].encode()), load_signer(pem))
    with connect(net.config.nodes[1].url, carol, network=net.config.network) as gw:
        receipt = (
            gw.app("ledgerbook")
            .contract("asset-transfer")
            .submit_receipt("create", "deed-1", "carol", 1)
        )
        assert receipt.code == "VALID"


def _own_key_user(net: RunningNetwork, developer: dict[str, Any], app: str, name: str) -> Identity:
    key = ed25519.Ed25519PrivateKey.generate()
    with as_acme(net, developer) as gw:
        body = {"name": name, "csr": _csr(key, name, "acme")}
        issued = gw.request("POST", f"/v1/apps/{app}/users", body)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Identity(load_cert_der(issued["cert"].encode()), load_signer(pem))


def test_usage_and_invoice_sum_every_hosting_gateway(
    net: RunningNetwork, developer: dict[str, Any], own_key_app: str
) -> None:
    """ledgerbook is hosted on node1 and node2 and its user sends through both: the
    usage and the invoice from either gateway show the sum, and each node's share."""
    app, path = own_key_app, f"/v1/apps/{own_key_app}/usage"
    erin = _own_key_user(net, developer, app, "erin")

    def local(node: int) -> dict[str, Any]:
        """A node's own count, read as the other hosting node (which is not metered)."""
        with as_node(net, "node2" if node == 0 else "node1", node) as peer:
            result: dict[str, Any] = peer.request("GET", path, params={"scope": "local"})
            return result

    before = [local(0), local(1)]
    time.sleep(1.1)  # a fresh rate-limit second
    for node, count in ((0, 3), (1, 2)):
        with connect(net.config.nodes[node].url, erin, network=net.config.network) as gw:
            book = gw.app(app).contract("asset-transfer")
            for i in range(count):
                assert book.submit_receipt("create", f"n{node}-{i}", "erin", 1).code == "VALID"
    after = [local(0), local(1)]
    assert after[0]["scope"] == "local" and after[0]["node"] == "node1"
    for key in ("transactions", "requests"):  # each gateway counted what it served
        assert [a[key] - b[key] for a, b in zip(after, before, strict=True)] == [3, 2], key
    transactions = after[0]["transactions"] + after[1]["transactions"]
    for node, here, there in ((0, "node1", "node2"), (1, "node2", "node1")):
        with as_acme(net, developer, node) as gw:
            total = gw.request("GET", path)  # scope=network is the default
            bill = gw.request("GET", f"/v1/apps/{app}/invoice")
            text = invoice_text(gw, app)
        assert total["scope"] == "network" and total["complete"] is True
        assert total["missing"] == [] and set(total["by_node"]) == {"node1", "node2"}
        assert total["transactions"] == transactions
        assert total["by_node"][there]["transactions"] == after[1 - node]["transactions"]
        assert total["requests"] == sum(row["requests"] for row in total["by_node"].values())
        assert total["by_node"][here]["requests"] > after[node]["requests"]  # this request
        assert bill["transactions"] == transactions and bill["complete"] is True
        assert bill["total_fen"] == 0 and set(bill["by_node"]) == {"node1", "node2"}
        assert "Metered by node1, node2" in text and "INCOMPLETE" not in text
    # the peers' calls were not billed: node2 counts only acme's three reads through it
    assert local(1)["requests"] == after[1]["requests"] + 3
    with as_acme(net, developer) as gw, pytest.raises(InvalidInput) as info:
        gw.request("GET", path, params={"scope": "everywhere"})
    assert info.value.code == "bad_scope"
    with as_node(net, "node3", 0) as outsider, pytest.raises(Forbidden) as denied:
        outsider.request("GET", path, params={"scope": "local"})  # node3 does not host it
    assert denied.value.code == "not_a_member"
    with as_node(net, "node2", 0) as peer, pytest.raises(Forbidden):
        peer.request("GET", path)  # a node is let in for its peers' local view only


def test_requests_quota_counts_every_gateway(
    net: RunningNetwork, developer: dict[str, Any], own_key_app: str
) -> None:
    """A plan whose monthly requests node1 alone has not used up, but node1 and node2
    together have: node1 refuses once its background refresh learnt node2's count."""
    app, path, margin = own_key_app, f"/v1/apps/{own_key_app}/usage", 50
    with as_node(net, "node2", 0) as peer:
        used_on_node1 = peer.request("GET", path, params={"scope": "local"})["requests"]
    with as_acme(net, developer, 1) as gw:
        for _ in range(2 * margin):  # node2 serves more than the margin
            gw.app(app).block("latest")
    limit = used_on_node1 + margin
    plan = {
        "id": "metered",
        "name": "Metered",
        "price_fen": 100,
        "tps": 5,
        "storage_bytes": 64 * 2**20,
        "requests_per_month": limit,
    }
    seen = by_operators(net, {"kind": "set_plan", "plan": plan})
    refused: Busy | None = None
    with as_acme(net, developer) as gw:
        gw.seen.merge(seen)
        change = {"kind": "set_app_plan", "app": app, "plan": "metered"}
        assert propose(gw, change)["status"] == "executed"
        deadline = time.monotonic() + 30  # the refresh runs every 10 s
        while refused is None and time.monotonic() < deadline:
            try:
                gw.app(app).block("latest")  # a read that asks no peer
            except Busy as exc:
                refused = exc
            time.sleep(1.0)  # each poll is a request on node1: stay well under the margin
    assert refused is not None, "node1 never applied the network-wide quota"
    assert refused.code == "quota_exhausted"
    assert refused.details["limit"] == limit and refused.details["used"] >= limit
    with as_node(net, "node2", 0) as peer:  # node1 alone is still under the limit
        assert peer.request("GET", path, params={"scope": "local"})["requests"] < limit


def test_rate_limit_then_invoice(
    net: RunningNetwork, developer: dict[str, Any], custody_app: str
) -> None:
    """The free plan allows 5 tx/s: a burst beyond it gets 429 with Retry-After."""

    def send(i: int) -> Busy | None:  # 12 at once: however slow commits are, > 5 in 1 s
        body = {"contract": "asset-transfer", "function": "create", "args": [f"b{i}", "x", 1]}
        with as_acme(net, developer) as one:
            try:
                one.request("POST", f"/v1/apps/{custody_app}/users/alice/transactions", body)
            except Busy as exc:
                return exc
        return None

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(send, range(12)))
    refusals = [o for o in outcomes if o is not None]
    assert refusals, "12 submits at once, and none over a 5 tx/s plan?"
    assert {r.code for r in refusals} == {"rate_limited"}
    refused = refusals[0]
    with as_acme(net, developer) as gw:
        assert refused.retry_after_s > 0
        invoice = gw.request("GET", f"/v1/apps/{custody_app}/invoice")
        assert invoice["currency"] == "CNY" and invoice["total_fen"] == 0  # the free plan
        text = gw._http.get(f"/v1/apps/{custody_app}/invoice", params={"format": "text"})
        assert text.status_code == 401  # unsigned: every read is authenticated
        usage = gw.request("GET", f"/v1/apps/{custody_app}/usage")
        assert usage["throttled"] >= 1 and usage["transactions"] >= 1


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).received.append((dict(self.headers.items()), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhooks_are_signed_and_delivered(
    net: RunningNetwork, developer: dict[str, Any], custody_app: str
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        node1 = net.config.nodes[0]
        with as_acme(net, developer) as gw:
            with pytest.raises(InvalidInput) as info:
                gw.request("POST", f"/v1/apps/{custody_app}/webhooks", {"url": "ftp://x/"})
            assert info.value.code == "bad_webhook_url"
            own = f"http://127.0.0.1:{node1.port}/v1/health"
            with pytest.raises(InvalidInput) as info:
                gw.request("POST", f"/v1/apps/{custody_app}/webhooks", {"url": own})
            assert info.value.code == "bad_webhook_url"
            with pytest.raises(InvalidInput) as info:  # kinds that are not strings: 400
                gw.request("POST", f"/v1/apps/{custody_app}/webhooks", {"url": url, "kinds": [{}]})
            assert info.value.code == "bad_webhook"
            hook = gw.request("POST", f"/v1/apps/{custody_app}/webhooks", {"url": url})
            with net.gateway("org1/admin") as operator, pytest.raises(Forbidden):
                # not a member of the app: may neither read nor remove its webhooks
                operator.request("DELETE", f"/v1/apps/{custody_app}/webhooks/{hook['id']}")
            time.sleep(1.1)  # a fresh rate-limit second
            gw.request(
                "POST",
                f"/v1/apps/{custody_app}/users/alice/transactions",
                {"contract": "asset-transfer", "function": "create", "args": ["hook-1", "z", 1]},
            )
        wait_for(
            lambda: any(json.loads(b)["kind"] == "event" for _, b in _Receiver.received),
            what="an event delivery",
        )
        node_id = Membership({"org1": net.layout.ca_dir("org1").joinpath("ca.pem").read_bytes()})
        key = node_id.identify(load_cert_der(node1.cert_pem))
        for headers, body in _Receiver.received:
            assert verify_delivery(
                headers,
                body,
                network=net.config.network,
                suite=key.suite,
                public_key=key.public_key,
                now_ms=int(time.time() * 1000),
            )
        events = [json.loads(b) for _, b in _Receiver.received]
        created = [e for e in events if e["kind"] == "event"]
        assert created[0]["data"]["contract"] == "asset-transfer"
    finally:
        server.shutdown()
        server.server_close()


def test_suspended_app_refuses_transactions_until_resumed(
    net: RunningNetwork, developer: dict[str, Any], custody_app: str
) -> None:
    """set_app_status: its members' majority (acme alone) suspends and resumes it."""
    create = {"contract": "asset-transfer", "function": "create", "args": ["s1", "a", 1]}
    path = f"/v1/apps/{custody_app}/users/alice/transactions"
    with as_acme(net, developer) as gw:
        change = {"kind": "set_app_status", "app": custody_app, "status": "suspended"}
        assert propose(gw, change)["status"] == "executed"

        def refused() -> bool:
            try:
                gw.request("POST", path, create)
            except Forbidden as exc:
                return exc.code == "app_not_active"
            return False

        wait_for(refused, what="the gateway refuses the suspended app")
        height = gw.app(custody_app).block("latest")["block"]["header"]["number"]
        assert gw.app(custody_app).contract("asset-transfer").evaluate("read", "car-1")  # reads
        change = {"kind": "set_app_status", "app": custody_app, "status": "active"}
        assert propose(gw, change)["status"] == "executed"
        time.sleep(1.1)  # the free plan's rate
        out = wait_for(lambda: gw.request("POST", path, create), what="resumed")
        assert out["receipt"]["code"] == "VALID"
        assert out["receipt"]["block"] > height


def test_storage_quota_is_checked_at_commit(net: RunningNetwork, developer: dict[str, Any]) -> None:
    """An app on a 1 MiB plan: the transaction that would take its ledger past the
    quota is ordered but refused at commit (every hosting node decides the same), with
    a typed error naming the remedy; nothing of it is written; a larger plan lifts it."""
    tiny = {
        "id": "tiny",
        "name": "Tiny",
        "price_fen": 1000,
        "tps": 100,
        "storage_bytes": 2**20,
        "requests_per_month": 1_000_000,
    }
    by_operators(net, {"kind": "set_plan", "plan": tiny})
    with as_acme(net, developer) as gw:
        wait_for(
            lambda: "tiny" in [p["id"] for p in gw.request("GET", "/v1/plans")["plans"]],
            what="the tiny plan",
        )
    create_app(net, developer, "archive", "own", "tiny")
    big = "x" * 60_000  # ~180 KB a transaction: argument, written value and event
    with as_acme(net, developer) as gw:
        contract = gw.app("archive").contract("asset-transfer")
        refused = None
        for i in range(12):
            try:
                contract.submit("create", f"doc{i}", big, 1)
            except Conflict as exc:
                refused = (i, exc)
                break
        assert refused is not None, "twelve 180 KB transactions fit a 1 MiB quota"
        last, exc = refused
        assert 3 <= last <= 7, last
        assert exc.code == "storage_quota_exceeded", exc
        assert exc.details["receipt"]["code"] == "STORAGE_QUOTA_EXCEEDED"
        assert "set_app_plan" in (exc.hint or "")
        assert contract.evaluate("read", f"doc{last}") is None  # it wrote nothing
        assert contract.evaluate("read", f"doc{last - 1}")["owner"] == big
        assert contract.submit("create", "note", "small", 1)["id"] == "note"  # still fits
        change = {"kind": "set_app_plan", "app": "archive", "plan": "basic"}
        assert propose(gw, change)["status"] == "executed"  # ANY owner

        def upgraded() -> bool:
            try:
                contract.submit("create", f"doc{last}", big, 1)
            except Conflict as again:
                assert again.code == "storage_quota_exceeded", again
                return False
            return True

        wait_for(upgraded, what="the basic plan's storage")
        with as_acme(net, developer, 1) as gw2:  # the other hosting node agrees
            gw2.seen.merge(gw.seen)  # reads after the block node1 committed it in
            assert gw2.app("archive").contract("asset-transfer").evaluate("read", f"doc{last}")

        # back on the 1 MiB plan with more than 1 MiB stored: refused before ordering
        change = {"kind": "set_app_plan", "app": "archive", "plan": "tiny"}
        assert propose(gw, change)["status"] == "executed"

        def refused_up_front() -> bool:
            try:
                contract.submit("create", "one-more", "x", 1)
            except Forbidden as up_front:
                assert up_front.code == "storage_quota_exceeded", up_front
                return True
            return False

        wait_for(refused_up_front, what="the gateway's refusal on the tiny plan")
        assert contract.evaluate("read", "one-more") is None  # nothing of it was ordered


def test_restarted_node_rejoins_under_the_governed_configuration(
    net: RunningNetwork, developer: dict[str, Any], custody_app: str
) -> None:
    """node2 restarts after governance registered acme and created shop: it hosts shop
    again, trusts acme's CA, and keeps validating and ordering like the others."""
    net.kill_node("node2")
    with as_acme(net, developer) as gw:  # node2 is down: node1's invoice says what is missing
        bill = gw.request("GET", f"/v1/apps/{custody_app}/invoice")
        assert bill["complete"] is False and bill["missing"] == ["node2"]
        assert list(bill["by_node"]) == ["node1"] and bill["total_fen"] == 0
        assert "INCOMPLETE" in invoice_text(gw, custody_app)
    net.start_node("node2")
    with as_acme(net, developer, 1) as gw:
        wait_for(
            lambda: custody_app in [a["name"] for a in gw.request("GET", "/v1/apps")["apps"]],
            what="node2 hosts shop again",
        )
    time.sleep(1.1)  # the free plan's rate
    with as_acme(net, developer) as gw:
        out = gw.request(
            "POST",
            f"/v1/apps/{custody_app}/users/alice/transactions",
            {"contract": "asset-transfer", "function": "create", "args": ["after-restart", "a", 1]},
        )
        assert out["receipt"]["code"] == "VALID"
        target = gw.app(custody_app).block("latest")["hash"]
    with as_acme(net, developer, 1) as gw:
        wait_for(
            lambda: gw.app(custody_app).block("latest")["hash"] == target,
            what="node2 commits the same block",
        )
        assert gw.app(custody_app).transaction(out["receipt"]["tx_id"]).code == "VALID"


def test_regulator_admitted_by_majority_reads_everything(
    net: RunningNetwork, developer: dict[str, Any], custody_app: str, tmp_path: Path
) -> None:
    ca = CertificateAuthority.create("csrc")
    change = {"kind": "add_org", "id": "csrc", "type": "regulator", "ca": ca.cert_pem.decode()}
    by_operators(net, change)
    issued = ca.issue("inspector", Role.ADMIN)
    assert issued.key_pem is not None
    regulator = Identity(load_cert_der(issued.cert_pem), load_signer(issued.key_pem))
    with connect(net.config.nodes[0].url, regulator, network=net.config.network) as gw:
        wait_for(
            lambda: custody_app in [a["name"] for a in gw.request("GET", "/v1/apps")["apps"]],
            what="the regulator sees the app",
        )
        block = gw.app(custody_app).block("latest")
        assert block["block"]["header"]["app"] == custody_app
        with pytest.raises(Forbidden):  # reading is not writing
            gw.app(custody_app).contract("asset-transfer").submit("create", "r", "r", 1)
        actions = gw.request("GET", "/v1/audit")["actions"]
        kinds = {(a["channel"], a["action"]) for a in actions}
        assert (GOV, "proposed") in kinds and (GOV, "executed") in kinds
        assert (custody_app, "committed") in kinds  # the contract deployment
    with as_acme(net, developer) as gw, pytest.raises(Forbidden):
        gw.request("GET", "/v1/audit")  # a developer is no supervisor


def test_an_auditor_member_reads_but_does_not_write(
    net: RunningNetwork, developer: dict[str, Any], custody_app: str
) -> None:
    """The invitee accepts and chooses its role: org4 joins as an auditor."""
    with as_acme(net, developer) as dev, net.gateway("org4/admin") as org4:
        invitation = propose(dev, {"kind": "add_member", "app": custody_app, "org": "org4"})
        assert invitation["status"] == "open"  # waits for the invitee
        with pytest.raises(MeridianError) as info:  # only the invitee accepts
            dev.app(GOV).contract("_governance").submit("accept", invitation["id"], "auditor")
        assert info.value.code == "not_the_invitee"
        accepted = (
            org4.app(GOV).contract("_governance").submit("accept", invitation["id"], "auditor")
        )
        assert accepted["status"] == "executed"
    with net.gateway("org4/user1", url=net.config.nodes[0].url) as auditor:
        wait_for(
            lambda: custody_app in [a["name"] for a in auditor.request("GET", "/v1/apps")["apps"]],
            what="the auditor sees the app",
        )
        height = auditor.app(custody_app).block("latest")["block"]["header"]["number"]
        with pytest.raises(Forbidden) as denied:
            auditor.app(custody_app).contract("asset-transfer").submit("create", "q", "q", 1)
        assert denied.value.code == "not_a_member"
        assert auditor.app(custody_app).block("latest")["block"]["header"]["number"] == height


def test_real_name_details_stay_with_operators_and_the_regulator(
    net: RunningNetwork, developer: dict[str, Any]
) -> None:
    """A second developer signs up with real-name details: acme (another developer)
    reads neither them nor the governance ledger that holds them; operators read both."""
    details = {"registration_no": "91440300MA5FB0002Y", "contact": "it@beta.example"}
    body = {"org": "beta", "type": "developer", "name": "Beta Ltd", "details": details}
    r = httpx.post(f"{net.config.nodes[1].url}/v1/developers", json=body, timeout=60)
    assert r.status_code == 200, r.text
    proposal_id = r.json()["proposal"]["id"]
    with (
        as_acme(net, developer, 1) as gw,
        net.gateway("org2/admin", url=net.config.nodes[1].url) as op,
    ):
        gov = gw.app(GOV).contract("_governance")
        seen = gov.evaluate("proposal", proposal_id)
        assert seen["status"] == "executed" and seen["change"]["details"] == {}
        [beta] = [o for o in gov.evaluate("config")["orgs"] if o["id"] == "beta"]
        assert beta["details"] == {} and beta["name"] == "Beta Ltd"
        network = gw.request("GET", "/v1/network")
        assert [o["details"] for o in network["config"]["orgs"] if o["id"] == "beta"] == [{}]
        for read in (
            lambda: gw.app(GOV).block("latest"),
            lambda: gw.app(GOV).transaction(proposal_id),
            lambda: next(iter(gw.app(GOV).events(start=0))),
        ):
            with pytest.raises(Forbidden) as refused:
                read()
            assert refused.value.code == "governance_ledger", refused.value
        assert Governance(gw).height() == network["height"] > 0
        own = gov.submit("propose", {"kind": "add_zone", "id": "wuhan", "name": "Wuhan"}, 3600)
        assert own["status"] == "open"  # an operators' decision; acme may propose it
        assert gw.app(GOV).transaction(own["id"]).code == "VALID"  # its own receipt
        operator = op.app(GOV).contract("_governance")
        assert operator.evaluate("proposal", proposal_id)["change"]["details"] == details
        assert op.app(GOV).transaction(proposal_id).code == "VALID"
        assert op.app(GOV).block("latest")["block"]["header"]["app"] == GOV


def test_every_ledger_verifies_at_the_end(net: RunningNetwork) -> None:
    """Last in this module: stops the network and verifies every node's ledgers."""
    net.stop()
    ledgers = verify_ledgers(net)
    assert {"governance", "shop", "ledgerbook"} <= {entry["app"] for entry in ledgers}
