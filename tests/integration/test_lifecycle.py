"""Contract lifecycle end to end: upgrade to a new package, cross-contract calls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meridian.errors import ContractFailure

from .conftest import EXAMPLE, FIXTURES, RunningNetwork


def test_upgrade_runs_the_new_code_and_keeps_state(network: RunningNetwork, tmp_path: Path) -> None:
    with network.gateway() as gw:
        contract = gw.app("demo").contract("asset-transfer")
        contract.submit("create", "upg-1", "alice", 5)
        before = {c["name"]: c for c in gw.app("demo").contracts()}["asset-transfer"]

    upgraded = tmp_path / "asset_transfer_v2"
    shutil.copytree(EXAMPLE, upgraded)
    (upgraded / "meridian.json").write_text(
        '{"name": "asset-transfer", "version": "2.0", "entry": "asset_transfer:AssetTransfer"}'
    )
    source = (upgraded / "asset_transfer.py").read_text()
    (upgraded / "asset_transfer.py").write_text(
        source
        + """

    @query
    def version(self, ctx: Context) -> str:
        return "2.0"
"""
    )
    definition = network.deploy(upgraded)
    assert definition["sequence"] == before["sequence"] + 1
    assert definition["package_id"] != before["package_id"]

    with network.gateway() as gw:
        contract = gw.app("demo").contract("asset-transfer")
        assert contract.evaluate("version") == "2.0"
        assert contract.evaluate("read", "upg-1")["owner"] == "alice"  # state kept
        contract.submit("transfer", "upg-1", "bob")
        assert contract.evaluate("read", "upg-1")["owner"] == "bob"


def test_contract_invokes_another_contract_in_one_transaction(network: RunningNetwork) -> None:
    network.deploy(FIXTURES / "registry_caller")
    with network.gateway() as gw:
        app = gw.app("demo")
        app.contract("asset-transfer").submit("create", "inv-1", "alice", 7)
        caller = app.contract("registry-caller")
        assert caller.evaluate("owner_of", "inv-1") == "alice"
        receipt = caller.submit_receipt("transfer_and_log", "inv-1", "carol")
        assert receipt.code == "VALID"
        assert app.contract("asset-transfer").evaluate("read", "inv-1")["owner"] == "carol"
        tx = app.block(receipt.block)["block"]["transactions"][receipt.index]
        namespaces = sorted(rw["namespace"] for rw in tx["result"]["rwsets"])
        assert namespaces == ["asset-transfer", "registry-caller"]
        with pytest.raises(ContractFailure) as exc:
            caller.evaluate("owner_of", "no-such-asset")
        assert exc.value.code == "contract_rejected"
