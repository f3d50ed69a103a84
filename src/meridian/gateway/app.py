"""The REST gateway of a node (FastAPI). OpenAPI at ``/openapi.json``, docs at ``/docs``.

Every endpoint but ``/v1/health`` and ``/metrics`` (Prometheus counters, no ledger
data) is authenticated by a request signature
(:mod:`meridian.gateway.auth`). Errors are ``{"error": {"code", "message", "hint"}}``
with a status per error branch (:mod:`meridian.errors`); ``429`` carries
``Retry-After``. Request bodies are parsed with the canonical codec (strict: no
floats, bounded sizes) rather than coerced.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST as METRICS_CONTENT_TYPE

from .. import __version__, codec
from ..contracts.lifecycle import LIFECYCLE
from ..crypto.certs import Identity
from ..errors import (
    Busy,
    CertificateError,
    Conflict,
    Forbidden,
    InvalidInput,
    MeridianError,
    NotFound,
)
from ..ledger.merkle import compute_inclusion_proof
from ..node.channel import Receipt
from ..node.node import Node, is_admin_of
from ..types import SignedProposal, TxCode, compute_tx_hash
from . import schemas
from .auth import RequestAuthenticator
from .service import Services, register_routes

log = logging.getLogger("meridian.gateway")

MAX_REQUEST_BYTES = 16 * 2**20
MAX_BATCH_PROPOSALS = 2000
MAX_WAIT_MS = 120_000
SSE_HEARTBEAT_S = 15.0

_TX_CODE_ERRORS = {
    TxCode.MVCC_READ_CONFLICT: "mvcc_read_conflict",
    TxCode.PHANTOM_READ_CONFLICT: "phantom_read_conflict",
    TxCode.DUPLICATE_TXID: "duplicate_tx",
    TxCode.STORAGE_QUOTA_EXCEEDED: "storage_quota_exceeded",
}
_TX_CODE_HINTS = {
    TxCode.STORAGE_QUOTA_EXCEEDED: (
        "the app has used its plan's storage; its owner moves it to a larger plan "
        '(governance change {"kind": "set_app_plan", ...}: `meridian gov propose --file`)'
    ),
}


class ORJSON(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: MeridianError) -> ORJSON:
    headers = {}
    if isinstance(exc, Busy):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return ORJSON({"error": exc.to_dict()}, status_code=exc.http_status, headers=headers)


def invalid_tx_error(receipt: Receipt) -> Conflict:
    """The error a client gets for a transaction that was ordered but is invalid."""
    code = receipt.code or TxCode.BAD_PROPOSAL
    return Conflict(
        f"transaction {receipt.tx_id} was ordered in block {receipt.block} but is "
        f"invalid: {code.name}",
        code=_TX_CODE_ERRORS.get(code, "tx_invalid"),
        hint=_TX_CODE_HINTS.get(code, "re-read the current state and submit a new proposal"),
        details={"receipt": receipt.to_dict()},
    )


def receipt_response(receipt: Receipt) -> ORJSON:
    if receipt.status == "pending":
        return ORJSON({"receipt": receipt.to_dict()}, status_code=202)
    if not receipt.valid:
        return error_response(invalid_tx_error(receipt))
    return ORJSON({"receipt": receipt.to_dict()})


async def _json_body(request: Request) -> Any:
    return codec.decode(await request.body(), max_bytes=MAX_REQUEST_BYTES, what="request body")


async def _batch_body(request: Request) -> Any:
    """A batch's body, its values checked once: the proposals by their own parser
    (which checks every value it keeps; a bad one fails alone), the rest here."""
    body = codec.decode(
        await request.body(), max_bytes=MAX_REQUEST_BYTES, what="request body", check_values=False
    )
    if isinstance(body, dict):  # anything else is refused as malformed by the route
        codec.validate_value(
            {k: v for k, v in body.items() if k != "proposals"}, what="request body"
        )
    return body


def _get(d: Any, key: str, kind: type, default: Any) -> Any:
    if not isinstance(d, dict):
        raise InvalidInput("request body must be a JSON object", code="malformed")
    value = d.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(f"'{key}' must be {kind.__name__}", code="malformed")
    return value


def _after_block(body: Any) -> int | None:
    """The block the caller has seen (its state must include it), if it says."""
    after = body.get("after_block") if isinstance(body, dict) else None
    if after is None:
        return None
    if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 2**53:
        raise InvalidInput("'after_block' must be a block number", code="malformed")
    return after


def _wait_args(body: Any) -> tuple[bool, float]:
    wait = _get(body, "wait", bool, True)
    timeout_ms = _get(body, "timeout_ms", int, 30_000)
    if not 0 < timeout_ms <= MAX_WAIT_MS:
        raise InvalidInput(f"timeout_ms must be in 1..{MAX_WAIT_MS}", code="malformed")
    return wait, timeout_ms / 1000


def create_app(node: Node, *, manage_node: bool = True) -> FastAPI:
    """The gateway app of ``node`` (started and stopped with the app if ``manage_node``)."""
    auth = RequestAuthenticator(node.config.network, node.membership)
    services = Services(node)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_node:
            await node.start()
        services.start()
        try:
            yield
        finally:
            await services.stop()
            if manage_node:
                await node.stop()

    app = FastAPI(
        title="Meridian gateway",
        version=__version__,
        description=(
            "REST API of a Meridian node. Every request except /v1/health and /metrics carries "
            "X-Meridian-Cert, X-Meridian-Time, X-Meridian-Nonce and X-Meridian-Signature "
            '(see docs/gateway-api.md). Errors: {"error": {"code", "message", '
            '"hint"}}.'
        ),
        lifespan=lifespan,
        default_response_class=ORJSON,
        responses=schemas.ERROR_RESPONSES,
    )

    @app.exception_handler(MeridianError)
    async def _meridian_error(_: Request, exc: MeridianError) -> ORJSON:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> ORJSON:
        return error_response(InvalidInput(f"bad request: {exc.errors()[:3]}", code="malformed"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> ORJSON:
        log.exception("unexpected error")
        return error_response(
            MeridianError(f"internal error: {type(exc).__name__}", hint="see the node log")
        )

    async def caller(
        request: Request,
        app_name: str | None = None,
        *,
        read: bool = True,
        peer: bool = False,
        ledger: bool = False,
    ) -> Identity:
        """The authenticated caller; with ``app_name``, also a member org of that app
        (or, for reads, the regulator), and the request is metered on the app's plan.
        With ``peer``, a node hosting the app (another gateway collecting the app's
        usage) is let through as well, unmetered: the network's own bookkeeping is
        not the app's traffic. ``ledger``: the route reads the raw ledger (see
        :meth:`Node.check_access`)."""
        body = await _read_body(request)
        headers = {k.lower(): v for k, v in request.headers.items()}
        identity = auth.authenticate(
            request.method, request.url.path, request.url.query, headers, body
        )
        node.check_usable(identity, app_name)
        if app_name is not None and peer and services.is_hosting_node(app_name, identity):
            node.channel(app_name)  # hosted here, else 404 unknown_app
            return identity
        if app_name is not None:
            node.check_access(app_name, identity.org, read=read, ledger=ledger)
            if read:
                services.admit(app_name, org=identity.org)
        return identity

    @app.get("/v1/health", tags=["node"], summary="Liveness (unauthenticated)")
    async def health() -> dict[str, Any]:
        return {"ok": True, "node": node.id, "network": node.config.network}

    @app.get(
        "/metrics",
        tags=["node"],
        summary="Prometheus metrics (unauthenticated; counters only)",
        response_class=PlainTextResponse,
    )
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(node.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.get(
        "/v1/status",
        tags=["node"],
        summary="Node status: apps, heights, pending",
        responses={200: {"model": schemas.StatusOut}},
    )
    async def status(request: Request) -> Any:
        await caller(request)
        return node.status()

    @app.get("/v1/apps", tags=["node"], summary="Apps hosted by this node")
    async def apps(request: Request) -> Any:
        identity = await caller(request)
        return {
            "apps": [
                {"name": n, "height": c.height, "members": sorted(c.rules.members)}
                for n, c in node.channels.items()
                if node.may_read(n, identity.org)
            ]
        }

    @app.post(
        "/v1/apps/{app_name}/transactions",
        tags=["transactions"],
        summary="Submit a signed proposal: endorse, order, and (by default) wait",
        openapi_extra=schemas.body(schemas.SubmitIn),
        responses={200: {"model": schemas.ReceiptOut}, 202: {"model": schemas.ReceiptOut}},
    )
    async def submit(app_name: str, request: Request) -> Any:
        await caller(request, app_name, read=False)
        body = await _json_body(request)
        proposal = _proposal_of(body)
        services.admit(app_name, transactions=1)
        wait, timeout_s = _wait_args(body)
        await node.wait_for_block(app_name, _after_block(body))
        receipt = await node.submit(app_name, proposal, wait=wait, timeout_s=timeout_s)
        return receipt_response(receipt)

    @app.post(
        "/v1/apps/{app_name}/transactions/batch",
        tags=["transactions"],
        summary="Submit many signed proposals in one request (the fast path)",
        openapi_extra=schemas.body(schemas.BatchIn),
        responses={200: {"model": schemas.BatchOut}},
    )
    async def submit_batch(app_name: str, request: Request) -> Any:
        await caller(request, app_name, read=False)
        body = await _batch_body(request)
        raw = _get(body, "proposals", list, None)
        if not 0 < len(raw) <= MAX_BATCH_PROPOSALS:
            raise InvalidInput(
                f"a batch holds 1..{MAX_BATCH_PROPOSALS} proposals", code="malformed"
            )
        services.admit(app_name, transactions=len(raw))
        wait, timeout_s = _wait_args(body)
        await node.wait_for_block(app_name, _after_block(body))
        items = [_parse_or_error(item) for item in raw]
        good = [i for i in items if isinstance(i, SignedProposal)]
        results = iter(
            await node.submit_batch(app_name, good, wait=wait, timeout_s=timeout_s) if good else []
        )
        out = []
        for item in items:
            res = next(results) if isinstance(item, SignedProposal) else item
            out.append(_batch_item(res))
        return ORJSON({"results": out})

    @app.post(
        "/v1/apps/{app_name}/evaluate",
        tags=["transactions"],
        summary="Evaluate a signed proposal on this node (never ordered)",
        openapi_extra=schemas.body(schemas.EvaluateIn),
        responses={200: {"model": schemas.EvaluateOut}},
    )
    async def evaluate(app_name: str, request: Request) -> Any:
        await caller(request, app_name)
        body = await _json_body(request)
        proposal = _proposal_of(body)
        await node.wait_for_block(app_name, _after_block(body))
        return ORJSON({"response": await node.evaluate(app_name, proposal)})

    @app.get(
        "/v1/apps/{app_name}/transactions/{tx_id}",
        tags=["transactions"],
        summary="Status and receipt of a transaction",
        responses={200: {"model": schemas.ReceiptOut}},
    )
    async def tx_status(app_name: str, tx_id: str, request: Request) -> Any:
        identity = await caller(request, app_name)
        channel = node.channel(app_name)
        receipt = channel.get_receipt(tx_id)
        if receipt is None:
            raise NotFound(f"no transaction {tx_id} on app {app_name}", code="tx_not_found")
        if not node.may_read_ledger(app_name, identity.org) and (
            receipt.status == "committed" and _creator_org(channel, tx_id) != identity.org
        ):  # governance: an org reads the receipts of its own transactions only
            node.check_access(app_name, identity.org, read=True, ledger=True)
        return {"receipt": receipt.to_dict()}

    @app.get(
        "/v1/apps/{app_name}/transactions/{tx_id}/proof",
        tags=["transactions"],
        summary="Merkle inclusion proof of a transaction against its block header",
        responses={200: {"model": schemas.ProofOut}},
    )
    async def tx_proof(app_name: str, tx_id: str, request: Request) -> Any:
        await caller(request, app_name, ledger=True)
        channel = node.channel(app_name)
        loc = channel.ledger.get_tx(tx_id)
        block = channel.ledger.get_block(loc.block) if loc else None
        if loc is None or block is None:
            raise NotFound(f"no committed transaction {tx_id}", code="tx_not_found")
        leaves = [compute_tx_hash(tx) for tx in block.transactions]
        return {
            "tx_id": tx_id,
            "index": loc.index,
            "code": loc.code.name,
            "leaf": leaves[loc.index].hex(),
            "proof": [h.hex() for h in compute_inclusion_proof(leaves, loc.index)],
            "header": block.header.to_dict(),
            "block_hash": block.header.hash.hex(),
        }

    @app.get(
        "/v1/apps/{app_name}/blocks/{number}",
        tags=["blocks"],
        summary="A block with its validation codes ('latest' for the newest)",
        responses={200: {"model": schemas.BlockOut}},
    )
    async def get_block(app_name: str, number: str, request: Request) -> Any:
        await caller(request, app_name, ledger=True)
        channel = node.channel(app_name)
        n = channel.height - 1 if number == "latest" else _block_number(number)
        block = channel.ledger.get_block(n) if n >= 0 else None
        if block is None:
            raise NotFound(
                f"app {app_name} has no block {number} (height {channel.height})",
                code="block_not_found",
            )
        codes = channel.ledger.get_codes(n) or ()
        certificate = channel.ledger.get_certificate(n)
        return {
            "block": block.to_dict(),
            "hash": block.header.hash.hex(),
            "codes": [c.name for c in codes],
            "certificate": orjson.loads(certificate) if certificate else None,
        }

    @app.get(
        "/v1/apps/{app_name}/contracts",
        tags=["contracts"],
        summary="Committed contract definitions of an app",
    )
    async def contracts(app_name: str, request: Request) -> Any:
        await caller(request, app_name)
        channel = node.channel(app_name)
        rows = channel.ledger.get_range(LIFECYCLE, "definition/", "definition0", 10_000)
        return {"contracts": [value for _, value, _ in rows]}

    @app.get(
        "/v1/apps/{app_name}/events",
        tags=["events"],
        summary="Server-sent events: one message per committed block, from a block on",
        response_class=StreamingResponse,
    )
    async def events(app_name: str, request: Request, from_block: int | None = None) -> Any:
        identity = await caller(request, app_name, ledger=True)
        channel = node.channel(app_name)
        start = from_block
        if start is None:
            last = request.headers.get("last-event-id")
            start = int(last) + 1 if last and last.isdigit() else channel.height
        if start < 0:
            raise InvalidInput("from_block must be >= 0", code="malformed")

        def check() -> None:  # access is judged again before every message
            node.membership.validate(identity.cert_der)  # CA, dates, the org's CRL
            node.check_usable(identity, app_name)
            node.check_access(app_name, identity.org, read=True, ledger=True)

        return StreamingResponse(
            _sse(channel, start, check),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    @app.post(
        "/v1/packages",
        tags=["contracts"],
        summary="Install a contract package archive on this node",
        openapi_extra=schemas.body(schemas.InstallIn),
        responses={200: {"model": schemas.PackageOut}},
    )
    async def install(request: Request) -> Any:
        identity = await caller(request)
        if not node.may_install(identity):
            raise Forbidden(
                f"only an admin of {node.entry.org}, the org running this node, or of a "
                "member org of an app it hosts may install packages on it",
                code="not_admin",
                hint=f"install as {node.entry.org}'s admin (e.g. --as {node.entry.org}/admin)",
            )
        body = await _json_body(request)
        archive = codec.unb64(_get(body, "archive", str, None), what="archive")
        package = await asyncio.to_thread(node.install_package, archive)
        return {
            "package_id": package.package_id,
            "name": package.manifest.name,
            "version": package.manifest.version,
        }

    @app.get("/v1/packages", tags=["contracts"], summary="Packages installed on this node")
    async def packages(request: Request) -> Any:
        await caller(request)
        return {
            "packages": [
                {"package_id": p.package_id, "name": p.manifest.name, "version": p.manifest.version}
                for p in node.packages.list()
            ]
        }

    @app.post(
        "/v1/orgs/{org}/crl",
        tags=["node"],
        summary="Apply a new certificate revocation list of an org (its admin only)",
        openapi_extra=schemas.body(schemas.CrlIn),
    )
    async def update_crl(org: str, request: Request) -> Any:
        identity = await caller(request)
        if not is_admin_of(identity, org):
            raise Forbidden(
                f"only an admin of {org} may update its revocation list", code="not_admin"
            )
        body = await _json_body(request)
        try:
            node.update_crl(org, _get(body, "crl", str, None).encode())
        except CertificateError as exc:
            raise InvalidInput(exc.message, code=exc.code, hint=exc.hint) from exc
        return {"ok": True}

    register_routes(app, services, caller, _json_body)
    return app


async def _read_body(request: Request) -> bytes:
    """The body, refused as soon as it exceeds MAX_REQUEST_BYTES (never buffered whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        raise InvalidInput(f"request body over {MAX_REQUEST_BYTES} bytes", code="too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise InvalidInput(f"request body over {MAX_REQUEST_BYTES} bytes", code="too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: later request.body() calls return it
    return body


def _block_number(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput(
            "block number must be a non-negative integer or 'latest'", code="malformed"
        )
    return int(text)


def _proposal_of(body: Any) -> SignedProposal:
    return SignedProposal.from_dict(_get(body, "proposal", dict, None))


def _parse_or_error(item: Any) -> SignedProposal | MeridianError:
    try:
        return SignedProposal.from_dict(item)
    except MeridianError as exc:
        return exc


def _creator_org(channel: Any, tx_id: str) -> str | None:
    """The org named in the certificate of a committed transaction's creator."""
    loc = channel.ledger.get_tx(tx_id)
    block = channel.ledger.get_block(loc.block) if loc is not None else None
    if block is None:
        return None
    cert = x509.load_der_x509_certificate(block.transactions[loc.index].proposal.creator)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(orgs[0].value) if orgs else None


def _batch_item(res: Receipt | MeridianError) -> dict[str, Any]:
    if isinstance(res, MeridianError):
        return {"ok": False, "error": res.to_dict()}
    if res.status == "committed" and not res.valid:
        error = invalid_tx_error(res)
        return {
            "ok": False,
            "receipt": res.to_dict(),
            "error": {"code": error.code, "message": error.message, "hint": error.hint},
        }
    return {"ok": True, "receipt": res.to_dict()}


def _block_message(channel: Any, number: int) -> bytes:
    block = channel.ledger.get_block(number)
    codes = channel.ledger.get_codes(number) or ()
    events = channel.ledger.get_events(number, number + 1)
    data = {
        "block": number,
        "hash": block.header.hash.hex(),
        "timestamp_ms": block.header.timestamp_ms,
        "txs": [
            {"tx_id": tx.tx_id, "code": code.name}
            for tx, code in zip(block.transactions, codes, strict=True)
        ],
        "events": [
            {"tx_id": e.tx_id, "contract": e.contract, "name": e.name, "payload": e.payload}
            for e in events
        ],
    }
    return b"id: %d\nevent: block\ndata: %s\n\n" % (number, orjson.dumps(data))


async def _sse(channel: Any, start: int, check: Callable[[], None]) -> AsyncIterator[bytes]:
    """Block messages from ``start`` on. ``check`` runs before each message: a caller
    whose certificate is revoked, or whose org leaves the app, gets one ``error``
    event with the typed error, and the stream ends."""
    next_block = start
    yield b": connected\n\n"
    while True:
        while next_block < channel.height:
            if (refusal := _refusal(check)) is not None:
                yield refusal
                return
            yield _block_message(channel, next_block)
            next_block += 1
        if not await channel.wait_for_block(next_block, SSE_HEARTBEAT_S):
            if (refusal := _refusal(check)) is not None:
                yield refusal
                return
            yield b": heartbeat\n\n"


def _refusal(check: Callable[[], None]) -> bytes | None:
    try:
        check()
    except MeridianError as exc:
        body = {"status": exc.http_status, "error": exc.to_dict()}
        return b"event: error\ndata: %s\n\n" % orjson.dumps(body)
    return None
