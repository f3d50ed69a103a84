"""Signing suites: the one seam every signature in Meridian goes through.

A *suite* names an algorithm and knows how to make key pairs, load them and verify
signatures; a *signer* holds one private key. Callers only see the two protocols
below and :func:`get_suite`, so adding a suite (SM2) means adding one entry to the
registry, not touching callers.

* ``ed25519``: signs and verifies with PyNaCl (libsodium), the ONE Ed25519 verifier
  for everything consensus-critical (verifiers disagree on edge cases); keys are
  imported and exported through ``cryptography``. Public key: raw 32 bytes.
* ``p256``: ECDSA over P-256 with SHA-256 through ``cryptography``; signatures are
  strict DER and must be low-S (``s <= n/2``): ECDSA is malleable, ``(r, n - s)``
  verifies too, so exactly one of the pair is accepted and our signer only makes that
  one. Public key: X9.62 uncompressed point (65 bytes).

``verify`` never raises on bad input: a bad key, length or encoding is ``False``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from functools import lru_cache
from typing import Protocol, TypeAlias

import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ..errors import InvalidInput
from .hashing import compute_digest_parts

ED25519 = "ed25519"
P256 = "p256"

ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
P256_PUBLIC_KEY_BYTES = 65
P256_MAX_SIGNATURE_BYTES = 72
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_HALF_ORDER = P256_ORDER // 2

VERIFY_CACHE_SIZE = 65_536
PUBLIC_KEY_CACHE_SIZE = 4_096

PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


class Signer(Protocol):
    """One private key of one suite."""

    suite: str

    def sign(self, message: bytes) -> bytes:
        """Signature over ``message`` (the caller passes a domain-separated digest)."""
        ...

    def public_key_bytes(self) -> bytes:
        """Raw 32 B for ed25519; X9.62 uncompressed point for p256."""
        ...

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS8 PEM."""
        ...

    @property
    def crypto_key(self) -> PrivateKey:
        """The ``cryptography`` private key (to sign certificates, CRLs and CSRs)."""
        ...


class SigningSuite(Protocol):
    """An algorithm: makes, loads and verifies."""

    name: str

    def generate(self) -> Signer:
        """A fresh key pair from the OS CSPRNG."""
        ...

    def load_private_pem(self, pem: bytes) -> Signer:
        """Load an unencrypted PKCS8 PEM key; InvalidInput(code="bad_key") otherwise."""
        ...

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """True iff the signature is valid; never raises on bad input."""
        ...


class Ed25519Signer:
    """An Ed25519 key pair; signs with libsodium."""

    __slots__ = ("_crypto", "_nacl")
    suite: str = ED25519

    def __init__(self, seed: bytes) -> None:
        self._nacl = nacl.signing.SigningKey(seed)
        self._crypto = ed25519.Ed25519PrivateKey.from_private_bytes(seed)

    def sign(self, message: bytes) -> bytes:
        return self._nacl.sign(message).signature

    def public_key_bytes(self) -> bytes:
        return bytes(self._nacl.verify_key)

    def private_pem(self) -> bytes:
        return self._crypto.private_bytes(_PEM, _PKCS8, serialization.NoEncryption())

    @property
    def crypto_key(self) -> ed25519.Ed25519PrivateKey:
        return self._crypto


class P256Signer:
    """An ECDSA P-256 key pair; always emits low-S DER signatures."""

    __slots__ = ("_crypto",)
    suite: str = P256

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._crypto = key

    def sign(self, message: bytes) -> bytes:
        r, s = decode_dss_signature(self._crypto.sign(message, _ECDSA_SHA256))
        return encode_dss_signature(r, min(s, P256_ORDER - s))

    def public_key_bytes(self) -> bytes:
        return self._crypto.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def private_pem(self) -> bytes:
        return self._crypto.private_bytes(_PEM, _PKCS8, serialization.NoEncryption())

    @property
    def crypto_key(self) -> ec.EllipticCurvePrivateKey:
        return self._crypto


class Ed25519Suite:
    """Ed25519 (RFC 8032) with libsodium's strict verification."""

    name: str = ED25519

    def generate(self) -> Ed25519Signer:
        return Ed25519Signer(bytes(nacl.signing.SigningKey.generate()))

    def load_private_pem(self, pem: bytes) -> Ed25519Signer:
        key = _load_private_key(pem)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise _wrong_key_type(self.name)
        return Ed25519Signer(key.private_bytes_raw())

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if not _all_bytes(public_key, message, signature):
            return False
        if len(public_key) != ED25519_PUBLIC_KEY_BYTES:
            return False
        if len(signature) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            nacl.signing.VerifyKey(public_key).verify(message, signature)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return False
        return True


class P256Suite:
    """ECDSA P-256 / SHA-256, strict DER, low-S only."""

    name: str = P256

    def generate(self) -> P256Signer:
        return P256Signer(ec.generate_private_key(ec.SECP256R1()))

    def load_private_pem(self, pem: bytes) -> P256Signer:
        key = _load_private_key(pem)
        if not (isinstance(key, ec.EllipticCurvePrivateKey) and _is_p256(key.curve)):
            raise _wrong_key_type(self.name)
        return P256Signer(key)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if not _all_bytes(public_key, message, signature):
            return False
        if not is_low_s_der(signature):
            return False
        key = _p256_public_key(public_key)
        if key is None:
            return False
        try:
            key.verify(signature, message, _ECDSA_SHA256)
        except InvalidSignature:
            return False
        return True


