"""Revocation takes effect when the node learns of it, and replays agree.

A CRL may carry a revocation date earlier than the moment it reaches the node.
Transactions the node committed in between were valid when committed; `ledger
verify` must re-validate them the same way (it reads the node's record of when each
revocation took effect).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from meridian.crypto.certs import CertificateAuthority
from meridian.errors import CertificateError

from .conftest import RunningNetwork, verify_ledgers


def test_backdated_revocation_keeps_earlier_verdicts(fresh_network: RunningNetwork) -> None:
    net = fresh_network
    net.start()
    net.deploy()
    with net.gateway() as user:
        early = (
            user.app("demo").contract("asset-transfer").submit_receipt("create", "early", "x", 1)
        )
    assert early.code == "VALID"

    ca_dir = net.layout.ca_dir("org1")
    ca = CertificateAuthority.load(
        (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    )
    cert = x509.load_pem_x509_certificate(
        (net.layout.user_dir("org1", "user1") / "cert.pem").read_bytes()
    )
    crl = ca.revoke([cert.serial_number], now=datetime.now(UTC) - timedelta(hours=1))
    with net.gateway("org1/admin") as admin:
        assert admin.request("POST", "/v1/orgs/org1/crl", {"crl": crl.decode()}) == {"ok": True}

    with net.gateway() as user, pytest.raises(CertificateError) as refused:
        user.app("demo").contract("asset-transfer").submit("create", "late", "x", 2)
    assert refused.value.code == "certificate_revoked"
    with net.gateway("org2/user1") as other:
        assert other.app("demo").transaction(early.tx_id).code == "VALID"
    net.stop()

    verify_ledgers(net)
