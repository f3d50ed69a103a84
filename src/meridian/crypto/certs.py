"""X.509 identities: organisation CAs, issued identities, revocation and membership.

Each organisation (a short slug such as ``org1``) runs a self-signed CA. Nodes, admins
and clients hold a certificate from their org's CA with subject ``CN=name, O=org``
and Meridian's role extension::

    OID 1.3.6.1.4.1.61072.1.1   Meridian's arc 1.3.6.1.4.1.61072; .1 certificates; .1 role
    non-critical; value = codec.encode({"role": ROLE, "attrs": {str: str}})

The CA's own certificate carries the same extension with role ``"ca"``, which is not
an identity role, so a CA certificate never validates as an identity.

:class:`Membership` (the MSP) turns certificate bytes into a validated
:class:`Identity`: known org, signed by that org's CA, within its dates, not revoked.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from .. import codec
from ..errors import CertificateError, InvalidInput
from .hashing import compute_digest
from .suites import (
    ED25519,
    PrivateKey,
    Signer,
    get_suite,
    load_signer,
    suite_of_public_key,
)

__all__ = [
    "CA_ROLE",
    "ROLE_EXTENSION_OID",
    "CertificateAuthority",
    "Identity",
    "IssuedIdentity",
    "Membership",
    "Role",
    "load_cert_der",
    "load_signer",
    "make_csr",
]

ROLE_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.61072.1.1")
CA_ROLE = "ca"

IDENTITY_DAYS = 365
CA_DAYS = 3650
CRL_NEXT_UPDATE_DAYS = 30
CLOCK_SKEW_S = 300  # certificates start this long before "now" (other nodes' clocks)

MAX_CERT_BYTES = 16_384
MAX_ROLE_EXTENSION_BYTES = 8_192
MAX_ATTRS = 32
MAX_ATTR_KEY_CHARS = 64
MAX_ATTR_VALUE_CHARS = 512
MAX_NAME_CHARS = 64  # X.509 upper bound for CN
MEMBERSHIP_CACHE_SIZE = 16_384

# what parsing a malformed certificate's fields or key can raise in ``cryptography``
_BAD_CERT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
)
_BAD_CA_ERRORS: tuple[type[Exception], ...] = (
    *_BAD_CERT_ERRORS,
    x509.ExtensionNotFound,
    InvalidSignature,
)
_BAD_IDENTITY_ERRORS: tuple[type[Exception], ...] = (InvalidInput, *_BAD_CERT_ERRORS)
_ORG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER


class Role(StrEnum):
    NODE = "node"
    ADMIN = "admin"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Identity:
    """A certificate holder that :class:`Membership` has validated."""

    org: str
    name: str
    role: Role
    attrs: Mapping[str, str] = field(hash=False)  # read-only view
    suite: str
    public_key: bytes
    cert_der: bytes = field(repr=False)
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint: str  # lowercase hex SHA-256 of cert_der

    def __post_init__(self) -> None:
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))


@dataclass(frozen=True, slots=True)
class IssuedIdentity:
    """A freshly issued certificate, with its private key if the CA generated it."""

    cert_pem: bytes
    key_pem: bytes | None


# --- small checks shared by issuing and validating -------------------------------------


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise InvalidInput("datetime has no timezone", code="naive_datetime", hint="use UTC")
    return now.astimezone(UTC)


def _validity(
    now: datetime | None, not_before: datetime | None, days: int
) -> tuple[datetime, datetime]:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise InvalidInput(
            f"validity must be a positive number of days, not {days!r}", code="bad_days"
        )
    if not_before is not None:
        start = _utc(not_before)
        return start, start + timedelta(days=days)
    current = _utc(now)
    return current - timedelta(seconds=CLOCK_SKEW_S), current + timedelta(days=days)


def _check_org(org: str) -> str:
    if not isinstance(org, str) or not _ORG_RE.fullmatch(org):
        raise InvalidInput(
            f"organisation id {org!r} is not a short slug",
            code="bad_org",
            hint="use 1-32 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
        )
    return org


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise InvalidInput(f"name must be 1-{MAX_NAME_CHARS} printable characters", code="bad_name")
    return name


def _check_attrs(attrs: Any) -> dict[str, str]:
    if attrs is None:
        return {}
    ok = isinstance(attrs, Mapping) and len(attrs) <= MAX_ATTRS
    ok = ok and all(_is_attr(key, value) for key, value in attrs.items())
    if not ok:
        raise InvalidInput(
            f"attrs must map at most {MAX_ATTRS} strings (keys 1-{MAX_ATTR_KEY_CHARS}, "
            f"values up to {MAX_ATTR_VALUE_CHARS} characters) to strings",
            code="bad_attrs",
        )
    return dict(attrs)


def _is_attr(key: object, value: object) -> bool:
    return (
        isinstance(key, str)
        and isinstance(value, str)
        and 0 < len(key) <= MAX_ATTR_KEY_CHARS
        and len(value) <= MAX_ATTR_VALUE_CHARS
    )


def _to_role(role: object) -> Role:
    try:
        return Role(role if isinstance(role, str) else repr(role))
    except ValueError:
        raise InvalidInput(
            f"unknown role {role!r}",
            code="bad_role",
            hint=f"use one of: {', '.join(r.value for r in Role)}",
        ) from None


def _subject(name: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )


def _single_attr(name: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise InvalidInput(f"the subject must have exactly one {what}", code="bad_subject")
    return values[0].value


def _role_extension(role: str, attrs: Mapping[str, str]) -> x509.UnrecognizedExtension:
    value = codec.encode({"role": role, "attrs": dict(attrs)})
    return x509.UnrecognizedExtension(ROLE_EXTENSION_OID, value)


def _parse_role_extension(cert: x509.Certificate) -> tuple[Role, dict[str, str]]:
    try:
        ext = cert.extensions.get_extension_for_oid(ROLE_EXTENSION_OID).value
    except x509.ExtensionNotFound:
        raise InvalidInput("the certificate has no Meridian role extension") from None
    raw = ext.value if isinstance(ext, x509.UnrecognizedExtension) else b""
    body = codec.decode(raw, max_bytes=MAX_ROLE_EXTENSION_BYTES, what="role extension")
    if not isinstance(body, dict) or set(body) != {"role", "attrs"}:
        raise InvalidInput("the role extension must hold exactly 'role' and 'attrs'")
    return _to_role(body["role"]), _check_attrs(body["attrs"])


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """Ed25519 signs the message itself (algorithm None); ECDSA signs its SHA-256."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _load_pem_or_der(data: bytes, load_pem: Any, load_der: Any) -> Any:
    if not isinstance(data, bytes | bytearray):
        raise ValueError("expected bytes")
    data = bytes(data)
    return load_pem(data) if data.lstrip().startswith(b"-----BEGIN") else load_der(data)


