"""The REST gateway over raw HTTP: signing, every error branch, receipts, blocks, proofs.

Requests are signed here with :func:`meridian.gateway.auth.sign_request` (or crafted
with :func:`compute_request_digest` when a test needs a bad one), and proposals are
built with :class:`ProposalBuilder` or :class:`Proposal` directly, never through the
SDK's transport. Every refused write checks that the ledger did not move.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from fastapi.routing import APIRoute

from meridian.client import Identity
from meridian.client.core import ProposalBuilder
from meridian.codec import b64
from meridian.crypto.certs import CertificateAuthority, Role, load_cert_der, load_signer
from meridian.gateway.app import create_app
from meridian.gateway.auth import (
    H_CERT,
    H_NONCE,
    H_SIG,
    H_TIME,
    compute_request_digest,
    sign_request,
)
from meridian.ledger.merkle import verify_inclusion
from meridian.types import BlockHeader, Proposal, SignedProposal, Transaction, compute_tx_hash

from .conftest import RunningNetwork

APP = "demo"
CONTRACT = "asset-transfer"
TX_PATH = f"/v1/apps/{APP}/transactions"
EVAL_PATH = f"/v1/apps/{APP}/evaluate"
MiB = 2**20

# Every route of the gateway (method, path template), as docs/gateway-api.md lists them.
ROUTES = {
    ("GET", "/v1/health"),
    ("GET", "/v1/status"),
    ("GET", "/v1/apps"),
    ("POST", "/v1/apps/{app_name}/transactions"),
    ("POST", "/v1/apps/{app_name}/transactions/batch"),
    ("POST", "/v1/apps/{app_name}/evaluate"),
    ("GET", "/v1/apps/{app_name}/transactions/{tx_id}"),
    ("GET", "/v1/apps/{app_name}/transactions/{tx_id}/proof"),
    ("GET", "/v1/apps/{app_name}/blocks/{number}"),
    ("GET", "/v1/apps/{app_name}/contracts"),
    ("GET", "/v1/apps/{app_name}/events"),
    ("POST", "/v1/packages"),
    ("GET", "/v1/packages"),
    ("POST", "/v1/orgs/{org}/crl"),
    ("GET", "/v1/network"),
    ("GET", "/v1/plans"),
    ("GET", "/v1/audit"),
    ("POST", "/v1/developers"),
    ("POST", "/v1/apps/{app_name}/users"),
    ("POST", "/v1/apps/{app_name}/users/{user}/transactions"),
    ("POST", "/v1/apps/{app_name}/users/{user}/revoke"),
    ("GET", "/v1/apps/{app_name}/usage"),
    ("GET", "/v1/apps/{app_name}/invoice"),
    ("POST", "/v1/apps/{app_name}/webhooks"),
    ("GET", "/v1/apps/{app_name}/webhooks"),
    ("DELETE", "/v1/apps/{app_name}/webhooks/{webhook_id}"),
    ("GET", "/v1/apps/{app_name}/webhooks/deliveries"),
    ("POST", "/v1/apps/{app_name}/webhooks/deliveries/{delivery_id}/redeliver"),
}
UNAUTHENTICATED = {"/v1/health", "/v1/developers"}  # sign-up has no identity yet
PATH_PARAMS = {
    "app_name": APP,
    "tx_id": "0" * 64,
    "number": "latest",
    "org": "org1",
    "user": "alice",
    "webhook_id": "wh_0",
    "delivery_id": "d_0",
}


# ------------------------------------------------------------------------------ helpers


def now_ms() -> int:
    return int(time.time() * 1000)


def new_asset() -> str:
    return f"gw-{uuid.uuid4().hex[:12]}"


def craft_headers(
    identity: Identity,
    network: str,
    method: str,
    path: str,
    body: bytes = b"",
    query: str = "",
    *,
    time_ms: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Request headers signed over exactly the given fields (which may be wrong on purpose)."""
    time_ms = now_ms() if time_ms is None else time_ms
    nonce = secrets.token_hex(16) if nonce is None else nonce
    digest = compute_request_digest(network, method, path, query, time_ms, nonce, body)
    return {
        H_CERT: b64(identity.cert_der),
        H_TIME: str(time_ms),
        H_NONCE: nonce,
        H_SIG: b64(identity.signer.sign(bytes(digest))),
    }


def sign_proposal(identity: Identity, proposal: Proposal) -> SignedProposal:
    return SignedProposal(proposal, identity.signer.sign(bytes(proposal.signing_digest())))


