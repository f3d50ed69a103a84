"""The SDK with ``await``: :func:`connect_async` → :class:`AsyncGateway` → ... ."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from .core import (
    BlockEvent,
    Checkpoint,
    Identity,
    ProposalBuilder,
    Receipt,
    SeenBlocks,
    SseParser,
    committed_response,
    encode_body,
    raise_for_error,
    start_block,
)


class AsyncGateway:
    def __init__(self, url: str, identity: Identity, network: str, timeout_s: float = 60.0) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout_s)
        self.builder = ProposalBuilder(identity, network)
        self.seen = SeenBlocks()  # what this session saw, sent as after_block

    async def request(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> Any:
        content = b"" if body is None else encode_body(body)
        request = self._http.build_request(method, path, content=content, params=params)
        request.headers.update(self.builder.headers(method, request.url, content))
        if content:
            request.headers["content-type"] = "application/json"
        return raise_for_error(await self._http.send(request))

    def app(self, name: str) -> AsyncApp:
        return AsyncApp(self, name)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


async def connect_async(
    url: str, identity: Identity, *, network: str | None = None, timeout_s: float = 60.0
) -> AsyncGateway:
    if network is None:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as http:
            network = raise_for_error(await http.get("/v1/health"))["network"]
    return AsyncGateway(url, identity, network, timeout_s)


class AsyncApp:
    def __init__(self, gateway: AsyncGateway, name: str) -> None:
        self.gateway = gateway
        self.name = name

    def contract(self, name: str) -> AsyncContract:
        return AsyncContract(self, name)

    async def transaction(self, tx_id: str) -> Receipt:
        body = await self.gateway.request("GET", f"/v1/apps/{self.name}/transactions/{tx_id}")
        return Receipt.from_dict(body["receipt"])

    async def events(
        self, *, start: int | None = None, checkpoint: Checkpoint | None = None
    ) -> AsyncIterator[BlockEvent]:
        first = start_block(start, checkpoint)
        params = {} if first is None else {"from_block": first}
        http = self.gateway._http
        request = http.build_request("GET", f"/v1/apps/{self.name}/events", params=params)
        request.headers.update(self.gateway.builder.headers("GET", request.url, b""))
        response = await http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                await response.aread()
                raise_for_error(response)
            parser = SseParser()
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is not None:
                    yield event
        finally:
            await response.aclose()


class AsyncContract:
    def __init__(self, app: AsyncApp, name: str) -> None:
        self.app = app
        self.name = name

    def _proposal(self, function: str, args: Sequence[Any]) -> dict[str, Any]:
        return self.app.gateway.builder.build(
            self.app.name, self.name, function, tuple(args)
        ).to_dict()

    async def submit(self, function: str, *args: Any, timeout_ms: int = 30_000) -> Any:
        return committed_response(await self.submit_receipt(function, *args, timeout_ms=timeout_ms))

    def _body(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.app.gateway.seen.body(self.app.name, body)

    async def submit_receipt(self, function: str, *args: Any, timeout_ms: int = 30_000) -> Receipt:
        body = await self.app.gateway.request(
            "POST",
            f"/v1/apps/{self.app.name}/transactions",
            self._body(
                {
                    "proposal": self._proposal(function, args),
                    "wait": True,
                    "timeout_ms": timeout_ms,
                }
            ),
        )
        receipt = Receipt.from_dict(body["receipt"])
        self.app.gateway.seen.observe(self.app.name, receipt.block)
        return receipt

    async def submit_async(self, function: str, *args: Any) -> Receipt:
        """Returns the pending receipt (with the endorsed response) once accepted."""
        body = await self.app.gateway.request(
            "POST",
            f"/v1/apps/{self.app.name}/transactions",
            self._body({"proposal": self._proposal(function, args), "wait": False}),
        )
        return Receipt.from_dict(body["receipt"])

    async def evaluate(self, function: str, *args: Any) -> Any:
        body = await self.app.gateway.request(
            "POST",
            f"/v1/apps/{self.app.name}/evaluate",
            self._body({"proposal": self._proposal(function, args)}),
        )
        return body["response"]
