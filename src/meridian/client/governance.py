"""Network governance through the SDK: proposals, approvals and typed changes.

Every change to the network (zones, orgs, nodes, apps, plans, policies) is a proposal
on the governance channel's ``_governance`` contract, decided by the orgs its policy
names (see :mod:`meridian.network.governance`)::

    from meridian.client.governance import Governance

    with connect(url, Identity.from_dir("net/orgs/org1/users/admin")) as gw:
        gov = Governance(gw)
        proposal = gov.propose(gov.add_zone("sz", "Shenzhen"))    # org1 approves at once
        ...                                                       # org2, org3 approve
        print(gov.proposal(proposal["id"])["status"])            # "executed"
        print([z.id for z in gov.config().zones])

The builders (``add_zone``, ``create_app``, ``invite`` ...) only build a change; it
takes effect once :meth:`Governance.propose` and enough approvals have executed it.
Proposals are plain dicts as the contract returns them: ``id``, ``change``,
``proposer``, ``approvals``, ``rejections``, ``status`` (open, executed, rejected,
withdrawn, expired), ``policy``, ``created_ms``, ``expires_ms``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..errors import Conflict, InvalidInput, Unavailable
from ..network.config import GOVERNANCE_APP, NetworkConfig
from ..network.governance import DEFAULT_TTL_S, GOVERNANCE
from ..network.plans import Plan
from .sync import Contract, Gateway

Change = dict[str, Any]
PROPOSAL_STATUSES = ("open", "executed", "rejected", "withdrawn", "expired", "all")
POLL_S = 0.1
MVCC_RETRIES = 2  # a decision racing another one is simulated again (see Governance._submit)


class Governance:
    """Governance actions of one identity through one connected :class:`Gateway`.

    Propose, approve, reject and withdraw need an org admin's identity; the reads
    (``config``, ``proposal``, ``proposals``) any identity of the network.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def contract(self) -> Contract:
        return self.gateway.app(GOVERNANCE_APP).contract(GOVERNANCE)

    # ------------------------------------------------------------------ decisions

    def propose(self, change: Mapping[str, Any], ttl_s: int = DEFAULT_TTL_S) -> dict[str, Any]:
        """Propose ``change``; the caller's org approves it at once if it may (so a
        change only its org decides is executed by this call)."""
        return self._submit("propose", dict(change), ttl_s)

    def approve(self, proposal_id: str) -> dict[str, Any]:
        """Approve for the caller's org; the approval that meets the policy executes."""
        return self._submit("approve", proposal_id)

    def accept(self, proposal_id: str, role: str = "participant") -> dict[str, Any]:
        """As the org invited by an ``add_member`` proposal: approve it, choosing the
        org's role in the app (``participant`` uses and co-decides, ``auditor`` reads)."""
        return self._submit("accept", proposal_id, role)

    def reject(self, proposal_id: str) -> dict[str, Any]:
        """Say no for the caller's org; rejected once the policy can no longer be met."""
        return self._submit("reject", proposal_id)

    def withdraw(self, proposal_id: str) -> dict[str, Any]:
        """Take back a proposal of the caller's org."""
        return self._submit("withdraw", proposal_id)

    def _submit(self, function: str, *args: Any) -> dict[str, Any]:
        """Submit; a decision that lost a race (another one changed the proposal or the
        configuration it read) is simulated again after that block: it was invalid,
        so nothing of it applied, and the contract checks everything again."""
        retries = 0
        while True:
            try:
                result: dict[str, Any] = self.contract.submit(function, *args)
                return result
            except Conflict as exc:
                if exc.code != "mvcc_read_conflict" or retries >= MVCC_RETRIES:
                    raise
                retries += 1
                receipt = exc.details.get("receipt") or {}
                self.gateway.seen.observe(GOVERNANCE_APP, receipt.get("block"))

    def observe(self, *others: Governance | Gateway) -> Governance:
        """Make this session read at least what ``others`` saw (``after_block``), so a
        proposal made through another node is found here; returns ``self``."""
        for other in others:
            gateway = other.gateway if isinstance(other, Governance) else other
            self.gateway.seen.merge(gateway.seen)
        return self

    # ----------------------------------------------------------------------- reads

    def config(self) -> NetworkConfig:
        """The current network configuration (as this node committed it)."""
        return NetworkConfig.from_dict(self.contract.evaluate("config"))

    def proposal(self, proposal_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.contract.evaluate("proposal", proposal_id)
        return result

    def proposals(self, status: str = "open") -> list[dict[str, Any]]:
        """Proposals with ``status`` (open, executed, rejected, withdrawn, expired, all)."""
        if status not in PROPOSAL_STATUSES:
            raise InvalidInput(
                f"unknown proposal status {status!r}",
                code="bad_status",
                hint=f"statuses: {', '.join(PROPOSAL_STATUSES)}",
            )
        result: list[dict[str, Any]] = self.contract.evaluate("proposals", status)
        return result

    def height(self) -> int:
        """Governance blocks committed on this gateway's node (readable by every org:
        the governance ledger itself is for operators and the regulator)."""
        return int(self.gateway.request("GET", "/v1/network")["height"])

    def wait_decided(self, proposal_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Poll until the proposal is no longer open; the last state seen if it still
        is at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.proposal(proposal_id)
            if found["status"] != "open" or time.monotonic() >= deadline:
                return found
            time.sleep(POLL_S)

    # -------------------------------------------------------------- network changes

    def add_zone(self, zone_id: str, name: str, kind: str = "city") -> Change:
        return {"kind": "add_zone", "id": zone_id, "name": name, "zone_kind": kind}

    def remove_zone(self, zone_id: str) -> Change:
        return {"kind": "remove_zone", "id": zone_id}

    def add_org(
        self,
        org_id: str,
        ca_pem: bytes | str,
        *,
        type: str,
        name: str = "",
        details: Mapping[str, str] | None = None,
    ) -> Change:
        """An institution (operator, bank, regulator ...): the operators' majority decides."""
        return _org_change("add_org", org_id, ca_pem, type, name, details)

    def register_org(
        self,
        org_id: str,
        ca_pem: bytes | str,
        *,
        type: str = "developer",
        name: str = "",
        details: Mapping[str, str] | None = None,
    ) -> Change:
        """A developer or enterprise org (any one operator may register it)."""
        return _org_change("register_org", org_id, ca_pem, type, name, details)

    def remove_org(self, org_id: str) -> Change:
        return {"kind": "remove_org", "id": org_id}

    def add_node(
        self,
        node_id: str,
        *,
        org: str,
        host: str,
        port: int,
        p2p_port: int,
        cert_pem: bytes | str,
        zone: str = "",
    ) -> Change:
        """A node of operator ``org``; ``cert_pem`` is its node certificate from the org's CA."""
        return {
            "kind": "add_node",
            "id": node_id,
            "org": org,
            "host": host,
            "port": port,
            "p2p_port": p2p_port,
            "cert": _text(cert_pem),
            "zone": zone,
        }

    def activate_node(self, node_id: str) -> Change:
        """Let a joining node order (its operator's admin decides, once it has synced)."""
        return {"kind": "activate_node", "id": node_id}

    def remove_node(self, node_id: str) -> Change:
        return {"kind": "remove_node", "id": node_id}

    def revoke(self, org: str, crl_pem: bytes | str) -> Change:
        """Publish ``org``'s new revocation list (signed by its CA)."""
        return {"kind": "revoke", "org": org, "crl": _text(crl_pem)}

    def set_plan(self, plan: Plan) -> Change:
        """Add a resource plan, or replace the one with the same id."""
        return {"kind": "set_plan", "plan": plan.to_dict()}

    def set_policy(self, kind: str, requirements: Sequence[str]) -> Change:
        """Who decides changes of ``kind``: requirements like ``"MAJORITY operators"``."""
        return {"kind": "set_policy", "policy_kind": kind, "requirements": list(requirements)}

    # ------------------------------------------------------------------ app changes

    def create_app(
        self,
        name: str,
        *,
        plan: str,
        nodes: Sequence[str] | None = None,
        zones: Sequence[str] | None = None,
        key_mode: str = "own",
        owner: str | None = None,
    ) -> Change:
        """A new app owned by ``owner`` (default: the caller's org), hosted on ``nodes``
        or on every node of ``zones`` in the current configuration."""
        if (nodes is None) == (zones is None):
            raise InvalidInput(
                "create_app needs either nodes or zones", code="bad_change", hint="give one"
            )
        hosts = list(nodes) if nodes is not None else _nodes_in(self.config(), zones or ())
        return {
            "kind": "create_app",
            "name": name,
            "owner": owner or get_org(self.gateway.identity.cert_der),
            "nodes": hosts,
            "plan": plan,
            "key_mode": key_mode,
        }

    def invite(self, app: str, org: str) -> Change:
        """Make ``org`` a member of ``app``: its participating members' majority decides,
        and ``org`` itself (:meth:`approve`, or :meth:`accept` to choose its role)."""
        return {"kind": "add_member", "app": app, "org": org}

    def remove_member(self, app: str, org: str) -> Change:
        return {"kind": "remove_member", "app": app, "org": org}

    def set_app_nodes(self, app: str, nodes: Sequence[str]) -> Change:
        """Host ``app`` on exactly ``nodes`` (new ones sync its ledger, dropped ones stop)."""
        return {"kind": "set_app_nodes", "app": app, "nodes": list(nodes)}

    def set_app_status(self, app: str, status: str) -> Change:
        """``active``, ``suspended`` (no new transactions) or ``closed``."""
        return {"kind": "set_app_status", "app": app, "status": status}

    def set_app_plan(self, app: str, plan: str) -> Change:
        return {"kind": "set_app_plan", "app": app, "plan": plan}


def _org_change(
    kind: str,
    org_id: str,
    ca_pem: bytes | str,
    org_type: str,
    name: str,
    details: Mapping[str, str] | None,
) -> Change:
    return {
        "kind": kind,
        "id": org_id,
        "ca": _text(ca_pem),
        "type": org_type,
        "name": name,
        "details": dict(details or {}),
    }


def _text(pem: bytes | str) -> str:
    return pem.decode() if isinstance(pem, bytes) else pem


def _nodes_in(config: NetworkConfig, zones: Iterable[str]) -> list[str]:
    """Every node of ``zones`` (each must exist and hold a node)."""
    hosts: list[str] = []
    for zone in zones:
        config.zone(zone)
        found = [n.id for n in config.nodes if n.zone == zone]
        if not found:
            raise InvalidInput(f"zone {zone} has no nodes", code="bad_change")
        hosts += [n for n in found if n not in hosts]
    return hosts


def get_org(cert_der: bytes) -> str:
    """The organisation (subject O=) a certificate names, unvalidated."""
    try:
        values = x509.load_der_x509_certificate(cert_der).subject.get_attributes_for_oid(
            NameOID.ORGANIZATION_NAME
        )
    except ValueError as exc:
        raise InvalidInput("not a certificate", code="bad_certificate") from exc
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise InvalidInput("the certificate names no single org", code="bad_certificate")
    return values[0].value


def get_hosted(gateway: Gateway, app: str) -> dict[str, Any] | None:
    """``app``'s entry in the node's status (height, members ...), or None if the
    gateway's node does not host it."""
    found: dict[str, Any] | None = gateway.status()["apps"].get(app)
    return found


def wait_hosted(
    gateway: Gateway, app: str, timeout_s: float = 30.0, *, min_height: int = 0
) -> dict[str, Any]:
    """Wait until the gateway's node hosts ``app`` with at least ``min_height``
    blocks; its status entry, or Unavailable(code="not_hosted") at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = get_hosted(gateway, app)
        if found is not None and found["height"] >= min_height:
            return found
        if time.monotonic() >= deadline:
            raise Unavailable(
                f"the node does not host {app} (with {min_height} blocks) after {timeout_s} s",
                code="not_hosted",
                hint="is the node among the app's nodes in the committed configuration?",
            )
        time.sleep(POLL_S)


__all__ = ["Change", "Governance", "get_hosted", "get_org", "wait_hosted"]