@dataclass
class Client:
    """Raw signed HTTP to one node as one identity."""

    http: httpx.Client
    network: str
    identity: Identity

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if headers is None:
            headers = sign_request(
                self.identity.signer,
                self.identity.cert_der,
                self.network,
                method,
                path,
                query,
                body,
            )
        url = f"{path}?{query}" if query else path
        return self.http.request(method, url, content=body, headers=headers)

    def get(self, path: str, query: str = "") -> httpx.Response:
        return self.send("GET", path, query=query)

    def post(self, path: str, payload: Any) -> httpx.Response:
        return self.send("POST", path, orjson.dumps(payload))

    def propose(self, function: str, *args: Any, contract: str = CONTRACT) -> SignedProposal:
        return ProposalBuilder(self.identity, self.network).build(APP, contract, function, args)

    def submit(
        self, proposal: SignedProposal | dict[str, Any], *, wait: bool = True
    ) -> httpx.Response:
        data = proposal.to_dict() if isinstance(proposal, SignedProposal) else proposal
        return self.post(TX_PATH, {"proposal": data, "wait": wait})

    def evaluate(self, function: str, *args: Any) -> httpx.Response:
        return self.post(EVAL_PATH, {"proposal": self.propose(function, *args).to_dict()})

    def read_asset(self, asset: str) -> Any:
        return ok(self.evaluate("read", asset))["response"]

    def height(self) -> int:
        return ok(self.get("/v1/status"))["apps"][APP]["height"]

    def block(self, number: int | str) -> dict[str, Any]:
        return ok(self.get(f"/v1/apps/{APP}/blocks/{number}"))


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


@contextmanager
def ledger_unchanged(client: Client, *assets: str) -> Iterator[None]:
    """Block height unchanged (and ``assets`` still absent) after the ``with`` body."""
    before = client.height()
    yield
    assert client.http.get("/v1/health").status_code == 200
    assert client.height() == before, "a refused request reached the ledger"
    for asset in assets:
        assert client.read_asset(asset) is None, f"{asset} was written by a refused request"


def committed_receipt(client: Client, tx_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        receipt = ok(client.get(f"{TX_PATH}/{tx_id}"))["receipt"]
        if receipt["status"] == "committed":
            return receipt
        assert time.monotonic() < deadline, f"{tx_id} still {receipt['status']}"
        time.sleep(0.05)


def count_in_ledger(client: Client, tx_id: str) -> int:
    height = client.height()
    return sum(
        1
        for n in range(height)
        for tx in client.block(n)["block"]["transactions"]
        if Transaction.from_dict(tx).tx_id == tx_id
    )


# ------------------------------------------------------------------------------ fixtures


@dataclass
class Identities:
    user1: Identity
    org2_user: Identity
    org1_admin: Identity
    expired: Identity
    not_yet_valid: Identity
    foreign_same_name: Identity  # "org1" from a CA that is not the network's
    foreign_org: Identity  # an org that is not in the network
    org_ca: Identity  # the org's CA certificate and key, which are no identity


def _issue(ca: CertificateAuthority, name: str, **kw: Any) -> Identity:
    issued = ca.issue(name, Role.CLIENT, **kw)
    assert issued.key_pem is not None
    return Identity(load_cert_der(issued.cert_pem), load_signer(issued.key_pem))


@pytest.fixture(scope="module")
def ids(network: RunningNetwork) -> Identities:
    layout = network.layout
    ca_dir = layout.ca_dir("org1")
    ca = CertificateAuthority.load(
        (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    )
    now = datetime.now(UTC)
    return Identities(
        user1=Identity.from_dir(layout.user_dir("org1", "user1")),
        org2_user=Identity.from_dir(layout.user_dir("org2", "user1")),
        org1_admin=Identity.from_dir(layout.user_dir("org1", "admin")),
        expired=_issue(ca, "expired", days=1, not_before=now - timedelta(days=3)),
        not_yet_valid=_issue(ca, "early", days=30, not_before=now + timedelta(days=2)),
        foreign_same_name=_issue(CertificateAuthority.create("org1"), "intruder"),
        foreign_org=_issue(CertificateAuthority.create("org9"), "intruder"),
        org_ca=Identity(load_cert_der(ca.cert_pem), load_signer(ca.key_pem)),
    )


@pytest.fixture(scope="module")
def http(network: RunningNetwork) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=network.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(http: httpx.Client, network: RunningNetwork, ids: Identities) -> Client:
    return Client(http, network.config.network, ids.user1)


def as_identity(client: Client, identity: Identity) -> Client:
    return replace(client, identity=identity)


# -------------------------------------------------------------------- authentication


def test_health_needs_no_signature(http: httpx.Client, network: RunningNetwork) -> None:
    body = ok(http.get("/v1/health"))
    assert body == {"ok": True, "node": "node1", "network": network.config.network}


def registered_routes() -> set[tuple[str, str]]:
    """(method, path) of every /v1 route the gateway app registers, documented or not."""
    stub = SimpleNamespace(config=SimpleNamespace(network="meridian"), membership=None)
    app = create_app(stub, manage_node=False)  # type: ignore[arg-type]
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/v1")
        for method in route.methods
    }


def test_openapi_lists_every_route(http: httpx.Client) -> None:
    spec = ok(http.get("/openapi.json"))
    listed = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if path.startswith("/v1")
    }
    assert listed == registered_routes() == ROUTES


