"""Key custody for app users (the sealed key vault) and own-key CSR checks."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from meridian.crypto.certs import CertificateAuthority, Membership, Role, make_csr
from meridian.crypto.suites import get_suite, verify
from meridian.errors import (
    CertificateError,
    Conflict,
    Corruption,
    Forbidden,
    InvalidInput,
    NotFound,
    Unavailable,
)
from meridian.gateway import custody
from meridian.gateway.custody import KEY_FILE, VAULT_FILE, KeyVault, validate_csr_for

NETWORK = "testnet"
MESSAGE = b"\x01" * 32  # stands for a domain-separated digest


@pytest.fixture(scope="module")
def org1() -> CertificateAuthority:
    return CertificateAuthority.create("org1")


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[KeyVault]:
    with KeyVault(tmp_path / "vault", network=NETWORK) as opened:
        yield opened


def _reopen(folder: Path, **kw: object) -> KeyVault:
    return KeyVault(folder, network=str(kw.pop("network", NETWORK)), cache_size=0)


def _folder(vault: KeyVault, tmp_path: Path) -> Path:
    vault.close()
    return tmp_path / "vault"


def _rows(folder: Path) -> sqlite3.Connection:
    return sqlite3.connect(folder / VAULT_FILE, isolation_level=None)


# --- custody: create, sign, persist ------------------------------------------------------


@pytest.mark.parametrize("suite", ["ed25519", "p256"])
def test_create_sign_verify(vault: KeyVault, suite: str) -> None:
    signer = vault.create("shop", "alice", suite=suite)
    signature = vault.sign("shop", "alice", MESSAGE)
    assert verify(suite, signer.public_key_bytes(), MESSAGE, signature)
    assert not verify(suite, signer.public_key_bytes(), MESSAGE[::-1] + b"x", signature)


def test_key_survives_close_and_reopen(vault: KeyVault, tmp_path: Path) -> None:
    public_key = vault.create("shop", "alice").public_key_bytes()
    vault.create("shop", "bob", suite="p256")
    folder = _folder(vault, tmp_path)
    with _reopen(folder) as again:
        signer = again.get_signer("shop", "alice")
        assert signer.public_key_bytes() == public_key
        assert verify("ed25519", public_key, MESSAGE, again.sign("shop", "alice", MESSAGE))
        assert again.list_users("shop") == ["alice", "bob"]
        assert again.list_users("other") == []


def test_acknowledged_key_survives_kill_9(tmp_path: Path) -> None:
    folder = tmp_path / "vault"
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from meridian.gateway.custody import KeyVault\n"
        f"vault = KeyVault(Path({str(folder)!r}), network={NETWORK!r})\n"
        "sys.stdout.write(vault.create('shop', 'alice').public_key_bytes().hex())\n"
        "sys.stdout.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == -9, done.stderr
    with _reopen(folder) as again:
        assert again.get_signer("shop", "alice").public_key_bytes().hex() == done.stdout


def test_key_file_is_private_and_database_holds_no_plaintext(
    vault: KeyVault, tmp_path: Path
) -> None:
    signer = vault.create("shop", "alice")
    pem_body = b"".join(signer.private_pem().splitlines()[1:-1])
    der = base64.b64decode(pem_body)
    seed = signer.crypto_key.private_bytes_raw()  # type: ignore[union-attr]
    folder = tmp_path / "vault"

    def assert_no_secret_in_files() -> None:
        raw = b"".join(p.read_bytes() for p in folder.iterdir() if p.name != KEY_FILE)
        assert signer.public_key_bytes() in raw  # the scan does see the stored row
        for secret in (pem_body, der, seed):
            assert secret not in raw, "the vault files hold the private key in clear"

    assert_no_secret_in_files()  # while the WAL holds the row
    _folder(vault, tmp_path)
    assert_no_secret_in_files()  # after the checkpoint on close
    assert stat.S_IMODE((folder / KEY_FILE).stat().st_mode) == 0o600
    assert (folder / KEY_FILE).stat().st_size == 32
    assert stat.S_IMODE((folder / VAULT_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0


def test_signer_cache_is_bounded(tmp_path: Path) -> None:
    with KeyVault(tmp_path / "vault", network=NETWORK, cache_size=2) as vault:
        for name in ("a", "b", "c"):
            vault.create("shop", name)
        first = vault.get_signer("shop", "a")
        assert vault.get_signer("shop", "a") is first  # a hit
        vault.get_signer("shop", "b")
        vault.get_signer("shop", "c")  # evicts "a", the least recently used
        assert vault.get_signer("shop", "a") is not first
        assert vault.get_signer("shop", "a").public_key_bytes() == first.public_key_bytes()


def test_store_and_get_certificate(vault: KeyVault, org1: CertificateAuthority) -> None:
    signer = vault.create("shop", "alice")
    public_key = signer.crypto_key.public_key()
    cert_pem = org1.issue("alice", Role.CLIENT, public_key=public_key).cert_pem
    vault.store_certificate("shop", "alice", cert_pem)
    assert vault.get_certificate("shop", "alice") == cert_pem


def test_delete_forgets_key_and_certificate(vault: KeyVault, tmp_path: Path) -> None:
    vault.create("shop", "alice")
    vault.get_signer("shop", "alice")  # cached
    vault.delete("shop", "alice")
    with pytest.raises(NotFound):
        vault.get_signer("shop", "alice")
    assert vault.list_users("shop") == []
    vault.create("shop", "alice")  # the name is free again
    with pytest.raises(NotFound) as info:
        vault.delete("shop", "nobody")
    assert info.value.code == "unknown_user"


# --- custody: refusals --------------------------------------------------------------------


def test_invalid_duplicate_create(vault: KeyVault) -> None:
    first = vault.create("shop", "alice")
    with pytest.raises(Conflict) as info:
        vault.create("shop", "alice", suite="p256")
    assert info.value.code == "user_exists"
    assert vault.get_signer("shop", "alice").public_key_bytes() == first.public_key_bytes()
    vault.create("other", "alice")  # the same name in another app is another user


def test_invalid_unknown_user(vault: KeyVault) -> None:
    for call in (vault.get_signer, vault.get_certificate):
        with pytest.raises(NotFound) as info:
            call("shop", "ghost")
        assert info.value.code == "unknown_user"
    vault.create("shop", "alice")
    with pytest.raises(NotFound) as info:
        vault.get_certificate("shop", "alice")
    assert info.value.code == "no_certificate"


@pytest.mark.parametrize("user", ["", "Alice", "-x", "a@shop", "a b", "a\n", "x" * 65, 7])
def test_invalid_user_name(vault: KeyVault, user: object) -> None:
    with pytest.raises(InvalidInput) as info:
        vault.create("shop", user)  # type: ignore[arg-type]
    assert info.value.code == "bad_user_name"


def test_invalid_app_name_and_suite(vault: KeyVault) -> None:
    with pytest.raises(InvalidInput) as info:
        vault.create("Shop", "alice")
    assert info.value.code == "bad_app_name"
    with pytest.raises(InvalidInput) as info:
        vault.create("shop", "alice", suite="rsa")
    assert info.value.code == "unknown_suite"
    assert vault.list_users("shop") == []


def test_invalid_certificate_for_another_key(vault: KeyVault, org1: CertificateAuthority) -> None:
    vault.create("shop", "alice")
    other = org1.issue("alice", Role.CLIENT).cert_pem  # a fresh key, not alice's
    with pytest.raises(InvalidInput) as info:
        vault.store_certificate("shop", "alice", other)
    assert info.value.code == "key_mismatch"
    with pytest.raises(InvalidInput) as info:
        vault.store_certificate("shop", "alice", b"not a certificate")
    assert info.value.code == "bad_certificate"
    with pytest.raises(NotFound):
        vault.get_certificate("shop", "alice")  # nothing was stored


@pytest.mark.parametrize("column", ["sealed", "nonce", "public_key"])
def test_invalid_tampered_record(vault: KeyVault, tmp_path: Path, column: str) -> None:
    vault.create("shop", "alice")
    folder = _folder(vault, tmp_path)
    with _rows(folder) as db:
        (value,) = db.execute(f"SELECT {column} FROM keys").fetchone()
        flipped = value[:5] + bytes([value[5] ^ 1]) + value[6:]
        db.execute(f"UPDATE keys SET {column}=?", (flipped,))
    with _reopen(folder) as again, pytest.raises(Corruption) as info:
        again.get_signer("shop", "alice")
    assert info.value.code == "vault_corrupt"


def test_invalid_record_relabelled_as_another_suite(vault: KeyVault, tmp_path: Path) -> None:
    vault.create("shop", "alice")
    folder = _folder(vault, tmp_path)
    with _rows(folder) as db:
        db.execute("UPDATE keys SET suite='p256'")
    with _reopen(folder) as again, pytest.raises(Corruption):
        again.get_signer("shop", "alice")


def test_invalid_swapped_rows(vault: KeyVault, tmp_path: Path) -> None:
    vault.create("shop", "alice")
    vault.create("shop", "bob")
    vault.create("mall", "alice")
    folder = _folder(vault, tmp_path)
    moves = [(("shop", "bob"), ("shop", "alice")), (("mall", "alice"), ("shop", "bob"))]
    with _rows(folder) as db:
        query = "SELECT nonce, sealed, public_key FROM keys WHERE app=? AND user=?"
        records = {source: db.execute(query, source).fetchone() for source, _ in moves}
        for source, target in moves:  # another user's record, then another app's
            db.execute(
                "UPDATE keys SET nonce=?, sealed=?, public_key=? WHERE app=? AND user=?",
                (*records[source], *target),
            )
    with _reopen(folder) as again:
        for app, user in [("shop", "alice"), ("shop", "bob")]:
            with pytest.raises(Corruption) as info:
                again.get_signer(app, user)
            assert info.value.code == "vault_corrupt"
        again.get_signer("mall", "alice")  # untouched rows still open


def test_invalid_vault_of_another_network(vault: KeyVault, tmp_path: Path) -> None:
    vault.create("shop", "alice")
    folder = _folder(vault, tmp_path)
    with pytest.raises(InvalidInput) as info:
        _reopen(folder, network="mainnet")
    assert info.value.code == "vault_network_mismatch"


def test_invalid_wrong_master_key(vault: KeyVault, tmp_path: Path) -> None:
    vault.create("shop", "alice")
    folder = _folder(vault, tmp_path)
    (folder / KEY_FILE).write_bytes(os.urandom(32))  # same size and mode, another key
    with pytest.raises(Corruption) as info:
        _reopen(folder)
    assert info.value.code == "vault_key_mismatch"
    assert info.value.hint


def test_invalid_missing_master_key_is_not_replaced(vault: KeyVault, tmp_path: Path) -> None:
    vault.create("shop", "alice")
    folder = _folder(vault, tmp_path)
    (folder / KEY_FILE).unlink()
    with pytest.raises(Corruption) as info:
        _reopen(folder)
    assert info.value.code == "vault_key_missing"
    assert not (folder / KEY_FILE).exists()


def test_invalid_master_key_file_size(vault: KeyVault, tmp_path: Path) -> None:
    folder = _folder(vault, tmp_path)
    (folder / KEY_FILE).write_bytes(os.urandom(31))
    with pytest.raises(Corruption) as info:
        _reopen(folder)
    assert info.value.code == "vault_key_corrupt"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_invalid_master_key_file_mode(vault: KeyVault, tmp_path: Path, mode: int) -> None:
    folder = _folder(vault, tmp_path)
    (folder / KEY_FILE).chmod(mode)
    with pytest.raises(InvalidInput) as info:
        _reopen(folder)
    assert info.value.code == "vault_key_exposed"
    assert "chmod 600" in (info.value.hint or "")


def test_invalid_garbage_database(tmp_path: Path) -> None:
    folder = tmp_path / "vault"
    folder.mkdir()
    (folder / VAULT_FILE).write_bytes(b"this is not SQLite" * 512)
    with pytest.raises(Corruption) as info:
        _reopen(folder)
    assert info.value.code == "vault_corrupt"


def test_closed_vault_is_unavailable(vault: KeyVault) -> None:
    vault.close()
    vault.close()  # idempotent
    with pytest.raises(Unavailable):
        vault.create("shop", "alice")


# --- own key: CSR checks ------------------------------------------------------------------


def _csr(key: ed25519.Ed25519PrivateKey, *attrs: tuple[x509.ObjectIdentifier, str]) -> bytes:
    subject = x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return builder.sign(key, None).public_bytes(serialization.Encoding.PEM)


ALICE_ORG1 = ((NameOID.COMMON_NAME, "alice"), (NameOID.ORGANIZATION_NAME, "org1"))


def _bad_csr(csr_pem: bytes, *, org: str = "org1", user: str = "alice") -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate_csr_for(csr_pem, org=org, user=user)
    assert info.value.code == "bad_csr"
    assert info.value.hint
    return info.value


def test_good_csr_passes_and_the_ca_issues(org1: CertificateAuthority) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr_pem = _csr(key, *ALICE_ORG1)
    validate_csr_for(csr_pem, org="org1", user="alice")
    cert = x509.load_pem_x509_certificate(org1.sign_csr(csr_pem, Role.CLIENT))
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"


def test_p256_csr_from_make_csr_passes() -> None:
    csr_pem = make_csr(ec.generate_private_key(ec.SECP256R1()), "bob", "org1")
    validate_csr_for(csr_pem, org="org1", user="bob")


def test_invalid_csr_signed_by_another_key(org1: CertificateAuthority) -> None:
    """A CSR naming key B but signed by key A: no proof that the sender holds B."""
    key_a = ed25519.Ed25519PrivateKey.generate()
    key_b = ed25519.Ed25519PrivateKey.generate()
    der = x509.load_pem_x509_csr(_csr(key_a, *ALICE_ORG1)).public_bytes(serialization.Encoding.DER)
    raw_a, raw_b = key_a.public_key().public_bytes_raw(), key_b.public_key().public_bytes_raw()
    assert der.count(raw_a) == 1
    swapped = der.replace(raw_a, raw_b)
    csr_pem = x509.load_der_x509_csr(swapped).public_bytes(serialization.Encoding.PEM)
    assert x509.load_pem_x509_csr(csr_pem).public_key() == key_b.public_key()
    error = _bad_csr(csr_pem)
    assert "mismatched key" in error.message
    with pytest.raises(InvalidInput) as info:  # the CA refuses it too
        org1.sign_csr(csr_pem, Role.CLIENT)
    assert info.value.code == "bad_csr"


def test_invalid_csr_wrong_cn() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    error = _bad_csr(_csr(key, *ALICE_ORG1), user="bob")
    assert "CN" in error.message


def test_invalid_csr_wrong_o() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    error = _bad_csr(_csr(key, *ALICE_ORG1), org="org2")
    assert "O" in error.message


@pytest.mark.parametrize(
    "attrs",
    [
        ((NameOID.COMMON_NAME, "alice"),),
        (*ALICE_ORG1, (NameOID.COMMON_NAME, "alice")),
        (*ALICE_ORG1, (NameOID.ORGANIZATIONAL_UNIT_NAME, "admins")),
    ],
)
def test_invalid_csr_subject_not_exactly_cn_o(
    attrs: tuple[tuple[x509.ObjectIdentifier, str], ...],
) -> None:
    _bad_csr(_csr(ed25519.Ed25519PrivateKey.generate(), *attrs))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"x" * 20_000,
        "a str, not bytes",
    ],
)
def test_invalid_csr_garbage(data: bytes) -> None:
    _bad_csr(data)


def test_invalid_csr_unsupported_key_type() -> None:
    key = ec.generate_private_key(ec.SECP384R1())  # no suite uses P-384
    subject = x509.Name([x509.NameAttribute(oid, value) for oid, value in ALICE_ORG1])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    error = _bad_csr(csr.public_bytes(serialization.Encoding.PEM))
    assert "key type" in error.message


def test_invalid_csr_caller_names() -> None:
    csr_pem = _csr(ed25519.Ed25519PrivateKey.generate(), *ALICE_ORG1)
    with pytest.raises(InvalidInput) as info:
        validate_csr_for(csr_pem, org="org1", user="Alice")
    assert info.value.code == "bad_user_name"
    with pytest.raises(InvalidInput) as info:
        validate_csr_for(csr_pem, org="Org 1", user="alice")
    assert info.value.code == "bad_org"


def test_delete_leaves_no_ciphertext_in_the_files(vault: KeyVault, tmp_path: Path) -> None:
    vault.create("shop", "alice")
    vault.create("shop", "bob")
    folder = tmp_path / "vault"
    with _rows(folder) as db:
        (sealed,) = db.execute("SELECT sealed FROM keys WHERE user='alice'").fetchone()

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in folder.iterdir() if p.name != KEY_FILE)

    assert sealed in files()
    vault.delete("shop", "alice")
    assert sealed not in files()  # secure_delete zeroes it; the WAL is truncated
    assert vault.list_users("shop") == ["bob"]


# --- the register of issued certificates and revocation ---------------------------------


def _never(_serial: int) -> bool:
    return False


def _custody_user(vault: KeyVault, ca: CertificateAuthority, app: str, user: str) -> int:
    """Issue custodial ``user@app`` as the gateway does; its certificate's serial."""
    signer = get_suite("ed25519").generate()
    public_key = signer.crypto_key.public_key()
    cert = ca.issue(user, Role.CLIENT, attrs={"app": app}, public_key=public_key).cert_pem
    vault.import_user(app, user, signer, cert)
    return x509.load_pem_x509_certificate(cert).serial_number


