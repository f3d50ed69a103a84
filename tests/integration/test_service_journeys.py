"""Three service-network journeys on one shared four-node network (loopback processes).

* **Revocation** through governance (``revoke``): once executed, every hosting node's
  gateway refuses the certificate at once (``certificate_revoked``) — its own requests
  and the proposals it signed that a valid identity relays — and nothing of it reaches
  the ledger; the rest of its org goes on.
* **Key custody** through the SDK (``meridian.client.onboarding.submit_as``): the
  owner's back-end submits for a custodial user, whose certificate is the committed
  transaction's creator; other orgs, the owner's app users and own-key apps are refused.
* **Revoking app users** through the SDK (``meridian.client.onboarding.revoke_user``):
  the owner's home node signs its CA's CRL, the owner's admin proposes it; a custodial
  user is refused at once, an own-key user by every hosting gateway once executed.
* **Removal** of a participant (``remove_member``) decided by the other members:
  refused on every hosting node, for writes and reads, its relayed proposals too, and
  its webhooks go.
* Validation's side of both changes: transactions endorsed and accepted before the
  change but ordered after it are committed invalid (``BAD_CREATOR_CERTIFICATE``) on
  both hosts alike, and ``ledger verify`` replays the same verdicts.
* An event stream opened before either change ends with the typed error before the
  next block: access is judged again before every message.

The network: operators org1..org4 running node1..node4 (one each); the developer org
``acme`` signs up at node1 (its home node, which keeps its CA and custodial keys) and
creates ``shop`` (key custody, hosted on node1 and node2, asset-transfer deployed), into
which it invites org2 and org3 as participants.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from meridian import codec
from meridian.client import Gateway, Identity, Receipt, connect
from meridian.client.governance import Governance, wait_hosted
from meridian.client.lifecycle import deploy
from meridian.client.onboarding import (
    add_webhook,
    issue_user,
    list_webhooks,
    register,
    revoke_user,
    submit_as,
)
from meridian.crypto.certs import CertificateAuthority, Membership, Role, load_cert_der
from meridian.crypto.suites import load_signer
from meridian.errors import CertificateError, Conflict, Forbidden, MeridianError, NotFound

from .conftest import EXAMPLE, RunningNetwork, make_network, verify_ledgers, wait_for

pytestmark = pytest.mark.slow
APP = "shop"
FORUM = "forum"  # acme's own-key app on the same hosts (revoking app users)
CONTRACT = "asset-transfer"
HOSTS = ("node1", "node2")  # shop's hosting nodes (node1 is acme's home node)
TIMEOUT_S = 30.0
OTHERS = ("org2", "org3", "org4")  # operators that may join shop (org1 stays out)
RESTART_TIMEOUT_S = 90.0  # consensus round timeouts grow while a host is down


# ------------------------------------------------------------------------- helpers


def expect(error: type[MeridianError], code: str, action: Callable[[], Any]) -> MeridianError:
    with pytest.raises(error) as exc:
        action()
    assert exc.value.code == code, exc.value
    return exc.value


def node_url(net: RunningNetwork, node: str) -> str:
    return net.config.node(node).url


def as_identity(net: RunningNetwork, identity: Identity, node: str) -> Gateway:
    return connect(node_url(net, node), identity, network=net.config.network)


def height(gw: Gateway, app: str = APP) -> int:
    """Blocks of ``app`` committed on the gateway's node."""
    return int(gw.app(app).block("latest")["block"]["header"]["number"]) + 1


def heights(net: RunningNetwork, identity: Identity) -> dict[str, int]:
    return heights_of(net, identity, APP)


def heights_of(net: RunningNetwork, identity: Identity, app: str) -> dict[str, int]:
    found = {}
    for node in HOSTS:
        with as_identity(net, identity, node) as gw:
            found[node] = height(gw, app)
    return found


def committed(gw: Gateway, tx_id: str) -> Receipt | None:
    """The receipt of ``tx_id`` once committed on the gateway's node."""
    receipt = gw.app(APP).transaction(tx_id)
    return receipt if receipt.status == "committed" else None


def members_on(gw: Gateway, app: str = APP) -> list[str] | None:
    """The participants the gateway's node checks requests to ``app`` against."""
    entry = gw.status()["apps"].get(app)
    return None if entry is None else list(entry["members"])


