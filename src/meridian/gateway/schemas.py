"""Pydantic models that document the gateway's JSON in the OpenAPI document.

Request bodies are parsed by the canonical codec and :mod:`meridian.types` (strict,
bounded); these models describe the same shapes for readers and client generators.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ProposalIn(_Strict):
    network: str
    app: str
    contract: str = Field(description="contract name, or _lifecycle")
    function: str
    args: list[Any] = Field(description="JSON values; no floats", max_length=64)
    nonce: str = Field(description="8..64 random bytes, lowercase hex")
    timestamp_ms: int = Field(ge=0)
    creator: str = Field(description="base64 DER X.509 certificate of the signer")


class BatchProofIn(_Strict):
    index: int = Field(ge=0, description="position of this digest in the signed batch")
    size: int = Field(ge=2, le=1024, description="digests in the signed batch")
    path: list[str] = Field(
        max_length=10, description="RFC 6962 inclusion proof, leaf level first (hex digests)"
    )


class SignedProposalIn(_Strict):
    proposal: ProposalIn
    signature: str = Field(
        description="base64 signature over the proposal's signing "
        "digest (domain 'proposal', network, canonical proposal); with `batch`, over "
        "the signing digest (domain 'batch', network) of the size (2 bytes) and Merkle "
        "root of a batch of such digests"
    )
    batch: BatchProofIn | SkipJsonSchema[None] = Field(
        None,
        description="where this proposal's digest sits in a batch signed once "
        "(see docs/transaction-flow.md, batch signatures); omitted, never null, for a "
        "proposal signed alone",
    )


class SubmitIn(_Strict):
    proposal: SignedProposalIn
    wait: bool = Field(True, description="wait for the commit (else 202 once accepted)")
    timeout_ms: int = Field(30_000, ge=1, le=120_000)
    after_block: int | None = Field(
        None,
        ge=0,
        description="run on a state that includes this block (the node waits up to "
        "10 s for it, else 503 node_behind): read-your-writes across nodes",
    )


class BatchIn(_Strict):
    proposals: list[SignedProposalIn] = Field(min_length=1, max_length=2000)
    wait: bool = True
    timeout_ms: int = Field(30_000, ge=1, le=120_000)
    after_block: int | None = Field(
        None,
        ge=0,
        description="run on a state that includes this block (the node waits up to "
        "10 s for it, else 503 node_behind): read-your-writes across nodes",
    )


class EvaluateIn(_Strict):
    proposal: SignedProposalIn
    after_block: int | None = Field(
        None,
        ge=0,
        description="run on a state that includes this block (the node waits up to "
        "10 s for it, else 503 node_behind): read-your-writes across nodes",
    )


class InstallIn(_Strict):
    archive: str = Field(description="base64 of the tar.gz built by 'meridian contract package'")


class CrlIn(_Strict):
    crl: str = Field(description="PEM X.509 CRL signed by the org's CA")


class Receipt(BaseModel):
    tx_id: str
    status: str = Field(description="committed | pending")
    block: int | None
    index: int | None
    code: str | None = Field(description="validation code name, e.g. VALID")
    valid: bool | None
    response: Any = None
    events: list[dict[str, Any]] = []


class ReceiptOut(BaseModel):
    receipt: Receipt


class BatchItem(BaseModel):
    ok: bool
    receipt: Receipt | None = None
    error: dict[str, Any] | None = None


class BatchOut(BaseModel):
    results: list[BatchItem]


class EvaluateOut(BaseModel):
    response: Any


class ProofOut(BaseModel):
    tx_id: str
    index: int
    code: str
    leaf: str = Field(description="hex SHA-256 of the canonical transaction")
    proof: list[str] = Field(description="sibling hashes, leaf level first (RFC 6962)")
    header: dict[str, Any]
    block_hash: str


class BlockOut(BaseModel):
    block: dict[str, Any]
    hash: str
    codes: list[str]
    certificate: dict[str, Any] | None = Field(
        description="the consensus commit certificate: a quorum of the consenters' "
        "signatures over the header hash (see docs/consensus.md)"
    )


class PackageOut(BaseModel):
    package_id: str
    name: str
    version: str


class StatusOut(BaseModel):
    node: str
    org: str
    network: str
    uptime_s: int
    sandbox: str = Field(description="contract sandbox in use: bwrap or none")
    apps: dict[str, dict[str, Any]]


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code")
    message: str
    hint: str | None = None
    details: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "malformed, oversized or wrong-typed input"},
    401: {"model": ErrorOut, "description": "bad, missing or replayed signature; bad cert"},
    403: {"model": ErrorOut, "description": "not allowed for this identity"},
    404: {"model": ErrorOut, "description": "unknown app, contract, function, tx or block"},
    409: {"model": ErrorOut, "description": "duplicate or invalid (e.g. MVCC) transaction"},
    422: {"model": ErrorOut, "description": "the contract rejected, failed or timed out"},
    429: {"model": ErrorOut, "description": "busy: retry after Retry-After seconds"},
    503: {"model": ErrorOut, "description": "node unavailable"},
}


def body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON request body of ``model``'s shape."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
