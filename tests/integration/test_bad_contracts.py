"""Misbehaving contracts: each failure has its code, nothing reaches the ledger, the node lives.

The ``misbehave`` contract (``contracts/misbehave``) writes a marker key and then
misbehaves one way per function. Every case checks the HTTP status and error code,
that the block height did not move and the marker is absent, and that the
asset-transfer contract still commits afterwards.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from meridian import codec
from meridian.client import Identity
from meridian.client.core import ProposalBuilder
from meridian.contracts.sandbox import SandboxLimits
from meridian.types import Transaction

from .conftest import FIXTURES, RunningNetwork

APP = "demo"
MISBEHAVE = "misbehave"
ASSETS = "asset-transfer"
PACKAGE = FIXTURES / "misbehave"
CALL_TIMEOUT_S = SandboxLimits().call_timeout_s  # what the node runs with (not configurable)


@dataclass
class Node:
    """Raw signed HTTP to the node as org1/user1."""

    http: httpx.Client
    builder: ProposalBuilder

    def post(self, path: str, payload: Any) -> httpx.Response:
        body = orjson.dumps(payload)
        headers = self.builder.headers("POST", httpx.URL(path), body)
        return self.http.post(path, content=body, headers=headers)

    def call(self, contract: str, function: str, *args: Any, submit: bool = True) -> httpx.Response:
        proposal = self.builder.build(APP, contract, function, args).to_dict()
        route = "transactions" if submit else "evaluate"
        return self.post(f"/v1/apps/{APP}/{route}", {"proposal": proposal})

    def height(self) -> int:
        headers = self.builder.headers("GET", httpx.URL("/v1/status"), b"")
        response = self.http.get("/v1/status", headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["apps"][APP]["height"]

    def peek(self, key: str) -> Any:
        response = self.call(MISBEHAVE, "peek", key, submit=False)
        assert response.status_code == 200, response.text
        return response.json()["response"]


@pytest.fixture(scope="module")
def node(network: RunningNetwork) -> Iterator[Node]:
    network.deploy(source=PACKAGE)
    identity = Identity.from_dir(network.layout.user_dir("org1", "user1"))
    with httpx.Client(base_url=network.url, timeout=60) as http:
        yield Node(http, ProposalBuilder(identity, network.config.network))


def new_key() -> str:
    return f"mark-{uuid.uuid4().hex[:12]}"


def assert_assets_still_commit(node: Node) -> None:
    response = node.call(ASSETS, "create", f"bc-{uuid.uuid4().hex[:12]}", "olivia", 1)
    assert response.status_code == 200, response.text
    assert response.json()["receipt"]["code"] == "VALID"


def assert_refused(
    node: Node,
    function: str,
    *args: Any,
    status: int = 422,
    codes: tuple[str, ...],
    submit: bool = True,
) -> httpx.Response:
    """Call ``misbehave.function(marker, *args)``; check the refusal and its aftermath."""
    key = new_key()
    before = node.height()
    response = node.call(MISBEHAVE, function, key, *args, submit=submit)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] in codes, error
    assert error["message"]
    assert node.height() == before, "a failed call reached the ledger"
    assert node.peek(key) is None
    assert_assets_still_commit(node)
    return response


def test_misbehave_commits_when_it_behaves(node: Node) -> None:
    key = new_key()
    before = node.height()
    response = node.call(MISBEHAVE, "behave", key)
    assert response.status_code == 200, response.text
    assert response.json()["receipt"]["response"] == "ok"
    assert node.height() == before + 1
    assert node.peek(key) == "written before misbehaving"


@pytest.mark.parametrize(
    ("function", "code", "says"),
    [
        ("reject", "contract_rejected", "misbehave refuses politely"),
        ("crash", "contract_error", "KeyError"),
        ("exit_now", "contract_crashed", "exit status"),
    ],
)
def test_invalid_failing_contract(node: Node, function: str, code: str, says: str) -> None:
    response = assert_refused(node, function, codes=(code,))
    assert says in response.json()["error"]["message"]


def test_invalid_return_value(node: Node) -> None:
    response = node.call(MISBEHAVE, "returns_float", submit=False)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "contract_bad_value"
    assert_assets_still_commit(node)


def test_invalid_infinite_loop_times_out(node: Node) -> None:
    started = time.monotonic()
    assert_refused(node, "spin", codes=("contract_timeout",))
    assert time.monotonic() - started < CALL_TIMEOUT_S + 5
    assert spinning_workers() == [], "the timed-out worker was left running"


def test_invalid_unbounded_allocation(node: Node) -> None:
    assert_refused(node, "hog", codes=("contract_resource_limit",))


# ------------------------------------------------------------------------------ sockets


@pytest.fixture()
def listener() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.settimeout(0.3)
        yield sock


@pytest.mark.parametrize("swallow", [False, True], ids=["raises", "swallows"])
def test_invalid_socket_to_own_listener(node: Node, listener: socket.socket, swallow: bool) -> None:
    port = listener.getsockname()[1]
    assert_refused(node, "connect", port, swallow, codes=("contract_forbidden",))
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing connected


@pytest.mark.parametrize("swallow", [False, True], ids=["raises", "swallows"])
def test_invalid_socket_to_gateway(node: Node, network: RunningNetwork, swallow: bool) -> None:
    port = network.config.nodes[0].port
    response = assert_refused(node, "connect", port, swallow, codes=("contract_forbidden",))
    assert '"ok":true' not in response.text  # no health answer made it back out


# -------------------------------------------------------------------------------- files


@pytest.mark.parametrize("how", ["open", "os.open", "mkdir"])
def test_invalid_write_to_tmp(node: Node, how: str) -> None:
    target = Path("/tmp") / f"misbehave-{uuid.uuid4().hex}"
    assert_refused(node, "write_file", str(target), how, codes=("contract_forbidden",))
    assert not target.exists()


@pytest.mark.parametrize("how", ["open", "os.open"])
def test_invalid_write_to_own_package(node: Node, network: RunningNetwork, how: str) -> None:
    name = f"pwned-{uuid.uuid4().hex}.txt"
    assert_refused(node, "write_file", name, how, codes=("contract_forbidden",))
    for root in (network.layout.root, PACKAGE):
        assert list(root.rglob(name)) == []


def test_invalid_read_of_node_key(node: Node, network: RunningNetwork) -> None:
    key_file = network.layout.node_dir("node1") / "key.pem"
    secret = key_file.read_text()
    secret_lines = [line for line in secret.splitlines() if line and "-----" not in line]
    assert secret_lines
    own = node.call(MISBEHAVE, "read_own", "meridian.json", submit=False)
    assert own.status_code == 200 and '"misbehave"' in own.json()["response"]  # reads work

    package_dir = next(network.layout.data_dir("node1").rglob("misbehave.py")).parent
    relative = os.path.relpath(key_file, package_dir)  # ../../.. from the package
    responses = [
        assert_refused(
            node, "read_file", path, codes=("contract_error", "contract_forbidden"), submit=submit
        )
        for path in (str(key_file), relative, f"/proc/self/root{key_file}")
        for submit in (True, False)
    ]
    listing = node.call(MISBEHAVE, "list_dir", str(key_file.parent), submit=False)
    assert listing.status_code == 422, listing.text
    assert '"key.pem"' not in listing.text  # not even the name, as a listed entry
    for response in [*responses, listing]:
        assert not any(line in response.text for line in secret_lines)


# ---------------------------------------------------------------------------- oversize


def test_invalid_transaction_over_the_size_limit(node: Node) -> None:
    before = node.height()
    response = node.call(MISBEHAVE, "bloat", 4)  # 4 values of 100 KiB, each under the limit
    assert_assets_still_commit(node)
    if response.status_code != 200:  # refused: fine, as long as nothing was committed
        assert response.status_code in (400, 422), response.text
        assert node.height() == before + 1  # only the asset-transfer check committed
        return
    receipt = response.json()["receipt"]
    headers = node.builder.headers(
        "GET", httpx.URL(f"/v1/apps/{APP}/blocks/{receipt['block']}"), b""
    )
    block = node.http.get(f"/v1/apps/{APP}/blocks/{receipt['block']}", headers=headers).json()
    tx = block["block"]["transactions"][receipt["index"]]
    Transaction.decode(codec.encode(tx))  # what a restart does with a pending transaction


# ------------------------------------------------------------------------------ helpers


def spinning_workers(window_s: float = 0.5) -> list[int]:
    """Processes of the misbehave contract that burn CPU over ``window_s``."""

    def cpu_ticks() -> dict[int, int]:
        ticks = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if b"misbehave:Misbehave" not in (entry / "cmdline").read_bytes():
                    continue
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks

    first = cpu_ticks()
    time.sleep(window_s)
    second = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    return [pid for pid, t in second.items() if t - first.get(pid, t) > hz * window_s / 2]
