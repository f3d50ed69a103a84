"""Governance: every change to the network is a configuration transaction.

The governance channel (every operator node hosts it) runs the ``_governance`` system
contract. Its state holds the current :class:`~meridian.network.config.NetworkConfig`
as entries — one per zone, org, node, app and plan, the revoked serials per org, the
rest in ``config/meta`` (:func:`compute_config_entries`; none = the genesis
``network.json``) — with ``config/version`` counting the changes, the proposals, and
through the ledger's events an append-only audit log of every administrative action.
A change writes only the entries it changes (:func:`compute_config_writes`), so a
network of thousands of orgs pays per change for what changed; nodes build each view
from the previous one and the block's writes (:func:`compute_view_after`).

A change goes through a proposal::

    propose(change, ttl_s)   an admin of any org; its own org's approval is counted
    approve(id)              an admin of an org the change's policy names
    reject(id)               an approver org says no; once the policy cannot be met
                             any more the proposal is rejected
    withdraw(id)             the proposing org takes it back

The approval that satisfies the policy applies the change in the same transaction:
the change is checked again against the configuration of that moment, and a change
that no longer fits (a duplicate name, a node still hosting apps ...) is refused with
nothing written. A proposal expires ``ttl_s`` after it was made (judged by the
transaction time); an expired one can no longer be approved.

Policies map each change kind to requirements, each ``"RULE group"``: ``RULE`` is an
endorsement-policy spelling (``ANY``, ``ALL``, ``MAJORITY``, ``K-of(org,...)``), the
group is ``operators`` (operator orgs), ``members`` (the app's member orgs), ``owner``
(the app's owner) or ``subject`` (the org the change is about: the invited org, the
revoking org). All requirements of a kind must hold. Defaults: :data:`DEFAULT_POLICIES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from ..crypto.certs import Membership, Role, load_cert_der
from ..errors import Conflict, Forbidden, InvalidInput, MeridianError, NotFound
from ..node.policy import Policy, parse_policy
from .config import (
    APP_STATUSES,
    GOVERNANCE_APP,
    KEY_MODES,
    MEMBER_ROLES,
    NODE_ORG_TYPES,
    AppConfig,
    BlockConfig,
    ConsensusConfig,
    NetworkConfig,
    NodeEntry,
    OrgConfig,
    Zone,
    _details,
    parse_app,
    parse_node,
    parse_org,
    parse_policies,
    parse_zone,
)
from .plans import Plan

GOVERNANCE = "_governance"
CONFIG_PREFIX = "config/"  # the configuration's entries in the contract's state
CONFIG_END = "config0"  # the end of their key range ('0' follows '/')
VERSION_KEY = "config/version"  # configuration changes so far (absent: 0, the genesis)
META_KEY = "config/meta"
MAX_TTL_S = 30 * 24 * 3600
DEFAULT_TTL_S = 7 * 24 * 3600
GROUPS = ("operators", "members", "owner", "subject")
MAX_REVOKED_PER_ORG = 2_000  # one state entry per org (see docs/service-network.md)
ONBOARDED_TYPES = ("enterprise", "developer")  # orgs any single operator may register

_NETWORK = ("MAJORITY operators",)
DEFAULT_POLICIES: Mapping[str, tuple[str, ...]] = {
    "add_zone": _NETWORK,
    "remove_zone": _NETWORK,
    "add_org": _NETWORK,
    "register_org": ("ANY operators",),
    "remove_org": _NETWORK,
    "add_node": _NETWORK,
    "activate_node": _NETWORK,
    "remove_node": _NETWORK,
    "revoke": ("ANY subject",),
    "set_plan": _NETWORK,
    "set_policy": _NETWORK,
    "create_app": ("ANY owner",),
    "set_app_status": ("MAJORITY members",),
    "add_member": ("MAJORITY members", "ANY subject"),
    "remove_member": ("MAJORITY members",),
    "set_app_nodes": ("MAJORITY members",),
    "set_app_plan": ("ANY owner",),
}
CHANGE_KINDS = tuple(DEFAULT_POLICIES)


@dataclasses.dataclass(frozen=True, slots=True)
class Requirement:
    rule: Policy
    group: str

    def __str__(self) -> str:
        return f"{self.rule} {self.group}"


def parse_requirement(text: Any) -> Requirement:
    """``"MAJORITY operators"`` → Requirement; InvalidInput(code="bad_policy")."""
    parts = text.split() if isinstance(text, str) else []
    if len(parts) != 2 or parts[1] not in GROUPS:
        raise InvalidInput(
            f"cannot read requirement {text!r}",
            code="bad_policy",
            hint=f"write 'RULE group', RULE as ANY/ALL/MAJORITY/K-of(...), group one of {GROUPS}",
        )
    return Requirement(parse_policy(parts[0]), parts[1])


def get_policy(config: NetworkConfig, kind: str) -> tuple[Requirement, ...]:
    """The requirements a change of ``kind`` must meet under ``config``."""
    configured = dict(config.policies)
    return tuple(parse_requirement(r) for r in configured.get(kind, DEFAULT_POLICIES[kind]))


# ------------------------------------------------------------------------ changes


def _field(change: Mapping[str, Any], name: str, kind: type = str) -> Any:
    value = change.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(f"change field {name!r} must be {kind.__name__}", code="bad_change")
    return value


def _names(change: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = change.get(name)
    if not isinstance(value, list) or not value or len(value) > 64:
        raise InvalidInput(f"change field {name!r} must be a list of 1..64 ids", code="bad_change")
    if not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        raise InvalidInput(
            f"change field {name!r} lists a non-id or an id twice", code="bad_change"
        )
    return tuple(value)


def _exists(kind: str, ident: str) -> Conflict:
    return Conflict(
        f"{kind} {ident!r} already exists", code="duplicate_name", hint=f"choose another {kind} id"
    )


def compute_subject(config: NetworkConfig, change: Mapping[str, Any]) -> str | None:
    """The org a change is about (its ``subject`` group), if any."""
    kind = change.get("kind")
    if kind in ("add_member", "remove_member", "revoke"):
        org = change.get("org")
        return org if isinstance(org, str) else None
    if kind == "activate_node":
        node = change.get("id")
        found = [n.org for n in config.nodes if n.id == node]
        return found[0] if found else None
    return None


def compute_app(config: NetworkConfig, change: Mapping[str, Any]) -> AppConfig | None:
    """The app a change is about (existing, or the one it creates)."""
    if change.get("kind") == "create_app":
        return _new_app(config, change)
    name = change.get("app")
    if not isinstance(name, str):
        return None
    return config.app(name)


def get_group(config: NetworkConfig, change: Mapping[str, Any], group: str) -> tuple[str, ...]:
    """The orgs of ``group`` for ``change`` under ``config``."""
    if group == "operators":
        return config.operators
    if group == "subject":
        subject = compute_subject(config, change)
        return (subject,) if subject else ()
    app = compute_app(config, change)
    if app is None:
        return ()
    return app.writers if group == "members" else ((app.owner,) if app.owner else ())


def get_approvers(config: NetworkConfig, change: Mapping[str, Any]) -> set[str]:
    """Every org whose approval counts towards ``change``."""
    orgs: set[str] = set()
    for req in get_policy(config, change_kind(change)):
        orgs |= req.rule.eligible(get_group(config, change, req.group))
    return orgs


def is_approved(
    config: NetworkConfig, change: Mapping[str, Any], approvals: Collection[str]
) -> bool:
    return all(
        req.rule.is_satisfied(approvals, get_group(config, change, req.group))
        for req in get_policy(config, change_kind(change))
    )


def is_still_possible(
    config: NetworkConfig, change: Mapping[str, Any], rejections: Collection[str]
) -> bool:
    """Whether the orgs that have not rejected could still approve ``change``."""
    possible = get_approvers(config, change) - set(rejections)
    return is_approved(config, change, possible)


def change_kind(change: Mapping[str, Any]) -> str:
    kind = change.get("kind") if isinstance(change, Mapping) else None
    if kind not in DEFAULT_POLICIES:
        raise InvalidInput(
            f"unknown change kind {kind!r}",
            code="bad_change",
            hint=f"kinds: {', '.join(CHANGE_KINDS)}",
        )
    return str(kind)


def apply_change(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    """The configuration after ``change``; raises (typed) if it does not fit."""
    kind = change_kind(change)
    try:
        updated = _APPLY[kind](config, change)
    except MeridianError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"malformed {kind} change: {exc!r}", code="bad_change") from exc
    for app in updated.apps:  # whatever the change, every open app keeps an orderer
        if app.status != "closed" and app.name != GOVERNANCE_APP:
            _check_orderable(updated, app)
    try:  # what is stored must load again: the round trip validates every field
        NetworkConfig.from_dict(updated.to_dict())
    except InvalidInput as exc:
        raise InvalidInput(exc.message, code="bad_change", hint=exc.hint) from exc
    return updated


def _add_zone(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    zone = Zone(_field(change, "id"), _field(change, "name"), change.get("zone_kind", "city"))
    if zone.id in {z.id for z in config.zones}:
        raise _exists("zone", zone.id)
    return dataclasses.replace(config, zones=(*config.zones, zone))


def _remove_zone(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    zone = config.zone(_field(change, "id"))
    if any(n.zone == zone.id for n in config.nodes):
        raise Conflict(
            f"zone {zone.id} still has nodes", code="in_use", hint="remove its nodes first"
        )
    return dataclasses.replace(config, zones=tuple(z for z in config.zones if z.id != zone.id))


def _add_org(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    ca_pem = _field(change, "ca").encode()
    org = OrgConfig(
        _field(change, "id"),
        ca_pem,
        _field(change, "type"),
        change.get("name", ""),
        tuple(sorted(_details(change.get("details", {})).items())),
    )
    if change["kind"] == "register_org" and org.type not in ONBOARDED_TYPES:
        raise Forbidden(
            f"register_org is for {' and '.join(ONBOARDED_TYPES)} orgs, not {org.type}",
            code="bad_change",
            hint="propose add_org: institutions need the operators' majority",
        )
    if org.id in {o.id for o in config.orgs} or org.id in config.retired_orgs:
        raise _exists("org", org.id)  # a removed org's id is never reused (its old CA)
    from ..crypto.certs import Membership

    try:
        Membership({org.id: ca_pem})
    except MeridianError as exc:
        raise InvalidInput(
            f"the CA of {org.id} is unusable: {exc.message}", code="bad_change"
        ) from exc
    return dataclasses.replace(config, orgs=(*config.orgs, org))


def _remove_org(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    org = config.org(_field(change, "id"))
    if any(n.org == org.id for n in config.nodes) or any(
        org.id in a.members for a in config.apps if a.status != "closed"
    ):
        raise Conflict(
            f"org {org.id} still has nodes or open apps",
            code="in_use",
            hint="remove its nodes and memberships first",
        )
    return dataclasses.replace(
        config,
        orgs=tuple(o for o in config.orgs if o.id != org.id),
        retired_orgs=(*config.retired_orgs, org.id),
    )


def _add_node(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    """An operator's node joins (it orders once its operator activates it:
    ``activate_node``); a regulator's node is an observer for good (it never orders)."""
    cert_pem = _field(change, "cert").encode()
    try:
        org = config.org(_field(change, "org"))
    except NotFound as exc:
        raise InvalidInput(exc.message, code="bad_change") from exc
    if org.type not in NODE_ORG_TYPES:
        raise InvalidInput(
            f"{org.id} is {org.type}: only operator and regulator orgs run nodes",
            code="bad_change",
            hint="other orgs use the operators' nodes (their gateways)",
        )
    node = NodeEntry(
        _field(change, "id"),
        org.id,
        _field(change, "host"),
        _field(change, "port", int),
        _field(change, "p2p_port", int),
        cert_pem,
        change.get("zone", ""),
        "observer" if org.type == "regulator" else "joining",
    )
    if node.id in {n.id for n in config.nodes}:
        raise _exists("node", node.id)
    _check_node_cert(config, node)
    return dataclasses.replace(config, nodes=(*config.nodes, node))