def _own_key_user(vault: KeyVault, ca: CertificateAuthority, app: str, user: str) -> int:
    """Issue own-key ``user@app`` from a CSR, as the gateway does; its serial."""
    key = ed25519.Ed25519PrivateKey.generate()
    cert = ca.sign_csr(make_csr(key, user, ca.org), Role.CLIENT, {"app": app})
    return vault.record_issued(app, user, cert).serial


def _crl_serials(crl_pem: bytes, ca: CertificateAuthority) -> set[int]:
    crl = x509.load_pem_x509_crl(crl_pem)
    assert crl.is_signature_valid(ca.cert.public_key())  # type: ignore[arg-type]
    return {entry.serial_number for entry in crl}


@pytest.fixture
def acme() -> CertificateAuthority:
    return CertificateAuthority.create("acme")


def test_issued_certificates_are_found_by_user(vault: KeyVault, acme: CertificateAuthority) -> None:
    alice = _custody_user(vault, acme, "shop", "alice")
    first = _own_key_user(vault, acme, "notes", "bob")
    second = _own_key_user(vault, acme, "notes", "bob")  # a new key: both are bob's
    assert [(c.org, c.serial, c.revoked_ms) for c in vault.get_issued("shop", "alice")] == [
        ("acme", alice, None)
    ]
    assert {c.serial for c in vault.get_issued("notes", "bob")} == {first, second}
    assert vault.get_issued("shop", "bob") == []  # per app
    assert vault.get_certificate("shop", "alice") == vault.get_issued("shop", "alice")[0].cert_pem