def is_low_s_der(signature: bytes) -> bool:
    """True iff ``signature`` is strict DER of (r, s) with 0 < r < n and 0 < s <= n/2."""
    if len(signature) > P256_MAX_SIGNATURE_BYTES:
        return False
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    in_range = 0 < r < P256_ORDER and 0 < s <= P256_HALF_ORDER
    return in_range and encode_dss_signature(r, s) == signature


@lru_cache(maxsize=PUBLIC_KEY_CACHE_SIZE)
def _p256_public_key(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    """Parsed uncompressed P-256 point, or None if it is not one (cached: parsing costs)."""
    if len(raw) != P256_PUBLIC_KEY_BYTES or raw[0] != 0x04:
        return None
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        return None


def _is_p256(curve: ec.EllipticCurve) -> bool:
    return isinstance(curve, ec.SECP256R1)


def _all_bytes(*values: object) -> bool:
    return all(isinstance(value, bytes) for value in values)


def _load_private_key(pem: bytes) -> object:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidInput(
            "not a readable private key",
            code="bad_key",
            hint="give an unencrypted PKCS8 PEM private key",
        ) from exc


def _wrong_key_type(suite: str) -> InvalidInput:
    return InvalidInput(
        f"the PEM holds a private key that is not a {suite} key",
        code="bad_key",
        hint="use load_signer() to pick the suite from the key type",
    )


_SUITES: dict[str, SigningSuite] = {ED25519: Ed25519Suite(), P256: P256Suite()}


def get_suite(name: str) -> SigningSuite:
    """The registered suite called ``name``; InvalidInput(code="unknown_suite") if none."""
    suite = _SUITES.get(name)
    if suite is None:
        raise InvalidInput(
            f"unknown signing suite {name!r}",
            code="unknown_suite",
            hint=f"use one of: {', '.join(sorted(_SUITES))}",
        )
    return suite


def get_suite_names() -> tuple[str, ...]:
    """Names of all registered suites, sorted."""
    return tuple(sorted(_SUITES))


def suite_of_public_key(key: CertificatePublicKeyTypes) -> tuple[str, bytes]:
    """(suite name, raw public key bytes) of a ``cryptography`` public key."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ED25519, key.public_bytes_raw()
    if isinstance(key, ec.EllipticCurvePublicKey) and _is_p256(key.curve):
        raw = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return P256, raw
    raise InvalidInput(
        f"unsupported public key type {type(key).__name__}",
        code="unsupported_key",
        hint=f"use a key of one of the suites: {', '.join(sorted(_SUITES))}",
    )


def load_signer(key_pem: bytes) -> Signer:
    """A signer for an unencrypted PKCS8 PEM private key, suite chosen by key type."""
    key = _load_private_key(key_pem)
    public_key = key.public_key() if isinstance(key, PrivateKey) else None
    if public_key is None:
        raise InvalidInput(
            f"unsupported private key type {type(key).__name__}",
            code="unsupported_key",
            hint=f"use a key of one of the suites: {', '.join(sorted(_SUITES))}",
        )
    suite_name, _ = suite_of_public_key(public_key)
    return get_suite(suite_name).load_private_pem(key_pem)


def verify(suite: str, public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Verify with the named suite; an unknown suite or non-bytes input is False."""
    impl = _SUITES.get(suite) if isinstance(suite, str) else None
    if impl is None:
        return False
    return impl.verify(public_key, message, signature)


class _VerifyCache:
    """Bounded, thread-safe LRU of verification verdicts keyed by a digest of the inputs.

    Keying by SHA-256 of (suite, key, message, signature) bounds memory per entry
    whatever the message size; both verdicts are cached (verification is deterministic).
    """

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[Hashable, bool] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bool | None:
        with self._lock:
            verdict = self._entries.get(key)
            if verdict is not None:
                self._entries.move_to_end(key)
            return verdict

    def put(self, key: Hashable, verdict: bool) -> None:
        with self._lock:
            self._entries[key] = verdict
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_VERIFY_CACHE = _VerifyCache(VERIFY_CACHE_SIZE)
_SHORT_MESSAGE = 64


def _cache_key(suite: str, public_key: bytes, message: bytes, signature: bytes) -> Hashable:
    """The inputs themselves when small (bytes cache their hash), else their digest."""
    if len(message) <= _SHORT_MESSAGE and len(public_key) <= 128 and len(signature) <= 128:
        return (suite, public_key, message, signature)
    return compute_digest_parts(suite.encode(), public_key, message, signature)


def verify_cached(suite: str, public_key: bytes, message: bytes, signature: bytes) -> bool:
    """:func:`verify`, memoised in a bounded LRU (endorsement and validation re-check)."""
    if not (isinstance(suite, str) and _all_bytes(public_key, message, signature)):
        return False
    key = _cache_key(suite, public_key, message, signature)
    verdict = _VERIFY_CACHE.get(key)
    if verdict is None:
        verdict = verify(suite, public_key, message, signature)
        _VERIFY_CACHE.put(key, verdict)
    return verdict


def remember_own_signature(suite: str, public_key: bytes, message: bytes, signature: bytes) -> None:
    """Record a signature this process just made as valid (saves re-verifying it)."""
    _VERIFY_CACHE.put(_cache_key(suite, public_key, message, signature), True)


def clear_verify_cache() -> None:
    """Forget every cached verdict (tests, key rotation drills)."""
    _VERIFY_CACHE.clear()


def get_verify_cache_len() -> int:
    """How many verdicts the verification cache holds now."""
    return len(_VERIFY_CACHE)