def _check_node_cert(config: NetworkConfig, node: NodeEntry) -> None:
    from ..crypto.certs import Membership

    try:
        ca = config.org(node.org).ca_pem
        identity = Membership({node.org: ca}).identify(load_cert_der(node.cert_pem))
    except MeridianError as exc:
        raise InvalidInput(
            f"node {node.id}'s certificate: {exc.message}", code="bad_change"
        ) from exc
    if identity.role is not Role.NODE or (identity.org, identity.name) != (node.org, node.id):
        raise InvalidInput(
            f"the certificate is not node {node.id}'s of {node.org}", code="bad_change"
        )


def _activate_node(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    """A joining node (synced, its operator says) starts ordering the channels it hosts."""
    node = config.node(_field(change, "id"))
    if node.status == "active":
        raise Conflict(f"node {node.id} is already active", code="already_active")
    if node.is_observer:
        raise Conflict(
            f"node {node.id} is an observer (a regulator's node): it never orders",
            code="observer_node",
            hint="observers hold and validate every open channel without activation",
        )
    active = dataclasses.replace(node, status="active")
    return dataclasses.replace(
        config, nodes=tuple(active if n.id == node.id else n for n in config.nodes)
    )


def _remove_node(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    node = config.node(_field(change, "id"))
    hosting = [a.name for a in config.apps if a.status != "closed" and node.id in a.nodes]
    if hosting:
        raise Conflict(
            f"node {node.id} still hosts {', '.join(hosting)}",
            code="in_use",
            hint="move those apps to other nodes first (set_app_nodes)",
        )
    return dataclasses.replace(config, nodes=tuple(n for n in config.nodes if n.id != node.id))


def _revoke(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    """The serials of a CRL the org's CA signed join the configuration's revocations:
    refused from this configuration height on, on every node alike."""
    org = config.org(_field(change, "org"))
    crl_pem = _field(change, "crl").encode()
    try:
        checked = Membership({org.id: org.ca_pem})
        checked.update_crl(org.id, crl_pem)
    except MeridianError as exc:
        raise InvalidInput(f"the CRL of {org.id}: {exc.message}", code="bad_change") from exc
    serials = {serial for serial in checked.revocations().get(org.id, {})}
    revoked = config.revoked | {(org.id, serial) for serial in serials}
    if sum(1 for o, _ in revoked if o == org.id) > MAX_REVOKED_PER_ORG:
        raise Conflict(
            f"more than {MAX_REVOKED_PER_ORG} revoked certificates of {org.id}",
            code="too_many",
            hint="certificates expire: issue shorter-lived ones rather than revoke many",
        )
    return dataclasses.replace(config, revoked=revoked)


def _set_plan(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    plan = Plan.from_dict(change.get("plan"))
    if any(p.id == plan.id for p in config.plans):  # a changed plan keeps its place
        plans = tuple(plan if p.id == plan.id else p for p in config.plans)
    else:
        plans = (*config.plans, plan)
    return dataclasses.replace(config, plans=plans)


def _set_policy(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    kind = _field(change, "policy_kind")
    if kind not in DEFAULT_POLICIES:
        raise InvalidInput(f"no change kind {kind!r}", code="bad_change")
    requirements = _names(change, "requirements")
    for text in requirements:
        parse_requirement(text)
    policies = dict(config.policies)
    policies[kind] = requirements
    return dataclasses.replace(config, policies=tuple(sorted(policies.items())))


def _new_app(config: NetworkConfig, change: Mapping[str, Any]) -> AppConfig:
    owner = _field(change, "owner")
    config.org(owner)
    nodes = _names(change, "nodes")
    key_mode = change.get("key_mode", "own")
    if key_mode not in KEY_MODES:
        raise InvalidInput(f"key_mode must be one of {KEY_MODES}", code="bad_change")
    return AppConfig(
        _field(change, "name"),
        (owner,),
        nodes=nodes,
        owner=owner,
        plan=_field(change, "plan"),
        key_mode=key_mode,
    )


def _create_app(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    app = _new_app(config, change)
    if app.name == GOVERNANCE_APP or app.name in {a.name for a in config.apps}:
        raise _exists("app", app.name)
    _check_hosts(config, app.nodes)
    config.plan(app.plan)
    _check_orderable(config, app)
    return dataclasses.replace(config, apps=(*config.apps, app))


def _check_hosts(config: NetworkConfig, nodes: Iterable[str]) -> None:
    """Nodes an app may be hosted on: known, and not observers (they never endorse)."""
    for node_id in nodes:
        if config.node(node_id).is_observer:
            raise InvalidInput(
                f"node {node_id} is an observer (a regulator's node): it hosts no app",
                code="observer_node",
                hint="choose operators' nodes; observers hold every open app anyway",
            )


def _check_orderable(config: NetworkConfig, app: AppConfig) -> None:
    """An app needs at least one active node among its hosts to order its blocks."""
    if not config.consenting_nodes(app):
        raise Conflict(
            f"app {app.name} would have no active node to order it",
            code="no_active_node",
            hint="include an active node (joining nodes order once activated)",
        )


def _update_app(config: NetworkConfig, name: str, **fields: Any) -> NetworkConfig:
    app = config.app(name)
    if app.name == GOVERNANCE_APP:
        raise Forbidden("the governance channel is not an app", code="bad_change")
    if app.status == "closed":
        raise Conflict(f"app {name} is closed", code="app_closed")
    updated = dataclasses.replace(app, **fields)
    return dataclasses.replace(
        config, apps=tuple(updated if a.name == name else a for a in config.apps)
    )


def _set_app_status(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    status = _field(change, "status")
    if status not in APP_STATUSES:
        raise InvalidInput(f"status must be one of {APP_STATUSES}", code="bad_change")
    return _update_app(config, _field(change, "app"), status=status)


def _add_member(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    app, org = config.app(_field(change, "app")), config.org(_field(change, "org"))
    role = change.get("role", "participant")
    if role not in MEMBER_ROLES:
        raise InvalidInput(f"role must be one of {MEMBER_ROLES}", code="bad_change")
    if org.id in app.members:
        raise Conflict(f"{org.id} is already a member of {app.name}", code="already_member")
    roles = app.roles if role == "participant" else (*app.roles, (org.id, role))
    return _update_app(config, app.name, members=(*app.members, org.id), roles=roles)


def _remove_member(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    app, org = config.app(_field(change, "app")), _field(change, "org")
    if org not in app.members:
        raise NotFound(f"{org} is not a member of {app.name}", code="not_a_member")
    if org == app.owner:
        raise Conflict(
            f"{org} owns {app.name}",
            code="in_use",
            hint="close the app instead, or transfer it first",
        )
    return _update_app(
        config,
        app.name,
        members=tuple(m for m in app.members if m != org),
        roles=tuple((o, r) for o, r in app.roles if o != org),
    )


def _set_app_nodes(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    nodes = _names(change, "nodes")
    _check_hosts(config, nodes)
    updated = _update_app(config, _field(change, "app"), nodes=nodes)
    _check_orderable(updated, updated.app(_field(change, "app")))
    return updated


def _set_app_plan(config: NetworkConfig, change: Mapping[str, Any]) -> NetworkConfig:
    plan = config.plan(_field(change, "plan"))
    return _update_app(config, _field(change, "app"), plan=plan.id)


_APPLY: dict[str, Callable[[NetworkConfig, Mapping[str, Any]], NetworkConfig]] = {
    "add_zone": _add_zone,
    "remove_zone": _remove_zone,
    "add_org": _add_org,
    "register_org": _add_org,
    "remove_org": _remove_org,
    "add_node": _add_node,
    "activate_node": _activate_node,
    "remove_node": _remove_node,
    "revoke": _revoke,
    "set_plan": _set_plan,
    "set_policy": _set_policy,
    "create_app": _create_app,
    "set_app_status": _set_app_status,
    "add_member": _add_member,
    "remove_member": _remove_member,
    "set_app_nodes": _set_app_nodes,
    "set_app_plan": _set_app_plan,
}


# ------------------------------------------------------- the configuration in state

_META_FIELDS = ("network", "policies", "block", "consensus")
# entry kind, NetworkConfig field, the field of an item that names it, the item parser
_COLLECTIONS: tuple[tuple[str, str, str, Callable[[Any], Any]], ...] = (
    ("zone", "zones", "id", parse_zone),
    ("org", "orgs", "id", parse_org),
    ("node", "nodes", "id", parse_node),
    ("app", "apps", "name", parse_app),
    ("plan", "plans", "id", Plan.from_dict),
)
_REVOKED = f"{CONFIG_PREFIX}revoked/"  # + org: its revoked serials (decimal strings)
_RETIRED = f"{CONFIG_PREFIX}retired/"  # + org id: a removed org (its id is never reused)


def compute_config_entries(config: NetworkConfig) -> dict[str, Any]:
    """The configuration as governance state entries: ``config/<kind>/<id>`` per zone,
    org, node, app and plan (the item as in :meth:`NetworkConfig.to_dict`),
    ``config/revoked/<org>`` (the org's revoked serials, as decimal strings),
    ``config/retired/<org>`` per removed org, and ``config/meta`` (network id,
    policies, block and consensus timing)."""
    doc = config.to_dict()
    entries: dict[str, Any] = {META_KEY: {name: doc[name] for name in _META_FIELDS}}
    for kind, name, ident, _ in _COLLECTIONS:
        for item in doc[name]:
            entries[f"{CONFIG_PREFIX}{kind}/{item[ident]}"] = item
    by_org: dict[str, list[str]] = {}
    for org, serial in doc["revoked"]:
        by_org.setdefault(org, []).append(serial)
    for org, serials in by_org.items():
        entries[f"{_REVOKED}{org}"] = sorted(serials, key=int)
    for org in config.retired_orgs:
        entries[f"{_RETIRED}{org}"] = True
    return entries


def compute_config_writes(old: NetworkConfig, new: NetworkConfig) -> dict[str, Any | None]:
    """The entries a change from ``old`` to ``new`` writes, by key (None: delete)."""
    before, after = compute_config_entries(old), compute_config_entries(new)
    writes: dict[str, Any | None] = {k: v for k, v in after.items() if before.get(k) != v}
    writes.update({k: None for k in before if k not in after})
    return dict(sorted(writes.items()))


def compute_view_after(
    view: NetworkConfig, writes: Iterable[tuple[str, Any | None]]
) -> NetworkConfig | None:
    """The configuration after a governance block: ``view`` (the one before) with the
    block's writes to the configuration's entries (key, value; None deletes; the last
    write of a key wins) applied — None if the block changed none. Only the written
    entries are parsed: the new view shares every other item with ``view``. Entries
    keep their place; new ones come last, in key order. The result is checked as a
    whole (:meth:`NetworkConfig.validate`) and numbered by the block's
    ``config/version``."""
    latest = {key: value for key, value in writes if key.startswith(CONFIG_PREFIX)}
    if not latest:
        return None
    version = latest.pop(VERSION_KEY, None)
    if not isinstance(version, int) or isinstance(version, bool) or version <= view.version:
        raise InvalidInput(
            f"configuration writes without a newer {VERSION_KEY} (have {view.version})",
            code="bad_config",
        )
    try:
        changes = _compute_changes(view, latest)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InvalidInput(f"a malformed configuration entry: {exc!r}", code="bad_config") from exc
    if latest:
        raise InvalidInput(f"unknown configuration entries: {sorted(latest)}", code="bad_config")
    updated = dataclasses.replace(view, **changes, version=version)
    updated.validate()
    return updated


def _compute_changes(view: NetworkConfig, latest: dict[str, Any]) -> dict[str, Any]:
    """The NetworkConfig fields the entries in ``latest`` change (consumed from it)."""
    changes: dict[str, Any] = {}
    meta = latest.pop(META_KEY, None)
    if meta is not None:
        if not isinstance(meta, dict) or set(meta) != set(_META_FIELDS):
            raise InvalidInput(f"{META_KEY} must hold {', '.join(_META_FIELDS)}", code="bad_config")
        if meta["network"] != view.network:
            raise InvalidInput("the network id never changes", code="bad_config")
        changes["policies"] = parse_policies(meta["policies"])
        changes["block"] = BlockConfig(**meta["block"])
        changes["consensus"] = ConsensusConfig(**meta["consensus"])
    for kind, name, ident, parse in _COLLECTIONS:
        prefix = f"{CONFIG_PREFIX}{kind}/"
        written = sorted(k for k in latest if k.startswith(prefix))
        if not written:
            continue
        items = {getattr(item, ident): item for item in getattr(view, name)}
        for key in written:
            item_id, value = key[len(prefix) :], latest.pop(key)
            if value is None:
                items.pop(item_id, None)
            elif isinstance(value, dict) and value.get(ident) == item_id:
                items[item_id] = parse(value)
            else:
                raise InvalidInput(f"{key} does not hold {kind} {item_id}", code="bad_config")
        changes[name] = tuple(items.values())
    revoked_orgs = sorted(k for k in latest if k.startswith(_REVOKED))
    if revoked_orgs:
        revoked = {(org, serial) for org, serial in view.revoked}
        for key in revoked_orgs:
            org, value = key[len(_REVOKED) :], latest.pop(key)
            revoked = {(o, s) for o, s in revoked if o != org}
            if value is not None and not isinstance(value, list):
                raise InvalidInput(f"{key} must hold a list of serials", code="bad_config")
            revoked |= {(org, int(serial)) for serial in value or ()}
        changes["revoked"] = frozenset(revoked)
    retired = sorted(k for k in latest if k.startswith(_RETIRED))
    if retired:
        ids = dict.fromkeys(view.retired_orgs)
        for key in retired:
            if latest.pop(key) is None:
                ids.pop(key[len(_RETIRED) :], None)
            else:
                ids[key[len(_RETIRED) :]] = None
        changes["retired_orgs"] = tuple(ids)
    return changes
