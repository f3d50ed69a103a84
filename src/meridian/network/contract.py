"""The ``_governance`` system contract (runs in process on the governance channel).

The rules are in :mod:`meridian.network.governance`; this class only reads and writes
the proposals and the configuration in state, and emits one audit event per action
(``proposed``, ``approved``, ``rejected``, ``withdrawn``, ``executed``): the ledger's
event log of this namespace is the network's append-only audit log.
"""

from __future__ import annotations

from typing import Any

from .. import codec
from ..contracts.api import Contract, query, transaction
from ..contracts.simulation import SimulationContext
from ..errors import Conflict, Forbidden, InvalidInput, NotFound, Unavailable
from .config import MEMBER_ROLES, NetworkConfig
from .governance import (
    DEFAULT_TTL_S,
    MAX_TTL_S,
    VERSION_KEY,
    apply_change,
    change_kind,
    compute_config_writes,
    get_approvers,
    get_policy,
    is_approved,
    is_still_possible,
)

MAX_CHANGE_BYTES = 64 * 1024


def proposal_key(proposal_id: str) -> str:
    return f"proposal/{proposal_id}"


def get_config(get_state: Any, view: NetworkConfig) -> NetworkConfig:
    """The configuration the governance state (``get_state(key)``) is at: ``view``,
    provided it is that version (reading ``config/version`` puts it in the read set,
    so a transaction simulated before a change is invalid after it)."""
    version = get_state(VERSION_KEY) or 0
    if version != view.version:
        raise Unavailable(
            f"the governance state is at configuration version {version}; this node "
            f"has applied version {view.version}",
            code="config_pending",
            hint="retry in a moment: the node is applying the latest governance block",
        )
    return view