def test_invalid_unsigned_requests_are_refused_on_every_route(client: Client) -> None:
    spec = ok(client.http.get("/openapi.json"))
    with ledger_unchanged(client):
        wrong = []
        for path, ops in spec["paths"].items():
            for method in ops:
                if path in UNAUTHENTICATED or not path.startswith("/v1"):
                    continue
                body = b"{}" if method == "post" else b""
                r = client.http.request(method.upper(), path.format(**PATH_PARAMS), content=body)
                code = r.json().get("error", {}).get("code") if r.content else None
                if (r.status_code, code) != (401, "missing_signature"):
                    wrong.append((method, path, r.status_code, code))
        assert wrong == []


@pytest.mark.parametrize("dropped", [H_CERT, H_TIME, H_NONCE, H_SIG])
def test_invalid_partly_signed_request_is_refused(client: Client, dropped: str) -> None:
    headers = craft_headers(client.identity, client.network, "GET", "/v1/status")
    del headers[dropped]
    with ledger_unchanged(client):
        assert_error(client.send("GET", "/v1/status", headers=headers), 401, "missing_signature")


def _submit_body(client: Client, asset: str) -> bytes:
    return orjson.dumps({"proposal": client.propose("create", asset, "mallory", 1).to_dict()})


def _headers(
    client: Client, sent: bytes, identity: Identity | None = None, **signed: Any
) -> dict[str, str]:
    """Headers for POST TX_PATH with body ``sent``, signed over ``signed`` where given."""
    fields = {
        "network": client.network,
        "method": "POST",
        "path": TX_PATH,
        "body": sent,
        "query": "",
    } | signed
    return craft_headers(
        identity or client.identity,
        fields["network"],
        fields["method"],
        fields["path"],
        fields["body"],
        fields["query"],
        time_ms=fields.get("time_ms"),
        nonce=fields.get("nonce"),
    )


SKEW_MS = 6 * 60 * 1000  # beyond the ±5 minutes the node accepts
HeaderMaker = Callable[[Client, Identities, bytes], dict[str, str]]

# Each case sends POST TX_PATH with a valid body but headers that must not authenticate it.
BAD_AUTH: dict[str, tuple[HeaderMaker, int, str]] = {
    "body changed": (lambda c, i, b: _headers(c, b, body=b + b" "), 401, "bad_signature"),
    "other path": (
        lambda c, i, b: _headers(c, b, path=f"/v1/apps/{APP}/evaluate"),
        401,
        "bad_signature",
    ),
    "query added": (lambda c, i, b: _headers(c, b, query="wait=false"), 401, "bad_signature"),
    "other method": (lambda c, i, b: _headers(c, b, method="PUT"), 401, "bad_signature"),
    "other network": (lambda c, i, b: _headers(c, b, network="othernet"), 401, "bad_signature"),
    "key of another identity": (
        lambda c, i, b: _headers(c, b, i.org2_user) | {H_CERT: b64(c.identity.cert_der)},
        401,
        "bad_signature",
    ),
    "random signature": (
        lambda c, i, b: _headers(c, b) | {H_SIG: b64(secrets.token_bytes(64))},
        401,
        "bad_signature",
    ),
    "nonce swapped": (
        lambda c, i, b: _headers(c, b) | {H_NONCE: secrets.token_hex(16)},
        401,
        "bad_signature",
    ),
    "time shifted": (
        lambda c, i, b: _headers(c, b, time_ms=now_ms()) | {H_TIME: str(now_ms() + 1000)},
        401,
        "bad_signature",
    ),
    "stale time": (
        lambda c, i, b: _headers(c, b, time_ms=now_ms() - SKEW_MS),
        401,
        "stale_request",
    ),
    "future time": (
        lambda c, i, b: _headers(c, b, time_ms=now_ms() + SKEW_MS),
        401,
        "stale_request",
    ),
    "time not a number": (lambda c, i, b: _headers(c, b) | {H_TIME: "yesterday"}, 401, "bad_time"),
    "short nonce": (lambda c, i, b: _headers(c, b, nonce="ab" * 8), 401, "bad_nonce"),
    "uppercase nonce": (lambda c, i, b: _headers(c, b, nonce="AB" * 16), 401, "bad_nonce"),
    "cert not base64": (lambda c, i, b: _headers(c, b) | {H_CERT: "not base64!"}, 400, "malformed"),
    "cert not a certificate": (
        lambda c, i, b: _headers(c, b) | {H_CERT: b64(b"x" * 300)},
        401,
        "certificate_invalid",
    ),
}


