"""Onboarding of app users (``name@app``): key custody and own-key CSR checks.

An app fixes, when it is created, how its users hold their keys:

* **key custody** — the gateway generates the user's key pair and keeps the private
  key encrypted at rest in a :class:`KeyVault`; it signs on the user's behalf once the
  gateway has authenticated the caller (the app's back-end). The vault itself does
  no authentication: it is the store behind that decision.
* **own key** — the user generates the key and sends a CSR; :func:`validate_csr_for`
  checks it (subject, key type, proof of possession) before the org's CA signs it
  with :meth:`meridian.crypto.certs.CertificateAuthority.sign_csr`.

Vault layout, in ``folder`` (created ``0700``)::

    vault.key      32 random bytes, the master key; mode 0600, never rewritten
    vault.sqlite   SQLite, WAL, synchronous=FULL, secure_delete=ON; mode 0600

Each private key (its PKCS8 PEM) is sealed with AES-256-GCM under the master key
with a fresh 12-byte random nonce. The associated data binds the sealed record to
``network``, ``app``, ``user`` and ``suite``, so a ciphertext copied into another
row, app or network fails to open (:class:`~meridian.errors.Corruption`
``vault_corrupt``) instead of signing as the wrong user. After decryption the key's
public half must equal the row's public key, which is stored in clear (it is not a
secret, and certificates are checked against it without decrypting).

A ``meta`` row holds a known value sealed under the master key for this network, so
a vault opened with the wrong ``vault.key`` (or for another network) refuses to
start rather than failing user by user. With a random 96-bit nonce per record,
AES-GCM stays within its safety bound (2^32 encryptions per key) for billions of
users; keys are written once, so this is nowhere near.

A key acknowledged by :meth:`KeyVault.create` has been committed with
``synchronous=FULL``: it survives ``kill -9`` and power loss.

**Issued certificates and revocation.** The vault also records every app-user
certificate the gateway issues (``issued``: org, serial, app, user, certificate), for
custodial and own-key users alike, so that the owner can revoke a user later without
the user's help. :meth:`KeyVault.revoke_user` marks every certificate of ``user@app``
revoked and signs, with the owner org's CA, a CRL listing every serial that CA has
revoked and the network does not enforce yet (governance adds a CRL's serials to the
ones it enforces, so the CRL need not repeat them), with the next CRL number (``crls``
keeps the last one per org) — all in one transaction, so a failure leaves neither a marked
serial without a CRL nor a CRL without its serials. A revoked custodial user's key no
longer signs (:class:`~meridian.errors.Forbidden` ``user_revoked``), and a revoked
name is not issued again. The network learns of the CRL only through a governance
``revoke`` change, which the owner's admin proposes (``docs/service-network.md``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sqlite3
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from .. import codec
from ..crypto.certs import CertificateAuthority
from ..crypto.suites import (
    ED25519,
    Signer,
    get_suite,
    get_suite_names,
    load_signer,
    suite_of_public_key,
)
from ..errors import Conflict, Corruption, Forbidden, InvalidInput, NotFound, Unavailable
from ..types import NAME_RE

__all__ = [
    "DEFAULT_SIGNER_CACHE_SIZE",
    "KEY_FILE",
    "VAULT_FILE",
    "IssuedCert",
    "KeyVault",
    "Revocation",
    "validate_csr_for",
]

KEY_FILE = "vault.key"
VAULT_FILE = "vault.sqlite"
MASTER_KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the AES-GCM standard nonce
DEFAULT_SIGNER_CACHE_SIZE = 256
MAX_SIGNER_CACHE_SIZE = 65_536
MAX_CERT_BYTES = 16_384
MAX_CSR_BYTES = 16_384
MAX_PENDING_SERIALS = 500  # a CRL of them stays well under a governance change's 64 KiB
MAX_NETWORK_CHARS = 64
FORMAT_VERSION = b"1"

USER_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ORG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # as meridian.crypto.certs
_AAD_KEY_DOMAIN = "meridian/vault/key/v1"
_AAD_CHECK_DOMAIN = "meridian/vault/check/v1"
_KEY_CHECK_PLAINTEXT = b"meridian key vault"
_LOOSE_MODE_BITS = stat.S_IRWXG | stat.S_IRWXO

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys (
    app TEXT NOT NULL,
    user TEXT NOT NULL,
    suite TEXT NOT NULL,
    public_key BLOB NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    cert_pem BLOB,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (app, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS issued (
    org TEXT NOT NULL,
    serial TEXT NOT NULL,
    app TEXT NOT NULL,
    user TEXT NOT NULL,
    cert_pem BLOB NOT NULL,
    issued_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    PRIMARY KEY (org, serial)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS issued_by_user ON issued (app, user);
CREATE TABLE IF NOT EXISTS crls (
    org TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    crl_pem BLOB NOT NULL,
    signed_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""
# issued.serial is decimal text: X.509 serials reach 159 bits, beyond SQLite's INTEGER.
# issued.revoked_ms is set when a CRL listing the serial is signed; crls holds the
# last CRL signed per org, whose number the next one must exceed.


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """An app-user certificate the gateway issued, as the vault records it."""

    org: str
    serial: int
    app: str
    user: str
    cert_pem: bytes
    issued_ms: int
    revoked_ms: int | None


@dataclass(frozen=True, slots=True)
class Revocation:
    """What :meth:`KeyVault.revoke_user` signed: ``user@app``'s serials and the owner
    CA's CRL (every serial it revoked that the network does not enforce yet) with its
    number; ``revoked_serials``: all the CA has revoked here."""

    org: str
    app: str
    user: str
    serials: tuple[int, ...]
    crl_pem: bytes
    crl_number: int
    revoked_serials: frozenset[int]  # every serial the CRL lists


class KeyVault:
    """Custodial users' private keys, sealed with AES-256-GCM in one SQLite file.

    Thread-safe: one connection behind a lock (every operation is a point read or a
    single-row write, far shorter than the signatures around it).

    Decrypted signers are kept in a bounded LRU of ``cache_size`` entries (0 turns it
    off). The trade-off: a hit skips a SQLite read, an AES-GCM open and a PEM parse
    (together about 100 µs, five times an Ed25519 signature) on every custodial
    signature, but up to ``cache_size`` plaintext keys live in
    process memory for as long as they stay hot, where a core dump, swap or a memory
    disclosure bug could expose them. Python cannot reliably wipe memory anyway (the
    decrypted PEM is an immutable ``bytes``), so "uncached" narrows the window rather
    than closing it. :meth:`delete`, :meth:`revoke_user` and :meth:`close` drop cached
    signers.
    """

    __slots__ = ("_aesgcm", "_cache", "_cache_size", "_conn", "_folder", "_lock", "_network")

    def __init__(
        self, folder: Path, *, network: str, cache_size: int = DEFAULT_SIGNER_CACHE_SIZE
    ) -> None:
        self._network = _check_network(network)
        self._cache_size = _check_cache_size(cache_size)
        self._cache: OrderedDict[tuple[str, str], Signer] = OrderedDict()
        self._lock = threading.Lock()
        self._folder = Path(folder)
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = _connect(self._folder / VAULT_FILE)
        try:
            self._aesgcm = AESGCM(self._open_master_key())
            self._validate_or_init_meta()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ public API

    @property
    def network(self) -> str:
        return self._network

    def create(self, app: str, user: str, *, suite: str = ED25519) -> Signer:
        """Generate ``user@app``'s key pair and store it sealed; Conflict if it exists."""
        return self.import_signer(app, user, get_suite(suite).generate())

    def import_signer(
        self, app: str, user: str, signer: Signer, cert_pem: bytes | None = None
    ) -> Signer:
        """Store an existing key (e.g. a CA key the gateway made) sealed, as ``create``,
        with its certificate if given — key and certificate in one transaction, so a
        crash never leaves a user with a key but no certificate."""
        row = self._seal(app, user, signer, cert_pem)
        with self._lock, self._atomic() as conn:
            _insert_key(conn, row, cert_pem)
        return signer

    def import_user(self, app: str, user: str, signer: Signer, cert_pem: bytes) -> Signer:
        """Store custodial app user ``user@app``: its sealed key, its certificate, and
        the certificate in the register of issued ones, in one transaction.

        Forbidden(code="user_revoked") if ``user@app`` was revoked (a revoked name is
        not issued again); Conflict(code="user_exists") if it already has a key."""
        row = self._seal(app, user, signer, cert_pem)
        issued = _issued_row(app, user, cert_pem)
        with self._lock, self._atomic() as conn:
            _validate_not_revoked(conn, app, user)
            _insert_key(conn, row, cert_pem)
            _insert_issued(conn, issued)
        return signer

    def record_issued(self, app: str, user: str, cert_pem: bytes) -> IssuedCert:
        """Register an app-user certificate the gateway issued for a key it does not
        hold (own-key users), so that :meth:`revoke_user` finds it later.

        Forbidden(code="user_revoked") if ``user@app`` was revoked."""
        issued = _issued_row(app, _check_user(user), cert_pem)
        with self._lock, self._atomic() as conn:
            _validate_not_revoked(conn, app, user)
            _insert_issued(conn, issued)
        return _to_issued(issued)

    def get_issued(self, app: str, user: str) -> list[IssuedCert]:
        """Every certificate issued to ``user@app``, oldest first (empty if none)."""
        key = _check_app(app), _check_user(user)
        with self._lock:
            rows = (
                self._get_conn()
                .execute(
                    f"SELECT {_ISSUED_COLUMNS} FROM issued WHERE app=? AND user=?"
                    " ORDER BY issued_ms, serial",
                    key,
                )
                .fetchall()
            )
        return [_to_issued(row) for row in rows]

    def get_revoked_serials(self, org: str) -> frozenset[int]:
        """Every serial of ``org``'s CA revoked here (:meth:`revoke_user`)."""
        with self._lock:
            return frozenset(_get_revocation_times(self._get_conn(), org))

    def is_revoked(self, app: str, user: str) -> bool:
        """Whether ``user@app`` was revoked (:meth:`revoke_user`)."""
        key = _check_app(app), _check_user(user)
        with self._lock:
            return _is_user_revoked(self._get_conn(), *key)

    def revoke_user(
        self,
        app: str,
        user: str,
        ca: CertificateAuthority,
        *,
        is_published: Callable[[int], bool],
    ) -> Revocation:
        """Revoke every certificate ``ca`` issued to ``user@app`` and sign a CRL of
        ``ca`` (the next CRL number) listing every serial it revoked that the network
        does not enforce yet — this user's and any other whose governance change never
        got through. Governance adds a CRL's serials to those it already enforces, so
        the CRL need not repeat them, and a ``revoke`` change stays small however many
        users an org has revoked over time.

        ``is_published(serial)`` tells whether the network already enforces a revoked
        serial (a governance ``revoke`` executed). The call is idempotent until then:
        revoking a user again whose certificates are all marked revoked signs a fresh
        CRL (the same serials, the next number), so a caller whose governance change
        never got through can continue. Once every serial is published it is
        Conflict(code="already_revoked"). NotFound(code="unknown_user") if ``ca``
        issued nothing to ``user@app`` here. The marks, the CRL and its number are
        written in one transaction, after the CRL was signed: a failure keeps nothing.
        """
        key = _check_app(app), _check_user(user)
        now = _now_ms()
        with self._lock, self._atomic() as conn:
            issued = [
                _to_issued(row)
                for row in conn.execute(
                    f"SELECT {_ISSUED_COLUMNS} FROM issued WHERE app=? AND user=? AND org=?",
                    (*key, ca.org),
                )
            ]
            if not issued:
                raise NotFound(
                    f"{ca.org}'s CA issued no certificate to {user}@{app} on this node",
                    code="unknown_user",
                    hint="check the user name; users are issued with POST /v1/apps/{app}/users",
                )
            serials = tuple(sorted(c.serial for c in issued))
            if all(c.revoked_ms is not None and is_published(c.serial) for c in issued):
                raise Conflict(
                    f"{user}@{app} is already revoked, and the network enforces it",
                    code="already_revoked",
                    details={"serials": [str(s) for s in serials]},
                )
            conn.execute(
                "UPDATE issued SET revoked_ms=? WHERE app=? AND user=? AND org=?"
                " AND revoked_ms IS NULL",
                (now, *key, ca.org),
            )
            revoked_ms = _get_revocation_times(conn, ca.org)
            revoked = frozenset(revoked_ms)
            pending = sorted(s for s in revoked if not is_published(s))
            if len(pending) > MAX_PENDING_SERIALS:  # the change must fit a transaction
                raise Conflict(
                    f"{len(pending)} revocations of {ca.org} wait for governance",
                    code="too_many_pending",
                    hint="propose the last CRL this route returned (governance 'revoke') "
                    "before revoking more",
                )
            previous = conn.execute("SELECT crl_pem FROM crls WHERE org=?", (ca.org,)).fetchone()
            if previous is not None:
                ca.continue_numbers(bytes(previous[0]))
            crl_pem = ca.sign_crl(
                {
                    s: datetime.fromtimestamp(revoked_ms[s] / 1000, UTC).replace(microsecond=0)
                    for s in pending
                }
            )
            number = _crl_number_of(crl_pem)
            conn.execute(
                "INSERT INTO crls (org, number, crl_pem, signed_ms) VALUES (?,?,?,?)"
                " ON CONFLICT (org) DO UPDATE SET number=excluded.number,"
                " crl_pem=excluded.crl_pem, signed_ms=excluded.signed_ms",
                (ca.org, number, crl_pem, now),
            )
            self._cache.pop(key, None)  # a revoked custodial key signs no more
        return Revocation(ca.org, app, user, serials, crl_pem, number, revoked)

    def get_signer(self, app: str, user: str) -> Signer:
        """``user@app``'s signer; NotFound(code="unknown_user") if the vault has none."""
        key = _check_app(app), _check_user(user)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            conn = self._get_conn()
            row = conn.execute(
                "SELECT suite, public_key, nonce, sealed FROM keys WHERE app=? AND user=?", key
            ).fetchone()
            if row is None:
                raise _unknown_user(*key)
            if _is_user_revoked(conn, *key):
                raise _user_revoked(*key)
            signer = self._unseal(key[0], key[1], row)
            self._remember(key, signer)
        return signer

    def sign(self, app: str, user: str, message: bytes) -> bytes:
        """``user@app``'s signature over ``message`` (a domain-separated digest)."""
        if not isinstance(message, bytes):
            raise InvalidInput("the message to sign must be bytes", code="bad_message")
        return self.get_signer(app, user).sign(message)

    def store_certificate(self, app: str, user: str, cert_pem: bytes) -> None:
        """Keep ``user@app``'s issued certificate (PEM) beside its key.

        InvalidInput(code="key_mismatch") unless the certificate certifies the stored
        key. Storing again replaces the certificate (renewal of the same key). Only
        the key is compared: whether the CA, subject and dates are acceptable is the
        membership service's verdict when the certificate is used.
        """
        key = _check_app(app), _check_user(user)
        cert_suite, cert_key = _certified_key(cert_pem)
        with self._lock, self._atomic() as conn:
            row = conn.execute(
                "SELECT suite, public_key FROM keys WHERE app=? AND user=?", key
            ).fetchone()
            if row is None:
                raise _unknown_user(*key)
            if (cert_suite, cert_key) != (row[0], row[1]):
                raise InvalidInput(
                    f"the certificate does not certify {user}@{app}'s key",
                    code="key_mismatch",
                    hint="store the certificate the CA issued for this user's public key",
                )
            conn.execute(
                "UPDATE keys SET cert_pem=? WHERE app=? AND user=?", (bytes(cert_pem), *key)
            )

    def get_certificate(self, app: str, user: str) -> bytes:
        """``user@app``'s certificate PEM; NotFound if the user or certificate is missing."""
        key = _check_app(app), _check_user(user)
        with self._lock:
            row = (
                self._get_conn()
                .execute("SELECT cert_pem FROM keys WHERE app=? AND user=?", key)
                .fetchone()
            )
        if row is None:
            raise _unknown_user(*key)
        if row[0] is None:
            raise NotFound(
                f"user {user}@{app} has no certificate yet",
                code="no_certificate",
                hint="issue one for the user's public key and store_certificate() it",
            )
        return bytes(row[0])

    def list_users(self, app: str) -> list[str]:
        """Names of ``app``'s custodial users, sorted."""
        checked = _check_app(app)
        with self._lock:
            rows = (
                self._get_conn()
                .execute("SELECT user FROM keys WHERE app=? ORDER BY user", (checked,))
                .fetchall()
            )
        return [row[0] for row in rows]

    def delete(self, app: str, user: str) -> None:
        """Forget ``user@app``'s key and certificate; NotFound if there is none. The
        register of issued certificates keeps it (a user can still be revoked).

        The connection runs with ``PRAGMA secure_delete=ON`` (Debian's SQLite builds
        default to it, stock builds do not): SQLite overwrites the deleted row's bytes
        with zeros in its pages instead of merely marking them free. In WAL mode the
        older page images stay in ``vault.sqlite-wal`` until a checkpoint, so the
        delete ends with ``wal_checkpoint(TRUNCATE)``. What no file-level erase
        reaches: earlier backups, filesystem snapshots, copy-on-write and flash wear
        levelling. Those hold only ciphertext, readable with ``vault.key`` alone, so
        protect and retire backups of the two files together.
        """
        key = _check_app(app), _check_user(user)
        with self._lock:
            self._cache.pop(key, None)
            with self._atomic() as conn:
                deleted = conn.execute("DELETE FROM keys WHERE app=? AND user=?", key).rowcount
            if deleted == 0:
                raise _unknown_user(*key)
            self._get_conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def close(self) -> None:
        """Drop cached signers and close the database (idempotent)."""
        with self._lock:
            self._cache.clear()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> KeyVault:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _seal(
        self, app: str, user: str, signer: Signer, cert_pem: bytes | None
    ) -> tuple[object, ...]:
        """The ``keys`` row of ``signer`` sealed for ``user@app`` (checks the names and
        that ``cert_pem``, if given, certifies the key)."""
        key = _check_app(app), _check_user(user)
        if cert_pem is not None and _certified_key(cert_pem) != (
            signer.suite,
            signer.public_key_bytes(),
        ):
            raise InvalidInput(
                f"the certificate does not certify {user}@{app}'s key", code="key_mismatch"
            )
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._aesgcm.encrypt(nonce, signer.private_pem(), self._aad(*key, signer.suite))
        return (*key, signer.suite, signer.public_key_bytes(), nonce, sealed, _now_ms())

    def _get_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable("the key vault is closed", code="vault_closed")
        return self._conn

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction: all of it commits (durably), or none."""
        conn = self._get_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _aad(self, app: str, user: str, suite: str) -> bytes:
        return codec.encode(
            {
                "domain": _AAD_KEY_DOMAIN,
                "network": self._network,
                "app": app,
                "user": user,
                "suite": suite,
            }
        )

    def _unseal(self, app: str, user: str, row: tuple[object, ...]) -> Signer:
        suite, public_key, nonce, sealed = row
        if not (isinstance(suite, str) and isinstance(nonce, bytes) and isinstance(sealed, bytes)):
            _raise_corrupt(app, user, "a field has the wrong type")
        if len(nonce) != NONCE_BYTES:
            _raise_corrupt(app, user, "the nonce has the wrong length")
        try:
            pem = self._aesgcm.decrypt(nonce, sealed, self._aad(app, user, suite))
        except InvalidTag:
            _raise_corrupt(app, user, "the sealed key does not open for this user")
        try:
            signer = load_signer(pem)
        except InvalidInput:
            _raise_corrupt(app, user, "the sealed key is not a usable private key")
        if signer.suite != suite or signer.public_key_bytes() != public_key:
            _raise_corrupt(app, user, "the key does not match the stored public key")
        return signer

    def _remember(self, key: tuple[str, str], signer: Signer) -> None:
        if self._cache_size == 0:
            return
        self._cache[key] = signer
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _get_meta(self) -> dict[str, bytes]:
        rows = self._get_conn().execute("SELECT name, value FROM meta").fetchall()
        return {name: bytes(value) for name, value in rows}

    def _open_master_key(self) -> bytes:
        path = self._folder / KEY_FILE
        if os.path.lexists(path):
            return _read_master_key(path)
        if self._get_meta() or self._has_keys():
            raise Corruption(
                f"{path} is missing but {self._folder / VAULT_FILE} holds sealed keys",
                code="vault_key_missing",
                hint="restore vault.key from the backup taken with vault.sqlite;"
                " without it the stored keys cannot be opened",
            )
        return _create_master_key(path)

    def _has_keys(self) -> bool:
        return self._get_conn().execute("SELECT 1 FROM keys LIMIT 1").fetchone() is not None

    def _check_aad(self) -> bytes:
        return codec.encode({"domain": _AAD_CHECK_DOMAIN, "network": self._network})

    def _validate_or_init_meta(self) -> None:
        meta = self._get_meta()
        if not meta:
            if self._has_keys():
                _raise_vault_corrupt("the vault holds keys but no metadata")
            self._init_meta()
            return
        if set(meta) != {"format", "network", "key_check"} or meta["format"] != FORMAT_VERSION:
            _raise_vault_corrupt("the vault metadata is incomplete or of an unknown format")
        if meta["network"] != self._network.encode():
            raise InvalidInput(
                f"the key vault in {self._folder} belongs to network"
                f" {meta['network'].decode(errors='replace')!r}, not {self._network!r}",
                code="vault_network_mismatch",
                hint="point the gateway at this network's own vault folder",
            )
        check = meta["key_check"]
        try:
            opened = self._aesgcm.decrypt(
                check[:NONCE_BYTES], check[NONCE_BYTES:], self._check_aad()
            )
        except (InvalidTag, ValueError):  # ValueError: a check value too short for a nonce
            opened = b""
        if opened != _KEY_CHECK_PLAINTEXT:
            raise Corruption(
                f"{self._folder / KEY_FILE} is not the master key of this vault",
                code="vault_key_mismatch",
                hint="restore the vault.key that was backed up together with vault.sqlite",
            )

    def _init_meta(self) -> None:
        nonce = secrets.token_bytes(NONCE_BYTES)
        check = nonce + self._aesgcm.encrypt(nonce, _KEY_CHECK_PLAINTEXT, self._check_aad())
        rows = [
            ("format", FORMAT_VERSION),
            ("network", self._network.encode()),
            ("key_check", check),
        ]
        with self._atomic() as conn:
            conn.executemany("INSERT INTO meta (name, value) VALUES (?,?)", rows)


# --- rows ----------------------------------------------------------------------------

_ISSUED_COLUMNS = "org, serial, app, user, cert_pem, issued_ms, revoked_ms"


def _insert_key(conn: sqlite3.Connection, row: tuple[object, ...], cert_pem: bytes | None) -> None:
    app, user = row[0], row[1]
    try:
        conn.execute(
            "INSERT INTO keys (app, user, suite, public_key, nonce, sealed, created_ms,"
            " cert_pem) VALUES (?,?,?,?,?,?,?,?)",
            (*row, None if cert_pem is None else bytes(cert_pem)),
        )
    except sqlite3.IntegrityError:
        raise Conflict(
            f"user {user}@{app} already has a key",
            code="user_exists",
            hint="use the existing user, or delete it first to replace its key",
        ) from None


def _issued_row(app: str, user: str, cert_pem: bytes) -> tuple[object, ...]:
    """The ``issued`` row of an app-user certificate (org from its subject)."""
    cert = _load_certificate(cert_pem)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(orgs) != 1 or not isinstance(orgs[0].value, str):
        raise InvalidInput("the certificate names no single org (O=)", code="bad_certificate")
    serial = str(cert.serial_number)
    return orgs[0].value, serial, _check_app(app), _check_user(user), bytes(cert_pem), _now_ms()


def _insert_issued(conn: sqlite3.Connection, row: tuple[object, ...]) -> None:
    try:
        conn.execute(
            "INSERT INTO issued (org, serial, app, user, cert_pem, issued_ms) VALUES (?,?,?,?,?,?)",
            row,
        )
    except sqlite3.IntegrityError:
        raise Conflict(
            f"certificate {row[1]} of {row[0]} is already registered",
            code="duplicate_certificate",
        ) from None


def _to_issued(row: tuple[object, ...]) -> IssuedCert:
    org, serial, app, user, cert_pem, issued_ms, *rest = row
    revoked_ms = rest[0] if rest else None
    if not (
        isinstance(org, str)
        and isinstance(serial, str)
        and serial.isdigit()
        and isinstance(app, str)
        and isinstance(user, str)
        and isinstance(cert_pem, bytes)
        and isinstance(issued_ms, int)
        and (revoked_ms is None or isinstance(revoked_ms, int))
    ):
        _raise_vault_corrupt("an issued certificate's row has fields of the wrong type")
    return IssuedCert(org, int(serial), app, user, cert_pem, issued_ms, revoked_ms)


def _is_user_revoked(conn: sqlite3.Connection, app: str, user: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM issued WHERE app=? AND user=? AND revoked_ms IS NOT NULL LIMIT 1",
        (app, user),
    ).fetchone()
    return found is not None


def _validate_not_revoked(conn: sqlite3.Connection, app: str, user: str) -> None:
    if _is_user_revoked(conn, app, user):
        raise _user_revoked(app, user)


def _get_revocation_times(conn: sqlite3.Connection, org: str) -> dict[int, int]:
    """Serial -> when it was revoked here (ms), of every revoked certificate of ``org``."""
    rows = conn.execute(
        "SELECT serial, MIN(revoked_ms) FROM issued WHERE org=? AND revoked_ms IS NOT NULL"
        " GROUP BY serial",
        (org,),
    ).fetchall()
    return {int(row[0]): int(row[1]) for row in rows}


def _crl_number_of(crl_pem: bytes) -> int:
    crl = x509.load_pem_x509_crl(crl_pem)
    number: int = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return number


def _user_revoked(app: str, user: str) -> Forbidden:
    return Forbidden(
        f"user {user}@{app} was revoked",
        code="user_revoked",
        hint="issue a new user under another name",
    )


# --- the master key file ----------------------------------------------------------------


def _read_master_key(path: Path) -> bytes:
    """The master key; refuses a file that is not private or not 32 bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise InvalidInput(
            f"cannot open the vault master key {path}: {exc.strerror}",
            code="vault_key_unreadable",
            hint="vault.key must be a regular file (not a symlink) readable by this user",
        ) from exc
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{path} is not a regular file", code="vault_key_unreadable")
        if info.st_mode & _LOOSE_MODE_BITS:
            raise InvalidInput(
                f"the vault master key {path} is accessible to group or others"
                f" (mode {stat.S_IMODE(info.st_mode):04o})",
                code="vault_key_exposed",
                hint=f"chmod 600 {path}, and consider the key leaked if others could read it",
            )
        data = file.read(MASTER_KEY_BYTES + 1)
    if len(data) != MASTER_KEY_BYTES:
        raise Corruption(
            f"the vault master key {path} is {len(data)} bytes, not {MASTER_KEY_BYTES}",
            code="vault_key_corrupt",
            hint="restore vault.key from the backup taken with vault.sqlite",
        )
    return data


