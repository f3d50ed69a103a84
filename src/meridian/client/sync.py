"""Blocking SDK: :func:`connect` → :class:`Gateway` → :class:`App` → :class:`Contract`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from ..errors import MeridianError
from .core import (
    BlockEvent,
    Checkpoint,
    Identity,
    ProposalBuilder,
    Receipt,
    SeenBlocks,
    committed_response,
    encode_body,
    parse_sse,
    raise_for_error,
    start_block,
)

DEFAULT_TIMEOUT_S = 60.0


class Gateway:
    """A connection to one node's gateway as one identity."""

    def __init__(
        self,
        url: str,
        identity: Identity,
        *,
        network: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout_s)
        self.identity = identity
        if network is None:
            network = raise_for_error(self._http.get("/v1/health"))["network"]
        self.builder = ProposalBuilder(identity, network)
        self.seen = SeenBlocks()  # what this session saw, sent as after_block

    @property
    def network(self) -> str:
        return self.builder.network

    def request(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        content = b"" if body is None else encode_body(body)
        request = self._http.build_request(method, path, content=content, params=params)
        request.headers.update(self.builder.headers(method, request.url, content))
        if content:
            request.headers["content-type"] = "application/json"
        return raise_for_error(self._http.send(request))

    def app(self, name: str) -> App:
        return App(self, name)

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def install(self, archive: bytes) -> dict[str, Any]:
        import base64

        return self.request("POST", "/v1/packages", {"archive": base64.b64encode(archive).decode()})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def stream(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        request = self._http.build_request("GET", path, params=params)
        request.headers.update(self.builder.headers("GET", request.url, b""))
        response = self._http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                raise_for_error(response)
            yield from response.iter_lines()
        finally:
            response.close()


def connect(url: str, identity: Identity, **kw: Any) -> Gateway:
    return Gateway(url, identity, **kw)


class App:
    def __init__(self, gateway: Gateway, name: str) -> None:
        self.gateway = gateway
        self.name = name

    def contract(self, name: str) -> Contract:
        return Contract(self, name)

    def transaction(self, tx_id: str) -> Receipt:
        body = self.gateway.request("GET", f"/v1/apps/{self.name}/transactions/{tx_id}")
        return Receipt.from_dict(body["receipt"])

    def proof(self, tx_id: str) -> dict[str, Any]:
        return self.gateway.request("GET", f"/v1/apps/{self.name}/transactions/{tx_id}/proof")

    def block(self, number: int | str = "latest") -> dict[str, Any]:
        return self.gateway.request("GET", f"/v1/apps/{self.name}/blocks/{number}")

    def contracts(self) -> list[dict[str, Any]]:
        return self.gateway.request("GET", f"/v1/apps/{self.name}/contracts")["contracts"]

    def events(
        self, *, start: int | None = None, checkpoint: Checkpoint | None = None
    ) -> Iterator[BlockEvent]:
        """Committed blocks from ``start`` (or after the checkpoint) on, as they commit.

        Call ``checkpoint.checkpoint_block(event.block)`` once a block is handled; a
        new iteration with the same checkpoint resumes after it.
        """
        first = start_block(start, checkpoint)
        params = {} if first is None else {"from_block": first}
        yield from parse_sse(self.gateway.stream(f"/v1/apps/{self.name}/events", params))


class Commit:
    """A transaction accepted for ordering; :meth:`status` waits for its commit."""

    def __init__(self, app: App, receipt: Receipt) -> None:
        self.app = app
        self.tx_id = receipt.tx_id
        self.result = receipt.response
        self._receipt = receipt if receipt.status == "committed" else None

    def status(self, timeout_s: float = 30.0, poll_s: float = 0.05) -> Receipt:
        import time

        deadline = time.monotonic() + timeout_s
        while self._receipt is None:
            receipt = self.app.transaction(self.tx_id)
            if receipt.status == "committed":
                self._receipt = receipt
                self.app.gateway.seen.observe(self.app.name, receipt.block)
                break
            if time.monotonic() > deadline:
                return receipt
            time.sleep(poll_s)
        return self._receipt


class Contract:
    def __init__(self, app: App, name: str) -> None:
        self.app = app
        self.name = name

    @property
    def _base(self) -> str:
        return f"/v1/apps/{self.app.name}"

    def _proposal(self, function: str, args: Sequence[Any]) -> dict[str, Any]:
        signed = self.app.gateway.builder.build(self.app.name, self.name, function, tuple(args))
        return signed.to_dict()

    def submit(self, function: str, *args: Any, timeout_ms: int = 30_000) -> Any:
        """Submit and wait for the commit; returns the contract's response.

        Raises the gateway's error if the transaction is refused or invalid, and
        ``Unavailable(code="commit_timeout")`` if it did not commit within the wait.
        """
        return committed_response(self.submit_receipt(function, *args, timeout_ms=timeout_ms))

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.app.gateway.seen.body(self.app.name, body)

    def _observe(self, receipt: Receipt) -> Receipt:
        self.app.gateway.seen.observe(self.app.name, receipt.block)
        return receipt

    def submit_receipt(self, function: str, *args: Any, timeout_ms: int = 30_000) -> Receipt:
        body = self.app.gateway.request(
            "POST",
            f"{self._base}/transactions",
            self._body(
                {
                    "proposal": self._proposal(function, args),
                    "wait": True,
                    "timeout_ms": timeout_ms,
                }
            ),
        )
        return self._observe(Receipt.from_dict(body["receipt"]))

    def submit_async(self, function: str, *args: Any) -> Commit:
        """Submit and return once the node has durably accepted the transaction."""
        body = self.app.gateway.request(
            "POST",
            f"{self._base}/transactions",
            self._body({"proposal": self._proposal(function, args), "wait": False}),
        )
        return Commit(self.app, Receipt.from_dict(body["receipt"]))

    def submit_many(
        self,
        calls: Sequence[tuple[str, Sequence[Any]]],
        *,
        wait: bool = True,
        timeout_ms: int = 60_000,
    ) -> list[Receipt | MeridianError]:
        """Submit many calls in one request; one receipt or error per call, in order."""
        body = self.app.gateway.request(
            "POST",
            f"{self._base}/transactions/batch",
            self._body(
                {
                    "proposals": [
                        s.to_dict()
                        for s in self.app.gateway.builder.build_many(
                            self.app.name, self.name, calls
                        )
                    ],
                    "wait": wait,
                    "timeout_ms": timeout_ms,
                }
            ),
        )
        results = [_batch_result(item) for item in body["results"]]
        for result in results:
            if isinstance(result, Receipt):
                self._observe(result)
        return results

    def evaluate(self, function: str, *args: Any) -> Any:
        body = self.app.gateway.request(
            "POST",
            f"{self._base}/evaluate",
            self._body({"proposal": self._proposal(function, args)}),
        )
        return body["response"]


def _batch_result(item: dict[str, Any]) -> Receipt | MeridianError:
    if item.get("ok"):
        return Receipt.from_dict(item["receipt"])
    err = item.get("error") or {}
    return MeridianError(
        err.get("message", ""),
        code=err.get("code"),
        hint=err.get("hint"),
        details={"receipt": item.get("receipt")} if item.get("receipt") else None,
    )