@pytest.mark.parametrize("case", list(BAD_AUTH))
def test_invalid_request_authentication_is_refused(
    client: Client, ids: Identities, case: str
) -> None:
    make, status, code = BAD_AUTH[case]
    asset = new_asset()
    body = _submit_body(client, asset)
    with ledger_unchanged(client, asset):
        assert_error(
            client.send("POST", TX_PATH, body, headers=make(client, ids, body)), status, code
        )


def test_invalid_replayed_request_is_refused(client: Client) -> None:
    asset = new_asset()
    body = _submit_body(client, asset)
    headers = sign_request(
        client.identity.signer, client.identity.cert_der, client.network, "POST", TX_PATH, "", body
    )
    first = ok(client.send("POST", TX_PATH, body, headers=headers))["receipt"]
    assert first["status"] == "committed" and first["valid"] is True
    with ledger_unchanged(client):
        assert_error(client.send("POST", TX_PATH, body, headers=headers), 401, "replayed_request")
        status_headers = craft_headers(client.identity, client.network, "GET", "/v1/status")
        ok(client.send("GET", "/v1/status", headers=status_headers))
        assert_error(
            client.send("GET", "/v1/status", headers=status_headers), 401, "replayed_request"
        )
    assert count_in_ledger(client, first["tx_id"]) == 1
    assert client.read_asset(asset)["owner"] == "mallory"


# Certificates the network must not trust, used both to sign requests and proposals.
BAD_IDENTITIES = {
    "expired": ("expired", "certificate_expired"),
    "not yet valid": ("not_yet_valid", "certificate_expired"),
    "foreign CA, member org name": ("foreign_same_name", "certificate_invalid"),
    "org not in the network": ("foreign_org", "unknown_org"),
    "the org's CA certificate": ("org_ca", "certificate_invalid"),
}


@pytest.mark.parametrize("case", list(BAD_IDENTITIES))
def test_invalid_certificate_cannot_sign_requests(
    client: Client, ids: Identities, case: str
) -> None:
    attr, code = BAD_IDENTITIES[case]
    stranger = as_identity(client, getattr(ids, attr))
    asset = new_asset()
    with ledger_unchanged(client, asset):
        assert_error(stranger.get("/v1/status"), 401, code)
        assert_error(stranger.submit(stranger.propose("create", asset, "x", 1)), 401, code)


@pytest.mark.parametrize("case", list(BAD_IDENTITIES))
def test_invalid_certificate_cannot_create_proposals(
    client: Client, ids: Identities, case: str
) -> None:
    """A member relays a proposal whose creator the network does not trust."""
    attr, code = BAD_IDENTITIES[case]
    stranger = as_identity(client, getattr(ids, attr))
    asset = new_asset()
    with ledger_unchanged(client, asset):
        assert_error(client.submit(stranger.propose("create", asset, "x", 1)), 401, code)


# ---------------------------------------------------------------------- request bodies