def _create_master_key(path: Path) -> bytes:
    """Write a fresh key to a 0600 temporary file, fsync it, then link it into place.

    ``os.link`` fails if ``path`` exists, so two processes racing to create the vault
    cannot overwrite each other's key, and a crash never leaves a short ``vault.key``
    (only a stray temporary file).
    """
    key = secrets.token_bytes(MASTER_KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _read_master_key(path)  # another process won the race: use its key
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)
    return key


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    """The vault database, created 0600 (SQLite gives its -wal and -shm files the same)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.executescript(_SCHEMA)
    except sqlite3.OperationalError as exc:  # locked, unwritable, disk full: not corrupt
        raise Unavailable(
            f"cannot open the key vault {path}: {exc}",
            code="vault_unavailable",
            hint="check the folder's permissions and free space",
        ) from exc
    except sqlite3.DatabaseError as exc:
        raise Corruption(
            f"{path} is not a usable key vault: {exc}",
            code="vault_corrupt",
            hint="restore vault.sqlite from a backup",
        ) from exc
    return conn


# --- checks -----------------------------------------------------------------------------


def _check_network(network: object) -> str:
    if not (isinstance(network, str) and 0 < len(network) <= MAX_NETWORK_CHARS):
        raise _bad_network()
    if not network.isprintable():
        raise _bad_network()
    return network


def _bad_network() -> InvalidInput:
    return InvalidInput(
        f"network must be 1-{MAX_NETWORK_CHARS} printable characters", code="bad_network"
    )


def _check_cache_size(size: object) -> int:
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not 0 <= size <= MAX_SIGNER_CACHE_SIZE
    ):
        raise InvalidInput(
            f"cache_size must be an integer from 0 to {MAX_SIGNER_CACHE_SIZE}",
            code="bad_cache_size",
        )
    return size


def _check_app(app: object) -> str:
    if not isinstance(app, str) or not NAME_RE.fullmatch(app):
        raise InvalidInput(
            f"app name {app!r} must match {NAME_RE.pattern}",
            code="bad_app_name",
            hint="use 1-64 characters of a-z, 0-9, '_' or '-', starting with a letter",
        )
    return app


def _check_user(user: object) -> str:
    if not isinstance(user, str) or not USER_RE.fullmatch(user):
        raise InvalidInput(
            f"user name {user!r} must be 1-64 characters of a-z, 0-9, '.', '_' or '-'",
            code="bad_user_name",
            hint="start with a letter or digit; the app is given separately (name@app)",
        )
    return user


def _certified_key(cert_pem: object) -> tuple[str, bytes]:
    """(suite, raw public key) of a certificate PEM; InvalidInput if unreadable."""
    try:
        public_key = _load_certificate(cert_pem).public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(
            f"the certificate's key is not readable: {exc}", code="bad_certificate"
        ) from exc
    try:
        return suite_of_public_key(public_key)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, code="key_mismatch", hint=exc.hint) from exc


def _load_certificate(cert_pem: object) -> x509.Certificate:
    """One PEM certificate of bounded size; InvalidInput(code="bad_certificate") if not."""
    if not isinstance(cert_pem, bytes) or len(cert_pem) > MAX_CERT_BYTES:
        raise InvalidInput(
            f"the certificate must be PEM bytes of at most {MAX_CERT_BYTES} bytes",
            code="bad_certificate",
        )
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(
            f"not a readable certificate PEM: {exc}",
            code="bad_certificate",
            hint="pass the cert_pem the CA issued",
        ) from exc


def _unknown_user(app: str, user: str) -> NotFound:
    return NotFound(
        f"no custodial key for user {user}@{app}",
        code="unknown_user",
        hint="create the user first (key custody apps only)",
    )


def _raise_corrupt(app: str, user: str, why: str) -> NoReturn:
    raise Corruption(
        f"the sealed key of {user}@{app} fails its checks: {why}",
        code="vault_corrupt",
        hint="the row was altered or moved, or vault.key changed; restore both from backup",
    )


def _raise_vault_corrupt(why: str) -> NoReturn:
    raise Corruption(
        f"the key vault fails its checks: {why}",
        code="vault_corrupt",
        hint="restore vault.sqlite and vault.key from the same backup",
    )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- own-key users: CSR checks ----------------------------------------------------------


def validate_csr_for(csr_pem: bytes, *, org: str, user: str) -> None:
    """Raise InvalidInput(code="bad_csr") unless ``csr_pem`` may be signed for ``user``.

    Checked before the CA signs: the bytes are one PEM CSR of bounded size; its key
    is of a supported suite; its self-signature verifies with the key it contains
    (proof that the sender holds the private key — a CSR naming someone else's key
    fails here); its subject is exactly ``CN=<user>, O=<org>`` with no other
    attribute. ``org`` and ``user`` themselves are the caller's, checked as names.
    """
    _check_user(user)
    if not isinstance(org, str) or _ORG_RE.fullmatch(org) is None:
        raise InvalidInput(f"organisation id {org!r} is not a short slug", code="bad_org")
    csr = _load_csr(csr_pem)
    try:
        suite_of_public_key(csr.public_key())
    except (InvalidInput, ValueError, UnsupportedAlgorithm) as exc:
        raise _bad_csr("the CSR's key type is not supported", _supported_suites_hint()) from exc
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _bad_csr(f"the CSR's signature cannot be checked: {exc}", _sign_hint()) from exc
    if not signature_ok:
        raise _bad_csr(
            "the CSR's self-signature does not verify with the key it contains (mismatched key)",
            _sign_hint(),
        )
    _validate_csr_subject(csr.subject, org=org, user=user)


def _load_csr(csr_pem: object) -> x509.CertificateSigningRequest:
    if not isinstance(csr_pem, bytes) or len(csr_pem) > MAX_CSR_BYTES:
        raise _bad_csr(
            f"the CSR must be PEM bytes of at most {MAX_CSR_BYTES} bytes",
            "send one PEM block: -----BEGIN CERTIFICATE REQUEST-----",
        )
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise _bad_csr(
            f"not a readable PEM CSR: {exc}",
            "send one PEM block: -----BEGIN CERTIFICATE REQUEST-----",
        ) from exc


def _validate_csr_subject(subject: x509.Name, *, org: str, user: str) -> None:
    expected = f"CN={user}, O={org}"
    attrs = list(subject)
    names = [a.value for a in attrs if a.oid == NameOID.COMMON_NAME]
    orgs = [a.value for a in attrs if a.oid == NameOID.ORGANIZATION_NAME]
    if names != [user]:
        raise _bad_csr(f"the CSR's CN is {names!r}, expected {user!r}", f"use subject {expected}")
    if orgs != [org]:
        raise _bad_csr(f"the CSR's O is {orgs!r}, expected {org!r}", f"use subject {expected}")
    if len(attrs) != 2:
        raise _bad_csr(
            "the CSR's subject has attributes besides CN and O", f"use subject {expected} only"
        )


def _bad_csr(message: str, hint: str) -> InvalidInput:
    return InvalidInput(message, code="bad_csr", hint=hint)


def _sign_hint() -> str:
    return "sign the CSR with the private key whose public key it contains (certs.make_csr)"


def _supported_suites_hint() -> str:
    return f"use a key of one of the suites: {', '.join(get_suite_names())}"
