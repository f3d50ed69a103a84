"""Transport-free parts of the SDK: identities, proposals, signing, errors, events."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from .. import codec
from ..crypto.certs import load_cert_der
from ..crypto.suites import Signer, load_signer
from ..errors import MeridianError, Unavailable, error_class_for
from ..gateway.auth import sign_request
from ..types import Proposal, SignedProposal, sign_batch


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key (kept in this process only)."""

    cert_der: bytes
    signer: Signer

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path) -> Identity:
        return cls(load_cert_der(Path(cert).read_bytes()), load_signer(Path(key).read_bytes()))

    @classmethod
    def from_dir(cls, folder: str | Path) -> Identity:
        folder = Path(folder)
        return cls.from_files(folder / "cert.pem", folder / "key.pem")


class SeenBlocks:
    """The highest block one client session has seen per app.

    Sent as ``after_block`` with every proposal, so that a node which has not yet
    committed what this client already saw (through another node) waits for it
    instead of answering from an older state: read-your-writes across nodes.
    """

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def observe(self, app: str, block: int | None) -> None:
        if block is not None and block > self._seen.get(app, -1):
            self._seen[app] = block

    def merge(self, other: SeenBlocks) -> None:
        for app, block in other._seen.items():
            self.observe(app, block)

    def body(self, app: str, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with this session's ``after_block`` for ``app`` (if any)."""
        block = self._seen.get(app)
        if block is not None:
            body["after_block"] = block
        return body


@dataclass(frozen=True, slots=True)
class Receipt:
    """Outcome of a transaction (see the gateway's receipt)."""

    tx_id: str
    status: str
    block: int | None
    index: int | None
    code: str | None
    valid: bool | None
    response: Any
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Receipt:
        return cls(
            d["tx_id"],
            d["status"],
            d.get("block"),
            d.get("index"),
            d.get("code"),
            d.get("valid"),
            d.get("response"),
            list(d.get("events") or []),
        )


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """One committed block as the event stream reports it."""

    block: int
    hash: str
    timestamp_ms: int
    txs: list[dict[str, Any]]
    events: list[dict[str, Any]]


class Checkpoint(Protocol):
    """Remembers the last block an event consumer finished with."""

    @property
    def block(self) -> int | None: ...

    def checkpoint_block(self, block: int) -> None: ...


class FileCheckpoint:
    """A :class:`Checkpoint` kept in a small JSON file (atomically replaced)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._block: int | None = None
        if self.path.is_file():
            self._block = orjson.loads(self.path.read_bytes()).get("block")

    @property
    def block(self) -> int | None:
        return self._block

    def checkpoint_block(self, block: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"block": block}))
        os.replace(tmp, self.path)
        self._block = block


class ProposalBuilder:
    """Builds and signs proposals for one identity on one network."""

    def __init__(self, identity: Identity, network: str) -> None:
        self.identity = identity
        self.network = network

    def build(
        self, app: str, contract: str, function: str, args: tuple[Any, ...]
    ) -> SignedProposal:
        return self.build_many(app, contract, [(function, args)])[0]

    def build_many(
        self, app: str, contract: str, calls: Sequence[tuple[str, Sequence[Any]]]
    ) -> list[SignedProposal]:
        """One signed proposal per ``(function, args)``, signed in batches: one
        signature per ``SIGNED_BATCH`` proposals (see :class:`~meridian.types.BatchProof`),
        so that every node checks one signature where it would check sixteen."""
        proposals = []
        for function, args in calls:
            codec.validate_value(list(args), what="arguments")
            proposals.append(
                Proposal(
                    network=self.network,
                    app=app,
                    contract=contract,
                    function=function,
                    args=tuple(args),
                    nonce=secrets.token_bytes(16),
                    timestamp_ms=int(time.time() * 1000),
                    creator=self.identity.cert_der,
                )
            )
        digests = [bytes(p.signing_digest()) for p in proposals]
        signed = sign_batch(self.identity.signer, digests, self.network)
        return [
            SignedProposal(p, signature, batch)
            for p, (signature, batch) in zip(proposals, signed, strict=True)
        ]

    def headers(self, method: str, url: httpx.URL, body: bytes) -> dict[str, str]:
        return sign_request(
            self.identity.signer,
            self.identity.cert_der,
            self.network,
            method,
            url.path,
            url.query.decode(),
            body,
        )


def raise_for_error(response: httpx.Response) -> Any:
    """The JSON body of a success, or the typed :class:`MeridianError` of a failure."""
    try:
        body = orjson.loads(response.content) if response.content else {}
    except orjson.JSONDecodeError:
        body = {}
    if response.status_code < 400:
        return body
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = {
            "code": "http_error",
            "message": f"HTTP {response.status_code}: {response.text[:200]}",
        }
    cls = error_class_for(response.status_code, err.get("code"))
    exc = cls(
        err.get("message", ""),
        code=err.get("code"),
        hint=err.get("hint"),
        details=err.get("details"),
    )
    if response.status_code == 429:
        exc.retry_after_s = float(response.headers.get("retry-after", "1"))  # type: ignore[attr-defined]
    raise exc


def committed_response(receipt: Receipt) -> Any:
    """The response of a committed transaction; Unavailable if the wait ran out."""
    if receipt.status != "committed":
        raise Unavailable(
            f"transaction {receipt.tx_id} was accepted but not committed in time",
            code="commit_timeout",
            hint="it may still commit: check it with the transaction status call",
            details={"tx_id": receipt.tx_id},
        )
    return receipt.response


def encode_body(value: Any) -> bytes:
    return orjson.dumps(value)


class SseParser:
    """Turns the lines of a server-sent-events stream into block events; an ``error``
    event (the gateway ends a stream whose caller lost access) raises its typed error."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""

    def feed(self, line: str) -> BlockEvent | None:
        if line.startswith("data:"):
            self._data.append(line[5:].lstrip())
        elif line.startswith("event:"):
            self._event = line[6:].strip()
        elif line == "" and self._data:
            text, self._data = "\n".join(self._data), []
            event, self._event = self._event, ""
            if event == "error":
                _raise_stream_error(text)
            return _block_event(text)
        return None


def parse_sse(lines: Iterator[str]) -> Iterator[BlockEvent]:
    parser = SseParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


def _raise_stream_error(text: str) -> None:
    body = orjson.loads(text)
    err = body.get("error") or {}
    cls = error_class_for(int(body.get("status", 500)), err.get("code"))
    raise cls(
        err.get("message", "the gateway ended the event stream"),
        code=err.get("code"),
        hint=err.get("hint"),
        details=err.get("details"),
    )


def _block_event(text: str) -> BlockEvent:
    d = orjson.loads(text)
    return BlockEvent(d["block"], d["hash"], d["timestamp_ms"], d["txs"], d["events"])


def start_block(start: int | None, checkpoint: Checkpoint | None) -> int | None:
    if checkpoint is not None and checkpoint.block is not None:
        return checkpoint.block + 1
    return start


__all__ = ["MeridianError"]