def wait_members(
    net: RunningNetwork, identity: Identity, expected: Iterable[str], nodes: Iterable[str] = HOSTS
) -> None:
    want = sorted(expected)
    for node in nodes:
        with as_identity(net, identity, node) as gw:
            wait_for(lambda gw=gw: members_on(gw) == want, what=f"{node}: {APP} members {want}")


def revoked_on(gw: Gateway) -> set[tuple[str, int]]:
    """The governance revocations the gateway's node enforces."""
    doc = gw.request("GET", "/v1/network")["config"]
    return {(org, int(serial)) for org, serial in doc.get("revoked", [])}


def wait_revoked(
    net: RunningNetwork, identity: Identity, org: str, serial: int, nodes: Iterable[str] = HOSTS
) -> None:
    for node in nodes:
        with as_identity(net, identity, node) as gw:
            wait_for(lambda gw=gw: (org, serial) in revoked_on(gw), what=f"{node}: revoked")


def org_ca(net: RunningNetwork, org: str) -> CertificateAuthority:
    ca_dir = net.layout.ca_dir(org)
    return CertificateAuthority.load(
        (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    )


def new_client(net: RunningNetwork, org: str, name: str) -> tuple[Identity, int]:
    """A fresh client identity of a genesis org (its CA is on disk) and its serial."""
    issued = org_ca(net, org).issue(name, Role.CLIENT)
    assert issued.key_pem is not None
    serial = x509.load_pem_x509_certificate(issued.cert_pem).serial_number
    return Identity(load_cert_der(issued.cert_pem), load_signer(issued.key_pem)), serial


def csr_for(key: ed25519.Ed25519PrivateKey, cn: str, org: str) -> bytes:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, None)
    return csr.public_bytes(serialization.Encoding.PEM)


def own_key_user(backend: Gateway, app: str, name: str) -> tuple[Identity, int]:
    """Issue own-key user ``name@app`` of acme from a CSR; the identity and its serial."""
    key = ed25519.Ed25519PrivateKey.generate()
    cert = issue_user(backend, app, name, csr=csr_for(key, name, "acme"))["cert"].encode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    serial = x509.load_pem_x509_certificate(cert).serial_number
    return Identity(load_cert_der(cert), load_signer(key_pem)), serial


def carry(proposal: dict[str, Any], deciders: Iterable[Governance]) -> dict[str, Any]:
    """Approve ``proposal`` with each decider in turn (skipping orgs its policy does not
    name) until it is no longer open."""
    for gov in deciders:
        if proposal["status"] != "open":
            break
        try:
            proposal = gov.approve(proposal["id"])
        except Forbidden as exc:
            if exc.code != "not_an_approver":
                raise
    return proposal


def relay(gw: Gateway, signed: Any, batch: bool = False) -> Any:
    """Submit a proposal someone else signed, as ``gw``'s identity."""
    if batch:
        body = {"proposals": [signed.to_dict()], "wait": True}
        return gw.request("POST", f"/v1/apps/{APP}/transactions/batch", body)
    body = {"proposal": signed.to_dict(), "wait": True}
    return gw.request("POST", f"/v1/apps/{APP}/transactions", body)


# ----------------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    running = make_network(tmp_path_factory.mktemp("journeys"), orgs=4, nodes=4)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def admins(net: RunningNetwork) -> Iterator[dict[str, Governance]]:
    """Each operator org's admin, through its own node."""
    found = {org: Governance(net.gateway(f"{org}/admin")) for org in ("org1", "org2", "org3")}
    try:
        yield found
    finally:
        for gov in found.values():
            gov.gateway.close()


@dataclass
class Acme:
    identity: Identity  # its admin: the back-end's identity (an org identity, no app user)
    ca_pem: bytes
    gov: Governance  # through node1, its home node


@pytest.fixture(scope="module")
def acme(net: RunningNetwork) -> Iterator[Acme]:
    """Developer org ``acme``, signed up through the SDK at node1's portal."""
    reg = register(
        node_url(net, "node1"),
        network=net.config.network,
        org="acme",
        name="Acme Software Ltd",
        details={"registration_no": "91310000MA1FL0002Y", "contact": "dev@acme.example"},
    )
    assert reg.proposal["status"] == "executed"  # register_org: ANY operator (node1's)
    identity = reg.identity
    assert identity is not None
    for node in HOSTS:  # both hosts learn acme's CA from governance
        with as_identity(net, identity, node) as gw:
            wait_for(lambda gw=gw: gw.request("GET", "/v1/network"), what=f"{node} knows acme")
    gw = as_identity(net, identity, "node1")
    try:
        yield Acme(identity, reg.ca_pem.encode(), Governance(gw))
    finally:
        gw.close()