def _load_cert(data: bytes) -> x509.Certificate:
    """Parse PEM or DER; InvalidInput if it is not a certificate."""
    try:
        cert: x509.Certificate = _load_pem_or_der(
            data, x509.load_pem_x509_certificate, x509.load_der_x509_certificate
        )
    except ValueError as exc:
        raise InvalidInput(f"not an X.509 certificate: {exc}") from exc
    return cert


def _verified_crl(crl_pem: bytes, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """Parse a CRL and check that ``ca_cert`` signed it; InvalidInput(code="bad_crl") if not."""
    try:
        crl = _load_pem_or_der(crl_pem, x509.load_pem_x509_crl, x509.load_der_x509_crl)
        signed = crl.issuer == ca_cert.subject and crl.is_signature_valid(ca_cert.public_key())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(f"not a readable CRL: {exc}", code="bad_crl") from exc
    if not signed:
        raise InvalidInput("the CRL is not signed by this organisation's CA", code="bad_crl")
    result: x509.CertificateRevocationList = crl
    return result


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


# --- the organisation CA ----------------------------------------------------------------


class CertificateAuthority:
    """An organisation's self-signed CA: issues identities and revocation lists."""

    __slots__ = ("_cert", "_crl_number", "_org", "_revoked", "_signer")

    def __init__(self, cert: x509.Certificate, signer: Signer) -> None:
        self._cert = cert
        self._signer = signer
        self._org = _single_attr(cert.subject, NameOID.ORGANIZATION_NAME, "O= (organisation)")
        self._revoked: dict[int, datetime] = {}
        self._crl_number = 0

    @classmethod
    def create(
        cls,
        org: str,
        *,
        suite: str = ED25519,
        days: int = CA_DAYS,
        now: datetime | None = None,
    ) -> CertificateAuthority:
        """A new CA for ``org`` with a fresh key of ``suite``."""
        start, end = _validity(now, None, days)
        signer = get_suite(suite).generate()
        public_key = signer.crypto_key.public_key()
        name = _subject(f"{_check_org(org)} CA", org)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_role_extension(CA_ROLE, {}), critical=False)
        )
        return cls(builder.sign(signer.crypto_key, _signature_hash(signer.crypto_key)), signer)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """A CA from its certificate and private key; InvalidInput if they don't match."""
        cert = _load_cert(cert_pem)
        signer = load_signer(key_pem)
        if suite_of_public_key(cert.public_key()) != (signer.suite, signer.public_key_bytes()):
            raise InvalidInput(
                "the private key does not belong to the CA certificate",
                code="key_mismatch",
                hint="pass the CA's own key PEM",
            )
        _validate_ca_cert(cert)
        return cls(cert, signer)

    @property
    def org(self) -> str:
        return self._org

    @property
    def cert(self) -> x509.Certificate:
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(_PEM)

    @property
    def key_pem(self) -> bytes:
        return self._signer.private_pem()

    @property
    def revoked_serials(self) -> frozenset[int]:
        return frozenset(self._revoked)

    def issue(
        self,
        name: str,
        role: Role | str,
        *,
        attrs: Mapping[str, str] | None = None,
        public_key: CertificatePublicKeyTypes | None = None,
        suite: str = ED25519,
        days: int = IDENTITY_DAYS,
        not_before: datetime | None = None,
        now: datetime | None = None,
    ) -> IssuedIdentity:
        """Certify ``public_key`` (or a fresh key pair of ``suite``) as ``name`` in ``role``."""
        checked_role, checked_attrs = _to_role(role), _check_attrs(attrs)
        validity = _validity(now, not_before, days)
        signer: Signer | None = None
        if public_key is None:
            signer = get_suite(suite).generate()
            public_key = signer.crypto_key.public_key()
        suite_of_public_key(public_key)  # raises for key types no suite supports
        cert = self._build_identity_cert(
            _check_name(name), checked_role, checked_attrs, public_key, validity
        )
        key_pem = signer.private_pem() if signer is not None else None
        return IssuedIdentity(cert.public_bytes(_PEM), key_pem)

    def _build_identity_cert(
        self,
        name: str,
        role: Role,
        attrs: Mapping[str, str],
        public_key: CertificatePublicKeyTypes,
        validity: tuple[datetime, datetime],
    ) -> x509.Certificate:
        ca_key = self._signer.crypto_key
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(name, self._org))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity[0])
            .not_valid_after(validity[1])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .add_extension(_role_extension(role.value, attrs), critical=False)
        )
        return builder.sign(ca_key, _signature_hash(ca_key))

    def sign_csr(
        self,
        csr_pem: bytes,
        role: Role | str,
        attrs: Mapping[str, str] | None = None,
        days: int = IDENTITY_DAYS,
    ) -> bytes:
        """Certificate PEM for a CSR's key and CN; InvalidInput(code="bad_csr") if it is bad."""
        csr = _load_verified_csr(csr_pem)
        try:
            name = _single_attr(csr.subject, NameOID.COMMON_NAME, "CN= (name)")
            org = _single_attr(csr.subject, NameOID.ORGANIZATION_NAME, "O= (organisation)")
        except InvalidInput as exc:
            raise InvalidInput(f"bad CSR subject: {exc.message}", code="bad_csr") from exc
        if org != self._org:
            raise InvalidInput(
                f"the CSR is for organisation {org!r}, this CA is {self._org!r}",
                code="bad_csr",
                hint=f"send the CSR to {org!r}'s CA",
            )
        issued = self.issue(name, role, attrs=attrs, public_key=csr.public_key(), days=days)
        return issued.cert_pem

    def load_crl(self, crl_pem: bytes) -> None:
        """Adopt a CRL this CA signed before, so :meth:`revoke` keeps its serials."""
        crl = _verified_crl(crl_pem, self._cert)
        for entry in crl:
            self._revoked.setdefault(entry.serial_number, entry.revocation_date_utc)
        self._crl_number = max(self._crl_number, _crl_number(crl))

    def continue_numbers(self, crl_pem: bytes) -> None:
        """Number the next CRL after ``crl_pem`` (one this CA signed) without adopting
        its serials: the next CRL lists only what :meth:`revoke` is given."""
        crl = _verified_crl(crl_pem, self._cert)
        self._crl_number = max(self._crl_number, _crl_number(crl))

    def revoke(self, serials: Iterable[int], *, now: datetime | None = None) -> bytes:
        """A CRL PEM listing every serial revoked so far plus ``serials``."""
        when = _utc(now)
        new_serials = list(serials)
        _check_serials(new_serials)
        for serial in new_serials:
            self._revoked.setdefault(serial, when)
        self._crl_number += 1
        return self._build_crl(when, self._revoked).public_bytes(_PEM)

    def sign_crl(self, revoked: Mapping[int, datetime], *, now: datetime | None = None) -> bytes:
        """A CRL PEM listing exactly ``revoked`` (serial -> when), numbered after every
        CRL this CA signed or adopted; the CA's own list is left as it is."""
        _check_serials(list(revoked))
        self._crl_number += 1
        return self._build_crl(_utc(now), revoked).public_bytes(_PEM)

    def _build_crl(
        self, when: datetime, revoked: Mapping[int, datetime]
    ) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(when)
            .next_update(when + timedelta(days=CRL_NEXT_UPDATE_DAYS))
            .add_extension(x509.CRLNumber(self._crl_number), critical=False)
        )
        for serial, revoked_at in sorted(revoked.items()):
            entry = x509.RevokedCertificateBuilder().serial_number(serial)
            builder = builder.add_revoked_certificate(entry.revocation_date(revoked_at).build())
        ca_key = self._signer.crypto_key
        return builder.sign(ca_key, _signature_hash(ca_key))


