"""The SDK against a real node: submit, evaluate, commits, typed errors, events, checkpoints.

Both the blocking SDK (:func:`connect`) and the asyncio one (:func:`connect_async`, run
with :func:`asyncio.run`: no pytest plugin needed).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meridian.client import (
    Contract,
    FileCheckpoint,
    Gateway,
    Identity,
    Receipt,
    connect,
    connect_async,
)
from meridian.crypto.certs import CertificateAuthority, Role, load_cert_der, load_signer
from meridian.errors import (
    CertificateError,
    Conflict,
    ContractArgumentError,
    ContractFailure,
    InvalidInput,
    MeridianError,
    NotFound,
)
from meridian.types import TxCode

from .conftest import RunningNetwork

APP = "demo"
CONTRACT = "asset-transfer"
STREAM_TIMEOUT_S = 15.0  # a stalled event stream fails the test instead of hanging it


def new_asset() -> str:
    return f"sdk-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def gateway(network: RunningNetwork) -> Iterator[Gateway]:
    with network.gateway(timeout_s=STREAM_TIMEOUT_S) as gw:
        yield gw


@pytest.fixture()
def contract(gateway: Gateway) -> Contract:
    return gateway.app(APP).contract(CONTRACT)


def height(gateway: Gateway) -> int:
    return gateway.status()["apps"][APP]["height"]


# --------------------------------------------------------------------- submit, evaluate


def test_submit_and_evaluate(gateway: Gateway, contract: Contract) -> None:
    asset = new_asset()
    created = contract.submit("create", asset, "alice", 10)
    assert created == {"id": asset, "owner": "alice", "value": 10, "created_by": "user1@org1"}
    assert contract.evaluate("read", asset) == created

    receipt = contract.submit_receipt("transfer", asset, "bob")
    assert (receipt.status, receipt.code, receipt.valid) == ("committed", "VALID", True)
    assert receipt.response == {**created, "owner": "bob"}
    assert receipt.events == [
        {
            "contract": CONTRACT,
            "name": "transferred",
            "payload": {"id": asset, "from": "alice", "to": "bob"},
        }
    ]
    assert gateway.app(APP).transaction(receipt.tx_id) == receipt
    assert [h["value"]["owner"] for h in contract.evaluate("history", asset)] == ["alice", "bob"]
    assert asset in {a["id"] for a in contract.evaluate("by_owner", "bob")}


def test_submit_async_then_wait_for_the_commit(gateway: Gateway, contract: Contract) -> None:
    asset = new_asset()
    commit = contract.submit_async("create", asset, "carol", 5)
    assert commit.result["owner"] == "carol"  # the endorsed response, known before the commit
    receipt = commit.status(timeout_s=10)
    assert (receipt.tx_id, receipt.status, receipt.code) == (commit.tx_id, "committed", "VALID")
    assert receipt.response == commit.result
    assert commit.status() is receipt
    assert contract.evaluate("read", asset)["owner"] == "carol"


def test_contracts_and_status(gateway: Gateway) -> None:
    status = gateway.status()
    assert status["network"] == gateway.network and status["apps"][APP]["halted"] is None
    definitions = {d["name"]: d for d in gateway.app(APP).contracts()}
    assert definitions[CONTRACT]["sequence"] == 1
    assert definitions[CONTRACT]["version"] == "1.0"


def test_submit_many_reports_each_call(contract: Contract) -> None:
    first, second = new_asset(), new_asset()
    results = contract.submit_many(
        [
            ("create", [first, "dora", 1]),
            ("create", [second, "dora", -1]),
            ("create", [second, "dora", 2]),
            ("transfer", [new_asset(), "eve"]),
        ]
    )
    assert isinstance(results[0], Receipt) and results[0].code == "VALID"
    assert isinstance(results[1], MeridianError) and results[1].code == "contract_rejected"
    assert isinstance(results[2], Receipt) and results[2].code == "VALID"
    assert isinstance(results[3], MeridianError) and results[3].code == "contract_rejected"
    assert contract.evaluate("read", first)["value"] == 1
    assert contract.evaluate("read", second)["value"] == 2


# ---------------------------------------------------------------------------- errors


@dataclass
class ErrorCase:
    call: Callable[[Gateway, str], Any]  # (gateway, fresh asset id) -> raises
    cls: type[MeridianError]
    status: int
    code: str


def _contract(gw: Gateway, name: str = CONTRACT, app: str = APP) -> Contract:
    return gw.app(app).contract(name)


def _replay(gw: Gateway, asset: str) -> None:
    signed = gw.builder.build(APP, CONTRACT, "create", (asset, "x", 1)).to_dict()
    gw.request("POST", f"/v1/apps/{APP}/transactions", {"proposal": signed})
    gw.request("POST", f"/v1/apps/{APP}/transactions", {"proposal": signed})


ERRORS: dict[str, ErrorCase] = {
    "contract rejects": ErrorCase(
        lambda gw, a: _contract(gw).submit("create", a, "x", -1),
        ContractFailure,
        422,
        "contract_rejected",
    ),
    "transfer of a missing asset": ErrorCase(
        lambda gw, a: _contract(gw).submit_async("transfer", a, "x"),
        ContractFailure,
        422,
        "contract_rejected",
    ),
    "unknown function": ErrorCase(
        lambda gw, a: _contract(gw).submit("steal", a), NotFound, 404, "unknown_function"
    ),
    "unknown contract": ErrorCase(
        lambda gw, a: _contract(gw, "nope").evaluate("read", a),
        NotFound,
        404,
        "unknown_contract",
    ),
    "unknown app": ErrorCase(
        lambda gw, a: _contract(gw, app="nope").submit("create", a, "x", 1),
        NotFound,
        404,
        "unknown_app",
    ),
    "unknown transaction": ErrorCase(
        lambda gw, a: gw.app(APP).transaction("ab" * 32), NotFound, 404, "tx_not_found"
    ),
    "unknown block": ErrorCase(
        lambda gw, a: gw.app(APP).block(10**9), NotFound, 404, "block_not_found"
    ),
    "wrong argument type": ErrorCase(
        lambda gw, a: _contract(gw).submit("create", a, "x", "ten"),
        ContractArgumentError,
        400,
        "bad_argument",
    ),
    "wrong argument count": ErrorCase(
        lambda gw, a: _contract(gw).evaluate("read"), ContractArgumentError, 400, "bad_argument"
    ),
    "query submitted": ErrorCase(
        lambda gw, a: _contract(gw).submit("read", a), InvalidInput, 400, "not_a_transaction"
    ),
    "replayed proposal": ErrorCase(_replay, Conflict, 409, "duplicate_tx"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_invalid_call_raises_a_typed_error(gateway: Gateway, case: str) -> None:
    spec = ERRORS[case]
    asset = new_asset()
    before = height(gateway)
    with pytest.raises(MeridianError) as info:
        spec.call(gateway, asset)
    error = info.value
    assert isinstance(error, spec.cls), repr(error)
    assert (error.http_status, error.code) == (spec.status, spec.code)
    assert error.message
    expected = before + 1 if case == "replayed proposal" else before  # the first one commits
    assert height(gateway) == expected
    if case != "replayed proposal":
        assert _contract(gateway).evaluate("read", asset) is None


def test_invalid_float_argument_is_refused_before_sending(gateway: Gateway) -> None:
    before = height(gateway)
    with pytest.raises(InvalidInput) as info:
        _contract(gateway).submit("create", new_asset(), "x", 2.5)
    assert info.value.code == "float_not_allowed"
    assert height(gateway) == before


def test_invalid_untrusted_identity_raises_auth_error(network: RunningNetwork) -> None:
    issued = CertificateAuthority.create("org1").issue("intruder", Role.CLIENT)
    assert issued.key_pem is not None
    stranger = Identity(load_cert_der(issued.cert_pem), load_signer(issued.key_pem))
    with connect(network.url, stranger) as gw:  # health is public: connecting works
        assert gw.network == network.config.network
        with pytest.raises(CertificateError) as info:
            _contract(gw).submit("create", new_asset(), "x", 1)
    assert (info.value.http_status, info.value.code) == (401, "certificate_invalid")
    assert info.value.hint


# ---------------------------------------------------------------------------- events


def test_events_replay_every_block_from_zero_in_order(gateway: Gateway, contract: Contract) -> None:
    asset = new_asset()
    contract.submit("create", asset, "alice", 1)
    contract.submit("transfer", asset, "bob")
    last = contract.submit_receipt("transfer", asset, "carol")
    assert last.block is not None
    app = gateway.app(APP)
    blocks, mine = [], []
    with closing(app.events(start=0)) as stream:
        for event in stream:
            blocks.append(event.block)
            assert event.hash == app.block(event.block)["hash"]
            assert {tx["code"] for tx in event.txs} <= set(TxCode.__members__)
            mine += [
                (e["name"], e["payload"])
                for e in event.events
                if e["contract"] == CONTRACT and e["payload"]["id"] == asset
            ]
            if event.block == last.block:
                break
    assert blocks == list(range(last.block + 1))
    assert mine == [
        ("created", {"id": asset, "owner": "alice"}),
        ("transferred", {"id": asset, "from": "alice", "to": "bob"}),
        ("transferred", {"id": asset, "from": "bob", "to": "carol"}),
    ]


def test_events_deliver_blocks_committed_after_subscribing(
    network: RunningNetwork, gateway: Gateway
) -> None:
    app = gateway.app(APP)
    start = height(gateway)
    asset = new_asset()

    def submit_later() -> None:
        time.sleep(0.3)
        with network.gateway() as other:
            _contract(other).submit("create", asset, "late", 1)

    submitter = threading.Thread(target=submit_later)
    with closing(app.events(start=start)) as stream:
        submitter.start()
        event = next(stream)
    submitter.join(10)
    assert event.block == start
    assert [e["payload"] for e in event.events] == [{"id": asset, "owner": "late"}]


def test_file_checkpoint_resumes_after_the_last_handled_block(
    gateway: Gateway, tmp_path: Path
) -> None:
    app = gateway.app(APP)
    path = tmp_path / "checkpoint.json"
    checkpoint = FileCheckpoint(path)
    assert checkpoint.block is None
    handled = []
    with closing(app.events(start=0, checkpoint=checkpoint)) as stream:
        for event in stream:
            handled.append(event.block)
            checkpoint.checkpoint_block(event.block)
            if len(handled) == 2:
                break
    assert handled == [0, 1]

    resumed = FileCheckpoint(path)  # as a restarted consumer would load it
    assert resumed.block == 1
    with closing(app.events(start=0, checkpoint=resumed)) as stream:
        assert next(stream).block == 2


# ----------------------------------------------------------------------------- asyncio


def test_async_sdk(network: RunningNetwork) -> None:
    identity = Identity.from_dir(network.layout.user_dir("org1", "user1"))
    asset, others = new_asset(), [new_asset() for _ in range(3)]

    async def scenario() -> None:
        async with await connect_async(network.url, identity, timeout_s=STREAM_TIMEOUT_S) as gw:
            assert gw.builder.network == network.config.network
            app = gw.app(APP)
            contract = app.contract(CONTRACT)
            created = await contract.submit("create", asset, "alice", 2)
            assert await contract.evaluate("read", asset) == created

            receipts = await asyncio.gather(
                *(contract.submit_receipt("create", a, "bulk", 1) for a in others)
            )
            assert {r.code for r in receipts} == {"VALID"}

            pending = await contract.submit_async("transfer", asset, "bob")
            assert pending.status == "pending" and pending.response["owner"] == "bob"
            committed = await _wait_committed(app, pending.tx_id)
            assert committed.code == "VALID" and committed.block is not None

            with pytest.raises(ContractFailure) as info:
                await contract.submit("create", asset, "mallory", 1)
            assert info.value.code == "contract_rejected"
            with pytest.raises(NotFound) as missing:
                await contract.evaluate("steal", asset)
            assert missing.value.code == "unknown_function"

            names = []
            async with aclosing(app.events(start=0)) as stream:
                async for event in stream:
                    names += [
                        e["name"]
                        for e in event.events
                        if e["contract"] == CONTRACT and e["payload"]["id"] == asset
                    ]
                    if event.block == committed.block:
                        break
            assert names == ["created", "transferred"]

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _wait_committed(app: Any, tx_id: str, timeout_s: float = 10.0) -> Receipt:
    deadline = time.monotonic() + timeout_s
    while (receipt := await app.transaction(tx_id)).status != "committed":
        assert time.monotonic() < deadline, f"{tx_id} still {receipt.status}"
        await asyncio.sleep(0.05)
    return receipt
