"""A developer's onboarding through the SDK (``client/onboarding.py``) and the CLI
(``meridian developer`` / ``meridian app``) on a four-node network."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from meridian.client import Identity, connect
from meridian.client.governance import Governance, wait_hosted
from meridian.client.onboarding import invoice, invoice_html, register, usage
from meridian.errors import CertificateError

from .conftest import RunningNetwork, make_network
from .test_cli import meridian

APP = "shop"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    running = make_network(tmp_path_factory.mktemp("onboarding"), orgs=4, nodes=4)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def acme(net: RunningNetwork) -> Path:
    """Org 'acme' signed up at node1 through the SDK, owning own-key app 'shop'."""
    reg = register(
        net.url,
        network=net.config.network,
        org="acme",
        name="Acme Software Ltd",
        details={"contact": "dev@acme.example"},
    )
    assert reg.org == "acme" and reg.proposal["status"] == "executed"
    assert isinstance(reg.admin, Identity) and "BEGIN CERTIFICATE" in reg.ca_pem
    folder = reg.save(net.layout.user_dir("acme", "admin"))
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
    with connect(net.url, Identity.from_dir(folder), network=net.config.network) as gw:
        gov = Governance(gw)
        change = gov.create_app(APP, nodes=["node1", "node2"], plan="free", key_mode="own")
        assert gov.propose(change)["status"] == "executed"
        wait_hosted(gw, APP)
    return folder


def test_sdk_reads_usage_and_invoices(net: RunningNetwork, acme: Path) -> None:
    with connect(net.url, Identity.from_dir(acme), network=net.config.network) as gw:
        assert usage(gw, APP)["app"] == APP
        bill = invoice(gw, APP)
        assert bill["app"] == APP and bill["total_fen"] == 0
        assert "<html" in invoice_html(gw, APP).lower()


def test_cli_issues_an_own_key_user(net: RunningNetwork, acme: Path, tmp_path: Path) -> None:
    out = tmp_path / "carol"
    result = meridian(
        "--url",
        net.url,
        "--app",
        APP,
        "--json",
        "app",
        "user",
        "add",
        "carol",
        "--generate-key",
        "--out",
        str(out),
        network=net.layout.root,
        who="acme/admin",
    )
    assert json.loads(result.stdout)["user"] == f"carol@{APP}"
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "carol"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "acme"
    Identity.from_dir(out)  # the key and certificate load together


def test_cli_revokes_an_own_key_user(net: RunningNetwork, acme: Path, tmp_path: Path) -> None:
    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return meridian(
            "--url", net.url, "--app", APP, *args,
            network=net.layout.root, who="acme/admin", check=check,
        )  # fmt: skip

    assert "governance" in cli("app", "user", "revoke", "--help").stdout
    for name in ("erin", "fay"):
        cli("app", "user", "add", name, "--generate-key", "--out", str(tmp_path / name))
    erin, fay = (Identity.from_dir(tmp_path / name) for name in ("erin", "fay"))
    serial = x509.load_der_x509_certificate(erin.cert_der).serial_number
    hosts = [net.config.node(node).url for node in ("node1", "node2")]
    for url in hosts:
        with connect(url, erin, network=net.config.network) as gw:
            assert gw.app(APP).contracts() == []  # erin may read shop

    done = json.loads(cli("--json", "app", "user", "revoke", "erin").stdout)
    assert (done["user"], done["serials"]) == (f"erin@{APP}", [str(serial)])
    assert done["proposal"]["status"] == "executed"
    assert done["proposal"]["change"]["kind"] == "revoke"
    for url in hosts:
        with connect(url, erin, network=net.config.network) as gw:
            deadline = time.monotonic() + 30
            while True:  # node2 applies the governance block a moment later, maybe
                try:
                    gw.app(APP).contracts()
                except CertificateError as exc:
                    assert exc.code == "certificate_revoked"
                    break
                assert time.monotonic() < deadline, f"{url} still serves erin"
                time.sleep(0.1)
        with connect(url, fay, network=net.config.network) as gw:
            assert gw.app(APP).contracts() == []  # the other user goes on

    again = cli("app", "user", "revoke", "erin", check=False)
    assert again.returncode == 1 and "already_revoked" in again.stderr
    missing = cli("--json", "app", "user", "revoke", "nobody", check=False)
    assert json.loads(missing.stdout)["error"]["code"] == "unknown_user"


def test_invalid_own_key_user_without_csr(net: RunningNetwork, acme: Path) -> None:
    result = meridian(
        "--url", net.url, "--app", APP, "app", "user", "add", "dave",
        network=net.layout.root, who="acme/admin", check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "csr_required" in result.stderr


def test_cli_usage_and_invoice(net: RunningNetwork, acme: Path) -> None:
    text = meridian(
        "--url", net.url, "--app", APP, "app", "invoice", "--format", "text",
        network=net.layout.root, who="acme/admin",
    ).stdout  # fmt: skip
    assert "MERIDIAN INVOICE" in text and "¥0.00" in text
    used = json.loads(
        meridian(
            "--url", net.url, "--app", APP, "--json", "app", "usage",
            network=net.layout.root, who="acme/admin",
        ).stdout
    )  # fmt: skip
    assert used["app"] == APP and used["transactions"] == 0
    assert used["scope"] == "network" and used["complete"] is True  # every hosting node
    assert set(used["by_node"]) == {"node1", "node2"}
    local = json.loads(
        meridian(
            "--url", net.url, "--app", APP, "--json", "app", "usage", "--local",
            network=net.layout.root, who="acme/admin",
        ).stdout
    )  # fmt: skip
    assert local["scope"] == "local" and local["node"] == "node1" and "by_node" not in local
    human = meridian(
        "--url", net.url, "--app", APP, "app", "usage",
        network=net.layout.root, who="acme/admin",
    ).stdout  # fmt: skip
    assert "on every hosting node" in human and "node2" in human


def test_cli_webhooks(net: RunningNetwork, acme: Path) -> None:
    def cli(*args: str) -> dict[str, object]:
        result = meridian(
            "--url", net.url, "--app", APP, "--json", "app", "webhook", *args,
            network=net.layout.root, who="acme/admin",
        )  # fmt: skip
        loaded: dict[str, object] = json.loads(result.stdout)
        return loaded

    hook = cli("add", "http://127.0.0.1:9/x", "--kinds", "block")
    assert hook["kinds"] == ["block"] and hook["owner"] == "acme/admin"
    listed = cli("list")["webhooks"]
    assert [h["id"] for h in listed] == [hook["id"]]  # type: ignore[attr-defined]
    assert isinstance(cli("deliveries", "--state", "failed")["deliveries"], list)
    assert cli("rm", str(hook["id"]))["ok"] is True
    assert cli("list")["webhooks"] == []


def test_cli_registers_a_developer(net: RunningNetwork, acme: Path) -> None:
    result = meridian(
        "--url", net.url, "--json", "developer", "register", "--org", "beta",
        "--name", "Beta Ltd", "--detail", "contact=ops@beta.example", "--type", "enterprise",
        network=net.layout.root,
    )  # fmt: skip
    registered = json.loads(result.stdout)
    assert registered["org"] == "beta" and registered["proposal"]["status"] == "executed"
    assert Path(registered["admin_dir"]) == net.layout.user_dir("beta", "admin")
    config = json.loads(
        meridian(
            "--url", net.url, "--json", "gov", "config", network=net.layout.root, who="beta/admin"
        ).stdout
    )  # the new identity signs at once
    assert "beta" in [o["id"] for o in config["orgs"]]
    again = meridian(
        "--url", net.url, "developer", "register", "--org", "beta", "--name", "Beta Ltd",
        network=net.layout.root, check=False,
    )  # fmt: skip
    assert again.returncode == 1 and "identity_exists" in again.stderr