BAD_BODIES: dict[str, tuple[bytes, int, str]] = {
    "not JSON": (b'{"proposal": ', 400, "malformed"),
    "not an object": (b"[1, 2, 3]", 400, "malformed"),
    "no proposal": (b'{"wait": true}', 400, "malformed"),
    "proposal not an object": (b'{"proposal": "create a1"}', 400, "malformed"),
    "wait not a bool": (b'{"proposal": {}, "wait": "yes"}', 400, "malformed"),
    "float in the body": (b'{"proposal": {}, "timeout_ms": 1.5}', 400, "float_not_allowed"),
    "nested too deep": (b'{"proposal": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "too_deep"),
    "over 16 MiB": (b'{"pad": "' + b"x" * (16 * MiB) + b'"}', 400, "too_large"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_invalid_request_body_is_refused(client: Client, case: str) -> None:
    body, status, code = BAD_BODIES[case]
    with ledger_unchanged(client):
        assert_error(client.send("POST", TX_PATH, body), status, code)


def test_invalid_timeout_in_body_is_refused(client: Client) -> None:
    asset = new_asset()
    proposal = client.propose("create", asset, "x", 1).to_dict()
    with ledger_unchanged(client, asset):
        for timeout_ms in (0, -1, 10**9):
            r = client.post(TX_PATH, {"proposal": proposal, "timeout_ms": timeout_ms})
            assert_error(r, 400, "malformed")


# ---------------------------------------------------------------------------- proposals


@dataclass
class ProposalCase:
    make: Callable[[Client, Identities, str], Any]  # (client, identities, asset) -> JSON
    status: int
    code: str


def _raw(client: Client, asset: str, **changes: Any) -> Proposal:
    """A create proposal of ``asset`` by the client, with fields replaced (unsigned)."""
    return replace(client.propose("create", asset, "x", 1).proposal, **changes)


def _signed(client: Client, asset: str, **changes: Any) -> dict[str, Any]:
    return sign_proposal(client.identity, _raw(client, asset, **changes)).to_dict()


def _tampered_signature(client: Client, asset: str) -> dict[str, Any]:
    signed = client.propose("create", asset, "x", 1)
    sig = bytearray(signed.signature)
    sig[0] ^= 1
    return replace(signed, signature=bytes(sig)).to_dict()


def _tampered_args(client: Client, asset: str) -> dict[str, Any]:
    signed = client.propose("create", asset, "x", 1)
    return replace(signed, proposal=replace(signed.proposal, args=(asset, "x", 2))).to_dict()


def _signed_by_other(client: Client, other: Identity, asset: str) -> dict[str, Any]:
    """The client's certificate as creator, but another member's key signed it."""
    proposal = _raw(client, asset)
    return SignedProposal(proposal, sign_proposal(other, proposal).signature).to_dict()


def _short_nonce(client: Client, asset: str) -> dict[str, Any]:
    signed = _signed(client, asset)
    return {**signed, "proposal": {**signed["proposal"], "nonce": "00ff"}}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


PROPOSALS: dict[str, ProposalCase] = {
    "float argument": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, "x", 1.5)), 400, "float_not_allowed"
    ),
    "65 arguments": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, *range(64))), 400, "too_large"
    ),
    "arguments over 64 KiB": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, "x" * (64 * 1024), 1)), 400, "too_large"
    ),
    "arguments nested too deep": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, "x", nested(40))), 400, "too_deep"
    ),
    "unknown contract": ProposalCase(
        lambda c, i, a: _signed(c, a, contract="no-such-contract"), 404, "unknown_contract"
    ),
    "unknown system contract": ProposalCase(
        lambda c, i, a: _signed(c, a, contract="_nothing"), 404, "unknown_contract"
    ),
    "unknown function": ProposalCase(
        lambda c, i, a: _signed(c, a, function="steal"), 404, "unknown_function"
    ),
    "wrong argument type": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, "x", "ten")), 400, "bad_argument"
    ),
    "bool for int": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, "x", True)), 400, "bad_argument"
    ),
    "too few arguments": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, "x")), 400, "bad_argument"
    ),
    "too many arguments": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, "x", 1, 2)), 400, "bad_argument"
    ),
    "query submitted": ProposalCase(
        lambda c, i, a: _signed(c, a, function="read", args=(a,)), 400, "not_a_transaction"
    ),
    "contract rejects": ProposalCase(
        lambda c, i, a: _signed(c, a, args=(a, "x", -5)), 422, "contract_rejected"
    ),
    "signature bit flipped": ProposalCase(
        lambda c, i, a: _tampered_signature(c, a), 401, "bad_signature"
    ),
    "arguments changed after signing": ProposalCase(
        lambda c, i, a: _tampered_args(c, a), 401, "bad_signature"
    ),
    "signed by another member": ProposalCase(
        lambda c, i, a: _signed_by_other(c, i.org2_user, a), 401, "bad_signature"
    ),
    "empty signature": ProposalCase(
        lambda c, i, a: {**_signed(c, a), "signature": ""}, 400, "malformed"
    ),
    "short nonce": ProposalCase(lambda c, i, a: _short_nonce(c, a), 400, "malformed"),
    "wrong network": ProposalCase(
        lambda c, i, a: _signed(c, a, network="othernet"), 403, "wrong_network"
    ),
    "another app": ProposalCase(lambda c, i, a: _signed(c, a, app="other"), 403, "wrong_app"),
    "stale timestamp": ProposalCase(
        lambda c, i, a: _signed(c, a, timestamp_ms=now_ms() - 11 * 60_000), 401, "stale_proposal"
    ),
    "creator not a certificate": ProposalCase(
        lambda c, i, a: _signed(c, a, creator=b"\x30\x03\x02\x01\x01"), 401, "certificate_invalid"
    ),
}


@pytest.mark.parametrize("case", list(PROPOSALS))
def test_invalid_proposal_is_refused(client: Client, ids: Identities, case: str) -> None:
    spec = PROPOSALS[case]
    asset = new_asset()
    proposal = spec.make(client, ids, asset)
    with ledger_unchanged(client, asset):
        assert_error(client.submit(proposal), spec.status, spec.code)
        if spec.code != "not_a_transaction":  # a query may be evaluated, just not submitted
            assert_error(client.post(EVAL_PATH, {"proposal": proposal}), spec.status, spec.code)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/apps/nosuch/blocks/latest",
        "/v1/apps/nosuch/contracts",
        f"/v1/apps/nosuch/transactions/{'0' * 64}",
        f"/v1/apps/nosuch/transactions/{'0' * 64}/proof",
        "/v1/apps/nosuch/events",
    ],
)
def test_invalid_unknown_app_read(client: Client, path: str) -> None:
    assert_error(client.get(path), 404, "unknown_app")


