"""Network configuration (``network.json``) and the layout of a network directory.

``network.json`` is the *genesis* configuration: zones, organisations (typed), nodes,
apps, plans and governance policies as the network starts. Every later change is a
configuration transaction on the governance channel (:mod:`meridian.network.governance`),
whose state holds the configuration's entries (one key per zone, org, node, app, plan;
see :func:`~meridian.network.governance.compute_config_entries`); a
:class:`NetworkConfig` is therefore also the "view" of the network at one governance
height, numbered by ``version`` (the changes applied since the genesis).

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

import contextlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .. import codec
from ..errors import InvalidInput, NotFound
from ..types import MAX_BLOCK_TXS, NAME_RE
from .plans import Plan

NETWORK_FILE = "network.json"
MAX_CONFIG_BYTES = 4 * 2**20


GOVERNANCE_APP = "governance"  # the channel every operator node hosts
ORG_TYPES = ("operator", "central_bank", "bank", "regulator", "enterprise", "developer")
ZONE_KINDS = ("city", "region", "country")
KEY_MODES = ("own", "custody")  # app users bring a CSR, or the gateway keeps their key
APP_STATUSES = ("active", "suspended", "closed")
MEMBER_ROLES = ("participant", "auditor")
NODE_STATUSES = ("active", "joining", "observer")
NODE_ORG_TYPES = ("operator", "regulator")  # who runs nodes; a regulator's are observers
MAX_DETAIL_CHARS = 256


def list_some(names: Iterable[str], most: int = 12) -> str:
    """``a, b, c`` — or the first ``most`` and how many in all (for hints)."""
    every = list(names)
    if not every:
        return "none"
    shown = ", ".join(every[:most])
    return shown if len(every) <= most else f"{shown} … ({len(every)} in all)"


@dataclass(frozen=True, slots=True)
class Zone:
    """Where nodes run: a city, a region or a country."""

    id: str
    name: str
    kind: str = "city"


@dataclass(frozen=True, slots=True)
class OrgConfig:
    """An organisation: its CA, its type, and its real-name details (legal name,
    registration number, contact) as recorded when it joined."""

    id: str
    ca_pem: bytes
    type: str = "operator"
    name: str = ""
    details: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """A node: its gateway (HTTP) port, its peer-to-peer (mutual TLS) port, its cert."""

    id: str
    org: str
    host: str
    port: int
    p2p_port: int
    cert_pem: bytes = field(repr=False)
    zone: str = ""
    # "joining": added by governance, syncing; it hosts but orders nothing until its
    # operator activates it (so that nodes not yet running never hold up a quorum);
    # "observer": a regulator's node, which holds and validates every open channel but
    # never endorses nor orders (see NetworkConfig.replicas)
    status: str = "active"

    @property
    def is_observer(self) -> bool:
        return self.status == "observer"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AppConfig:
    """An application: one channel and ledger.

    ``members`` are the orgs whose identities use it (and approve its contracts);
    ``nodes`` are the nodes that host it (hold its ledger, endorse and order) — empty
    means every operator node of the member orgs, the consortium case (observers hold
    every open app without hosting it: :meth:`NetworkConfig.replicas`). ``owner`` is the org
    billed for ``plan``; ``key_mode`` says how its users hold their keys.
    """

    name: str
    members: tuple[str, ...]
    lifecycle_policy: str = "MAJORITY"
    system_policy: str = "ANY"
    nodes: tuple[str, ...] = ()
    owner: str = ""
    plan: str = ""
    key_mode: str = "own"
    status: str = "active"
    roles: tuple[tuple[str, str], ...] = ()  # member -> role, where not "participant"

    def role(self, org: str) -> str:
        return dict(self.roles).get(org, "participant")

    @property
    def writers(self) -> tuple[str, ...]:
        """Members that submit transactions and decide on the app (not auditors)."""
        return tuple(m for m in self.members if self.role(m) == "participant")


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


class _Index:
    """A view's lookups by id."""

    __slots__ = ("apps", "nodes", "operators", "orgs")

    def __init__(self, config: NetworkConfig) -> None:
        self.orgs = {o.id: o for o in config.orgs}
        self.nodes = {n.id: n for n in config.nodes}
        self.apps = {a.name: a for a in config.apps}
        self.operators = tuple(o.id for o in config.orgs if o.type == "operator")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    network: str
    orgs: tuple[OrgConfig, ...]
    nodes: tuple[NodeEntry, ...]
    apps: tuple[AppConfig, ...]
    block: BlockConfig = field(default_factory=BlockConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    zones: tuple[Zone, ...] = ()
    plans: tuple[Plan, ...] = ()
    # change kind -> requirements, each "RULE group" (see meridian.network.governance)
    policies: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # (org, certificate serial) revoked through governance: refused from the
    # configuration height that revoked them on, the same on every node
    revoked: frozenset[tuple[str, int]] = frozenset()
    retired_orgs: tuple[str, ...] = ()  # ids of removed orgs: never reused
    # configuration changes applied since the genesis (0): which view this is; not part
    # of the document (to_dict), it comes with the governance writes that made the view
    version: int = 0
    # lookups by id (networks have thousands of orgs), built on first use: a node keeps
    # every view, and only the ones it consults pay for an index
    _index: _Index | None = field(init=False, repr=False, compare=False, default=None)

    @property
    def _orgs(self) -> dict[str, OrgConfig]:
        return self._get_index().orgs

    @property
    def _nodes(self) -> dict[str, NodeEntry]:
        return self._get_index().nodes

    def _get_index(self) -> _Index:
        index = self._index
        if index is None:
            index = _Index(self)
            object.__setattr__(self, "_index", index)
        return index

    def org(self, org_id: str) -> OrgConfig:
        org = self._orgs.get(org_id)
        if org is not None:
            return org
        raise NotFound(f"no org {org_id!r} in network {self.network}", code="unknown_org")

    def node(self, node_id: str) -> NodeEntry:
        node = self._nodes.get(node_id)
        if node is not None:
            return node
        raise NotFound(
            f"no node {node_id!r} in network {self.network}",
            code="unknown_node",
            hint=f"known nodes: {list_some(n.id for n in self.nodes)}",
        )

    def app(self, name: str) -> AppConfig:
        if name == GOVERNANCE_APP:
            return self.governance
        app = self._get_index().apps.get(name)
        if app is not None:
            return app
        raise NotFound(
            f"no app {name!r} on this network",
            code="unknown_app",
            hint=f"known apps: {list_some(a.name for a in self.apps)}",
        )

    def plan(self, plan_id: str) -> Plan:
        for plan in self.plans:
            if plan.id == plan_id:
                return plan
        raise NotFound(
            f"no plan {plan_id!r} on this network",
            code="unknown_plan",
            hint=f"plans: {', '.join(p.id for p in self.plans) or 'none'}",
        )

    def zone(self, zone_id: str) -> Zone:
        for zone in self.zones:
            if zone.id == zone_id:
                return zone
        raise NotFound(f"no zone {zone_id!r} in network {self.network}", code="unknown_zone")

    def is_regulator(self, org_id: str) -> bool:
        """The regulator reads every channel and the audit log, and is not billed."""
        org = self._orgs.get(org_id)
        return org is not None and org.type == "regulator"

    def sees_everything(self, org_id: str) -> bool:
        """Operators and the regulator read the governance ledger and every org's
        real-name details; other orgs see their own details only."""
        return org_id in self.operators or self.is_regulator(org_id)

    def to_dict_for(self, viewer: str) -> dict[str, Any]:
        """:meth:`to_dict` as the org ``viewer`` may read it: other orgs' real-name
        details left out unless :meth:`sees_everything`."""
        doc = self.to_dict()
        if not self.sees_everything(viewer):
            for org in doc["orgs"]:
                if org["id"] != viewer:
                    org["details"] = {}
        return doc

    @property
    def operators(self) -> tuple[str, ...]:
        return self._get_index().operators

    @property
    def governance(self) -> AppConfig:
        """The governance channel: every org may use it (policies say who decides),
        every node of an operator org hosts it (and every observer replicates it)."""
        return AppConfig(
            GOVERNANCE_APP,
            tuple(o.id for o in self.orgs),
            nodes=tuple(n.id for n in self.nodes if n.org in self.operators),
        )

    @property
    def observers(self) -> tuple[str, ...]:
        """The regulators' nodes: each holds, syncs, validates and commits the governance
        channel and every open app, but never endorses, orders or counts in a quorum."""
        return tuple(n.id for n in self.nodes if n.is_observer)

    def hosting_nodes(self, app: AppConfig) -> tuple[str, ...]:
        """The nodes that host ``app`` — hold its ledger, endorse, and may order it: its
        ``nodes``, or by default every node of its member orgs (observers never)."""
        if app.nodes:
            return app.nodes
        return tuple(n.id for n in self.nodes if n.org in app.members and not n.is_observer)

    def replicas(self, app: AppConfig) -> tuple[str, ...]:
        """Every node that holds ``app``'s ledger: its hosting nodes, then the observers
        unless the app is closed. They sync from one another and commit every block;
        only the hosting nodes endorse and order."""
        hosting = self.hosting_nodes(app)
        if app.status == "closed":
            return hosting
        return (*hosting, *(n for n in self.observers if n not in hosting))

    def consenting_nodes(self, app: AppConfig) -> tuple[str, ...]:
        """The hosting nodes that may order ``app``: the active ones."""
        active = {n.id for n in self.nodes if n.status == "active"}
        return tuple(n for n in self.hosting_nodes(app) if n in active)

    def hosted_by(self, node_id: str) -> tuple[AppConfig, ...]:
        """The apps (the governance channel first) whose ledger ``node_id`` holds: those
        it hosts, or, for an observer, every open one."""
        apps = [self.governance, *(a for a in self.apps if a.status != "closed")]
        return tuple(a for a in apps if node_id in self.replicas(a))

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "zones": [{"id": z.id, "name": z.name, "kind": z.kind} for z in self.zones],
            "orgs": [
                {
                    "id": o.id,
                    "type": o.type,
                    "name": o.name,
                    "details": dict(o.details),
                    "ca": o.ca_pem.decode(),
                }
                for o in self.orgs
            ],
            "nodes": [
                {
                    "id": n.id,
                    "org": n.org,
                    "zone": n.zone,
                    "status": n.status,
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
                    "nodes": list(a.nodes),
                    "owner": a.owner,
                    "plan": a.plan,
                    "key_mode": a.key_mode,
                    "status": a.status,
                    "roles": dict(a.roles),
                }
                for a in self.apps
            ],
            "plans": [p.to_dict() for p in self.plans],
            "policies": {kind: list(reqs) for kind, reqs in self.policies},
            "revoked": [[org, str(serial)] for org, serial in sorted(self.revoked)],
            "retired_orgs": list(self.retired_orgs),
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
                orgs=tuple(parse_org(o) for o in d["orgs"]),
                nodes=tuple(parse_node(n) for n in d["nodes"]),
                apps=tuple(parse_app(a) for a in d["apps"]),
                block=BlockConfig(**d.get("block", {})),
                consensus=ConsensusConfig(**d.get("consensus", {})),
                zones=tuple(parse_zone(z) for z in d.get("zones", ())),
                plans=tuple(Plan.from_dict(p) for p in d.get("plans", ())),
                policies=parse_policies(d.get("policies", {})),
                revoked=frozenset((str(org), int(serial)) for org, serial in d.get("revoked", ())),
                retired_orgs=tuple(str(org) for org in d.get("retired_orgs", ())),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidInput(
                f"{NETWORK_FILE} is not a valid network config: {exc!r}", code="bad_config"
            ) from exc
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """InvalidInput(code="bad_config") unless the configuration is consistent."""
        self._validate_names()
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
        self._validate_orgs_and_nodes()
        index = self._index or _Index(self)  # not kept: most views are never consulted
        for app in self.apps:
            self._validate_app(app, index)

    def _validate_names(self) -> None:
        names = [
            self.network,
            *(z.id for z in self.zones),
            *(o.id for o in self.orgs),
            *(n.id for n in self.nodes),
            *(a.name for a in self.apps),
        ]
        for name in names:
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise InvalidInput(f"{name!r} is not a valid name", code="bad_config")
        for kind, ids in (
            ("zone", [z.id for z in self.zones]),
            ("org", [o.id for o in self.orgs]),
            ("node", [n.id for n in self.nodes]),
            ("app", [a.name for a in self.apps]),
            ("plan", [p.id for p in self.plans]),
        ):
            if len(set(ids)) != len(ids):
                raise InvalidInput(f"two {kind}s have the same id", code="bad_config")
        if GOVERNANCE_APP in (a.name for a in self.apps):
            raise InvalidInput(f"app name {GOVERNANCE_APP!r} is reserved", code="bad_config")

    def _validate_orgs_and_nodes(self) -> None:
        zones = {z.id for z in self.zones}
        for zone in self.zones:
            if zone.kind not in ZONE_KINDS or not 1 <= len(zone.name) <= MAX_DETAIL_CHARS:
                raise InvalidInput(
                    f"zone {zone.id} needs a name and a kind in {ZONE_KINDS}", code="bad_config"
                )
        orgs = {o.id: o for o in self.orgs}
        for org in self.orgs:
            if not isinstance(org.name, str) or len(org.name) > MAX_DETAIL_CHARS:
                raise InvalidInput(f"org {org.id}: its name is too long", code="bad_config")
            if org.type not in ORG_TYPES:
                raise InvalidInput(
                    f"org {org.id} has type {org.type!r}; types are {', '.join(ORG_TYPES)}",
                    code="bad_config",
                )
        endpoints = [(n.host, p) for n in self.nodes for p in (n.port, n.p2p_port)]
        if len(set(endpoints)) != len(endpoints):
            raise InvalidInput("node ports must be unique", code="bad_config")
        for node in self.nodes:
            owner = orgs.get(node.org)
            if owner is None or owner.type not in NODE_ORG_TYPES:
                raise InvalidInput(
                    f"node {node.id} must belong to an operator or regulator org, not {node.org!r}",
                    code="bad_config",
                )
            if not all(_is_port(port) for port in (node.port, node.p2p_port)):
                raise InvalidInput(f"node {node.id} has a port outside 1..65535", code="bad_config")
            if node.status not in NODE_STATUSES or node.is_observer != (owner.type == "regulator"):
                raise InvalidInput(
                    f"node {node.id} of {owner.type} {owner.id} has status {node.status!r}",
                    code="bad_config",
                    hint="a regulator's nodes are 'observer', an operator's 'active' or 'joining'",
                )
            if node.zone and node.zone not in zones:
                raise InvalidInput(
                    f"node {node.id} is in unknown zone {node.zone!r}", code="bad_config"
                )

    def _validate_app(self, app: AppConfig, index: _Index) -> None:
        orgs, nodes = index.orgs, index.nodes  # O(1) lookups: networks have many apps
        if (
            not app.members
            or not all(m in orgs for m in app.members)
            or len(set(app.members)) != len(app.members)
        ):
            raise InvalidInput(
                f"app {app.name} has unknown, repeated or no members", code="bad_config"
            )
        if not all(n in nodes for n in app.nodes) or len(set(app.nodes)) != len(app.nodes):
            raise InvalidInput(
                f"app {app.name} is hosted on unknown or repeated nodes", code="bad_config"
            )
        observing = [n for n in app.nodes if nodes[n].is_observer]
        if observing:
            raise InvalidInput(
                f"app {app.name} lists observer node {observing[0]} among its hosts",
                code="bad_config",
                hint="observers (regulators' nodes) hold every open app without hosting it",
            )
        owner_ok = app.owner in app.members and app.role(app.owner) == "participant"
        if app.owner and not owner_ok:
            raise InvalidInput(
                f"app {app.name}: its owner must be a participating member", code="bad_config"
            )
        for org, role in app.roles:
            if org not in app.members or role not in MEMBER_ROLES or role == "participant":
                raise InvalidInput(
                    f"app {app.name}: {org} has role {role!r}; roles of members are "
                    f"{', '.join(MEMBER_ROLES)}",
                    code="bad_config",
                )
        if app.plan and all(p.id != app.plan for p in self.plans):
            raise InvalidInput(f"app {app.name} has unknown plan {app.plan!r}", code="bad_config")
        if app.key_mode not in KEY_MODES or app.status not in APP_STATUSES:
            raise InvalidInput(
                f"app {app.name}: key_mode must be one of {KEY_MODES}, "
                f"status one of {APP_STATUSES}",
                code="bad_config",
            )


# One item of the configuration document each (network.json and the governance
# entries share them); they raise KeyError/TypeError/ValueError on a malformed item.


def parse_org(o: Mapping[str, Any]) -> OrgConfig:
    return OrgConfig(
        o["id"],
        o["ca"].encode(),
        o.get("type", "operator"),
        o.get("name", ""),
        tuple(sorted(_details(o.get("details", {})).items())),
    )


def parse_node(n: Mapping[str, Any]) -> NodeEntry:
    return NodeEntry(
        n["id"],
        n["org"],
        n["host"],
        _port(n["port"]),
        _port(n["p2p_port"]),
        n["cert"].encode(),
        n.get("zone", ""),
        n.get("status", "active"),
    )


def parse_app(a: Mapping[str, Any]) -> AppConfig:
    return AppConfig(
        a["name"],
        tuple(a["members"]),
        a.get("lifecycle_policy", "MAJORITY"),
        a.get("system_policy", "ANY"),
        tuple(a.get("nodes", ())),
        a.get("owner", ""),
        a.get("plan", ""),
        a.get("key_mode", "own"),
        a.get("status", "active"),
        tuple(sorted(_details(a.get("roles", {})).items())),
    )


def parse_zone(z: Mapping[str, Any]) -> Zone:
    return Zone(z["id"], z["name"], z.get("kind", "city"))


def parse_policies(policies: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((str(k), tuple(map(str, v))) for k, v in policies.items()))


def _details(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 16:
        raise ValueError("details must be an object of at most 16 entries")
    for key, text in value.items():
        if not isinstance(key, str) or not isinstance(text, str) or len(text) > MAX_DETAIL_CHARS:
            raise ValueError(
                f"detail {key!r} must be text of at most {MAX_DETAIL_CHARS} characters"
            )
    return dict(value)


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


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
    # a temp name of its own: two writers of one file never share (nor publish) a half
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, 0o600 if secret else 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