def _check_serials(serials: list[int]) -> None:
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in serials):
        raise InvalidInput("serial numbers must be positive integers", code="bad_serial")


def _load_verified_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr: x509.CertificateSigningRequest = _load_pem_or_der(
            csr_pem, x509.load_pem_x509_csr, x509.load_der_x509_csr
        )
        valid = csr.is_signature_valid
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(f"not a readable CSR: {exc}", code="bad_csr") from exc
    if not valid:
        raise InvalidInput(
            "the CSR's self-signature does not verify",
            code="bad_csr",
            hint="sign the CSR with the private key it names (make_csr)",
        )
    return csr


def _validate_ca_cert(cert: x509.Certificate) -> None:
    """Raise InvalidInput unless ``cert`` is a self-signed CA certificate."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.verify_directly_issued_by(cert)
    except _BAD_CA_ERRORS as exc:
        raise InvalidInput(f"not a self-signed CA certificate: {exc}", code="bad_ca") from exc
    if not constraints.ca:
        raise InvalidInput("the certificate is not a CA (BasicConstraints ca=False)", code="bad_ca")


def make_csr(key: Signer | PrivateKey, name: str, org: str) -> bytes:
    """A CSR PEM for ``CN=name, O=org``, self-signed with ``key`` (bring-your-own-key)."""
    crypto_key = key if isinstance(key, PrivateKey) else key.crypto_key
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        _subject(_check_name(name), _check_org(org))
    )
    return builder.sign(crypto_key, _signature_hash(crypto_key)).public_bytes(_PEM)


def load_cert_der(pem_or_der: bytes) -> bytes:
    """DER bytes of a certificate given as PEM or DER; CertificateError if it is neither."""
    try:
        return _load_cert(pem_or_der).public_bytes(_DER)
    except InvalidInput as exc:
        raise CertificateError(
            exc.message,
            code="certificate_invalid",
            hint="pass an X.509 certificate in PEM or DER form",
        ) from exc


# --- membership (the MSP) ---------------------------------------------------------------


def _invalid(message: str, hint: str) -> CertificateError:
    return CertificateError(message, code="certificate_invalid", hint=hint)


class Membership:
    """Validates certificates against the member organisations' CAs and CRLs.

    The expensive part of :meth:`validate` (parsing and the CA signature check) is
    cached by the certificate's bytes in a bounded LRU; dates and revocation are
    checked on every call.
    """

    __slots__ = ("_cache", "_cas", "_crl_numbers", "_lock", "_revoked")

    def __init__(self, cas: Mapping[str, bytes], crls: Mapping[str, bytes] | None = None) -> None:
        self._cas = {org: _load_member_ca(org, pem) for org, pem in cas.items()}
        self._revoked: dict[str, dict[int, datetime]] = {}
        self._crl_numbers: dict[str, int] = {}
        self._cache: OrderedDict[bytes, Identity] = OrderedDict()
        self._lock = threading.Lock()
        for org, crl_pem in (crls or {}).items():
            self.update_crl(org, crl_pem)

    @property
    def orgs(self) -> frozenset[str]:
        return frozenset(self._cas)

    def add_org(self, org: str, ca_pem: bytes) -> None:
        """Trust ``org``'s CA from now on (an org that joined the network). CAs are
        only ever added: blocks validated before an org left still replay."""
        ca = _load_member_ca(org, ca_pem)
        known = self._cas.get(org)
        if known is not None and known != ca:
            raise CertificateError(
                f"organisation {org!r} already has another CA", code="ca_mismatch"
            )
        self._cas[org] = ca

    def validate(self, cert_der: bytes, *, now: datetime | None = None) -> Identity:
        """The identity in ``cert_der``; CertificateError if it must not be trusted."""
        identity = self._get_checked_identity(cert_der)
        when = _utc(now)
        self._validate_dates(identity, when)
        if self.is_revoked(identity.org, identity.serial, at=when):
            raise CertificateError(
                f"certificate {identity.serial} of {identity.org}/{identity.name} is revoked",
                code="certificate_revoked",
                hint=f"ask {identity.org}'s administrator for a new certificate",
            )
        return identity

    def update_crl(self, org: str, crl_pem: bytes, *, received_at: datetime | None = None) -> None:
        """Add ``org``'s revocation list; CertificateError unless its CA signed it.

        Revocations only accumulate (a CRL that omits an earlier serial does not
        un-revoke it). A serial takes effect at its revocation date, or at
        ``received_at`` if that is later — the moment this node learned of it — so
        that validating a block at its own time gives the same verdict on replay.
        """
        ca = self._get_ca(org)
        try:
            crl = _verified_crl(crl_pem, ca)
        except InvalidInput as exc:
            raise CertificateError(
                f"{exc.message} ({org})",
                code="crl_invalid",
                hint=f"use a CRL issued by {org}'s CA (CertificateAuthority.revoke)",
            ) from exc
        number = _crl_number(crl)
        if number < self._crl_numbers.get(org, 0):
            raise CertificateError(
                f"CRL number {number} is older than {org}'s current CRL",
                code="crl_stale",
                hint="load the previous CRL into the CA (load_crl) before revoking more",
            )
        known = self._revoked.setdefault(org, {})
        for entry in crl:
            effective = entry.revocation_date_utc
            if received_at is not None:
                effective = max(effective, _utc(received_at))
            known.setdefault(entry.serial_number, effective)
        self._crl_numbers[org] = number

    def revocations(self) -> dict[str, dict[int, datetime]]:
        """Every revoked serial per org with the time its revocation took effect."""
        return {org: dict(serials) for org, serials in self._revoked.items()}

    def restore_revocations(self, revocations: Mapping[str, Mapping[int, datetime]]) -> None:
        """Adopt revocations saved from :meth:`revocations` (earliest time wins)."""
        for org, serials in revocations.items():
            self._get_ca(org)
            known = self._revoked.setdefault(org, {})
            for serial, effective in serials.items():
                known[serial] = min(known.get(serial, effective), _utc(effective))

    def is_revoked(self, org: str, serial: int, *, at: datetime | None = None) -> bool:
        """True if ``serial`` was revoked at or before ``at`` (default: now).

        Validating a block at its own time therefore gives the same verdict when the
        ledger is replayed later, after more revocations.
        """
        revoked_at = self._revoked.get(org, {}).get(serial)
        return revoked_at is not None and revoked_at <= _utc(at)

    def _get_ca(self, org: str) -> x509.Certificate:
        ca = self._cas.get(org)
        if ca is None:
            raise CertificateError(
                f"organisation {org!r} is not a member of this network",
                code="unknown_org",
                hint=f"member organisations are: {', '.join(sorted(self._cas)) or 'none'}",
            )
        return ca

    def identify(self, cert_der: bytes) -> Identity:
        """The identity in ``cert_der`` as issued by its org's CA, *without* the date
        and revocation checks of :meth:`validate`.

        For what must be the same on every node whenever it is read — the consenters'
        keys named by configuration: validity dates and revocation lists are judged
        at different moments on different nodes, so a consensus key set must not
        depend on them (a consenter leaves by a configuration transaction).
        """
        return self._get_checked_identity(cert_der)

    def _get_checked_identity(self, cert_der: bytes) -> Identity:
        if not isinstance(cert_der, bytes) or len(cert_der) > MAX_CERT_BYTES:
            raise _invalid(
                f"certificate must be DER bytes of at most {MAX_CERT_BYTES} bytes",
                "send the DER encoding of your certificate (load_cert_der)",
            )
        key = cert_der  # bytes hash themselves once and cache it: cheap repeated lookups
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        identity = self._compute_identity(cert_der)
        with self._lock:
            self._cache[key] = identity
            while len(self._cache) > MEMBERSHIP_CACHE_SIZE:
                self._cache.popitem(last=False)
        return identity

    def _compute_identity(self, cert_der: bytes) -> Identity:
        cert = _parse_der(cert_der)
        try:
            org = _single_attr(cert.subject, NameOID.ORGANIZATION_NAME, "O= (organisation)")
        except InvalidInput as exc:
            raise _invalid(exc.message, "use a certificate issued by a member's CA") from exc
        ca = self._get_ca(org)
        if cert.issuer != ca.subject:
            raise CertificateError(
                f"the certificate claims organisation {org!r} but was not issued by its CA",
                code="unknown_org",
                hint=f"use a certificate issued by {org}'s CA",
            )
        _check_signed_by(cert, ca, org)
        return _identity_of(cert, org, cert_der)

    def _validate_dates(self, identity: Identity, now: datetime) -> None:
        ca = self._cas[identity.org]
        if now < identity.not_before:
            raise CertificateError(
                f"certificate of {identity.org}/{identity.name} is not valid until "
                f"{identity.not_before.isoformat()}",
                code="certificate_expired",
                hint="check this machine's clock, or wait until the certificate starts",
            )
        if now > identity.not_after or now > ca.not_valid_after_utc:
            raise CertificateError(
                f"certificate of {identity.org}/{identity.name} (or its CA) has expired",
                code="certificate_expired",
                hint=f"renew the certificate with {identity.org}'s CA",
            )


def _load_member_ca(org: str, pem: bytes) -> x509.Certificate:
    try:
        cert = _load_cert(pem)
        _validate_ca_cert(cert)
        ca_org = _single_attr(cert.subject, NameOID.ORGANIZATION_NAME, "O= (organisation)")
    except InvalidInput as exc:
        raise CertificateError(
            f"CA certificate for {org!r} is unusable: {exc.message}",
            code="ca_invalid",
            hint=f"configure {org}'s self-signed CA certificate PEM",
        ) from exc
    if ca_org != org:
        raise CertificateError(
            f"CA certificate configured for {org!r} names organisation {ca_org!r}",
            code="ca_invalid",
            hint="map each org id to its own CA certificate",
        )
    return cert


def _parse_der(cert_der: bytes) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        canonical = cert.public_bytes(_DER) == cert_der
    except ValueError as exc:
        raise _invalid(f"not a DER X.509 certificate: {exc}", "send a DER certificate") from exc
    if not canonical:
        raise _invalid("certificate bytes are not canonical DER", "send the DER as issued")
    return cert


def _check_signed_by(cert: x509.Certificate, ca: x509.Certificate, org: str) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise _invalid(
            f"the certificate is not signed by {org}'s CA",
            f"get a certificate issued by {org}'s CA",
        ) from exc


def _identity_of(cert: x509.Certificate, org: str, cert_der: bytes) -> Identity:
    try:
        name = _single_attr(cert.subject, NameOID.COMMON_NAME, "CN= (name)")
        role, attrs = _parse_role_extension(cert)
        suite, public_key = suite_of_public_key(cert.public_key())
    except _BAD_IDENTITY_ERRORS as exc:
        message = exc.message if isinstance(exc, InvalidInput) else str(exc)
        raise _invalid(
            f"unusable identity certificate: {message}",
            f"ask {org}'s administrator to issue a Meridian identity certificate",
        ) from exc
    return Identity(
        org=org,
        name=name,
        role=role,
        attrs=attrs,
        suite=suite,
        public_key=public_key,
        cert_der=cert_der,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        fingerprint=compute_digest(cert_der).hex(),
    )