@pytest.fixture(scope="module")
def shop(net: RunningNetwork, acme: Acme) -> str:
    """acme's key-custody app on node1 and node2, asset-transfer deployed."""
    dev = acme.gov
    created = dev.propose(dev.create_app(APP, plan="basic", nodes=list(HOSTS), key_mode="custody"))
    assert created["status"] == "executed"  # ANY owner
    with as_identity(net, acme.identity, "node2") as node2:
        for gw in (dev.gateway, node2):
            wait_hosted(gw, APP, TIMEOUT_S)
        deploy([dev.gateway], APP, EXAMPLE, policy="ANY", install_on=[dev.gateway, node2])
    return APP


@pytest.fixture(scope="module")
def partners(net: RunningNetwork, acme: Acme, shop: str, admins: dict[str, Governance]) -> None:
    """org2, then org3, accept acme's invitations to ``shop`` as participants."""
    dev, org2, org3 = acme.gov, admins["org2"], admins["org3"]
    invite = dev.propose(dev.invite(APP, "org2"))
    assert (invite["status"], invite["approvals"]) == ("open", ["acme"])
    assert org2.observe(dev).accept(invite["id"])["status"] == "executed"
    invite = dev.observe(org2).propose(dev.invite(APP, "org3"))
    invite = org2.observe(dev).approve(invite["id"])  # 2 of 2 members; org3 to accept
    assert invite["status"] == "open"
    assert org3.observe(org2).accept(invite["id"])["status"] == "executed"
    wait_members(net, acme.identity, ("acme", "org2", "org3"))


# ---------------------------------------------------------------- 2. key custody


def test_custody_submit_as_signs_for_the_user(
    net: RunningNetwork, acme: Acme, shop: str, partners: None
) -> None:
    backend = acme.gov.gateway
    issued = issue_user(backend, APP, "alice")
    assert (issued["user"], issued["key_mode"]) == ("alice@shop", "custody")

    receipt = submit_as(backend, APP, "alice", CONTRACT, "create", "car-1", "alice", 5)
    assert (receipt["status"], receipt["code"], receipt["valid"]) == ("committed", "VALID", True)
    assert receipt["response"]["created_by"] == "alice@acme"  # what the contract saw

    # the committed transaction's creator is alice's certificate: CN alice, O acme, app shop
    block = backend.app(APP).block(receipt["block"])
    assert block["codes"][receipt["index"]] == "VALID"
    proposal = block["block"]["transactions"][receipt["index"]]["signed_proposal"]["proposal"]
    creator = codec.unb64_cert(proposal["creator"])
    assert creator == load_cert_der(issued["cert"].encode())
    who = Membership({"acme": acme.ca_pem}).identify(creator)
    assert (who.org, who.name, who.role, dict(who.attrs)) == (
        "acme",
        "alice",
        Role.CLIENT,
        {"app": APP},
    )
    with net.gateway("org2/user1") as partner:  # the other host agrees
        assert wait_for(lambda: partner.app(APP).transaction(receipt["tx_id"])).code == "VALID"

    before = height(backend)
    call = (CONTRACT, "create", "car-x", "mallory", 1)
    home = node_url(net, "node1")
    # an operator hosting shop, and a participant of shop: neither signs for acme's users
    for who_ in ("org1/admin", "org2/admin", "org2/user1"):
        with net.gateway(who_, url=home) as other:
            expect(Forbidden, "not_the_backend", lambda o=other: submit_as(o, APP, "alice", *call))

    # an app user of acme (own-key app "notes") is no back-end either
    notes = acme.gov.propose(
        acme.gov.create_app("notes", plan="free", nodes=["node1"], key_mode="own")
    )
    assert notes["status"] == "executed"
    wait_hosted(backend, "notes", TIMEOUT_S)
    key = ed25519.Ed25519PrivateKey.generate()
    bob_cert = issue_user(backend, "notes", "bob", csr=csr_for(key, "bob", "acme"))["cert"]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bob = Identity(load_cert_der(bob_cert.encode()), load_signer(key_pem))
    with as_identity(net, bob, "node1") as app_user:
        expect(Forbidden, "not_the_backend", lambda: submit_as(app_user, APP, "alice", *call))
        shop_as_bob = app_user.app(APP).contract(CONTRACT)
        expect(Forbidden, "wrong_app", lambda: shop_as_bob.submit(*call[1:]))
    # own-key apps have no custodial users; unknown users are not found
    expect(Forbidden, "not_custody", lambda: submit_as(backend, "notes", "bob", *call))
    expect(NotFound, "unknown_user", lambda: submit_as(backend, APP, "nobody", *call))

    assert height(backend) == before  # nothing of the refused requests was ordered
    assert backend.app(APP).contract(CONTRACT).evaluate("read", "car-x") is None
    assert backend.app(APP).contract(CONTRACT).evaluate("read", "car-1")["owner"] == "alice"