def test_invalid_unknown_app_submit(client: Client) -> None:
    asset = new_asset()
    proposal = _signed(client, asset, app="nosuch")
    with ledger_unchanged(client, asset):
        for path in ("/v1/apps/nosuch/transactions", "/v1/apps/nosuch/evaluate"):
            assert_error(client.post(path, {"proposal": proposal}), 404, "unknown_app")


def test_invalid_unknown_app_batch(client: Client) -> None:
    asset = new_asset()
    proposal = _signed(client, asset, app="nosuch")
    with ledger_unchanged(client, asset):
        r = client.post("/v1/apps/nosuch/transactions/batch", {"proposals": [proposal]})
        assert_error(r, 404, "unknown_app")


# ------------------------------------------------------------------- receipts and replay


def test_replayed_proposal_is_committed_once(client: Client) -> None:
    asset = new_asset()
    signed = client.propose("create", asset, "alice", 7)
    receipt = ok(client.submit(signed))["receipt"]
    assert receipt["tx_id"] == signed.proposal.tx_id
    assert (receipt["status"], receipt["code"], receipt["valid"]) == ("committed", "VALID", True)
    with ledger_unchanged(client):
        for wait in (True, False):
            error = assert_error(client.submit(signed, wait=wait), 409, "duplicate_tx")
            assert error["details"]["tx_id"] == signed.proposal.tx_id
        item = ok(client.post(f"{TX_PATH}/batch", {"proposals": [signed.to_dict()]}))
        assert item["results"][0]["ok"] is False
        assert item["results"][0]["error"]["code"] == "duplicate_tx"
    assert count_in_ledger(client, signed.proposal.tx_id) == 1


def test_replayed_proposal_while_pending_is_committed_once(client: Client) -> None:
    signed = client.propose("create", new_asset(), "alice", 7)
    assert ok(client.submit(signed, wait=False), 202)["receipt"]["status"] == "pending"
    assert_error(client.submit(signed, wait=False), 409, "duplicate_tx")
    assert committed_receipt(client, signed.proposal.tx_id)["valid"] is True
    assert count_in_ledger(client, signed.proposal.tx_id) == 1


def test_submit_without_waiting_commits_later(client: Client) -> None:
    asset = new_asset()
    signed = client.propose("create", asset, "bob", 3)
    before = client.height()
    pending = ok(client.submit(signed, wait=False), 202)["receipt"]
    assert pending["tx_id"] == signed.proposal.tx_id
    assert pending["status"] == "pending"
    assert pending["response"]["owner"] == "bob"  # the endorsed response, before the commit
    receipt = committed_receipt(client, signed.proposal.tx_id)
    assert receipt["code"] == "VALID" and receipt["block"] >= before
    assert receipt["response"] == pending["response"]
    assert receipt["events"] == [
        {"contract": CONTRACT, "name": "created", "payload": {"id": asset, "owner": "bob"}}
    ]
    assert client.read_asset(asset)["owner"] == "bob"


def test_evaluate_never_reaches_the_ledger(client: Client) -> None:
    asset = new_asset()
    with ledger_unchanged(client, asset):
        response = ok(client.evaluate("create", asset, "ivan", 4))["response"]
        assert response["id"] == asset and response["owner"] == "ivan"


def test_invalid_unknown_transaction(client: Client) -> None:
    tx_id = "ab" * 32
    assert_error(client.get(f"{TX_PATH}/{tx_id}"), 404, "tx_not_found")
    assert_error(client.get(f"{TX_PATH}/{tx_id}/proof"), 404, "tx_not_found")


# ---------------------------------------------------------------------- blocks, proofs


def test_blocks_form_a_hash_chain(client: Client) -> None:
    ok(client.submit(client.propose("create", new_asset(), "carol", 1)))
    latest = client.block("latest")
    height = client.height()
    assert latest["block"]["header"]["number"] == height - 1
    previous = "00" * 32
    for n in range(height):
        got = client.block(n)
        header = BlockHeader.from_dict(got["block"]["header"])
        assert header.number == n
        assert got["hash"] == header.hash.hex()
        assert header.previous_hash.hex() == previous
        assert len(got["codes"]) == header.tx_count == len(got["block"]["transactions"])
        previous = got["hash"]
    assert latest["hash"] == previous


@pytest.mark.parametrize("number", ["-1", "abc", "1" * 19, "1e3"])
def test_invalid_block_number(client: Client, number: str) -> None:
    assert_error(client.get(f"/v1/apps/{APP}/blocks/{number}"), 400, "malformed")


