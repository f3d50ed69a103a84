"""An app's rules and consenters at a given configuration height.

Pure functions of the network configuration history and the channel's own ledger, so
that the node (while committing) and ``meridian ledger verify`` (replaying) compute
the same thing for every block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..consensus.core import Consenters
from ..contracts.lifecycle import LIFECYCLE, Lifecycle, get_consenters_config
from ..crypto.certs import Membership, Role, load_cert_der
from ..errors import CertificateError, NotFound
from ..network.config import GOVERNANCE_APP, AppConfig, NetworkConfig
from ..network.contract import Governance
from ..network.governance import GOVERNANCE
from ..network.history import ConfigHistory
from ..types import BlockHeader, Version
from .policy import parse_policy
from .validate import AppRules


class ChannelLedger(Protocol):
    def height(self) -> int: ...

    def get_header(self, number: int) -> BlockHeader | None: ...

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None: ...


def compute_rules(view: NetworkConfig, app: AppConfig) -> AppRules:
    """What validation needs of ``app`` under the configuration ``view``."""
    hosting = {n: view.node(n).org for n in view.hosting_nodes(app)}
    system: dict[str, Callable[[], Any]]
    if app.name == GOVERNANCE_APP:
        system = {GOVERNANCE: lambda: Governance(view)}  # its state holds the newer ones
    else:
        policy = parse_policy(app.lifecycle_policy)
        system = {LIFECYCLE: lambda: Lifecycle(app.writers, policy, hosting)}
    return AppRules(
        view.network,
        app.name,
        frozenset(app.writers),
        parse_policy(app.system_policy),
        endorsers={n: view.node(n).org for n in view.hosting_nodes(app)},
        system_contracts=frozenset({GOVERNANCE} if app.name == GOVERNANCE_APP else {LIFECYCLE}),
        active=app.status == "active",
        readers=frozenset(app.members),
        system=system,
        revoked=view.revoked,
        storage_limit=view.plan(app.plan).storage_bytes if app.plan else None,
    )


def compute_view_height(app: str, header: BlockHeader) -> int:
    """The governance height whose configuration governs a block of ``app``: the
    governance channel is governed by its own state before the block."""
    return header.number if app == GOVERNANCE_APP else header.config_height


def compute_block_rules(history: ConfigHistory, app: str, header: BlockHeader) -> AppRules:
    """The rules of a block (its view height must be committed in ``history``)."""
    view = history.at(compute_view_height(app, header))
    try:
        return compute_rules(view, view.app(app))
    except NotFound:  # not an app at that height: nothing in the block is valid
        return AppRules(view.network, app, frozenset(), parse_policy("ANY"), {}, active=False)


def compute_next_consenters(
    history: ConfigHistory, membership: Membership, app: str, ledger: ChannelLedger
) -> Consenters:
    """The consenters after the last block of ``ledger``: the app's active hosting nodes
    at that block's configuration height, narrowed by a set its members committed."""
    height = ledger.height()
    if app == GOVERNANCE_APP:
        view_height, configured = height, None
    else:
        header = ledger.get_header(height - 1) if height else None
        if header is None:  # an empty ledger: the configuration that created the app
            view_height = history.first_height_with(app) or 0
        else:
            view_height = header.config_height
        configured = get_consenters_config(ledger.get)
    view = history.at(min(view_height, history.height))
    app_config = view.app(app)
    ordering = view.consenting_nodes(app_config) or view.hosting_nodes(app_config)
    chosen = [n for n in configured or () if n in ordering] or list(ordering)
    return get_consenters(view, membership, chosen)


def compute_consenters_at(
    history: ConfigHistory,
    membership: Membership,
    app: str,
    ledger: ChannelLedger,
    view_height: int,
) -> Consenters:
    """The consenters a block of ``app`` naming ``view_height`` would hand over to."""
    view = history.at(min(view_height, history.height))
    app_config = view.app(app)
    ordering = view.consenting_nodes(app_config) or view.hosting_nodes(app_config)
    configured = get_consenters_config(ledger.get)
    chosen = [n for n in configured or () if n in ordering] or list(ordering)
    return get_consenters(view, membership, chosen)


def get_consenters(
    config: NetworkConfig, membership: Membership, nodes: Sequence[str]
) -> Consenters:
    """The consenters ``nodes`` with their node certificates, checked against the
    org CAs (without dates or revocation: see :meth:`Membership.identify`)."""
    keys = {}
    for node_id in nodes:
        entry = config.node(node_id)
        identity = membership.identify(load_cert_der(entry.cert_pem))
        if identity.role is not Role.NODE or (identity.org, identity.name) != (
            entry.org,
            entry.id,
        ):
            raise CertificateError(
                f"the certificate of node {entry.id} in the configuration is not that node's",
                code="bad_node_certificate",
            )
        keys[entry.id] = (identity.suite, identity.public_key)
    return Consenters(keys)


def get_membership(history: ConfigHistory) -> Membership:
    """A membership trusting every org that any configuration in ``history`` named."""
    membership = Membership({o.id: o.ca_pem for o in history.genesis.orgs})
    for view in history.views():
        for org in view.orgs:
            if org.id not in membership.orgs:
                membership.add_org(org.id, org.ca_pem)
    return membership
