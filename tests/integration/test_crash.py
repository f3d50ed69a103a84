"""Crash safety: SIGKILL the node while transactions are being submitted.

Every transaction acknowledged to a client (200 committed, or 202 accepted) must be
committed exactly once after a restart, and `meridian ledger verify` must pass.
"""

from __future__ import annotations

import threading
import time

import httpx

from meridian.client import Gateway
from meridian.errors import MeridianError

from .conftest import RunningNetwork, verify_ledgers

SUBMITTERS = 4


def _submit_until_failure(
    gw: Gateway, prefix: str, acked: dict[str, str], lock: threading.Lock, stop: threading.Event
) -> None:
    contract = gw.app("demo").contract("asset-transfer")
    i = 0
    while not stop.is_set():
        asset = f"{prefix}-{i}"
        i += 1
        try:
            if i % 2:
                tx_id = contract.submit_receipt("create", asset, "crash", i).tx_id
            else:
                tx_id = contract.submit_async("create", asset, "crash", i).tx_id
        except (httpx.TransportError, MeridianError):
            return  # the node is gone; this request was never acknowledged
        with lock:
            acked[tx_id] = asset


def _load_and_kill(net: RunningNetwork, round_no: int, acked: dict[str, str]) -> None:
    lock = threading.Lock()
    stop = threading.Event()
    gateways = [net.gateway(timeout_s=10) for _ in range(SUBMITTERS)]
    threads = [
        threading.Thread(
            target=_submit_until_failure, args=(gw, f"r{round_no}c{n}", acked, lock, stop)
        )
        for n, gw in enumerate(gateways)
    ]
    for t in threads:
        t.start()
    time.sleep(2.0)
    net.kill()
    stop.set()
    for t in threads:
        t.join(30)
    for gw in gateways:
        gw.close()


def _wait_committed(gw: Gateway, tx_ids: list[str], timeout_s: float = 60) -> None:
    app = gw.app("demo")
    deadline = time.monotonic() + timeout_s
    for tx_id in tx_ids:
        while app.transaction(tx_id).status != "committed":
            assert time.monotonic() < deadline, f"{tx_id} not committed after restart"
            time.sleep(0.05)


def test_sigkill_under_load_loses_nothing_acknowledged(fresh_network: RunningNetwork) -> None:
    net = fresh_network
    net.start()
    net.deploy()
    acked: dict[str, str] = {}
    for round_no in range(2):
        _load_and_kill(net, round_no, acked)
        net.start()
    assert len(acked) > 50, "the load generator should have been acknowledged many times"

    with net.gateway() as gw:
        _wait_committed(gw, list(acked))
        app = gw.app("demo")
        height = app.block("latest")["block"]["header"]["number"] + 1
        seen: dict[str, int] = {}
        for n in range(height):
            for tx in app.block(n)["block"]["transactions"]:
                proposal = tx["signed_proposal"]["proposal"]
                if proposal["contract"] == "asset-transfer":
                    seen[proposal["args"][0]] = seen.get(proposal["args"][0], 0) + 1
        contract = app.contract("asset-transfer")
        for tx_id, asset in acked.items():
            receipt = app.transaction(tx_id)
            assert receipt.code == "VALID", (asset, receipt)
            assert seen.get(asset) == 1, f"{asset} appears {seen.get(asset)} times in blocks"
        assert contract.evaluate("count") == len(seen)
    net.stop()

    verify_ledgers(net)
