"""`meridian network init` output and the network configuration's own checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from meridian.crypto.certs import Membership, Role, load_cert_der
from meridian.errors import Conflict, InvalidInput, NotFound
from meridian.network.config import BlockConfig, NetworkConfig, NetworkLayout
from meridian.network.init import InitOptions, init_network
from meridian.node.rules import get_consenters


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
