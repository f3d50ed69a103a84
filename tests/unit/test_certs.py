"""Organisation CAs, identity certificates, revocation and the membership service."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from meridian import codec
from meridian.crypto import certs
from meridian.crypto.certs import (
    ROLE_EXTENSION_OID,
    CertificateAuthority,
    Membership,
    Role,
    load_cert_der,
    load_signer,
    make_csr,
)
from meridian.crypto.suites import get_suite
from meridian.errors import CertificateError, InvalidInput

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=1)
DER = serialization.Encoding.DER


@pytest.fixture(scope="module")
def org1() -> CertificateAuthority:
    return CertificateAuthority.create("org1", now=T0)


@pytest.fixture(scope="module")
def org2() -> CertificateAuthority:
    return CertificateAuthority.create("org2", suite="p256", now=T0)


@pytest.fixture
def msp(org1: CertificateAuthority, org2: CertificateAuthority) -> Membership:
    return Membership({"org1": org1.cert_pem, "org2": org2.cert_pem})


def _issue_der(ca: CertificateAuthority, name: str = "alice", **kw: Any) -> bytes:
    kw.setdefault("now", T0)
    return load_cert_der(ca.issue(name, kw.pop("role", Role.CLIENT), **kw).cert_pem)


def _cert_error(msp: Membership, cert_der: bytes, now: datetime = NOW) -> CertificateError:
    with pytest.raises(CertificateError) as info:
        msp.validate(cert_der, now=now)
    assert info.value.hint, "every certificate error must say what to do next"
    return info.value


def _build_cert(
    signer_ca: CertificateAuthority,
    *,
    org: str = "org1",
    issuer: x509.Name | None = None,
    role_ext: bytes | None = None,
) -> bytes:
    """A hand-built identity certificate signed by ``signer_ca``'s key."""
    ca_key = load_signer(signer_ca.key_pem).crypto_key
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "mallory"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or signer_ca.cert.subject)
        .public_key(ed25519.Ed25519PrivateKey.generate().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=30))
    )
    if role_ext is not None:
        ext = x509.UnrecognizedExtension(ROLE_EXTENSION_OID, role_ext)
        builder = builder.add_extension(ext, critical=False)
    algorithm = None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(ca_key, algorithm).public_bytes(DER)


# --- issuing and validating -------------------------------------------------------------


def test_issue_and_validate(org1: CertificateAuthority, msp: Membership) -> None:
    issued = org1.issue("alice", Role.CLIENT, attrs={"dept": "ops"}, now=T0)
    assert issued.key_pem is not None
    cert_der = load_cert_der(issued.cert_pem)
    identity = msp.validate(cert_der, now=NOW)
    signer = load_signer(issued.key_pem)
    assert (identity.org, identity.name, identity.role) == ("org1", "alice", Role.CLIENT)
    assert identity.suite == "ed25519" and identity.public_key == signer.public_key_bytes()
    assert identity.cert_der == cert_der
    assert identity.fingerprint == hashlib.sha256(cert_der).hexdigest()
    assert identity.serial == x509.load_der_x509_certificate(cert_der).serial_number
    assert identity.not_before <= T0 < NOW < identity.not_after
    assert identity.not_after - T0 == timedelta(days=365)
    message = b"signed by alice"
    assert get_suite(identity.suite).verify(identity.public_key, message, signer.sign(message))


@pytest.mark.parametrize("role", list(Role))
def test_role_and_attrs_round_trip(org1: CertificateAuthority, msp: Membership, role: Role) -> None:
    attrs = {"dept": "清算", "level": "3", "empty": ""}
    identity = msp.validate(_issue_der(org1, role=role.value, attrs=attrs), now=NOW)
    assert identity.role is role
    assert dict(identity.attrs) == attrs


def test_identity_is_immutable_and_revalidates_equal(
    org1: CertificateAuthority, msp: Membership
) -> None:
    cert_der = _issue_der(org1, attrs={"k": "v"})
    first, second = msp.validate(cert_der, now=NOW), msp.validate(cert_der, now=NOW)
    assert first == second and hash(first) == hash(second)
    with pytest.raises(TypeError):
        first.attrs["k"] = "changed"  # type: ignore[index]
    with pytest.raises(AttributeError):
        first.name = "eve"  # type: ignore[misc]


def test_p256_identity_works(org1: CertificateAuthority, org2: CertificateAuthority) -> None:
    msp = Membership({"org1": org1.cert_pem, "org2": org2.cert_pem})
    for ca in (org1, org2):
        issued = ca.issue("bob", Role.NODE, suite="p256", now=T0)
        identity = msp.validate(load_cert_der(issued.cert_pem), now=NOW)
        assert identity.suite == "p256" and len(identity.public_key) == 65
        signer = load_signer(issued.key_pem or b"")
        assert get_suite("p256").verify(identity.public_key, b"m", signer.sign(b"m"))
    ed_identity = msp.validate(_issue_der(org2, "carol"), now=NOW)
    assert (ed_identity.org, ed_identity.suite) == ("org2", "ed25519")


