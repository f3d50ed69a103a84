"""The one hashing helper: SHA-256, with domain separation for anything signed.

A signature is always made over ``compute_signing_digest(domain, network_id, payload)``
so that a signature made for one purpose (a proposal, an endorsement, a gateway
request) on one network can never be replayed as another.
"""

from __future__ import annotations

import hashlib
from typing import NewType

Digest = NewType("Digest", bytes)

DIGEST_BYTES = 32
_SIGNING_PREFIX = b"meridian/v1/"


def compute_digest(data: bytes) -> Digest:
    """SHA-256 of ``data``."""
    return Digest(hashlib.sha256(data).digest())


def compute_digest_parts(*parts: bytes) -> Digest:
    """SHA-256 over length-prefixed parts (unambiguous concatenation)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return Digest(h.digest())


def compute_signing_digest(domain: str, network_id: str, payload: bytes) -> Digest:
    """The digest a signature covers: domain and network bound to the payload."""
    return compute_digest_parts(_SIGNING_PREFIX + domain.encode(), network_id.encode(), payload)
