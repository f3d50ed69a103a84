"""An app's data is for its member orgs only; a proposal is never executed twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meridian.cli.procs import free_port_block
from meridian.errors import Conflict, Forbidden, MeridianError
from meridian.network.config import NetworkLayout
from meridian.network.init import InitOptions, init_network

from .conftest import RunningNetwork


@pytest.fixture()
def three_orgs(tmp_path: Path) -> Iterator[RunningNetwork]:
    """org1 and org2 are members of `demo`; org3 is on the network but not in the app."""
    layout = NetworkLayout(tmp_path / "network")
    config = init_network(layout.root, InitOptions(orgs=3, base_port=free_port_block(2)))
    config = replace(config, apps=(replace(config.apps[0], members=("org1", "org2")),))
    layout.save(config)
    net = RunningNetwork(layout, config, [])
    net.start()
    try:
        net.deploy()
        yield net
    finally:
        net.kill()


def test_invalid_reads_by_a_non_member_org(three_orgs: RunningNetwork) -> None:
    with three_orgs.gateway() as member:
        receipt = (
            member.app("demo")
            .contract("asset-transfer")
            .submit_receipt("create", "secret-1", "alice", 1)
        )
    with three_orgs.gateway("org3/user1") as outsider:
        app = outsider.app("demo")
        reads = {
            "tx": lambda: app.transaction(receipt.tx_id),
            "proof": lambda: app.proof(receipt.tx_id),
            "block": lambda: app.block(receipt.block),
            "latest": lambda: app.block("latest"),
            "contracts": app.contracts,
            "events": lambda: next(iter(app.events(start=0))),
            "evaluate": lambda: app.contract("asset-transfer").evaluate("read", "secret-1"),
            "submit": lambda: app.contract("asset-transfer").submit("create", "x", "y", 1),
        }
        for name, read in reads.items():
            with pytest.raises(Forbidden) as exc:
                read()
            assert exc.value.code == "not_a_member", name
        # every org may use the governance channel; no other app is listed
        listed = outsider.request("GET", "/v1/apps")["apps"]
        assert [a["name"] for a in listed] == ["governance"]
    with three_orgs.gateway("org2/user1") as other_member:
        assert other_member.app("demo").transaction(receipt.tx_id).code == "VALID"


def test_concurrent_submits_of_one_proposal_commit_it_once(three_orgs: RunningNetwork) -> None:
    with three_orgs.gateway() as gw:
        signed = gw.builder.build("demo", "asset-transfer", "create", ("twin-1", "alice", 1))
        body = {"proposal": signed.to_dict(), "wait": True}
        outcomes: list[object] = []

        def send() -> None:
            with three_orgs.gateway() as client:
                try:
                    outcomes.append(client.request("POST", "/v1/apps/demo/transactions", body))
                except MeridianError as exc:
                    outcomes.append(exc)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        committed = [o for o in outcomes if isinstance(o, dict)]
        refused = [o for o in outcomes if isinstance(o, Conflict)]
        assert len(committed) == 1 and len(refused) == 3, outcomes
        assert all(e.code == "duplicate_tx" for e in refused)
        app = gw.app("demo")
        found = sum(
            1
            for n in range(app.block("latest")["block"]["header"]["number"] + 1)
            for tx in app.block(n)["block"]["transactions"]
            if tx["signed_proposal"]["proposal"]["nonce"] == signed.proposal.nonce.hex()
        )
        assert found == 1
