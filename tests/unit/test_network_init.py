"""`meridian network init` profiles: the pilot service network and the unchanged default.

An unknown profile is ``InvalidInput(code="bad_config")``, the code every other bad
init option already uses.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from meridian.cli.main import app as cli
from meridian.crypto.certs import Membership, Role, load_cert_der
from meridian.errors import InvalidInput
from meridian.network.config import ORG_TYPES, BlockConfig, NetworkConfig, NetworkLayout
from meridian.network.init import PROFILES, InitOptions, init_network
from meridian.network.plans import DEFAULT_PLANS

PILOT_ZONES = {
    "beijing": "city",
    "shanghai": "city",
    "shenzhen": "city",
    "hongkong": "region",
}


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> tuple[NetworkLayout, NetworkConfig]:
    layout = NetworkLayout(tmp_path_factory.mktemp("pilot") / "net")
    return layout, init_network(layout.root, InitOptions(profile="pilot"))


def test_pilot_has_zones_and_every_org_type(pilot: tuple[NetworkLayout, NetworkConfig]) -> None:
    _, config = pilot
    assert {z.id: z.kind for z in config.zones} == PILOT_ZONES
    assert all(z.name for z in config.zones)
    counts = Counter(o.type for o in config.orgs)
    assert set(counts) == set(ORG_TYPES)
    assert (counts["operator"], counts["central_bank"], counts["bank"]) == (4, 1, 3)
    assert (counts["regulator"], counts["enterprise"], counts["developer"]) == (1, 12, 8)


def test_pilot_runs_one_operator_node_per_zone(pilot: tuple[NetworkLayout, NetworkConfig]) -> None:
    layout, config = pilot
    assert [n.id for n in config.nodes] == ["node1", "node2", "node3", "node4"]
    assert {n.org for n in config.nodes} == set(config.operators)
    assert sorted(n.zone for n in config.nodes) == sorted(PILOT_ZONES)
    for node in config.nodes:
        assert dict(config.org(node.org).details)["zone"] == node.zone
        assert layout.data_dir(node.id).is_dir()
    assert [(n.port, n.p2p_port) for n in config.nodes] == [
        (7050, 7051),
        (7052, 7053),
        (7054, 7055),
        (7056, 7057),
    ]
    assert config.governance.nodes == ("node1", "node2", "node3", "node4")
    assert set(config.governance.members) == {o.id for o in config.orgs}


def test_pilot_has_plans_no_apps_and_default_policies(
    pilot: tuple[NetworkLayout, NetworkConfig],
) -> None:
    layout, config = pilot
    assert config.plans == DEFAULT_PLANS
    assert config.apps == ()
    assert config.policies == ()
    assert layout.load() == config
    assert "profile" not in orjson.loads(layout.config_file.read_bytes())


def test_pilot_orgs_carry_real_name_details(pilot: tuple[NetworkLayout, NetworkConfig]) -> None:
    _, config = pilot
    for org in config.orgs:
        details = dict(org.details)
        assert org.name
        assert details["legal_name"] and details["registration_no"] and details["contact"]
        assert details["zone"] in PILOT_ZONES
    registrations = [dict(o.details)["registration_no"] for o in config.orgs]
    assert len(set(registrations)) == len(registrations)


def test_pilot_identities_on_disk_chain_to_their_org(
    pilot: tuple[NetworkLayout, NetworkConfig],
) -> None:
    layout, config = pilot
    msp = Membership({o.id: o.ca_pem for o in config.orgs})
    for org in config.orgs:
        assert (layout.ca_dir(org.id) / "ca.pem").read_bytes() == org.ca_pem
        assert (layout.ca_dir(org.id) / "ca.key").stat().st_mode & 0o077 == 0
        for name, role in (("admin", Role.ADMIN), ("user1", Role.CLIENT)):
            folder = layout.user_dir(org.id, name)
            assert (folder / "key.pem").stat().st_mode & 0o077 == 0
            who = msp.validate(load_cert_der((folder / "cert.pem").read_bytes()))
            assert (who.org, who.name, who.role) == (org.id, name, role)
    for node in config.nodes:
        who = msp.validate(load_cert_der((layout.node_dir(node.id) / "cert.pem").read_bytes()))
        assert (who.org, who.role) == (node.org, Role.NODE)
        assert (layout.node_dir(node.id) / "key.pem").is_file()
    assert sorted(p.name for p in (layout.root / "nodes").iterdir()) == [n.id for n in config.nodes]


def test_pilot_honours_network_host_ports_and_block(tmp_path: Path) -> None:
    options = InitOptions(
        network="pilotnet",
        host="127.0.0.2",
        base_port=9100,
        block=BlockConfig(10, 5),
        profile="pilot",
    )
    config = init_network(tmp_path / "net", options)
    assert (config.network, config.block) == ("pilotnet", BlockConfig(10, 5))
    assert [(n.host, n.port) for n in config.nodes][-1] == ("127.0.0.2", 9106)


def test_default_profile_is_unchanged(tmp_path: Path) -> None:
    layout = NetworkLayout(tmp_path / "net")
    config = init_network(layout.root, InitOptions(orgs=3, nodes=5))
    assert layout.load() == config
    assert [(o.id, o.type, o.name, o.details) for o in config.orgs] == [
        (f"org{i}", "operator", "", ()) for i in (1, 2, 3)
    ]
    assert [(n.id, n.org, n.port, n.p2p_port, n.zone) for n in config.nodes] == [
        ("node1", "org1", 7050, 7051, ""),
        ("node2", "org2", 7052, 7053, ""),
        ("node3", "org3", 7054, 7055, ""),
        ("node4", "org1", 7056, 7057, ""),
        ("node5", "org2", 7058, 7059, ""),
    ]
    assert [(a.name, a.members) for a in config.apps] == [("demo", ("org1", "org2", "org3"))]
    assert (config.zones, config.plans, config.policies) == ((), DEFAULT_PLANS, ())
    for node in ("node1", "node5"):  # each node's portal registrar: its operator's admin
        registrar = layout.node_dir(node) / "registrar" / "cert.pem"
        identity = Membership({o.id: o.ca_pem for o in config.orgs}).validate(
            load_cert_der(registrar.read_bytes())
        )
        assert (identity.role, identity.org) == (Role.ADMIN, config.node(node).org)
    for org in ("org1", "org2", "org3"):
        assert (layout.user_dir(org, "admin") / "cert.pem").is_file()
        assert (layout.user_dir(org, "user1") / "key.pem").is_file()


def test_default_profile_is_the_default(tmp_path: Path) -> None:
    assert InitOptions().profile == "default" == PROFILES[0]
    config = init_network(tmp_path / "net", InitOptions(profile="default"))
    assert [o.id for o in config.orgs] == ["org1", "org2"]
    assert [a.name for a in config.apps] == ["demo"]


def test_invalid_profile(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        init_network(tmp_path / "net", InitOptions(profile="mainnet"))
    assert info.value.code == "bad_config"
    assert "pilot" in (info.value.hint or "")
    assert not (tmp_path / "net").exists()  # nothing written


def test_cli_network_init_pilot_prints_a_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["network", "init", str(tmp_path / "net"), "--profile", "pilot"]
    )
    assert result.exit_code == 0, result.output
    assert "hongkong (region)" in result.output
    assert "3 bank" in result.output and "12 enterprise" in result.output
    assert "node4 (ops-hongkong, hongkong)" in result.output
    assert NetworkLayout(tmp_path / "net").load().zones


def test_invalid_cli_pilot_with_node_count(tmp_path: Path) -> None:
    args = [
        "--json",
        "network",
        "init",
        str(tmp_path / "net"),
        "--profile",
        "pilot",
        "--nodes",
        "7",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert orjson.loads(result.output)["error"]["code"] == "bad_config"
    assert not (tmp_path / "net").exists()
