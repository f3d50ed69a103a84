"""`meridian network init` output and the network configuration's own checks, and
observers (a regulator's nodes): what they hold, and what they leave unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from meridian.crypto.certs import CertificateAuthority, Membership, Role, load_cert_der
from meridian.errors import Conflict, InvalidInput, NotFound
from meridian.network.config import (
    GOVERNANCE_APP,
    AppConfig,
    BlockConfig,
    NetworkConfig,
    NetworkLayout,
    NodeEntry,
    OrgConfig,
)
from meridian.network.history import ConfigHistory
from meridian.network.init import InitOptions, init_network
from meridian.node.rules import compute_next_consenters, compute_rules, get_consenters
from meridian.types import BlockHeader, Version


def test_init_writes_a_loadable_network_with_valid_identities(tmp_path: Path) -> None:
    layout = NetworkLayout(tmp_path / "net")
    config = init_network(layout.root, InitOptions(orgs=3, nodes=2, app="trade"))
    assert layout.load() == config
    assert [n.org for n in config.nodes] == ["org1", "org2"]
    assert config.app("trade").members == ("org1", "org2", "org3")
    msp = Membership({o.id: o.ca_pem for o in config.orgs})
    node = msp.validate(load_cert_der((layout.node_dir("node2") / "cert.pem").read_bytes()))
    assert (node.org, node.role) == ("org2", Role.NODE)
    user = msp.validate(load_cert_der((layout.user_dir("org3", "user1") / "cert.pem").read_bytes()))
    assert user.role == Role.CLIENT and user.attrs["department"] == "operations"
    assert (layout.ca_dir("org1") / "ca.key").stat().st_mode & 0o077 == 0  # secret: 0600


def test_invalid_init_into_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "something").write_text("x")
    with pytest.raises(Conflict):
        init_network(tmp_path / "net", InitOptions())


@pytest.mark.parametrize("block", [BlockConfig(0, 20), BlockConfig(10**6, 20), BlockConfig(5, 0)])
def test_invalid_block_config(tmp_path: Path, block: BlockConfig) -> None:
    config = init_network(tmp_path / "net", InitOptions())
    bad = NetworkConfig(config.network, config.orgs, config.nodes, config.apps, block)
    with pytest.raises(InvalidInput) as exc:
        bad.validate()
    assert exc.value.code == "bad_config"


def test_invalid_app_with_unknown_member(tmp_path: Path) -> None:
    config = init_network(tmp_path / "net", InitOptions())
    data = config.to_dict()
    data["apps"][0]["members"] = ["org1", "nobody"]
    with pytest.raises(InvalidInput):
        NetworkConfig.from_dict(data)


def test_consenters_default_to_member_nodes_and_follow_configuration(tmp_path: Path) -> None:
    config = init_network(tmp_path / "net", InitOptions(orgs=4, nodes=4))
    membership = Membership({o.id: o.ca_pem for o in config.orgs})
    hosting = config.hosting_nodes(config.apps[0])
    assert get_consenters(config, membership, hosting).ids == ("node1", "node2", "node3", "node4")
    assert get_consenters(config, membership, ["node2", "node1"]).ids == ("node1", "node2")


def test_invalid_consenter_unknown_to_the_configuration(tmp_path: Path) -> None:
    """A consenter the configuration does not know stops the channel, never shrinks the
    set (every node must order with the same consenters)."""
    config = init_network(tmp_path / "net", InitOptions(orgs=4, nodes=4))
    membership = Membership({o.id: o.ca_pem for o in config.orgs})
    with pytest.raises(NotFound) as info:
        get_consenters(config, membership, ["node1", "node9"])
    assert info.value.code == "unknown_node"


# ------------------------------------------------------------ observers (a regulator's nodes)

REGULATOR_CA = CertificateAuthority.create("csrc")


def with_observer(
    config: NetworkConfig, *, org_type: str = "regulator", status: str = "observer"
) -> NetworkConfig:
    """``config`` with the org ``csrc`` (of ``org_type``) running node ``obs1``, and
    apps around it: ``shop`` on chosen nodes, ``watched`` (the regulator a member, hosted
    by default on its members' nodes) and ``old`` (closed)."""
    org = OrgConfig("csrc", REGULATOR_CA.cert_pem, org_type, "Securities Regulator")
    cert = REGULATOR_CA.issue("obs1", Role.NODE).cert_pem
    node = NodeEntry("obs1", "csrc", "127.0.0.1", 7900, 7901, cert, status=status)
    apps = (
        AppConfig("shop", ("org1",), nodes=("node1", "node2")),
        AppConfig("watched", ("org1", "csrc")),
        AppConfig("old", ("org2",), nodes=("node2",), status="closed"),
    )
    return dataclasses.replace(
        config,
        orgs=(*config.orgs, org),
        nodes=(*config.nodes, node),
        apps=(*config.apps, *apps),
    )


@pytest.fixture
def observed(tmp_path: Path) -> NetworkConfig:
    config = with_observer(init_network(tmp_path / "net", InitOptions(orgs=4, nodes=4)))
    config.validate()
    return config


def test_an_observer_holds_every_open_channel_and_hosts_none(observed: NetworkConfig) -> None:
    assert observed.observers == ("obs1",)
    hosted = [a.name for a in observed.hosted_by("obs1")]
    assert hosted == [GOVERNANCE_APP, "demo", "shop", "watched"]  # not the closed "old"
    assert [a.name for a in observed.hosted_by("node2")] == [GOVERNANCE_APP, "demo", "shop"]
    for name in (GOVERNANCE_APP, "demo", "shop", "watched", "old"):
        app = observed.app(name)
        assert "obs1" not in observed.hosting_nodes(app)  # it never endorses or orders
        assert "obs1" not in observed.consenting_nodes(app)
        assert observed.replicas(app)[: len(observed.hosting_nodes(app))] == (
            observed.hosting_nodes(app)
        )
        assert ("obs1" in observed.replicas(app)) == (name != "old")
    # a member regulator's node does not host its app by default either
    assert observed.hosting_nodes(observed.app("watched")) == ("node1",)
    assert observed.replicas(observed.app("watched")) == ("node1", "obs1")


def test_observers_change_no_endorsers_and_no_consenters(observed: NetworkConfig) -> None:
    """Every honest node computes the same rules and consenters, observers or not."""
    plain = dataclasses.replace(observed, nodes=tuple(n for n in observed.nodes if n.id != "obs1"))
    membership = Membership({o.id: o.ca_pem for o in observed.orgs})
    for name in (GOVERNANCE_APP, "demo", "shop", "watched"):
        rules = compute_rules(observed, observed.app(name))
        assert rules.endorsers == compute_rules(plain, plain.app(name)).endorsers
        assert "obs1" not in (rules.endorsers or {})
        consenters = [
            compute_next_consenters(ConfigHistory(view), membership, name, EmptyLedger()).ids
            for view in (observed, plain)
        ]
        assert consenters[0] == consenters[1] and "obs1" not in consenters[0]
    assert compute_rules(observed, observed.app("demo")).endorsers == {
        f"node{i}": f"org{i}" for i in range(1, 5)
    }


class EmptyLedger:
    """A channel ledger without blocks (the consenters of its first block)."""

    def height(self) -> int:
        return 0

    def get_header(self, number: int) -> BlockHeader | None:
        return None

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None:
        return None


@pytest.mark.parametrize(
    ("org_type", "status"),
    [
        ("enterprise", "active"),  # only operators and regulators run nodes
        ("developer", "observer"),
        ("regulator", "active"),  # a regulator's node is an observer, never a consenter
        ("regulator", "joining"),
        ("operator", "observer"),  # an operator's node orders (once active)
    ],
)
def test_invalid_node_of_its_org(tmp_path: Path, org_type: str, status: str) -> None:
    config = init_network(tmp_path / "net", InitOptions(orgs=4, nodes=4))
    bad = with_observer(config, org_type=org_type, status=status)
    with pytest.raises(InvalidInput) as exc:
        bad.validate()
    assert exc.value.code == "bad_config"
    with pytest.raises(InvalidInput):
        NetworkConfig.from_dict(bad.to_dict())


def test_invalid_app_hosted_on_an_observer(observed: NetworkConfig) -> None:
    shop = dataclasses.replace(observed.app("shop"), nodes=("node1", "obs1"))
    bad = dataclasses.replace(
        observed, apps=tuple(shop if a.name == "shop" else a for a in observed.apps)
    )
    with pytest.raises(InvalidInput) as exc:
        bad.validate()
    assert exc.value.code == "bad_config" and "observer" in exc.value.message