def test_revoked_custody_user_signs_no_more(vault: KeyVault, acme: CertificateAuthority) -> None:
    serial = _custody_user(vault, acme, "shop", "alice")
    _custody_user(vault, acme, "shop", "carol")
    vault.sign("shop", "alice", MESSAGE)  # its signer is cached now
    done = vault.revoke_user("shop", "alice", acme, is_published=_never)
    assert (done.org, done.serials, done.crl_number) == ("acme", (serial,), 1)
    assert _crl_serials(done.crl_pem, acme) == {serial}
    assert vault.is_revoked("shop", "alice") and not vault.is_revoked("shop", "carol")
    for refused in (
        lambda: vault.sign("shop", "alice", MESSAGE),
        lambda: vault.get_signer("shop", "alice"),
    ):
        with pytest.raises(Forbidden) as info:
            refused()
        assert info.value.code == "user_revoked"
    vault.sign("shop", "carol", MESSAGE)  # the other users keep working
    # the network's membership check accepts the CRL and refuses the certificate
    membership = Membership({"acme": acme.cert_pem})
    membership.update_crl("acme", done.crl_pem)
    assert membership.is_revoked("acme", serial)


def test_crl_lists_unenforced_revocations_with_rising_numbers(
    vault: KeyVault, acme: CertificateAuthority, tmp_path: Path
) -> None:
    alice = _custody_user(vault, acme, "shop", "alice")
    bob = _own_key_user(vault, acme, "notes", "bob")
    other = CertificateAuthority.create("globex")
    _own_key_user(vault, other, "shop", "gina")
    vault.revoke_user("shop", "gina", other, is_published=_never)  # another CA's list

    first = vault.revoke_user("shop", "alice", acme, is_published=_never)
    second = vault.revoke_user("notes", "bob", acme, is_published=_never)
    assert (first.crl_number, second.crl_number) == (1, 2)
    assert _crl_serials(second.crl_pem, acme) == {alice, bob} == second.revoked_serials
    assert vault.get_revoked_serials("acme") == {alice, bob}
    dates = {e.serial_number: e.revocation_date_utc for e in x509.load_pem_x509_crl(second.crl_pem)}
    (earlier,) = x509.load_pem_x509_crl(first.crl_pem)
    assert dates[alice] == earlier.revocation_date_utc  # alice keeps her revocation date

    # a node that took the newer CRL refuses the older one: the numbers only rise
    membership = Membership({"acme": acme.cert_pem})
    membership.update_crl("acme", second.crl_pem)
    with pytest.raises(CertificateError) as info:
        membership.update_crl("acme", first.crl_pem)
    assert info.value.code == "crl_stale"

    # the list and its number survive a restart
    folder = _folder(vault, tmp_path)
    with _reopen(folder) as again:
        carol = _custody_user(again, acme, "shop", "carol")
        third = again.revoke_user("shop", "carol", acme, is_published=_never)
        assert third.crl_number == 3
        assert _crl_serials(third.crl_pem, acme) == {alice, bob, carol}
        assert again.is_revoked("shop", "alice")


