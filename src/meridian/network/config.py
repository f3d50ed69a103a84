"""Network configuration (``network.json``) and the layout of a network directory.

``meridian network init DIR`` writes::

    DIR/network.json                      genesis: network id, orgs + CA certs, nodes, apps
    DIR/orgs/<org>/ca/{ca.pem,ca.key}     the org's certificate authority (key 0600)
    DIR/orgs/<org>/crl.pem                the org's revocation list, once something is revoked
    DIR/orgs/<org>/users/<name>/{cert.pem,key.pem}     admin and client identities
    DIR/nodes/<node>/{cert.pem,key.pem}   node identities
    DIR/nodes/<node>/data/                the node's data directory (ledgers, packages, log)

Config objects are frozen dataclasses, loaded once and passed in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .. import codec
from ..errors import InvalidInput, NotFound
from ..types import MAX_BLOCK_TXS, NAME_RE

NETWORK_FILE = "network.json"
MAX_CONFIG_BYTES = 4 * 2**20


@dataclass(frozen=True, slots=True)
class OrgConfig:
    id: str
    ca_pem: bytes


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """A node: its gateway (HTTP) port, its peer-to-peer (mutual TLS) port, its cert."""

    id: str
    org: str
    host: str
    port: int
    p2p_port: int
    cert_pem: bytes = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AppConfig:
    name: str
    members: tuple[str, ...]
    lifecycle_policy: str = "MAJORITY"
    system_policy: str = "ANY"


@dataclass(frozen=True, slots=True)
class BlockConfig:
    max_txs: int = 1000
    timeout_ms: int = 20


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    """Consensus timing every node must agree on (see docs/consensus.md)."""

    round_timeout_ms: int = 1_000  # first round's timeout; doubles per failed round
    max_round_timeout_ms: int = 30_000
    max_clock_skew_ms: int = 5_000  # a proposer's block time vs. a voter's clock
    leader_term: int = 64  # heights a leader keeps the lead while nothing fails


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    network: str
    orgs: tuple[OrgConfig, ...]
    nodes: tuple[NodeEntry, ...]
    apps: tuple[AppConfig, ...]
    block: BlockConfig = field(default_factory=BlockConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)

    def org(self, org_id: str) -> OrgConfig:
        for org in self.orgs:
            if org.id == org_id:
                return org
        raise NotFound(f"no org {org_id!r} in network {self.network}", code="unknown_org")

    def node(self, node_id: str) -> NodeEntry:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise NotFound(
            f"no node {node_id!r} in network {self.network}",
            code="unknown_node",
            hint=f"known nodes: {', '.join(n.id for n in self.nodes)}",
        )

    def app(self, name: str) -> AppConfig:
        for app in self.apps:
            if app.name == name:
                return app
        raise NotFound(
            f"no app {name!r} on this network",
            code="unknown_app",
            hint=f"known apps: {', '.join(a.name for a in self.apps)}",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "orgs": [{"id": o.id, "ca": o.ca_pem.decode()} for o in self.orgs],
            "nodes": [
                {
                    "id": n.id,
                    "org": n.org,
                    "host": n.host,
                    "port": n.port,
                    "p2p_port": n.p2p_port,
                    "cert": n.cert_pem.decode(),
                }
                for n in self.nodes
            ],
            "apps": [
                {
                    "name": a.name,
                    "members": list(a.members),
                    "lifecycle_policy": a.lifecycle_policy,
                    "system_policy": a.system_policy,
                }
                for a in self.apps
            ],
            "block": {"max_txs": self.block.max_txs, "timeout_ms": self.block.timeout_ms},
            "consensus": {
                "round_timeout_ms": self.consensus.round_timeout_ms,
                "max_round_timeout_ms": self.consensus.max_round_timeout_ms,
                "max_clock_skew_ms": self.consensus.max_clock_skew_ms,
                "leader_term": self.consensus.leader_term,
            },
        }

    @classmethod
    def from_dict(cls, d: Any) -> NetworkConfig:
        try:
            cfg = cls(
                network=d["network"],
                orgs=tuple(OrgConfig(o["id"], o["ca"].encode()) for o in d["orgs"]),
                nodes=tuple(
                    NodeEntry(
                        n["id"],
                        n["org"],
                        n["host"],
                        _port(n["port"]),
                        _port(n["p2p_port"]),
                        n["cert"].encode(),
                    )
                    for n in d["nodes"]
                ),
                apps=tuple(
                    AppConfig(
                        a["name"],
                        tuple(a["members"]),
                        a.get("lifecycle_policy", "MAJORITY"),
                        a.get("system_policy", "ANY"),
                    )
                    for a in d["apps"]
                ),
                block=BlockConfig(**d.get("block", {})),
                consensus=ConsensusConfig(**d.get("consensus", {})),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidInput(
                f"{NETWORK_FILE} is not a valid network config: {exc!r}", code="bad_config"
            ) from exc
        cfg.validate()
        return cfg

    def validate(self) -> None:
        names = [
            self.network,
            *(o.id for o in self.orgs),
            *(n.id for n in self.nodes),
            *(a.name for a in self.apps),
        ]
        for name in names:
            if not NAME_RE.match(name):
                raise InvalidInput(f"{name!r} is not a valid name", code="bad_config")
        if not 1 <= self.block.max_txs <= MAX_BLOCK_TXS or not 1 <= self.block.timeout_ms <= 60_000:
            raise InvalidInput(
                f"block.max_txs must be 1..{MAX_BLOCK_TXS} and block.timeout_ms 1..60000",
                code="bad_config",
            )
        c = self.consensus
        timings = (c.round_timeout_ms, c.max_round_timeout_ms, c.max_clock_skew_ms, c.leader_term)
        if not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in timings) or (
            c.round_timeout_ms > c.max_round_timeout_ms
        ):
            raise InvalidInput(
                "consensus timings must be positive integers, round ≤ max round timeout",
                code="bad_config",
            )
        orgs = {o.id for o in self.orgs}
        endpoints = [(n.host, p) for n in self.nodes for p in (n.port, n.p2p_port)]
        if len(set(endpoints)) != len(endpoints) or len({n.id for n in self.nodes}) != len(
            self.nodes
        ):
            raise InvalidInput("node ids and node ports must be unique", code="bad_config")
        for node in self.nodes:
            if node.org not in orgs:
                raise InvalidInput(
                    f"node {node.id} belongs to unknown org {node.org}", code="bad_config"
                )
        for app in self.apps:
            if not app.members or not set(app.members) <= orgs:
                raise InvalidInput(f"app {app.name} has unknown or no members", code="bad_config")


def _port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port")
    return value


@dataclass(frozen=True, slots=True)
class NetworkLayout:
    """Paths inside a network directory."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / NETWORK_FILE

    def ca_dir(self, org: str) -> Path:
        return self.root / "orgs" / org / "ca"

    def crl_file(self, org: str) -> Path:
        return self.root / "orgs" / org / "crl.pem"

    def user_dir(self, org: str, name: str) -> Path:
        return self.root / "orgs" / org / "users" / name

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def data_dir(self, node: str) -> Path:
        return self.node_dir(node) / "data"

    def load(self) -> NetworkConfig:
        if not self.config_file.is_file():
            raise NotFound(
                f"{self.config_file} does not exist",
                code="no_network",
                hint="create one with 'meridian network init DIR'",
            )
        raw = self.config_file.read_bytes()
        return NetworkConfig.from_dict(
            codec.decode(raw, max_bytes=MAX_CONFIG_BYTES, what=NETWORK_FILE)
        )

    def save(self, config: NetworkConfig) -> None:
        pretty = orjson.dumps(config.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        write_file(self.config_file, pretty + b"\n")


def write_file(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write durably and atomically (temp file, fsync, rename, fsync of the folder, so
    the new name survives a crash too); secrets are created 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