def test_invalid_block_beyond_the_tip(client: Client) -> None:
    assert_error(client.get(f"/v1/apps/{APP}/blocks/{client.height()}"), 404, "block_not_found")


def test_transaction_proofs_verify_against_the_header(client: Client) -> None:
    proposals = [client.propose("create", new_asset(), "dave", n) for n in range(5)]
    results = ok(client.post(f"{TX_PATH}/batch", {"proposals": [p.to_dict() for p in proposals]}))[
        "results"
    ]
    assert [r["ok"] for r in results] == [True] * 5
    blocks = {r["receipt"]["block"] for r in results}
    assert len(blocks) == 1, "one batch is accepted in one write and ordered together"
    for signed in proposals:
        got = ok(client.get(f"{TX_PATH}/{signed.proposal.tx_id}/proof"))
        header = BlockHeader.from_dict(got["header"])
        block = client.block(header.number)
        assert got["block_hash"] == header.hash.hex() == block["hash"]
        assert header.tx_count >= 5
        tx = Transaction.from_dict(block["block"]["transactions"][got["index"]])
        assert tx.tx_id == signed.proposal.tx_id and got["code"] == "VALID"
        leaf = bytes.fromhex(got["leaf"])
        assert leaf == compute_tx_hash(tx)
        proof = [bytes.fromhex(h) for h in got["proof"]]
        assert verify_inclusion(leaf, got["index"], header.tx_count, proof, header.data_hash)
        forged = compute_tx_hash(replace(tx, endorsements=()))
        assert not verify_inclusion(forged, got["index"], header.tx_count, proof, header.data_hash)


# -------------------------------------------------------------------------------- batch


def test_batch_reports_each_item_and_commits_the_good_ones(client: Client, ids: Identities) -> None:
    good, also_good, contested = new_asset(), new_asset(), new_asset()
    first = client.propose("create", good, "erin", 1)
    bad_sig = _tampered_signature(client, new_asset())
    items: list[Any] = [
        first.to_dict(),
        client.propose("steal", good).to_dict(),
        bad_sig,
        "not a proposal",
        client.propose("create", also_good, "erin", 2).to_dict(),
        first.to_dict(),
        client.propose("create", contested, "frank", 1).to_dict(),
        client.propose("create", contested, "grace", 1).to_dict(),
        client.propose("create", new_asset(), "erin", -1).to_dict(),
        _signed(client, new_asset(), args=("x", "y", "z")),
    ]
    before = client.height()
    results = ok(client.post(f"{TX_PATH}/batch", {"proposals": items}))["results"]
    codes = [r["receipt"]["code"] if r["ok"] else r["error"]["code"] for r in results]
    assert codes == [
        "VALID",
        "unknown_function",
        "bad_signature",
        "malformed",
        "VALID",
        "duplicate_tx",
        "VALID",
        "mvcc_read_conflict",
        "contract_rejected",
        "bad_argument",
    ]
    assert [r["ok"] for r in results] == [c == "VALID" for c in codes]
    assert client.height() > before
    assert client.read_asset(good)["value"] == 1
    assert client.read_asset(also_good)["value"] == 2
    assert client.read_asset(contested)["owner"] == "frank"
    assert count_in_ledger(client, first.proposal.tx_id) == 1


def test_batch_signed_proposals_commit_with_batch_signed_endorsements(client: Client) -> None:
    """The SDK signs a batch's proposals with one signature per 16 and the node endorses
    them the same way; a proposal whose proof was tampered with is refused alone."""
    assets = [new_asset() for _ in range(20)]
    builder = ProposalBuilder(client.identity, client.network)
    signed = builder.build_many(APP, CONTRACT, [("create", (a, "ida", 1)) for a in assets])
    assert len({s.signature for s in signed}) == 2  # 16 + 4
    items = [s.to_dict() for s in signed]
    items[3]["batch"]["index"] = 4  # a valid signature, at another position: no longer
    before = client.height()
    results = ok(client.post(f"{TX_PATH}/batch", {"proposals": items}))["results"]
    codes = [r["receipt"]["code"] if r["ok"] else r["error"]["code"] for r in results]
    assert codes == ["VALID"] * 3 + ["bad_signature"] + ["VALID"] * 16
    assert client.read_asset(assets[3]) is None
    assert client.read_asset(assets[19])["owner"] == "ida"
    committed = [
        Transaction.from_dict(tx)
        for n in range(before, client.height())
        for tx in client.block(n)["block"]["transactions"]
    ]
    mine = [tx for tx in committed if tx.tx_id in {s.proposal.tx_id for s in signed}]
    assert len(mine) == 19
    assert all(tx.signed_proposal.batch is not None for tx in mine)
    assert {len(tx.endorsements) for tx in mine} == {1}
    assert any(tx.endorsements[0].batch is not None for tx in mine)