def test_crl_leaves_out_what_the_network_already_enforces(
    vault: KeyVault, acme: CertificateAuthority
) -> None:
    """Governance adds a CRL's serials to those it enforces, so a CRL carries only the
    ones not yet published: a revoke change stays small however many came before."""
    alice = _custody_user(vault, acme, "shop", "alice")
    bob = _own_key_user(vault, acme, "notes", "bob")
    first = vault.revoke_user("shop", "alice", acme, is_published=_never)
    second = vault.revoke_user("notes", "bob", acme, is_published={alice}.__contains__)
    assert _crl_serials(second.crl_pem, acme) == {bob}
    assert second.revoked_serials == {alice, bob}  # what the vault has revoked in all
    assert second.crl_number == first.crl_number + 1


def test_invalid_too_many_revocations_waiting_for_governance(
    vault: KeyVault, acme: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(custody, "MAX_PENDING_SERIALS", 1)
    _custody_user(vault, acme, "shop", "alice")
    _custody_user(vault, acme, "shop", "bob")
    vault.revoke_user("shop", "alice", acme, is_published=_never)
    with pytest.raises(Conflict) as info:
        vault.revoke_user("shop", "bob", acme, is_published=_never)
    assert info.value.code == "too_many_pending"
    assert not vault.is_revoked("shop", "bob")  # nothing kept
    vault.sign("shop", "bob", MESSAGE)


def test_revoke_covers_every_certificate_of_the_user(
    vault: KeyVault, acme: CertificateAuthority
) -> None:
    serials = {_own_key_user(vault, acme, "notes", "bob") for _ in range(2)}
    done = vault.revoke_user("notes", "bob", acme, is_published=_never)
    assert set(done.serials) == serials == _crl_serials(done.crl_pem, acme)
    assert all(c.revoked_ms is not None for c in vault.get_issued("notes", "bob"))


def test_revoke_again_continues_until_published(
    vault: KeyVault, acme: CertificateAuthority
) -> None:
    """A CRL signed but never proposed (or refused by governance): a second call signs
    it again, with the next number; only once published is it already_revoked."""
    serial = _custody_user(vault, acme, "shop", "alice")
    first = vault.revoke_user("shop", "alice", acme, is_published=_never)
    again = vault.revoke_user("shop", "alice", acme, is_published=_never)
    assert again.serials == first.serials == (serial,)
    assert again.crl_number == first.crl_number + 1
    assert _crl_serials(again.crl_pem, acme) == {serial}

    published = {serial}
    with pytest.raises(Conflict) as info:
        vault.revoke_user("shop", "alice", acme, is_published=published.__contains__)
    assert info.value.code == "already_revoked"
    assert info.value.details["serials"] == [str(serial)]
    # published but never marked here (a vault restored from an older backup): revoke
    fresh = _custody_user(vault, acme, "shop", "dora")
    done = vault.revoke_user("shop", "dora", acme, is_published=lambda s: s == fresh)
    assert done.serials == (fresh,) and vault.is_revoked("shop", "dora")


def test_invalid_revoke_unknown_user(vault: KeyVault, acme: CertificateAuthority) -> None:
    _custody_user(vault, acme, "shop", "alice")
    other = CertificateAuthority.create("globex")
    for app, user, ca in (
        ("shop", "nobody", acme),
        ("notes", "alice", acme),
        ("shop", "alice", other),
    ):
        with pytest.raises(NotFound) as info:
            vault.revoke_user(app, user, ca, is_published=_never)
        assert info.value.code == "unknown_user"
    assert not vault.is_revoked("shop", "alice")
    assert vault.get_revoked_serials("acme") == frozenset()


def test_invalid_revoked_name_is_not_issued_again(
    vault: KeyVault, acme: CertificateAuthority
) -> None:
    _custody_user(vault, acme, "shop", "alice")
    _own_key_user(vault, acme, "notes", "bob")
    vault.revoke_user("shop", "alice", acme, is_published=_never)
    vault.revoke_user("notes", "bob", acme, is_published=_never)
    vault.delete("shop", "alice")  # even once its key is gone, the name stays revoked
    for issue in (
        lambda: _custody_user(vault, acme, "shop", "alice"),
        lambda: _own_key_user(vault, acme, "notes", "bob"),
    ):
        with pytest.raises(Forbidden) as info:
            issue()
        assert info.value.code == "user_revoked"
    assert [c.user for c in vault.get_issued("shop", "alice")] == ["alice"]


def test_invalid_failed_revocation_keeps_nothing(
    vault: KeyVault, acme: CertificateAuthority
) -> None:
    """A CRL that cannot be signed (here: a CA of the same name but another key, which
    cannot adopt the stored CRL) leaves no mark, no CRL and no number behind."""
    alice = _custody_user(vault, acme, "shop", "alice")
    bob = _custody_user(vault, acme, "shop", "bob")
    vault.revoke_user("shop", "alice", acme, is_published=_never)
    impostor = CertificateAuthority.create("acme")
    with pytest.raises(InvalidInput) as info:
        vault.revoke_user("shop", "bob", impostor, is_published=_never)
    assert info.value.code == "bad_crl"
    assert not vault.is_revoked("shop", "bob")
    vault.sign("shop", "bob", MESSAGE)
    assert vault.get_revoked_serials("acme") == {alice}
    done = vault.revoke_user("shop", "bob", acme, is_published=_never)
    assert done.crl_number == 2 and _crl_serials(done.crl_pem, acme) == {alice, bob}
