"""The ``_lifecycle`` system contract: approve and commit contract definitions.

Flow (as in Fabric's lifecycle, one app = one channel)::

    install   the package archive is copied to a node (node-local, not a transaction)
    approve   an admin of each member org approves (name, version, sequence,
              package id, endorsement policy)           -> approval/<name>/<seq>/<org>
    commit    once the app's lifecycle policy (default MAJORITY of member orgs) has
              matching approvals, any member admin commits -> definition/<name>
    upgrade   the same with sequence + 1 (new package, new policy, or both)

The app's consenters (the nodes that order its blocks) change the same way:
``approve_consenters(nodes, sequence)`` by each member admin, then
``commit_consenters(nodes, sequence)`` once the lifecycle policy is met ->
``consenters``. The new set orders every block *after* the one that commits the
change (a defined height, the same on every node). The consenters are chosen among
the nodes that host the app (the network configuration, see
:mod:`meridian.network.governance`); without a committed set, all of them order.

All these steps are ordinary transactions on the app's ledger, so every node sees the
same definitions at the same height. The commit reads the approvals it counts with
``get_state``: their versions are checked at validation like any read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from ..node.policy import Policy, parse_policy
from .api import Contract, ContractError, query, transaction
from .simulation import SimulationContext

LIFECYCLE = "_lifecycle"
MAX_CONSENTERS = 64
PACKAGE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}:[0-9a-f]{64}$")
CONTRACT_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ContractDefinition:
    name: str
    version: str
    sequence: int
    package_id: str
    policy: Policy

    @property
    def label(self) -> str:
        """What endorsers record as the contract version they ran."""
        return f"{self.name}@{self.sequence}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sequence": self.sequence,
            "package_id": self.package_id,
            "policy": str(self.policy),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContractDefinition:
        return cls(
            d["name"], d["version"], d["sequence"], d["package_id"], parse_policy(d["policy"])
        )


def definition_key(name: str) -> str:
    return f"definition/{name}"


def approval_key(name: str, sequence: int, org: str) -> str:
    return f"approval/{name}/{sequence:08d}/{org}"


CONSENTERS_KEY = "consenters"


def consenters_approval_key(sequence: int, org: str) -> str:
    return f"consenters-approval/{sequence:08d}/{org}"


def get_consenters_config(get: Callable[[str, str], tuple[Any, Any] | None]) -> list[str] | None:
    """The committed consenter node ids, or None when the app still uses the default."""
    found = get(LIFECYCLE, CONSENTERS_KEY)
    return None if found is None else list(found[0]["nodes"])


def _check_sequence(current: Any, sequence: int, what: str) -> None:
    """Each change of a definition or configuration takes the next sequence number."""
    expected = 1 if current is None else int(current["sequence"]) + 1
    if sequence != expected:
        raise ContractError(f"{what}: the next sequence is {expected}, not {sequence}")


def get_definition(
    get: Callable[[str, str], tuple[Any, Any] | None], name: str
) -> ContractDefinition | None:
    """The committed definition of ``name`` through a ``get(ns, key)`` reader."""
    found = get(LIFECYCLE, definition_key(name))
    return None if found is None else ContractDefinition.from_dict(found[0])


def _check_args(name: str, version: str, sequence: int, package_id: str, policy: str) -> Policy:
    if not CONTRACT_NAME_RE.match(name):
        raise ContractError(f"contract name {name!r} must match {CONTRACT_NAME_RE.pattern}")
    if not version or len(version) > 32:
        raise ContractError("version must be 1..32 characters")
    if sequence < 1:
        raise ContractError("sequence starts at 1")
    if not PACKAGE_ID_RE.match(package_id):
        raise ContractError(f"package id {package_id!r} is not NAME:SHA256HEX")
    try:
        return parse_policy(policy)
    except InvalidInput as exc:
        raise ContractError(exc.message) from exc


class Lifecycle(Contract):
    """In-process system contract; ``members`` are the app's member orgs."""

    def __init__(
        self,
        members: Collection[str],
        lifecycle_policy: Policy,
        nodes: Mapping[str, str] | None = None,
    ) -> None:
        self.members = tuple(sorted(members))
        self.lifecycle_policy = lifecycle_policy
        self.nodes = dict(nodes or {})  # node id -> org of the nodes hosting the app

    def _admin_org(self, ctx: SimulationContext) -> str:
        caller = ctx.caller
        if caller.role != "admin" or caller.org not in self.members:
            raise ContractError(
                f"only an admin of a member org ({', '.join(self.members)}) may do this; "
                f"caller is {caller.role} of {caller.org}"
            )
        return caller.org

    def _propose(
        self,
        ctx: SimulationContext,
        name: str,
        version: str,
        sequence: int,
        package_id: str,
        policy: str,
    ) -> tuple[str, ContractDefinition]:
        """(caller's org, the definition) once arguments, caller and sequence check out."""
        parsed = _check_args(name, version, sequence, package_id, policy)
        org = self._admin_org(ctx)
        _check_sequence(ctx.get_state(definition_key(name)), sequence, name)
        return org, ContractDefinition(name, version, sequence, package_id, parsed)

    def _require_approvals(
        self, ctx: SimulationContext, label: str, proposed: Any, key: Callable[[str], str]
    ) -> None:
        """ContractError unless the orgs whose approval (at ``key(org)``) equals
        ``proposed`` satisfy the lifecycle policy."""
        approved = [org for org in self.members if ctx.get_state(key(org)) == proposed]
        if not self.lifecycle_policy.is_satisfied(approved, self.members):
            raise ContractError(
                f"{label} is approved by {approved or 'no org'}; the lifecycle policy "
                f"{self.lifecycle_policy} of {list(self.members)} needs "
                f"{self.lifecycle_policy.required(self.members)} matching approvals"
            )

    @transaction
    def approve(
        self,
        ctx: SimulationContext,
        name: str,
        version: str,
        sequence: int,
        package_id: str,
        policy: str = "MAJORITY",
    ) -> dict[str, Any]:
        org, proposed = self._propose(ctx, name, version, sequence, package_id, policy)
        approval = proposed.to_dict()
        ctx.put_state(approval_key(name, sequence, org), approval)
        ctx.emit("approved", {"org": org, **approval})
        return {"org": org, **approval}

    @transaction
    def commit(
        self,
        ctx: SimulationContext,
        name: str,
        version: str,
        sequence: int,
        package_id: str,
        policy: str = "MAJORITY",
    ) -> dict[str, Any]:
        _, proposed = self._propose(ctx, name, version, sequence, package_id, policy)
        definition = proposed.to_dict()
        self._require_approvals(
            ctx,
            f"{name} sequence {sequence}",
            definition,
            lambda org: approval_key(name, sequence, org),
        )
        ctx.put_state(definition_key(name), definition)
        ctx.emit("committed", definition)
        return definition

    def _propose_consenters(
        self, ctx: SimulationContext, nodes: list[Any], sequence: int
    ) -> tuple[str, dict[str, Any]]:
        """(caller's org, the configuration) once nodes, caller and sequence check out."""
        org = self._admin_org(ctx)
        if not isinstance(nodes, list) or not nodes or len(nodes) > MAX_CONSENTERS:
            raise ContractError(f"nodes must be a list of 1..{MAX_CONSENTERS} node ids")
        if len(set(map(str, nodes))) != len(nodes):
            raise ContractError("nodes lists a node twice")
        for node in nodes:
            if not isinstance(node, str) or node not in self.nodes:
                raise ContractError(
                    f"{node!r} is not a node hosting this app ({', '.join(sorted(self.nodes))})"
                )
        _check_sequence(ctx.get_state(CONSENTERS_KEY), sequence, "consenters")
        return org, {"nodes": sorted(nodes), "sequence": sequence}

    @transaction
    def approve_consenters(
        self, ctx: SimulationContext, nodes: list[Any], sequence: int
    ) -> dict[str, Any]:
        """Approve, as an admin of a member org, the app's next set of consenters."""
        org, proposed = self._propose_consenters(ctx, nodes, sequence)
        ctx.put_state(consenters_approval_key(sequence, org), proposed)
        ctx.emit("consenters_approved", {"org": org, **proposed})
        return {"org": org, **proposed}

    @transaction
    def commit_consenters(
        self, ctx: SimulationContext, nodes: list[Any], sequence: int
    ) -> dict[str, Any]:
        """Commit the next set of consenters once the lifecycle policy's approvals are
        in; it orders every block after the one holding this transaction."""
        _, proposed = self._propose_consenters(ctx, nodes, sequence)
        self._require_approvals(
            ctx,
            f"consenters sequence {sequence}",
            proposed,
            lambda org: consenters_approval_key(sequence, org),
        )
        ctx.put_state(CONSENTERS_KEY, proposed)
        ctx.emit("consenters_committed", proposed)
        return proposed

    @query
    def consenters(self, ctx: SimulationContext) -> dict[str, Any]:
        """The committed consenters (``{"nodes": null, "sequence": 0}``: the default)."""
        return ctx.get_state(CONSENTERS_KEY) or {"nodes": None, "sequence": 0}

    @query
    def definitions(self, ctx: SimulationContext) -> list[dict[str, Any]]:
        return [v for _, v in ctx.get_range("definition/", "definition0", 10_000)]

    @query
    def approvals(self, ctx: SimulationContext, name: str, sequence: int) -> dict[str, Any]:
        prefix = f"approval/{name}/{sequence:08d}/"
        rows = ctx.get_range(prefix, prefix[:-1] + "0", 1000)
        return {key.rsplit("/", 1)[1]: value for key, value in rows}