# --------------------------------------------------- 2b. revoking app users


def test_owner_revokes_app_users_end_to_end(net: RunningNetwork, acme: Acme, shop: str) -> None:
    """acme revokes custodial user heidi of shop and own-key user judy of forum (both
    apps on node1 and node2) through the SDK; ivan and ken, the other users, go on."""
    dev, backend = acme.gov, acme.gov.gateway  # acme's admin at node1, its home node
    created = dev.propose(dev.create_app(FORUM, plan="basic", nodes=list(HOSTS), key_mode="own"))
    assert created["status"] == "executed"
    node2 = as_identity(net, acme.identity, "node2")
    judy_gws: dict[str, Gateway] = {}
    try:
        for gw in (backend, node2):
            wait_hosted(gw, FORUM, TIMEOUT_S)
        deploy([backend], FORUM, EXAMPLE, policy="ANY", install_on=[backend, node2])

        heidi_cert = issue_user(backend, APP, "heidi")["cert"].encode()
        heidi = x509.load_pem_x509_certificate(heidi_cert).serial_number
        issue_user(backend, APP, "ivan")
        judy, judy_serial = own_key_user(backend, FORUM, "judy")
        ken, _ = own_key_user(backend, FORUM, "ken")
        judy_gws = {node: as_identity(net, judy, node) for node in HOSTS}
        as_heidi = (CONTRACT, "create", "h-after", "heidi", 1)
        assert submit_as(backend, APP, "heidi", CONTRACT, "create", "h1", "heidi", 1)["valid"]
        for node, gw in judy_gws.items():
            receipt = gw.app(FORUM).contract(CONTRACT).submit_receipt("create", f"j-{node}", "j", 1)
            assert receipt.code == "VALID"

        # only the owner's admin, only at the home node that keeps acme's CA
        path = f"/v1/apps/{APP}/users/heidi/revoke"
        with net.gateway("org2/admin", url=node_url(net, "node1")) as stranger:
            expect(Forbidden, "not_admin", lambda: stranger.request("POST", path))
        with as_identity(net, judy, "node1") as app_user:
            expect(Forbidden, "not_admin", lambda: app_user.request("POST", path))
        elsewhere = expect(Conflict, "ca_not_here", lambda: node2.request("POST", path))
        assert elsewhere.details["home_node"] == "node1" and "node1" in (elsewhere.hint or "")
        expect(NotFound, "unknown_user", lambda: revoke_user(backend, APP, "nobody"))
        assert submit_as(backend, APP, "heidi", CONTRACT, "create", "h2", "heidi", 1)["valid"]

        # the gateway's half alone (as if the governance proposal never got through):
        # heidi's custodial key signs no more at once, though the network has no CRL yet
        signed = backend.request("POST", path)
        assert signed["serials"] == [str(heidi)] and signed["change"]["kind"] == "revoke"
        assert ("acme", heidi) not in revoked_on(backend)
        expect(Forbidden, "user_revoked", lambda: submit_as(backend, APP, "heidi", *as_heidi))

        # the SDK continues: a fresh CRL (next number), proposed by acme's admin
        custody = revoke_user(backend, APP, "heidi")
        assert custody.executed and custody.serials == (heidi,)
        assert custody.crl_number == signed["crl_number"] + 1
        assert (custody.proposal["approvals"], custody.proposal["proposer"]["org"]) == (
            ["acme"],
            "acme",
        )
        own = revoke_user(backend, FORUM, "judy")
        assert own.executed and own.serials == (judy_serial,)
        crl = x509.load_pem_x509_crl(own.crl_pem.encode())  # heidi's is enforced already:
        assert {e.serial_number for e in crl} == {judy_serial}  # only what is new
        expect(Conflict, "already_revoked", lambda: revoke_user(backend, FORUM, "judy"))
        for serial in (heidi, judy_serial):
            wait_revoked(net, acme.identity, "acme", serial)
        before = {app: heights_of(net, acme.identity, app) for app in (APP, FORUM)}

        for node, gw in judy_gws.items():  # every hosting gateway, writes and reads
            forum = gw.app(FORUM).contract(CONTRACT)
            expect(
                CertificateError,
                "certificate_revoked",
                lambda c=forum, n=node: c.submit("create", f"j2-{n}", "j", 1),
            )
            expect(CertificateError, "certificate_revoked", lambda c=forum: c.evaluate("read", "j"))
        expect(Forbidden, "user_revoked", lambda: submit_as(backend, APP, "heidi", *as_heidi))
        # node2 keeps no custodial keys: it never signs for heidi, and enforces the CRL
        expect(NotFound, "unknown_user", lambda: submit_as(node2, APP, "heidi", *as_heidi))
        again = csr_for(ed25519.Ed25519PrivateKey.generate(), "judy", "acme")
        expect(Forbidden, "user_revoked", lambda: issue_user(backend, FORUM, "judy", csr=again))
        assert {app: heights_of(net, acme.identity, app) for app in (APP, FORUM)} == before

        # the other users go on, on both hosts
        assert submit_as(backend, APP, "ivan", CONTRACT, "create", "i1", "ivan", 1)["valid"]
        for node in HOSTS:
            with as_identity(net, ken, node) as gw:
                contract = gw.app(FORUM).contract(CONTRACT)
                assert contract.submit_receipt("create", f"k-{node}", "ken", 1).code == "VALID"
                assert contract.evaluate("read", "j-node1")["created_by"] == "judy@acme"
        shop_ = backend.app(APP).contract(CONTRACT)
        assert shop_.evaluate("read", "h-after") is None
        assert shop_.evaluate("read", "h2")["created_by"] == "heidi@acme"
    finally:
        for gw in (node2, *judy_gws.values()):
            gw.close()