def test_batch_values_are_checked_per_proposal_and_in_the_rest_of_the_body(
    client: Client,
) -> None:
    good, floating = new_asset(), new_asset()
    items = [
        client.propose("create", good, "ida", 1).to_dict(),
        _signed(client, floating, args=(floating, "x", 1.5)),
    ]
    results = ok(client.post(f"{TX_PATH}/batch", {"proposals": items}))["results"]
    assert [r["ok"] for r in results] == [True, False]
    assert results[1]["error"]["code"] == "float_not_allowed"
    assert client.read_asset(floating) is None
    with ledger_unchanged(client):
        body = {"proposals": [client.propose("create", new_asset(), "x", 1).to_dict()]}
        assert_error(
            client.post(f"{TX_PATH}/batch", {**body, "x": [1.5]}), 400, "float_not_allowed"
        )


@pytest.mark.parametrize("payload", [{"proposals": []}, {"proposals": "x"}, {}])
def test_invalid_batch_shape(client: Client, payload: dict[str, Any]) -> None:
    with ledger_unchanged(client):
        assert_error(client.post(f"{TX_PATH}/batch", payload), 400, "malformed")


# ------------------------------------------------------------------- admin-only routes


def load_ca(net: RunningNetwork, org: str) -> CertificateAuthority:
    ca_dir = net.layout.ca_dir(org)
    return CertificateAuthority.load(
        (ca_dir / "ca.pem").read_bytes(), (ca_dir / "ca.key").read_bytes()
    )


def test_invalid_admin_routes_refuse_others(
    client: Client, network: RunningNetwork, ids: Identities
) -> None:
    crl = load_ca(network, "org1").revoke([]).decode()
    org2_admin = Identity.from_dir(network.layout.user_dir("org2", "admin"))
    with ledger_unchanged(client):
        for who in (ids.user1, org2_admin):
            r = as_identity(client, who).post("/v1/orgs/org1/crl", {"crl": crl})
            assert_error(r, 403, "not_admin")
        assert_error(client.post("/v1/packages", {"archive": ""}), 403, "not_admin")
        r = as_identity(client, ids.org1_admin).post("/v1/packages", {"archive": "!"})
        assert_error(r, 400, "malformed")


def test_invalid_crl_body_is_invalid_input(client: Client, ids: Identities) -> None:
    admin = as_identity(client, ids.org1_admin)
    with ledger_unchanged(client):
        error = admin.post("/v1/orgs/org1/crl", {"crl": "not a CRL"})
        assert_error(error, 400, "crl_invalid")


# ------------------------------------------------------- revocation (own network)


def test_revoked_certificate_is_refused(fresh_network: RunningNetwork) -> None:
    net = fresh_network
    net.start()
    layout = net.layout
    with httpx.Client(base_url=net.url, timeout=30) as http:
        user = Client(http, net.config.network, Identity.from_dir(layout.user_dir("org1", "user1")))
        admin = as_identity(user, Identity.from_dir(layout.user_dir("org1", "admin")))
        org2 = as_identity(user, Identity.from_dir(layout.user_dir("org2", "user1")))
        ok(user.get("/v1/status"))
        proposal = user.propose("create", new_asset(), "x", 1)
        cert = x509.load_pem_x509_certificate(
            (layout.user_dir("org1", "user1") / "cert.pem").read_bytes()
        )
        crl = load_ca(net, "org1").revoke([cert.serial_number]).decode()
        assert ok(admin.post("/v1/orgs/org1/crl", {"crl": crl})) == {"ok": True}

        before = admin.height()
        assert_error(user.get("/v1/status"), 401, "certificate_revoked")
        assert_error(user.submit(proposal), 401, "certificate_revoked")
        assert_error(org2.submit(proposal), 401, "certificate_revoked")  # relayed by a member
        assert admin.height() == before
        ok(org2.get("/v1/status"))
        ok(admin.get("/v1/status"))

        net.stop()
        net.start()  # the revocation list survives a restart
        assert_error(user.get("/v1/status"), 401, "certificate_revoked")
        assert admin.height() == before


def test_invalid_replayed_request_after_restart(fresh_network: RunningNetwork) -> None:
    net = fresh_network
    net.start()
    identity = Identity.from_dir(net.layout.user_dir("org1", "user1"))
    headers = craft_headers(identity, net.config.network, "GET", "/v1/status")
    with httpx.Client(base_url=net.url, timeout=30) as http:
        assert http.get("/v1/status", headers=headers).status_code == 200
        net.stop()
        net.start()
        assert_error(
            http.get("/v1/status", headers=headers), 401, "stale_request"
        )  # signed before the restart
