"""Usage gathered from the other hosting nodes' gateways, and their request counts."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from meridian.crypto.certs import CertificateAuthority, Membership, Role, load_cert_der
from meridian.crypto.suites import load_signer
from meridian.errors import InvalidInput
from meridian.gateway.auth import RequestAuthenticator
from meridian.gateway.peer_usage import PeerRequests, PeerUsageClient, parse_scope
from meridian.network.config import NodeEntry
from meridian.network.plans import Usage

NETWORK = "meridian"
MONTH = "2026-12"


# --------------------------------------------------------------------------- scope


def test_scope_defaults_to_the_network() -> None:
    assert parse_scope(None) == "network"
    assert parse_scope("network") == "network" and parse_scope("local") == "local"


@pytest.mark.parametrize("value", ["", "Local", "global", "local ", 1])
def test_invalid_scope(value: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_scope(value)
    assert err.value.code == "bad_scope"


# --------------------------------------------------------------------------- peer client


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(node_id: str, port: int) -> NodeEntry:
    return NodeEntry(node_id, "org1", "127.0.0.1", port, port + 1, b"")


def peer_answer(node_id: str, requests: int) -> dict[str, Any]:
    usage = Usage(
        app="shop",
        month=MONTH,
        requests=requests,
        transactions=requests // 2,
        storage_bytes=0,
        peak_tps=1,
        throttled=0,
        daily_requests=(requests,) + (0,) * 30,
        storage_peak_bytes=0,
    )
    return {**usage.to_dict(), "scope": "local", "node": node_id}


def test_gather_asks_each_peer_signed_as_this_node_and_reports_the_silent_ones() -> None:
    ca = CertificateAuthority.create("org1")
    issued = ca.issue("node1", Role.NODE)
    assert issued.key_pem is not None
    signer, cert_der = load_signer(issued.key_pem), load_cert_der(issued.cert_pem)
    authenticator = RequestAuthenticator(NETWORK, Membership({"org1": ca.cert_pem}))
    callers: list[tuple[str, str, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        identity = authenticator.authenticate(  # as a peer's gateway checks it
            request.method,
            request.url.path,
            request.url.query.decode(),
            {k.lower(): v for k, v in request.headers.items()},
            b"",
        )
        callers.append((identity.name, str(identity.role), request.url.query.decode()))
        port = request.url.port
        if port == 7002:
            return httpx.Response(200, json=peer_answer("node2", 30))
        if port == 7004:
            return httpx.Response(503, json={"error": {"code": "starting", "message": "x"}})
        if port == 7006:
            raise httpx.ConnectError("refused", request=request)
        if port == 7008:
            await asyncio.sleep(5)  # longer than the client's timeout
        if port == 7010:  # an answer about another month
            return httpx.Response(200, json={**peer_answer("node6", 1), "month": "2026-11"})
        return httpx.Response(200, content=b"not json")

    peers = [entry(f"node{i}", 7000 + 2 * (i - 1)) for i in range(2, 8)]

    async def run() -> tuple[dict[str, Usage], list[str]]:
        client = PeerUsageClient(
            signer,
            cert_der,
            NETWORK,
            timeout_s=0.3,
            transport=httpx.MockTransport(handler),
        )
        try:
            return await client.gather(peers, "shop", MONTH)
        finally:
            await client.aclose()

    found, missing = asyncio.run(run())
    assert set(found) == {"node2"} and found["node2"].requests == 30
    assert missing == ["node3", "node4", "node5", "node6", "node7"]
    assert {(name, role) for name, role, _ in callers} == {("node1", "node")}
    assert all(query == f"month={MONTH}&scope=local" for _, _, query in callers)
    assert len(callers) == 6  # everyone was asked, at once


# --------------------------------------------------------------------------- peer counts


def test_peer_counts_add_up_per_node_and_only_for_the_month() -> None:
    counts = PeerRequests()
    counts.update("shop", "node2", MONTH, 30)
    counts.update("shop", "node3", MONTH, 12)
    counts.update("shop", "node4", "2026-11", 99)  # last month's: counts nothing
    assert counts.get("shop", MONTH, ["node2", "node3", "node4"]) == 42
    assert counts.get("shop", MONTH, ["node2"]) == 30  # node3 no longer hosts it
    counts.update("shop", "node2", MONTH, 31)  # the latest report replaces the last
    assert counts.get("shop", MONTH, ["node2", "node3"]) == 43
    assert counts.get("other", MONTH, ["node2"]) == 0


def test_only_apps_with_recent_traffic_are_refreshed() -> None:
    clock = FakeClock()
    counts = PeerRequests(active_window_s=60, clock=clock)
    assert counts.active_apps() == []  # an idle network makes no calls
    assert counts.note_traffic("shop") is True  # first traffic: refresh at once
    assert counts.note_traffic("shop") is False
    clock.now += 30
    counts.note_traffic("bank")
    assert counts.active_apps() == ["bank", "shop"]
    clock.now += 31
    assert counts.active_apps() == ["bank"]  # shop idle for over a minute
    assert counts.note_traffic("shop") is True  # busy again: its counts are stale
