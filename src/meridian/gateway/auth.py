"""Request authentication: every request is signed by the caller's key.

Headers (no secrets, nothing in URLs)::

    X-Meridian-Cert       base64 DER certificate of the caller
    X-Meridian-Time       milliseconds since the epoch, within ±5 minutes of the node
    X-Meridian-Nonce      16..64 random bytes, hex; never accepted twice
    X-Meridian-Signature  base64 signature over compute_request_digest(...)

The signed digest binds the network, method, path, query string, time, nonce and
the SHA-256 of the body (domain ``request``), so a signature can't be replayed on
another request, another node's network, or as a proposal or endorsement.

Nonces are remembered in memory for the freshness window. So that a restart does
not open a replay window, a node also refuses requests signed before it started:
the accepted times are ``[max(now - 5 min, start), now + 5 min]``.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict

from .. import codec
from ..crypto.certs import Identity, Membership
from ..crypto.hashing import Digest, compute_digest, compute_signing_digest
from ..crypto.suites import Signer, verify
from ..errors import AuthError, Busy
from ..types import DOMAIN_REQUEST

H_CERT = "x-meridian-cert"
H_TIME = "x-meridian-time"
H_NONCE = "x-meridian-nonce"
H_SIG = "x-meridian-signature"
MAX_SKEW_MS = 5 * 60 * 1000
MAX_NONCES = 500_000


def compute_request_digest(
    network: str, method: str, path: str, query: str, time_ms: int, nonce: str, body: bytes
) -> Digest:
    payload = codec.encode(
        {
            "method": method.upper(),
            "path": path,
            "query": query,
            "time_ms": time_ms,
            "nonce": nonce,
            "body": compute_digest(body).hex(),
        }
    )
    return compute_signing_digest(DOMAIN_REQUEST, network, payload)


def sign_request(
    signer: Signer, cert_der: bytes, network: str, method: str, path: str, query: str, body: bytes
) -> dict[str, str]:
    """The headers that authenticate one request (used by the SDK)."""
    time_ms = int(time.time() * 1000)
    nonce = secrets.token_hex(16)
    digest = compute_request_digest(network, method, path, query, time_ms, nonce, body)
    return {
        H_CERT: codec.b64(cert_der),
        H_TIME: str(time_ms),
        H_NONCE: nonce,
        H_SIG: codec.b64(signer.sign(bytes(digest))),
    }


class RequestAuthenticator:
    """Checks request signatures and remembers nonces to refuse replays."""

    def __init__(self, network: str, membership: Membership) -> None:
        self.network = network
        self.membership = membership
        self._nonces: OrderedDict[str, int] = OrderedDict()
        self.started_ms = int(time.time() * 1000)

    def authenticate(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> Identity:
        missing = [h for h in (H_CERT, H_TIME, H_NONCE, H_SIG) if not headers.get(h)]
        if missing:
            raise AuthError(
                f"missing authentication headers: {', '.join(missing)}",
                code="missing_signature",
                hint="sign every request with your identity (the SDK and CLI do)",
            )
        cert = codec.unb64(headers[H_CERT], what=H_CERT)
        signature = codec.unb64(headers[H_SIG], what=H_SIG)
        nonce = headers[H_NONCE]
        time_ms = _parse_time(headers[H_TIME])
        if not 32 <= len(nonce) <= 128 or any(c not in "0123456789abcdef" for c in nonce):
            raise AuthError("nonce must be 16..64 bytes of lowercase hex", code="bad_nonce")
        identity = self.membership.validate(cert)
        digest = compute_request_digest(self.network, method, path, query, time_ms, nonce, body)
        if not verify(identity.suite, identity.public_key, bytes(digest), signature):
            raise AuthError(
                "request signature does not verify",
                code="bad_signature",
                hint="sign method, path, query, time, nonce and body digest "
                "with the key of the certificate you send",
            )
        self._remember(nonce, time_ms)
        return identity

    def _remember(self, nonce: str, time_ms: int) -> None:
        now = int(time.time() * 1000)
        if abs(now - time_ms) > MAX_SKEW_MS:
            raise AuthError(
                f"request time is {abs(now - time_ms) // 1000} s from node time",
                code="stale_request",
                hint="check the client clock",
            )
        if time_ms < self.started_ms:
            raise AuthError(
                "request was signed before this node started",
                code="stale_request",
                hint="sign the request again and resend",
            )
        if nonce in self._nonces:
            raise AuthError(
                "this request was already received (replayed nonce)",
                code="replayed_request",
                hint="sign each request afresh",
            )
        # Forget a nonce only once any replay of it would be refused as stale anyway
        # (arrival order = insertion order); never evict one still inside the window.
        while self._nonces and next(iter(self._nonces.values())) < now - 2 * MAX_SKEW_MS:
            self._nonces.popitem(last=False)
        if len(self._nonces) >= MAX_NONCES:
            raise Busy(
                "too many requests in the replay window",
                retry_after_s=1.0,
                hint="send fewer, larger requests (e.g. the batch endpoint)",
            )
        self._nonces[nonce] = now


def _parse_time(text: str) -> int:
    if not text.isdigit() or len(text) > 16:
        raise AuthError(f"{H_TIME} must be milliseconds since the epoch", code="bad_time")
    return int(text)