# -------------------------------------------------------------- 1. revocation


def test_revoked_certificate_is_refused_by_every_gateway(
    net: RunningNetwork, acme: Acme, shop: str, partners: None, admins: dict[str, Governance]
) -> None:
    carol, serial = new_client(net, "org3", "carol")
    gws = {node: as_identity(net, carol, node) for node in HOSTS}
    try:
        first = gws["node1"].app(APP).contract(CONTRACT).submit_receipt("create", "c1", "carol", 1)
        assert first.code == "VALID"
        signed_early = gws["node2"].builder.build(APP, CONTRACT, "create", ("c-relay", "carol", 2))

        # another org cannot revoke org3's certificates, even holding a CRL of org3's CA
        crl = org_ca(net, "org3").revoke([serial])
        org1, org3 = admins["org1"], admins["org3"]
        proposal = org1.propose(org1.revoke("org3", crl))
        assert (proposal["status"], proposal["policy"]) == ("open", ["ANY subject"])
        assert "org1" not in proposal["approvals"]
        second = gws["node1"].app(APP).contract(CONTRACT).submit_receipt("create", "c2", "carol", 1)
        assert second.code == "VALID"  # nothing changed while it is open

        assert org3.observe(org1).approve(proposal["id"])["status"] == "executed"
        wait_revoked(net, acme.identity, "org3", serial)
        before = heights(net, acme.identity)

        for node, gw in gws.items():  # at once, on both hosts, writes and reads
            contract = gw.app(APP).contract(CONTRACT)
            expect(
                CertificateError,
                "certificate_revoked",
                lambda c=contract, n=node: c.submit("create", f"c-{n}", "carol", 1),
            )
            expect(
                CertificateError,
                "certificate_revoked",
                lambda c=contract: c.evaluate("read", "c1"),
            )
            expect(CertificateError, "certificate_revoked", lambda g=gw: g.app(APP).block("latest"))

        # what carol signed earlier, relayed by a valid identity of her org, is refused
        # for its creator: single and batch
        with net.gateway("org3/user1", url=node_url(net, "node1")) as relayer:
            expect(CertificateError, "certificate_revoked", lambda: relay(relayer, signed_early))
            results = relay(relayer, signed_early, batch=True)["results"]
            assert [(r["ok"], r["error"]["code"]) for r in results] == [
                (False, "certificate_revoked")
            ]
            tx_id = signed_early.proposal.tx_id
            expect(NotFound, "tx_not_found", lambda: relayer.app(APP).transaction(tx_id))
            contract = relayer.app(APP).contract(CONTRACT)
            assert contract.evaluate("read", "c-relay") is None
            assert contract.evaluate("read", "c-node1") is None
            assert heights(net, acme.identity) == before  # nothing was ordered

            # the rest of org3 goes on; carol's committed past stays valid
            assert contract.submit_receipt("create", "o3-after", "oscar", 1).code == "VALID"
            assert relayer.app(APP).transaction(first.tx_id).code == "VALID"
            assert contract.evaluate("read", "c2")["created_by"] == "carol@org3"
    finally:
        for gw in gws.values():
            gw.close()