class Governance(Contract):
    """Proposals, approvals and the network configuration. ``view`` is the
    configuration the node holds at the state it runs on (network.json at first); the
    contract refuses to run on any other (see :func:`get_config`)."""

    def __init__(self, view: NetworkConfig) -> None:
        self.view = view

    def _config(self, ctx: SimulationContext) -> NetworkConfig:
        return get_config(ctx.get_state, self.view)

    def _admin(self, ctx: SimulationContext, config: NetworkConfig) -> str:
        caller = ctx.caller
        if caller.role != "admin" or caller.org not in {o.id for o in config.orgs}:
            raise Forbidden(
                f"only an org's admin may act on governance; caller is {caller.role} of "
                f"{caller.org}",
                code="not_an_admin",
                hint="sign with your organisation's admin identity",
            )
        return caller.org

    def _load(self, ctx: SimulationContext, proposal_id: str) -> dict[str, Any]:
        if not isinstance(proposal_id, str) or len(proposal_id) > 128:
            raise InvalidInput("a proposal id is a transaction id", code="bad_change")
        proposal = ctx.get_state(proposal_key(proposal_id))
        if proposal is None:
            raise NotFound(f"no proposal {proposal_id}", code="unknown_proposal")
        if proposal["status"] != "open":
            raise Conflict(
                f"proposal {proposal_id} is {proposal['status']}",
                code="proposal_closed",
                hint="make a new proposal",
            )
        if ctx.timestamp_ms > proposal["expires_ms"]:
            raise Conflict(
                f"proposal {proposal_id} expired",
                code="proposal_expired",
                hint="make a new proposal; approvals do not carry over",
            )
        return dict(proposal)

    def _audit(self, ctx: SimulationContext, action: str, proposal: dict[str, Any]) -> None:
        ctx.emit(
            action,
            {
                "proposal": proposal["id"],
                "kind": proposal["change"]["kind"],
                "org": ctx.caller.org,
                "by": ctx.caller.name,
                "at_ms": ctx.timestamp_ms,
                "status": proposal["status"],
            },
        )

    def _settle(
        self, ctx: SimulationContext, config: NetworkConfig, proposal: dict[str, Any]
    ) -> dict[str, Any]:
        """Execute the proposal if its policy is met (or reject it if it can't be);
        then store it."""
        change = proposal["change"]
        if is_approved(config, change, proposal["approvals"]):
            updated = apply_change(config, change)  # raises: nothing is written
            for key, value in compute_config_writes(config, updated).items():
                if value is None:
                    ctx.delete_state(key)
                else:
                    ctx.put_state(key, value)
            ctx.put_state(VERSION_KEY, config.version + 1)
            proposal["status"] = "executed"
            proposal["executed_ms"] = ctx.timestamp_ms
        elif not is_still_possible(config, change, proposal["rejections"]):
            proposal["status"] = "rejected"
        ctx.put_state(proposal_key(proposal["id"]), proposal)
        if proposal["status"] != "open":
            self._audit(ctx, proposal["status"], proposal)
        return proposal

    @transaction
    def propose(
        self, ctx: SimulationContext, change: dict[str, Any], ttl_s: int = DEFAULT_TTL_S
    ) -> dict[str, Any]:
        """Propose ``change``; the proposer's org approves it at once if it may."""
        config = self._config(ctx)
        org = self._admin(ctx, config)
        change_kind(change)
        if len(codec.encode(change)) > MAX_CHANGE_BYTES:
            raise InvalidInput(f"a change is at most {MAX_CHANGE_BYTES} bytes", code="bad_change")
        if not 60 <= ttl_s <= MAX_TTL_S:
            raise InvalidInput(f"ttl_s must be 60..{MAX_TTL_S}", code="bad_change")
        apply_change(config, change)  # a change that cannot apply now is refused now
        approvers = get_approvers(config, change)
        proposal = {
            "id": ctx.tx_id,
            "change": change,
            "proposer": {"org": org, "name": ctx.caller.name},
            "created_ms": ctx.timestamp_ms,
            "expires_ms": ctx.timestamp_ms + ttl_s * 1000,
            "approvals": [org] if org in approvers else [],
            "rejections": [],
            "status": "open",
            "policy": [str(r) for r in get_policy(config, change["kind"])],
        }
        self._audit(ctx, "proposed", proposal)
        return self._settle(ctx, config, proposal)

    @transaction
    def approve(self, ctx: SimulationContext, proposal_id: str) -> dict[str, Any]:
        """Approve for the caller's org; the approval that meets the policy executes."""
        config = self._config(ctx)
        org = self._admin(ctx, config)
        proposal = self._load(ctx, proposal_id)
        self._check_approver(config, proposal, org)
        proposal["approvals"] = sorted({*proposal["approvals"], org})
        self._audit(ctx, "approved", proposal)
        return self._settle(ctx, config, proposal)

    @transaction
    def accept(self, ctx: SimulationContext, proposal_id: str, role: str) -> dict[str, Any]:
        """The invited org accepts an ``add_member`` proposal, choosing its role in the
        app (``participant``: uses and co-decides; ``auditor``: reads); counts as its
        approval."""
        config = self._config(ctx)
        org = self._admin(ctx, config)
        proposal = self._load(ctx, proposal_id)
        change = proposal["change"]
        if change["kind"] != "add_member" or change.get("org") != org:
            raise Forbidden(
                "only the invited org accepts, and only an invitation (add_member)",
                code="not_the_invitee",
            )
        if role not in MEMBER_ROLES:
            raise InvalidInput(f"role must be one of {', '.join(MEMBER_ROLES)}", code="bad_change")
        self._check_approver(config, proposal, org)
        proposal["change"] = {**change, "role": role}
        proposal["approvals"] = sorted({*proposal["approvals"], org})
        self._audit(ctx, "accepted", proposal)
        return self._settle(ctx, config, proposal)

    @transaction
    def reject(self, ctx: SimulationContext, proposal_id: str) -> dict[str, Any]:
        """Say no for the caller's org; rejected once the policy can no longer be met."""
        config = self._config(ctx)
        org = self._admin(ctx, config)
        proposal = self._load(ctx, proposal_id)
        self._check_approver(config, proposal, org)
        proposal["rejections"] = sorted({*proposal["rejections"], org})
        self._audit(ctx, "rejected_by", proposal)
        return self._settle(ctx, config, proposal)

    @transaction
    def withdraw(self, ctx: SimulationContext, proposal_id: str) -> dict[str, Any]:
        config = self._config(ctx)
        org = self._admin(ctx, config)
        proposal = self._load(ctx, proposal_id)
        if proposal["proposer"]["org"] != org:
            raise Forbidden("only the proposing org may withdraw", code="not_the_proposer")
        proposal["status"] = "withdrawn"
        ctx.put_state(proposal_key(proposal_id), proposal)
        self._audit(ctx, "withdrawn", proposal)
        return proposal

    def _check_approver(self, config: NetworkConfig, proposal: dict[str, Any], org: str) -> None:
        approvers = get_approvers(config, proposal["change"])
        if org not in approvers:
            raise Forbidden(
                f"{org} is not among the orgs that decide this change "
                f"({', '.join(sorted(approvers)) or 'none'})",
                code="not_an_approver",
            )
        if org in proposal["approvals"] or org in proposal["rejections"]:
            raise Conflict(f"{org} has already decided on this proposal", code="already_decided")

    @query
    def config(self, ctx: SimulationContext) -> dict[str, Any]:
        """The current network configuration, as the caller's org may read it."""
        return self._config(ctx).to_dict_for(ctx.caller.org)

    @query
    def proposal(self, ctx: SimulationContext, proposal_id: str) -> dict[str, Any]:
        found = ctx.get_state(proposal_key(proposal_id))
        if found is None:
            raise NotFound(f"no proposal {proposal_id}", code="unknown_proposal")
        return _as_seen(found, self._config(ctx), ctx)

    @query
    def proposals(self, ctx: SimulationContext, status: str = "open") -> list[dict[str, Any]]:
        """Proposals with ``status`` (open, executed, rejected, withdrawn, expired, all)."""
        config = self._config(ctx)
        rows = [
            _as_seen(v, config, ctx) for _, v in ctx.get_range("proposal/", "proposal0", 10_000)
        ]
        return [p for p in rows if status == "all" or p["status"] == status]


def _as_seen(
    proposal: dict[str, Any], config: NetworkConfig, ctx: SimulationContext
) -> dict[str, Any]:
    """A stored proposal as the caller reads it: expired once past its time, and the
    real-name details of an org it registers left out unless the caller is that org,
    an operator or the regulator."""
    seen = dict(proposal)
    if seen["status"] == "open" and ctx.timestamp_ms > seen["expires_ms"]:
        seen["status"] = "expired"
    change = seen["change"]
    viewer = ctx.caller.org
    if "details" in change and change.get("id") != viewer and not config.sees_everything(viewer):
        seen["change"] = {**change, "details": {}}
    return seen
