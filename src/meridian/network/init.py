"""``meridian network init``: generate a network directory with its identities.

Creates, for N organisations, a CA each, an ``admin`` and a ``user1`` (client)
identity each, the nodes (assigned to orgs round robin; node i serves its gateway on
``base_port + 2i`` and its peer-to-peer link on the port after),
and the genesis ``network.json`` with one app whose members are all orgs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..crypto.certs import CertificateAuthority, Role
from ..errors import Conflict, InvalidInput
from .config import (
    AppConfig,
    BlockConfig,
    NetworkConfig,
    NetworkLayout,
    NodeEntry,
    OrgConfig,
    write_file,
)


@dataclass(frozen=True, slots=True)
class InitOptions:
    network: str = "meridian"
    orgs: int = 2
    nodes: int = 1
    app: str = "demo"
    host: str = "127.0.0.1"
    base_port: int = 7050
    block: BlockConfig = field(default_factory=BlockConfig)


def init_network(root: Path, options: InitOptions) -> NetworkConfig:
    """Write a new network directory at ``root`` (which must be empty or absent)."""
    if not 1 <= options.orgs <= 64 or not 1 <= options.nodes <= 64:
        raise InvalidInput("orgs and nodes must be in 1..64", code="bad_config")
    if root.exists() and any(root.iterdir()):
        raise Conflict(
            f"{root} is not empty",
            code="already_exists",
            hint="choose a new directory or remove this one",
        )
    layout = NetworkLayout(root)
    org_ids = [f"org{i}" for i in range(1, options.orgs + 1)]
    orgs = [_init_org(layout, org) for org in org_ids]
    nodes = []
    for i in range(options.nodes):
        node_id, org = f"node{i + 1}", org_ids[i % len(org_ids)]
        ca = next(ca for ca in orgs if ca.org == org)
        issued = ca.issue(node_id, Role.NODE)
        _write_identity(layout.node_dir(node_id), issued.cert_pem, issued.key_pem)
        layout.data_dir(node_id).mkdir(parents=True, exist_ok=True)
        gateway_port = options.base_port + 2 * i
        nodes.append(
            NodeEntry(node_id, org, options.host, gateway_port, gateway_port + 1, issued.cert_pem)
        )
    config = NetworkConfig(
        network=options.network,
        orgs=tuple(OrgConfig(ca.org, ca.cert_pem) for ca in orgs),
        nodes=tuple(nodes),
        apps=(AppConfig(options.app, tuple(org_ids)),),
        block=options.block,
    )
    config.validate()
    layout.save(config)
    return config


def _init_org(layout: NetworkLayout, org: str) -> CertificateAuthority:
    ca = CertificateAuthority.create(org)
    write_file(layout.ca_dir(org) / "ca.pem", ca.cert_pem)
    write_file(layout.ca_dir(org) / "ca.key", ca.key_pem, secret=True)
    for name, role, attrs in (
        ("admin", Role.ADMIN, {}),
        ("user1", Role.CLIENT, {"department": "operations"}),
    ):
        issued = ca.issue(name, role, attrs=attrs)
        _write_identity(layout.user_dir(org, name), issued.cert_pem, issued.key_pem)
    return ca


def _write_identity(folder: Path, cert_pem: bytes, key_pem: bytes | None) -> None:
    write_file(folder / "cert.pem", cert_pem)
    if key_pem is not None:
        write_file(folder / "key.pem", key_pem, secret=True)