# ------------------------------------------------------------------- 3. removal


def test_removed_member_is_refused_on_every_host(
    net: RunningNetwork, acme: Acme, shop: str, partners: None, admins: dict[str, Governance]
) -> None:
    dev = acme.gov
    with net.gateway("org2/user1") as member:  # through node2, org2's node
        contract = member.app(APP).contract(CONTRACT)
        earlier = contract.submit_receipt("create", "o2-1", "olga", 3)
        assert earlier.code == "VALID" and earlier.response["created_by"] == "user1@org2"
        hook = add_webhook(member, APP, "http://127.0.0.1:9/hook")  # deliveries just fail
        with as_identity(net, acme.identity, "node2") as owner_at_node2:
            assert hook["id"] in [h["id"] for h in list_webhooks(owner_at_node2, APP)]

        # acme and org3 are a majority of the three participants: org2 is not asked
        removal = dev.propose(dev.remove_member(APP, "org2"))
        assert (removal["status"], removal["policy"]) == ("open", ["MAJORITY members"])
        assert admins["org3"].observe(dev).approve(removal["id"])["status"] == "executed"
        wait_members(net, acme.identity, ("acme", "org3"))
        before = heights(net, acme.identity)

        expect(Forbidden, "not_a_member", lambda: contract.submit("create", "o2-2", "olga", 1))
        with net.gateway("org2/user1", url=node_url(net, "node1")) as elsewhere:
            other = elsewhere.app(APP).contract(CONTRACT)
            expect(Forbidden, "not_a_member", lambda: other.submit("create", "o2-3", "olga", 1))
        listed = [a["name"] for a in member.request("GET", "/v1/apps")["apps"]]
        assert APP not in listed and "governance" in listed
        app = member.app(APP)
        reads = {
            "tx": lambda: app.transaction(earlier.tx_id),
            "proof": lambda: app.proof(earlier.tx_id),
            "block": lambda: app.block("latest"),
            "contracts": app.contracts,
            "events": lambda: next(iter(app.events(start=0))),
            "evaluate": lambda: contract.evaluate("read", "o2-1"),
            "webhooks": lambda: list_webhooks(member, APP),
        }
        for name, read in reads.items():
            with pytest.raises(Forbidden) as denied:
                read()
            assert denied.value.code == "not_a_member", name

        # a proposal org2 signed, relayed by the owner's back-end: refused for its creator
        signed = member.builder.build(APP, CONTRACT, "create", ("o2-relay", "olga", 1))
        expect(Forbidden, "not_a_member", lambda: relay(dev.gateway, signed))
        expect(
            NotFound,
            "tx_not_found",
            lambda: dev.gateway.app(APP).transaction(signed.proposal.tx_id),
        )
        assert heights(net, acme.identity) == before  # nothing was ordered

    shop_ = dev.gateway.app(APP)
    assert [shop_.contract(CONTRACT).evaluate("read", k) for k in ("o2-2", "o2-3", "o2-relay")] == [
        None,
        None,
        None,
    ]
    assert shop_.transaction(earlier.tx_id).code == "VALID"  # its past stays valid
    assert shop_.contract(CONTRACT).evaluate("read", "o2-1")["created_by"] == "user1@org2"
    with net.gateway("org3/user1", url=node_url(net, "node2")) as remaining:
        receipt = remaining.app(APP).contract(CONTRACT).submit_receipt("create", "o3-2", "x", 1)
        assert receipt.code == "VALID"
    with as_identity(net, acme.identity, "node2") as owner_at_node2:  # its webhook is gone
        wait_for(
            lambda: hook["id"] not in [h["id"] for h in list_webhooks(owner_at_node2, APP)],
            what="org2's webhook removed",
        )