@pytest.mark.parametrize("suite", ["ed25519", "p256"])
def test_csr_flow_keeps_client_key(org1: CertificateAuthority, msp: Membership, suite: str) -> None:
    signer = get_suite(suite).generate()
    for key in (signer, signer.crypto_key):
        csr = make_csr(key, "dave", "org1")
        cert_pem = org1.sign_csr(csr, "client", {"team": "a"})
        identity = msp.validate(load_cert_der(cert_pem))
        assert identity.public_key == signer.public_key_bytes()
        assert (identity.name, identity.suite, dict(identity.attrs)) == (
            "dave",
            suite,
            {"team": "a"},
        )


def test_issue_for_given_public_key_returns_no_private_key(
    org1: CertificateAuthority, msp: Membership
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = org1.issue("erin", "admin", public_key=key.public_key(), now=T0)
    assert issued.key_pem is None
    assert msp.validate(load_cert_der(issued.cert_pem), now=NOW).suite == "p256"


def test_ca_load_round_trip(org1: CertificateAuthority, msp: Membership) -> None:
    loaded = CertificateAuthority.load(org1.cert_pem, org1.key_pem)
    assert loaded.org == "org1" and loaded.cert_pem == org1.cert_pem
    assert msp.validate(_issue_der(loaded), now=NOW).org == "org1"


def test_ca_validity_days(org1: CertificateAuthority) -> None:
    assert org1.cert.not_valid_after_utc - T0 == timedelta(days=3650)
    short = CertificateAuthority.create("short", days=10, now=T0)
    assert short.cert.not_valid_after_utc - T0 == timedelta(days=10)


# --- revocation -------------------------------------------------------------------------


def test_revoke_accumulates_and_survives_reload_via_load_crl() -> None:
    ca = CertificateAuthority.create("org9", now=T0)
    ca.revoke([11], now=NOW)
    crl_pem = ca.revoke([22], now=NOW)
    crl = x509.load_pem_x509_crl(crl_pem)
    assert {entry.serial_number for entry in crl} == {11, 22}
    reloaded = CertificateAuthority.load(ca.cert_pem, ca.key_pem)
    reloaded.load_crl(crl_pem)
    newer = reloaded.revoke([33], now=NOW)
    msp = Membership({"org9": ca.cert_pem}, crls={"org9": crl_pem})
    assert msp.is_revoked("org9", 22, at=NOW) and not msp.is_revoked("org9", 33, at=NOW)
    msp.update_crl("org9", newer)
    assert all(msp.is_revoked("org9", serial, at=NOW) for serial in (11, 22, 33))


def test_revocation_takes_effect_at_its_date() -> None:
    """A block validated at its own time keeps its verdict after later revocations."""
    ca = CertificateAuthority.create("org7", now=T0)
    crl = ca.revoke([5], now=NOW)
    msp = Membership({"org7": ca.cert_pem}, crls={"org7": crl})
    assert not msp.is_revoked("org7", 5, at=NOW - timedelta(seconds=1))
    assert msp.is_revoked("org7", 5, at=NOW)


def test_invalid_revoked_cert(org1: CertificateAuthority, msp: Membership) -> None:
    cert_der = _issue_der(org1, "frank")
    identity = msp.validate(cert_der, now=NOW)  # cached now; revocation still re-checked
    msp.update_crl("org1", org1.revoke([identity.serial], now=NOW))
    assert _cert_error(msp, cert_der).code == "certificate_revoked"
    assert msp.validate(_issue_der(org1, "grace"), now=NOW).name == "grace"


def test_identify_ignores_revocation_but_not_the_ca(
    org1: CertificateAuthority, org2: CertificateAuthority, msp: Membership
) -> None:
    """Consenter keys must not depend on when a node read a revocation list."""
    cert_der = _issue_der(org1, "node9")
    serial = msp.validate(cert_der, now=NOW).serial
    msp.update_crl("org1", org1.revoke([serial], now=NOW))
    assert _cert_error(msp, cert_der).code == "certificate_revoked"
    assert msp.identify(cert_der).name == "node9"
    rogue = CertificateAuthority.create("org1", now=T0)
    with pytest.raises(CertificateError):
        msp.identify(_issue_der(rogue, "node9"))


def test_invalid_crl_signed_by_wrong_ca(
    org1: CertificateAuthority, org2: CertificateAuthority
) -> None:
    msp = Membership({"org1": org1.cert_pem, "org2": org2.cert_pem})
    rogue = CertificateAuthority.create("org1", now=T0)
    for crl_pem in (org2.revoke([5], now=NOW), rogue.revoke([5], now=NOW), b"garbage"):
        with pytest.raises(CertificateError) as info:
            msp.update_crl("org1", crl_pem)
        assert info.value.code == "crl_invalid" and info.value.hint
    assert not msp.is_revoked("org1", 5)
    with pytest.raises(InvalidInput) as bad:
        org1.load_crl(org2.revoke([5], now=NOW))
    assert bad.value.code == "bad_crl"


def test_invalid_crl_for_unknown_org(msp: Membership, org1: CertificateAuthority) -> None:
    with pytest.raises(CertificateError) as info:
        msp.update_crl("org7", org1.revoke([], now=NOW))
    assert info.value.code == "unknown_org"


def test_invalid_stale_crl_rejected() -> None:
    ca = CertificateAuthority.create("org8", now=T0)
    old, new = ca.revoke([1], now=NOW), ca.revoke([2], now=NOW)
    msp = Membership({"org8": ca.cert_pem}, crls={"org8": new})
    with pytest.raises(CertificateError) as info:
        msp.update_crl("org8", old)
    assert info.value.code == "crl_stale"
    assert msp.is_revoked("org8", 2, at=NOW)


# --- invalid certificates ---------------------------------------------------------------


def test_invalid_cert_from_rogue_ca_claiming_org1(msp: Membership) -> None:
    rogue = CertificateAuthority.create("org1", now=T0)  # same name, different key
    assert _cert_error(msp, _issue_der(rogue)).code == "certificate_invalid"


def test_invalid_cert_from_org2_ca_claiming_org1(
    org1: CertificateAuthority, org2: CertificateAuthority, msp: Membership
) -> None:
    role_ext = codec.encode({"role": "admin", "attrs": {}})
    cert_der = _build_cert(org2, org="org1", role_ext=role_ext)
    assert _cert_error(msp, cert_der).code == "unknown_org"
    forged_issuer = _build_cert(org2, org="org1", issuer=org1.cert.subject, role_ext=role_ext)
    assert _cert_error(msp, forged_issuer).code == "certificate_invalid"


def test_invalid_unknown_org(msp: Membership) -> None:
    outsider = CertificateAuthority.create("org3", now=T0)
    assert _cert_error(msp, _issue_der(outsider)).code == "unknown_org"


def test_invalid_expired_cert(org1: CertificateAuthority, msp: Membership) -> None:
    cert_der = _issue_der(org1, not_before=T0 - timedelta(days=10), days=5)
    error = _cert_error(msp, cert_der)
    assert error.code == "certificate_expired" and "renew" in (error.hint or "")
    later = _issue_der(org1)
    assert _cert_error(msp, later, now=T0 + timedelta(days=366)).code == "certificate_expired"


def test_invalid_not_yet_valid_cert(org1: CertificateAuthority, msp: Membership) -> None:
    cert_der = _issue_der(org1, not_before=NOW + timedelta(days=1))
    assert _cert_error(msp, cert_der).code == "certificate_expired"
    assert msp.validate(cert_der, now=NOW + timedelta(days=2)).name == "alice"


def test_invalid_expired_ca() -> None:
    ca = CertificateAuthority.create("brief", days=10, now=T0)
    cert_der = _issue_der(ca, days=365)
    msp = Membership({"brief": ca.cert_pem})
    assert msp.validate(cert_der, now=T0 + timedelta(days=5)).org == "brief"
    assert _cert_error(msp, cert_der, now=T0 + timedelta(days=20)).code == "certificate_expired"


@pytest.mark.parametrize(
    "garbage",
    [b"", b"garbage", b"\x30\x82\x01\x00" + b"\x00" * 10, b"\x00" * (certs.MAX_CERT_BYTES + 1)],
)
def test_invalid_garbage_der(msp: Membership, garbage: bytes) -> None:
    assert _cert_error(msp, garbage).code == "certificate_invalid"


def test_invalid_truncated_or_padded_der(org1: CertificateAuthority, msp: Membership) -> None:
    cert_der = _issue_der(org1)
    for bad in (cert_der[:-1], cert_der[: len(cert_der) // 2], cert_der + b"\x00"):
        assert _cert_error(msp, bad).code == "certificate_invalid"


def test_invalid_tampered_cert(org1: CertificateAuthority, msp: Membership) -> None:
    cert_der = _issue_der(org1, attrs={"level": "1"})
    tampered = cert_der.replace(b'"level":"1"', b'"level":"9"')
    assert tampered != cert_der
    assert _cert_error(msp, tampered).code == "certificate_invalid"


def test_invalid_cert_without_role_extension(org1: CertificateAuthority, msp: Membership) -> None:
    assert _cert_error(msp, _build_cert(org1)).code == "certificate_invalid"


@pytest.mark.parametrize(
    "role_ext",
    [
        b"not json",
        b'{"role":"client"}',
        b'{"attrs":{},"role":"ca"}',
        b'{"attrs":{},"role":"superuser"}',
        b'{"attrs":{"n":1},"role":"client"}',
        b'{"attrs":{},"role":"client","x":1}',
        b'{"attrs":{},"role":1.5}',
    ],
)
def test_invalid_garbled_role_extension(
    org1: CertificateAuthority, msp: Membership, role_ext: bytes
) -> None:
    error = _cert_error(msp, _build_cert(org1, role_ext=role_ext))
    assert error.code == "certificate_invalid"


def test_invalid_ca_cert_is_not_an_identity(org1: CertificateAuthority, msp: Membership) -> None:
    assert _cert_error(msp, org1.cert.public_bytes(DER)).code == "certificate_invalid"


def test_invalid_load_cert_der_garbage() -> None:
    with pytest.raises(CertificateError) as info:
        load_cert_der(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert info.value.code == "certificate_invalid"


# --- invalid CSRs and issuing input -----------------------------------------------------


def _pem_to_der(pem: bytes) -> bytes:
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    return base64.b64decode(body)


def test_invalid_csr_with_swapped_public_key(org1: CertificateAuthority) -> None:
    signer, other = get_suite("ed25519").generate(), get_suite("ed25519").generate()
    csr_der = _pem_to_der(make_csr(signer, "ivan", "org1"))
    swapped = csr_der.replace(signer.public_key_bytes(), other.public_key_bytes())
    assert swapped != csr_der
    with pytest.raises(InvalidInput) as info:
        org1.sign_csr(swapped, "client")
    assert info.value.code == "bad_csr" and info.value.hint


def test_invalid_csr_tampered_or_garbage(org1: CertificateAuthority) -> None:
    csr_der = _pem_to_der(make_csr(get_suite("p256").generate(), "judy", "org1"))
    flipped = csr_der[:-1] + bytes([csr_der[-1] ^ 0x01])
    for bad in (flipped, b"garbage", b"-----BEGIN CERTIFICATE REQUEST-----\n"):
        with pytest.raises(InvalidInput) as info:
            org1.sign_csr(bad, "client")
        assert info.value.code == "bad_csr"


def test_invalid_csr_for_another_org(org1: CertificateAuthority) -> None:
    csr = make_csr(get_suite("ed25519").generate(), "kim", "org2")
    with pytest.raises(InvalidInput) as info:
        org1.sign_csr(csr, "client")
    assert info.value.code == "bad_csr" and "org2" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"role": "ca"}, "bad_role"),
        ({"role": "root"}, "bad_role"),
        ({"attrs": {"k": 1}}, "bad_attrs"),
        ({"attrs": {"": "v"}}, "bad_attrs"),
        ({"attrs": {f"k{i}": "v" for i in range(certs.MAX_ATTRS + 1)}}, "bad_attrs"),
        ({"name": ""}, "bad_name"),
        ({"name": "x" * 65}, "bad_name"),
        ({"suite": "sm2"}, "unknown_suite"),
        ({"now": datetime(2030, 1, 1)}, "naive_datetime"),
        ({"public_key": ec.generate_private_key(ec.SECP384R1()).public_key()}, "unsupported_key"),
    ],
)
def test_invalid_issue_input(org1: CertificateAuthority, kwargs: dict[str, Any], code: str) -> None:
    args = {"name": "liam", "role": "client", **kwargs}
    with pytest.raises(InvalidInput) as info:
        org1.issue(args.pop("name"), args.pop("role"), **args)
    assert info.value.code == code


@pytest.mark.parametrize("org", ["", "Org1", "org 1", "-org", "o" * 33, "org1/x"])
def test_invalid_org_slug(org: str) -> None:
    with pytest.raises(InvalidInput) as info:
        CertificateAuthority.create(org)
    assert info.value.code == "bad_org"


def test_invalid_ca_load_key_mismatch(
    org1: CertificateAuthority, org2: CertificateAuthority
) -> None:
    with pytest.raises(InvalidInput) as info:
        CertificateAuthority.load(org1.cert_pem, org2.key_pem)
    assert info.value.code == "key_mismatch"


def test_invalid_membership_config(org1: CertificateAuthority) -> None:
    with pytest.raises(CertificateError) as info:
        Membership({"org2": org1.cert_pem})
    assert info.value.code == "ca_invalid"
    identity_pem = org1.issue("mia", "node", now=T0).cert_pem
    with pytest.raises(CertificateError) as info:
        Membership({"org1": identity_pem})
    assert info.value.code == "ca_invalid"