# ------------------------------------------------------- open event streams


class Follower:
    """Reads ``gw``'s event stream of ``shop`` on a thread, from the next block on."""

    def __init__(self, gw: Gateway) -> None:
        self.blocks: list[int] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None
        start = height(gw)
        self._thread = threading.Thread(target=self._run, args=(gw, start), daemon=True)
        self._thread.start()

    def _run(self, gw: Gateway, start: int) -> None:
        try:
            for event in gw.app(APP).events(start=start):
                self.blocks.append(event.block)
        except BaseException as exc:  # the stream refused or cut: what the test wants
            self.error = exc
        finally:
            self.ended.set()

    def wait_block(self, number: int, timeout_s: float) -> bool:
        """True once block ``number`` arrived; False if the stream ended or timed out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.ended.is_set():
            if number in self.blocks:
                return True
            time.sleep(0.05)
        return number in self.blocks


@pytest.mark.parametrize("change", ["revoke", "remove_member"])
def test_open_event_stream_ends_when_access_ends(
    net: RunningNetwork, acme: Acme, shop: str, partners: None, change: str
) -> None:
    home = node_url(net, "node1")
    dev = acme.gov
    org2, org3, org4 = (Governance(net.gateway(f"{o}/admin", url=home)) for o in OTHERS)
    if change == "revoke":
        identity, serial = new_client(net, "org3", "erin")
        reader = as_identity(net, identity, "node1")
    else:
        invite = carry(dev.propose(dev.invite(APP, "org4")), [org2, org3, org4])
        assert invite["status"] == "executed"
        wait_members(net, acme.identity, {*(members_on(dev.gateway) or ()), "org4"}, ["node1"])
        reader = net.gateway("org4/user1", url=home)
    try:
        follower = Follower(reader)
        writer = dev.gateway.app(APP).contract(CONTRACT)
        seen = writer.submit_receipt("create", f"{change}-before", "x", 1)
        assert follower.wait_block(seen.block or 0, TIMEOUT_S), "the stream works"

        if change == "revoke":
            revoke = org3.propose(org3.revoke("org3", org_ca(net, "org3").revoke([serial])))
            assert revoke["status"] == "executed"
            wait_revoked(net, acme.identity, "org3", serial, nodes=["node1"])
            expect(CertificateError, "certificate_revoked", lambda: reader.app(APP).contracts())
        else:
            removal = carry(dev.propose(dev.remove_member(APP, "org4")), [org2, org3])
            assert removal["status"] == "executed"
            wait_members(net, acme.identity, set(members_on(dev.gateway) or ()) - {"org4"})
            expect(Forbidden, "not_a_member", lambda: reader.app(APP).contracts())

        after = writer.submit_receipt("create", f"{change}-after", "x", 1)
        assert after.code == "VALID"
        # the stream does not hand the block committed after the change to the caller
        # that lost access: it ends with the typed error
        assert not follower.wait_block(after.block or 0, 10.0), (
            f"block {after.block} (after the {change}) was streamed to the identity "
            f"that lost access; stream ended={follower.ended.is_set()}"
        )
        assert follower.ended.wait(10.0), "the stream did not end"
        expected = "certificate_revoked" if change == "revoke" else "not_a_member"
        assert isinstance(follower.error, MeridianError), follower.error
        assert follower.error.code == expected, follower.error
    finally:
        reader.close()
        for gov in (org2, org3, org4):
            gov.gateway.close()


# ---------------------------------------------------- validation: ordered after


def test_transactions_endorsed_before_a_change_commit_invalid(
    net: RunningNetwork, acme: Acme, shop: str, partners: None
) -> None:
    """node1 endorses and durably accepts two transactions while shop cannot order
    (node2 is down); then the creator of one is revoked and the org of the other is
    removed. node1 is stopped, node2 restarted and caught up with governance, node1
    restarted: whichever host proposes names a configuration with both changes, so
    both transactions are committed BAD_CREATOR_CERTIFICATE, with no writes."""
    home = node_url(net, "node1")
    govs = {org: Governance(net.gateway(f"{org}/admin", url=home)) for org in OTHERS}
    dev = acme.gov
    try:
        participants = set(members_on(dev.gateway) or ())  # acme, org3 (org2 if not removed)
        invite = dev.propose(dev.invite(APP, "org4"))
        invite = carry(invite, [govs["org2"], govs["org3"], govs["org4"]])
        assert invite["status"] == "executed"
        wait_members(net, acme.identity, participants | {"org4"})

        dave, serial = new_client(net, "org3", "dave")
        with as_identity(net, dave, "node1") as d, net.gateway("org4/user1", url=home) as u4:
            by_dave, by_org4 = d.app(APP).contract(CONTRACT), u4.app(APP).contract(CONTRACT)
            assert by_dave.submit_receipt("create", "d1", "dave", 1).code == "VALID"
            assert by_org4.submit_receipt("create", "o4-1", "olaf", 1).code == "VALID"

            net.kill_node("node2")  # shop's two consenters: no quorum, nothing is ordered
            stale = {
                "revoked": by_dave.submit_async("create", "d-stale", "dave", 1).tx_id,
                "removed": by_org4.submit_async("create", "o4-stale", "olaf", 1).tx_id,
            }

            # governance still decides (node1, node3, node4 of its four consenters)
            revoke = govs["org3"].propose(
                govs["org3"].revoke("org3", org_ca(net, "org3").revoke([serial]))
            )
            assert revoke["status"] == "executed"
            removal = carry(dev.propose(dev.remove_member(APP, "org4")), govs.values())
            assert removal["status"] == "executed"
            wait_revoked(net, acme.identity, "org3", serial, nodes=["node1"])
            wait_members(net, acme.identity, participants, nodes=["node1"])
            expect(
                CertificateError,
                "certificate_revoked",
                lambda: by_dave.submit("create", "d2", "d", 1),
            )
            expect(Forbidden, "not_a_member", lambda: by_org4.submit("create", "o4-2", "o", 1))
            assert dev.gateway.status()["apps"][APP]["pending"] == 2  # the two accepted before

        # both hosts have both changes before shop can order again
        net.kill_node("node1")
        net.start_node("node2")
        wait_revoked(net, acme.identity, "org3", serial, nodes=["node2"])
        wait_members(net, acme.identity, participants, nodes=["node2"])
        net.start_node("node1")

        with (
            as_identity(net, acme.identity, "node1") as gw1,
            as_identity(net, acme.identity, "node2") as gw2,
        ):
            for gw in (gw1, gw2):
                for why, accepted in stale.items():
                    receipt = wait_for(
                        lambda gw=gw, tx=accepted: committed(gw, tx),
                        timeout_s=RESTART_TIMEOUT_S,
                        what=f"the {why} creator's transaction committed",
                    )
                    assert (receipt.code, receipt.valid) == ("BAD_CREATOR_CERTIFICATE", False), why
                contract = gw.app(APP).contract(CONTRACT)
                assert contract.evaluate("read", "d-stale") is None
                assert contract.evaluate("read", "o4-stale") is None
            n = gw1.app(APP).transaction(stale["revoked"]).block
            assert n is not None
            assert gw1.app(APP).block(n)["hash"] == gw2.app(APP).block(n)["hash"]
            # shop orders again after the restarts
            after = gw1.app(APP).contract(CONTRACT).submit_receipt("create", "after", "a", 1)
            assert after.code == "VALID"
    finally:
        for gov in govs.values():
            gov.gateway.close()


def test_every_ledger_verifies_at_the_end(net: RunningNetwork) -> None:
    """Last in this module: stops the network; `ledger verify` replays every block
    (the invalid verdicts above included) under its configuration height."""
    net.stop()
    ledgers = verify_ledgers(net)
    assert {"governance", APP} <= {entry["app"] for entry in ledgers}
