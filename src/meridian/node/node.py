"""The node: wires identity, channels, contracts and endorsement together.

The gateway calls :meth:`Node.submit`, :meth:`Node.evaluate` and the read methods;
everything here is transport-free. One node process hosts every app of the network
configuration it is a member of.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import codec
from ..consensus.core import Consenters, Timing
from ..consensus.messages import decode_message
from ..contracts.api import CallerIdentity
from ..contracts.lifecycle import LIFECYCLE
from ..contracts.package import InstalledPackage, PackageStore
from ..contracts.registry import AppContracts, ContractRegistry, RestartableCall
from ..contracts.sandbox import SandboxLimits, resolve_sandbox_mode
from ..contracts.simulation import Simulation
from ..crypto.certs import Identity, Membership, Role, load_cert_der, load_signer
from ..crypto.suites import remember_own_signature, verify_cached
from ..errors import (
    AuthError,
    CertificateError,
    Conflict,
    ContractFailure,
    Forbidden,
    MeridianError,
    NotFound,
    Unavailable,
)
from ..ledger.pending import PendingStore
from ..ledger.store import CommitBatch, SqliteLedger
from ..network.config import (
    GOVERNANCE_APP,
    AppConfig,
    NetworkConfig,
    NetworkLayout,
    NodeEntry,
    OrgConfig,
    write_file,
)
from ..network.governance import GOVERNANCE, compute_view_after
from ..network.history import ConfigHistory, load_bootstrap
from ..p2p.transport import PeerAddress, Transport
from ..types import (
    MAX_TX_BYTES,
    BatchProof,
    BlockHeader,
    Endorsement,
    SignedProposal,
    Transaction,
    TxResult,
    compute_endorsement_digest,
    sign_batch,
)
from .channel import Channel, Receipt
from .metrics import NodeMetrics
from .ordering import NoPeers, Orderer, OrderingConfig, Peers, SafetyStore
from .policy import parse_policy
from .revocations import load_revocations, save_revocations
from .rules import (
    ChannelLedger,
    compute_block_rules,
    compute_consenters_at,
    compute_next_consenters,
    compute_rules,
    compute_view_height,
    get_membership,
)
from .validate import AppRules, compute_signature_checks, get_governing_definition

log = logging.getLogger("meridian.node")

PROPOSAL_MAX_SKEW_MS = 10 * 60 * 1000
PREVERIFY_MIN_BATCH = 16
DEFAULT_WAIT_S = 30.0
AFTER_BLOCK_WAIT_S = 10.0
LEAVING_CHECK_S = 2.0
LEAVING_FILE = "leaving.json"


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Per-process knobs (the network configuration holds what nodes must agree on)."""

    contract_workers: int = 4
    crypto_threads: int = 2
    limits: SandboxLimits = field(default_factory=SandboxLimits)


@dataclass(frozen=True, slots=True)
class _Simulating:
    """A checked proposal whose contract call is running (``call.sim`` is replaced if
    the call has to run again: read it once ``future`` is done)."""

    signed: SignedProposal
    caller: Identity
    call: RestartableCall

    @property
    def future(self) -> asyncio.Future[Any]:
        return self.call.future


@dataclass(frozen=True, slots=True)
class Endorsed:
    """A simulated and endorsed proposal, ready for ordering."""

    tx: Transaction
    caller: Identity


class Node:
    def __init__(
        self, layout: NetworkLayout, node_id: str, options: NodeOptions | None = None
    ) -> None:
        self.layout = layout
        self.genesis: NetworkConfig = layout.load()
        self.history = ConfigHistory(self.genesis)
        self._trusted_views = 0  # views of the history whose orgs' CAs are trusted here
        self.data_dir: Path = layout.data_dir(node_id)
        self._bootstrap = load_bootstrap(self.data_dir)
        self.id = node_id
        self.entry = self.config.node(node_id)
        self.options = options or NodeOptions()
        node_dir = layout.node_dir(node_id)
        self._key_pem = (node_dir / "key.pem").read_bytes()
        self._cert_pem = (node_dir / "cert.pem").read_bytes()
        self.signer = load_signer(self._key_pem)
        self.cert_der = load_cert_der(self._cert_pem)
        self._public_key = self.signer.public_key_bytes()
        self.membership = Membership({org.id: org.ca_pem for org in self.genesis.orgs})
        for org in self.config.orgs:
            self._trust(org)
        self._load_revocations()
        self.packages = PackageStore(self.data_dir / "packages")
        self.registry = ContractRegistry(
            self.packages, limits=self.options.limits, workers=self.options.contract_workers
        )
        self.channels: dict[str, Channel] = {}
        self._callers: dict[str, CallerIdentity] = {}
        self._crypto = ThreadPoolExecutor(self.options.crypto_threads, thread_name_prefix="crypto")
        self.started_ms = int(time.time() * 1000)
        self.sandbox_mode = self.options.limits.mode
        self.metrics = NodeMetrics()
        self.transport: Transport | None = None
        self.dropped_frames: dict[str, int] = {}
        self._hosting = asyncio.Lock()
        self._leaving: set[str] = set()  # channels handing over before they stop here
        self._watcher: asyncio.Task[None] | None = None
        self._stopping_by_app: dict[str, asyncio.Task[None]] = {}
        self._resumed = False
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> NetworkConfig:
        """The network configuration this node acts on now: the latest committed
        governance view (or the bootstrap one its operator gave, until caught up)."""
        if self._bootstrap is not None and self.history.height < self._bootstrap[0]:
            return self._bootstrap[1]
        return self.history.latest

    def get_config_snapshot(self) -> tuple[int, NetworkConfig]:
        """(governance height, configuration at it) as this node acts on them: a node
        still catching up with its bootstrap reports the bootstrap's height."""
        if self._bootstrap is not None and self.history.height < self._bootstrap[0]:
            return self._bootstrap
        return self.history.height, self.history.latest

    def _trust(self, org: OrgConfig) -> None:
        if org.id not in self.membership.orgs:
            self.membership.add_org(org.id, org.ca_pem)

    def _load_revocations(self) -> None:
        """Revocations this node already knew, then any CRL files in the network dir
        (again once the configuration history is loaded, for orgs governance added)."""
        if load_revocations(self.data_dir, self.membership):
            return  # some orgs are not trusted yet: saving now would forget theirs
        for org in self.config.orgs:
            path = self.layout.crl_file(org.id)
            if path.is_file():
                self.membership.update_crl(org.id, path.read_bytes(), received_at=_now())
        save_revocations(self.data_dir, self.membership)

    # --------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.sandbox_mode = resolve_sandbox_mode(self.options.limits.mode)
        log.info("contract sandbox: %s", self.sandbox_mode)
        self.transport = self._create_transport()
        await self.apply_config()
        self._load_revocations()  # every org of the history is trusted now
        await self.transport.start()
        self._watcher = asyncio.create_task(self._watch_leaving(), name="leaving-watch")
        log.info(
            "node %s (org %s) serving apps %s",
            self.id,
            self.entry.org,
            ", ".join(self.channels) or "none",
        )

    async def apply_config(self) -> None:
        """Act on the current configuration: trust new orgs, start hosting the channels
        it assigns to this node (they sync from their peers), hand over those it no
        longer does, and link to the nodes that share a channel."""
        async with self._hosting:
            governance = self.config.governance
            if GOVERNANCE_APP not in self.channels and self.id in self.config.replicas(governance):
                await self._host_safely(governance)  # loads the history: the view is current
            view = self.config
            views = self.history.views()
            for past in (*views[self._trusted_views :], view):  # CAs are only ever added:
                for org in past.orgs:  # blocks of any configuration height validate here
                    self._trust(org)
            self._trusted_views = len(views)
            wanted = {app.name: app for app in view.hosted_by(self.id)}
            await self._resume_leaving(view, wanted)
            for name in [n for n in self.channels if n not in wanted]:
                self._leave(name, view)
            for name, app in wanted.items():
                self._leaving.discard(name)
                channel = self.channels.get(name)
                if channel is None:
                    await self._host_safely(app)
                    continue
                channel.rules = compute_rules(view, app)
                # the current consenters too: leaving ones follow (Status) until handed over
                channel.orderer.members = channel.orderer.members | frozenset(
                    (*view.replicas(app), *channel.orderer.consenters.ids)
                )
                channel.orderer.observers = frozenset(view.observers)
                self.registry.add_app(self._get_contracts(view, app))
            self._request_reconfigurations(view)
            if self.transport is not None:
                self.transport.set_peers(self._peer_addresses(), [o.ca_pem for o in view.orgs])

    async def _host_safely(self, app: AppConfig) -> None:
        try:
            await self._host(app)
        except Exception:  # one app that can't start must not stop the others
            log.exception("%s: cannot host %s", self.id, app.name)
            self.channels.pop(app.name, None)

    def _leave(self, name: str, view: NetworkConfig) -> None:
        """Stop hosting ``name`` — once the app's chain no longer needs this node.

        A consenter that leaves at once could take the quorum with it: the consenters
        change only with the first block ordered under the new configuration. So a
        leaving consenter keeps ordering (and asks for that block, even an empty one)
        until it is handed over; a closed app, or a node that is no consenter, stops now.
        """
        app = next((a for a in view.apps if a.name == name), None)
        channel = self.channels[name]
        if app is not None:  # later changes apply while it hands over (members, status...)
            channel.rules = compute_rules(view, app)
            channel.orderer.members = channel.orderer.members | set(view.replicas(app))
            channel.orderer.observers = frozenset(view.observers)
        if app is None or app.status == "closed":
            self._stop_channel(name)  # nothing to hand over
            return
        if name in self._leaving:
            return
        self._leaving.add(name)
        self._save_leaving()
        log.warning("%s: no longer hosted on %s; leaving it", name, self.id)
        self._retire_if_handed_over(name)

    def _retire_if_handed_over(self, name: str) -> None:
        """Stop a leaving channel once the new consenters order it without this node
        and every one of them has reported (Status) all the blocks this node holds."""
        channel = self.channels.get(name)
        if channel is None or name not in self._leaving:
            return
        successors = self._get_consenters(name, channel.ledger)
        if self.id in successors.ids:
            return
        if channel.height == 0:  # it holds nothing anyone needs
            self._stop_channel(name)
            return
        holding = [
            n for n in successors.ids if channel.orderer.reported.get(n, -1) >= channel.height
        ]
        if len(holding) >= successors.quorum.strong:  # they order, and serve the rest
            self._stop_channel(name)

    async def _resume_leaving(self, view: NetworkConfig, wanted: Mapping[str, Any]) -> None:
        """At start: an app this node no longer hosts but still orders (a handover it
        had not finished when it stopped) is hosted again, as leaving."""
        if self._resumed:
            return  # only once, at start
        self._resumed = True
        ledgers = self.data_dir / "ledgers"
        was_leaving = self._load_leaving()
        for app in view.apps:
            if app.name in wanted or app.status == "closed":
                continue
            if not (ledgers / f"{app.name}.sqlite").is_file():
                continue
            ledger = SqliteLedger(ledgers / f"{app.name}.sqlite")
            try:
                still = self.id in self._get_consenters(app.name, ledger).ids
            finally:
                ledger.close()
            if still or app.name in was_leaving:
                log.warning("%s: resuming the handover of %s", self.id, app.name)
                await self._host_safely(app)
                if app.name in self.channels:
                    self._leaving.add(app.name)
        self._save_leaving()

    async def _watch_leaving(self) -> None:
        """Look at leaving channels now and then (peers' Status arrive without commits)."""
        while True:
            await asyncio.sleep(LEAVING_CHECK_S)
            for name in list(self._leaving):
                try:
                    self._retire_if_handed_over(name)
                except Exception:  # one channel must not end the watch for the others
                    log.exception("%s: checking the handover of %s failed", self.id, name)

    def _load_leaving(self) -> set[str]:
        path = self.data_dir / LEAVING_FILE
        if not path.is_file():
            return set()
        try:
            names = codec.decode(path.read_bytes(), max_bytes=2**20, what=LEAVING_FILE)
        except MeridianError:
            log.error("%s: %s is unreadable; ignoring it", self.id, path)
            return set()
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def _save_leaving(self) -> None:
        """The channels this node is handing over, durable: a restart resumes them."""
        write_file(self.data_dir / LEAVING_FILE, codec.encode(sorted(self._leaving)))

    def _stop_channel(self, name: str) -> None:
        """Stop a channel from outside its own tasks (its commit may be calling us)."""
        if name in self._leaving:
            self._leaving.discard(name)
            self._save_leaving()
        channel = self.channels.pop(name, None)
        if channel is None:
            return
        log.warning("%s: stopped hosting %s at height %d", self.id, name, channel.height)
        self.registry.remove_app(name)
        task = asyncio.get_running_loop().create_task(channel.stop())
        self._stopping.add(task)
        self._stopping_by_app[name] = task
        task.add_done_callback(self._stopping.discard)

    def _request_reconfigurations(self, view: NetworkConfig) -> None:
        """Ask each app channel whose hosting nodes this view changes for a block under
        it (its consenters change with that block)."""
        for name, channel in self.channels.items():
            if name == GOVERNANCE_APP:
                continue  # its own state governs it, from the block after a change
            try:
                now = set(view.consenting_nodes(view.app(name)))
            except NotFound:
                continue
            if now != set(channel.orderer.consenters.ids) or name in self._leaving:
                channel.orderer.request_reconfiguration(self.history.changed_at)

    def _get_proposal_config_height(self, name: str) -> int:
        """The configuration height this node's next block of ``name`` names: the
        latest, unless it changes the consenters and fewer than a quorum of the new
        ones have reported the whole chain — then the current one, so that ordering
        never passes to nodes that cannot order yet (a host that is down, or syncing).
        Only the moment of the handover depends on this; any height a voter has is
        valid."""
        latest = self.history.changed_at
        channel = self.channels.get(name)
        if channel is None:
            return latest
        current = channel.orderer.last_config_height
        if latest <= current:
            return latest
        try:
            successors = compute_consenters_at(
                self.history, self.membership, name, channel.ledger, latest
            )
        except (MeridianError, ValueError):
            return latest
        ordering = channel.orderer.consenters.keys  # they order this chain already
        reported = channel.orderer.reported
        ready = [
            n
            for n in successors.ids
            if n == self.id or n in ordering or reported.get(n, -1) >= channel.height
        ]
        return latest if len(ready) >= successors.quorum.strong else current

    async def _after_commit(self, app: str, batch: CommitBatch) -> None:
        if app == GOVERNANCE_APP:
            await self._on_governance_committed(batch)
        elif app in self._leaving:
            self._retire_if_handed_over(app)

    async def _host(self, app: AppConfig) -> None:
        stopping = self._stopping_by_app.pop(app.name, None)
        if stopping is not None:  # moved straight back: let the old one close its files
            await asyncio.gather(stopping, return_exceptions=True)
        channel = self._create_channel(app, self.transport or NoPeers())
        # its current consenters follow it too (a handover: they wait for our Status)
        channel.orderer.members |= set(channel.orderer.consenters.ids)
        self.channels[app.name] = channel
        self.registry.add_app(self._get_contracts(self.config, app))
        await channel.start()
        log.info("%s: hosting %s from height %d", self.id, app.name, channel.height)

    def _get_contracts(self, view: NetworkConfig, app: AppConfig) -> AppContracts:
        """The app's contracts; its system contracts are the very factories validation
        re-runs (``compute_rules``), so endorsing and re-running can't drift apart."""
        rules = compute_rules(view, app)
        return AppContracts(
            app.name,
            app.writers,
            parse_policy(app.lifecycle_policy),
            self.channels[app.name].get_definition,
            dict(rules.endorsers or {}),
            rules.system,
        )

    async def _get_block_rules(self, app: str, header: BlockHeader) -> AppRules:
        """The rules of a block; waits until this node has its governance height."""
        height = compute_view_height(app, header)
        if height > self.history.height:
            governance = self.channels.get(GOVERNANCE_APP)
            if governance is None:
                raise Unavailable(f"{app} needs governance height {height}; none hosted here")
            while not await governance.wait_for_block(height - 1, AFTER_BLOCK_WAIT_S):
                log.info("%s: waiting for governance height %d", app, height)
        return compute_block_rules(self.history, app, header)

    def _get_consenters(self, app: str, ledger: ChannelLedger) -> Consenters:
        """The consenters of the next block of ``app`` (see compute_next_consenters)."""
        return compute_next_consenters(self.history, self.membership, app, ledger)

    async def _on_governance_committed(self, batch: CommitBatch) -> None:
        """A governance block committed: record the configuration it made, then act."""
        writes = [
            (w.key, None if w.delete else w.value) for w in batch.writes if w.ns == GOVERNANCE
        ]
        view = compute_view_after(self.history.latest, writes)
        self.history.process_block(batch.block.header.number, view)
        caught_up = self._bootstrap is not None and self.history.height >= self._bootstrap[0]
        if caught_up:  # the node acts on its own ledger's view from now on
            log.warning("%s: governance caught up with the bootstrap height", self.id)
            self._bootstrap = None
        if view is not None or caught_up:
            log.warning(
                "%s: network configuration changed at governance height %d",
                self.id,
                self.history.height,
            )
            await self.apply_config()
        for channel in self.channels.values():
            channel.orderer.config_advanced()

    def _create_channel(self, app: AppConfig, peers: Peers) -> Channel:
        view = self.config
        ledgers = self.data_dir / "ledgers"
        ledger = SqliteLedger(ledgers / f"{app.name}.sqlite")
        block, timing = view.block, view.consensus
        is_governance = app.name == GOVERNANCE_APP
        if is_governance:  # the configuration history first: consenters depend on it
            self.history.load(ledger)
        orderer = Orderer(
            network=view.network,
            app=app.name,
            me=self.id,
            signer=self.signer,
            consenters=functools.partial(self._get_consenters, app.name, ledger),
            members=view.replicas(app),  # they follow the channel (observers too)
            config=OrderingConfig(
                max_txs=block.max_txs,
                timeout_ms=block.timeout_ms,
                timing=Timing(
                    round_timeout_ms=timing.round_timeout_ms,
                    max_round_timeout_ms=timing.max_round_timeout_ms,
                    max_clock_skew_ms=timing.max_clock_skew_ms,
                    leader_term=timing.leader_term,
                    max_block_txs=block.max_txs,
                ),
            ),
            safety=SafetyStore(ledgers, app.name),
            ledger=ledger,
            peers=peers,
            metrics=self.metrics,
            preverify=self._preverify_transactions,
            config_height=(lambda: 0) if is_governance else (lambda: self.history.changed_at),
            propose_config_height=(
                (lambda: 0)
                if is_governance
                else functools.partial(self._get_proposal_config_height, app.name)
            ),
        )
        pending = PendingStore(ledgers / f"{app.name}.pending.sqlite")
        orderer.observers = frozenset(view.observers)
        return Channel(
            compute_rules(view, app),
            ledger,
            pending,
            self.membership,
            orderer,
            rules_for=functools.partial(self._get_block_rules, app.name),
            on_committed=functools.partial(self._after_commit, app.name),
        )

    def _peer_addresses(self) -> list[PeerAddress]:
        """Every other node that shares a channel with this one (leaving ones too)."""
        shared = {
            node
            for channel in self.channels.values()
            for node in (*channel.orderer.members, *channel.orderer.consenters.ids)
        }
        found = []
        for node_id in sorted(shared - {self.id}):
            entry = self._find_node(node_id)
            if entry is not None:
                found.append(PeerAddress(entry.id, entry.host, entry.p2p_port))
        return found

    def _find_node(self, node_id: str) -> NodeEntry | None:
        """A node's entry in the newest configuration that has it (removed ones too)."""
        for view in (self.config, *reversed(self.history.views())):
            for entry in view.nodes:
                if entry.id == node_id:
                    return entry
        return None

    def _create_transport(self) -> Transport:
        transport = Transport(
            node_id=self.id,
            listen=PeerAddress(self.id, self.entry.host, self.entry.p2p_port),
            cert_pem=self._cert_pem,
            key_pem=self._key_pem,
            ca_pems=[org.ca_pem for org in self.config.orgs],
            peers=[],
            authenticate=self._authenticate_peer,
            on_frame=self._on_frame,
        )
        transport.on_connect(self._on_peer_connected)
        self.metrics.watch_transport(lambda: transport.stats, lambda: len(transport.connected()))
        return transport

    def _authenticate_peer(self, cert_der: bytes) -> str:
        """The node id of a peer's TLS certificate (a node of the network, and that node)."""
        identity = self.membership.validate(cert_der)
        if identity.role is not Role.NODE:
            raise CertificateError("the peer certificate is not a node's", code="not_a_node")
        entry = self._find_node(identity.name)
        if entry is None:
            raise CertificateError(f"{identity.name} is no node of the network", code="not_a_node")
        if entry.org != identity.org or load_cert_der(entry.cert_pem) != cert_der:
            raise CertificateError(
                f"the peer certificate is not the one of node {entry.id}", code="not_a_node"
            )
        return entry.id

    def _on_frame(self, peer: str, data: bytes) -> None:
        try:
            msg = decode_message(data)
        except MeridianError:
            self._count_dropped("malformed")
            return
        channel = self.channels.get(msg.app)
        if channel is None:
            self._count_dropped("unknown_channel")
            return
        channel.orderer.on_message(peer, msg)

    def _count_dropped(self, reason: str) -> None:
        self.dropped_frames[reason] = self.dropped_frames.get(reason, 0) + 1
        self.metrics.rejected.labels("", reason).inc()

    def _on_peer_connected(self, peer: str) -> None:
        for channel in self.channels.values():
            channel.orderer.announce(peer)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self.transport is not None:
            await self.transport.stop()
        for channel in self.channels.values():
            await channel.stop()
        await asyncio.gather(*self._stopping, return_exceptions=True)
        await self.registry.close()
        self._crypto.shutdown(wait=False, cancel_futures=True)

    def channel(self, app: str) -> Channel:
        channel = self.channels.get(app)
        if channel is None:
            raise NotFound(
                f"app {app!r} is not hosted on node {self.id}",
                code="unknown_app",
                hint=f"hosted apps: {', '.join(self.channels) or 'none'}",
            )
        return channel

    async def wait_for_block(self, app: str, number: int | None) -> None:
        """Return once block ``number`` of ``app`` is committed here (session consistency:
        a client that saw block N through one node reads at least N through any other)."""
        if number is None:
            return
        channel = self.channel(app)
        if not await channel.wait_for_block(number, AFTER_BLOCK_WAIT_S):
            raise Unavailable(
                f"node {self.id} has {channel.height} blocks of {app}; the request needs "
                f"block {number}",
                code="node_behind",
                hint="retry shortly, or send the request to a node that has the block",
            )

    # ----------------------------------------------------------------- authorisation

    def check_usable(self, identity: Identity, app: str | None = None) -> None:
        """CertificateError for a certificate governance revoked; Forbidden for an app
        user's certificate used on another app (its ``app`` attribute)."""
        if (identity.org, identity.serial) in self.config.revoked:
            raise CertificateError(
                f"certificate {identity.serial} of {identity.org}/{identity.name} was revoked "
                "through governance",
                code="certificate_revoked",
                hint=f"ask {identity.org}'s administrator for a new certificate",
            )
        scope = identity.attrs.get("app")
        if app is not None and scope is not None and scope != app:
            raise Forbidden(
                f"{identity.name}@{scope} is a user of app {scope}, not of {app}",
                code="wrong_app",
                hint=f"use an identity issued for {app}",
            )

    def may_read(self, app: str, org: str) -> bool:
        """Members (auditors too) read their app; the regulator reads every channel."""
        rules = self.channel(app).rules
        return org in rules.members or org in rules.readers or self.config.is_regulator(org)

    def may_read_ledger(self, app: str, org: str) -> bool:
        """The raw ledger (blocks, transactions, events): :meth:`may_read`, except that
        the governance channel's is for operators and the regulator only."""
        if app == GOVERNANCE_APP:
            return self.config.sees_everything(org)
        return self.may_read(app, org)

    def check_access(self, app: str, org: str, *, read: bool, ledger: bool = False) -> None:
        """Forbidden unless ``org`` may use ``app`` (write) or read it; Forbidden
        (``read_only_node``) for a write through an observer, which never endorses;
        Unavailable for a write through a node that is handing the app over to other
        nodes.

        ``ledger``: the request reads the channel's raw ledger (blocks, transactions
        with their arguments and results, the event stream, webhooks). Every org uses
        the governance channel, but its raw ledger holds every org's real-name details:
        only operators and the regulator read it; the others read proposals and the
        configuration through the ``_governance`` queries, which leave those out."""
        if ledger and app == GOVERNANCE_APP and not self.may_read_ledger(app, org):
            raise Forbidden(
                f"org {org} may not read the governance ledger (operators and the regulator only)",
                code="governance_ledger",
                hint="read proposals and the configuration with the _governance queries "
                "(meridian gov proposals, meridian gov config) or GET /v1/network",
            )
        if not read and self.entry.is_observer:
            raise Forbidden(
                f"node {self.id} is an observer (a regulator's node): it serves reads only",
                code="read_only_node",
                hint="send transactions to a node that hosts the app (GET /v1/network)",
            )
        if not read and app in self._leaving:
            raise Unavailable(
                f"node {self.id} is handing app {app} over to other nodes",
                code="app_moving",
                hint="send transactions to a node that hosts the app (GET /v1/network)",
            )
        if org in self.channel(app).rules.members or (read and self.may_read(app, org)):
            return
        raise Forbidden(
            f"org {org} is not a member of app {app}",
            code="not_a_member",
            hint="ask the app's members to invite your org",
        )

    def may_install(self, identity: Identity) -> bool:
        """Admins of this node's org, or of a member org of an app hosted here (an
        observer endorses nothing: only its own org installs there)."""
        if str(identity.role) != "admin":
            return False
        if identity.org == self.entry.org:
            return True
        return not self.entry.is_observer and any(
            identity.org in ch.rules.members
            for name, ch in self.channels.items()
            if name != GOVERNANCE_APP
        )

    def authenticate(self, cert_der: bytes) -> Identity:
        """Validate a caller's certificate (org CA, dates, revocation)."""
        return self.membership.validate(cert_der)

    def check_proposal(self, app: str, signed: SignedProposal, *, read: bool = False) -> Identity:
        """Creator, signature, app membership and freshness of a proposal."""
        proposal = signed.proposal
        if proposal.network != self.config.network:
            raise Forbidden(
                f"proposal is for network {proposal.network!r}, this is {self.config.network!r}",
                code="wrong_network",
            )
        if proposal.app != app:
            raise Forbidden("proposal app does not match the URL", code="wrong_app")
        channel = self.channel(app)
        caller = self.membership.validate(proposal.creator)
        message = signed.signed_message()
        if message is None or not verify_cached(
            caller.suite, caller.public_key, message, signed.signature
        ):
            raise AuthError(
                "the proposal signature does not verify with the creator's certificate",
                code="bad_signature",
                hint="sign the proposal with the key of the certificate it names",
            )
        self.check_access(app, caller.org, read=read)
        self.check_usable(caller, app)
        if not read and not channel.rules.active:
            raise Forbidden(
                f"app {app} is {self.config.app(app).status}",
                code="app_not_active",
                hint="its members can resume it through governance (set_app_status)",
            )
        skew = abs(int(time.time() * 1000) - proposal.timestamp_ms)
        if skew > PROPOSAL_MAX_SKEW_MS:
            raise AuthError(
                f"proposal timestamp is {skew // 1000} s away from node time",
                code="stale_proposal",
                hint="check the client clock and resend",
            )
        return caller

    # ------------------------------------------------------------------- endorsement

    def _start_simulation(
        self, app: str, signed: SignedProposal, caller: Identity, *, submit: bool
    ) -> _Simulating:
        """Start running the proposal's contract call; raises what is wrong up front.

        A call aborted with its worker's batch (``contract_aborted``) runs once more,
        alone, on a fresh Simulation (see :class:`RestartableCall`)."""
        proposal = signed.proposal
        channel = self.channel(app)
        sim = Simulation(
            channel.ledger,
            app=app,
            tx_id=proposal.tx_id,
            timestamp_ms=proposal.timestamp_ms,
            caller=self._caller_identity(caller),
            invoker=self.registry.invoke,
        )
        call = self.registry.start_proposal_call(
            sim, proposal.contract, proposal.function, list(proposal.args), submit=submit
        )
        return _Simulating(signed, caller, call)

    def _caller_identity(self, identity: Identity) -> CallerIdentity:
        """What contracts see of the caller (memoised: fixed per certificate)."""
        found = self._callers.get(identity.fingerprint)
        if found is None:
            if len(self._callers) >= 4096:
                self._callers.clear()
            found = self._callers[identity.fingerprint] = CallerIdentity.of(identity)
        return found

    async def simulate(
        self, app: str, signed: SignedProposal, caller: Identity, *, submit: bool
    ) -> TxResult:
        running = self._start_simulation(app, signed, caller, submit=submit)
        response = await running.future
        return running.call.sim.result(response)

    def endorse(self, signed: SignedProposal, result: TxResult) -> Transaction:
        digest = self._endorsement_digest(signed, result)
        return self._endorsed(signed, result, digest, self.signer.sign(digest), None)

    def _endorsement_digest(self, signed: SignedProposal, result: TxResult) -> bytes:
        return compute_endorsement_digest(signed.proposal.tx_id, result, self.config.network)

    def _endorsed(
        self,
        signed: SignedProposal,
        result: TxResult,
        digest: bytes,
        signature: bytes,
        batch: BatchProof | None,
    ) -> Transaction:
        endorsement = Endorsement(self.cert_der, signature, batch)
        message = endorsement.signed_message(digest, self.config.network)
        if message is not None:  # always, for what sign_batch made
            remember_own_signature(self.signer.suite, self._public_key, message, signature)
        return Transaction(signed, result, (endorsement,))

    def _start(self, app: str, signed: SignedProposal, committed: set[str]) -> _Simulating:
        """Check a proposal for submission and start simulating it."""
        caller = self.check_proposal(app, signed)
        channel = self.channel(app)
        tx_id = signed.proposal.tx_id
        if channel.is_pending(tx_id) or tx_id in committed:
            raise Conflict(
                f"transaction {tx_id} was already submitted",
                code="duplicate_tx",
                hint="a replayed proposal is never executed twice; query its status instead",
                details={"tx_id": tx_id},
            )
        return self._start_simulation(app, signed, caller, submit=True)

    def _finish(self, app: str, running: _Simulating) -> Endorsed:
        """Endorse a finished simulation (its future must be done)."""
        result = self._checked_result(app, running)
        return self._sized(self.endorse(running.signed, result), running.caller)

    def _checked_result(self, app: str, running: _Simulating) -> TxResult:
        result = running.call.sim.result(running.future.result())
        self._check_policies(self.channel(app), running.signed.proposal.contract, result)
        return result

    def _finish_all(
        self, app: str, started: Sequence[_Simulating | MeridianError]
    ) -> list[Endorsed | MeridianError]:
        """Endorse a batch's finished simulations, as :meth:`_finish` does one, with
        one signature per ``SIGNED_BATCH`` of them (see :func:`sign_batch`)."""
        checked: list[tuple[_Simulating, TxResult, bytes] | MeridianError] = []
        for s in started:
            if isinstance(s, MeridianError):
                checked.append(s)
                continue
            try:
                result = self._checked_result(app, s)
            except MeridianError as exc:
                checked.append(exc)
                continue
            checked.append((s, result, self._endorsement_digest(s.signed, result)))
        todo = [c for c in checked if not isinstance(c, MeridianError)]
        digests = [digest for _, _, digest in todo]
        signatures = iter(sign_batch(self.signer, digests, self.config.network))
        out: list[Endorsed | MeridianError] = []
        for c in checked:
            if isinstance(c, MeridianError):
                out.append(c)
                continue
            running, result, digest = c
            tx = self._endorsed(running.signed, result, digest, *next(signatures))
            try:
                out.append(self._sized(tx, running.caller))
            except MeridianError as exc:
                out.append(exc)
        return out

    def _sized(self, tx: Transaction, caller: Identity) -> Endorsed:
        if len(tx.encode()) > MAX_TX_BYTES:
            raise ContractFailure(
                f"the transaction would be {len(tx.encode())} bytes, over the limit of "
                f"{MAX_TX_BYTES}",
                code="contract_limit",
                hint="write less data per transaction (split it into several)",
            )
        return Endorsed(tx, caller)

    async def prepare(self, app: str, signed: SignedProposal) -> Endorsed:
        """Check, simulate and endorse one proposal for submission."""
        committed = self.channel(app).ledger.known_tx_ids([signed.proposal.tx_id])
        running = self._start(app, signed, committed)
        await asyncio.wait([running.future])
        return self._finish(app, running)

    def _check_policies(self, channel: Channel, invoked: str, result: TxResult) -> None:
        """Refuse to order what this node's endorsement alone cannot make valid."""
        endorsing = channel.rules.endorsing_orgs
        for ns in {rw.namespace for rw in result.rwsets} | {invoked}:
            governing = get_governing_definition(ns, channel.rules, channel.get_definition)
            if governing is None:
                continue  # validation reports it (UNKNOWN_CONTRACT)
            policy = governing[0]
            if not policy.is_satisfied({self.entry.org}, endorsing):
                raise Forbidden(
                    f"endorsement policy {policy} of {ns} needs more orgs than this node's "
                    f"({self.entry.org})",
                    code="endorsement_policy_unsatisfiable",
                    hint="upgrade the contract with a policy this network's nodes can meet",
                )

    # ----------------------------------------------------------------------- gateway

    async def submit(
        self, app: str, signed: SignedProposal, *, wait: bool, timeout_s: float = DEFAULT_WAIT_S
    ) -> Receipt:
        endorsed = await self.prepare(app, signed)
        return (await self.submit_endorsed(app, [endorsed], wait=wait, timeout_s=timeout_s))[0]

    async def submit_endorsed(
        self, app: str, items: Sequence[Endorsed], *, wait: bool, timeout_s: float = DEFAULT_WAIT_S
    ) -> list[Receipt]:
        channel = self.channel(app)
        txs = [item.tx for item in items]
        await channel.accept(txs)
        # Registered after accept (no leak if it refuses) and before the next await, so
        # no block holding them can be committed in between.
        futures = [channel.waiter(tx.tx_id) for tx in txs] if wait else []
        if not wait:
            return [Receipt(tx.tx_id, "pending", response=tx.result.response) for tx in txs]
        receipts = await channel.wait_for_all([tx.tx_id for tx in txs], futures, timeout_s)
        return [
            r
            if r.status == "committed"
            else Receipt(r.tx_id, "pending", response=tx.result.response)
            for r, tx in zip(receipts, txs, strict=True)
        ]

    async def submit_batch(
        self,
        app: str,
        items: Sequence[SignedProposal],
        *,
        wait: bool,
        timeout_s: float = DEFAULT_WAIT_S,
    ) -> list[Receipt | MeridianError]:
        """Endorse many proposals concurrently and accept the good ones in one write."""
        await self._preverify(items)
        committed = self.channel(app).ledger.known_tx_ids([s.proposal.tx_id for s in items])
        started: list[_Simulating | MeridianError] = []
        for signed in items:  # all calls queued at once: no task per transaction
            try:
                started.append(self._start(app, signed, committed))
            except MeridianError as exc:
                started.append(exc)
        futures = [s.future for s in started if isinstance(s, _Simulating)]
        if futures:
            await asyncio.wait(futures)
        results = self._finish_all(app, started)
        seen: set[str] = set()
        endorsed: list[Endorsed] = []
        for i, res in enumerate(results):
            if isinstance(res, Endorsed):
                if res.tx.tx_id in seen:
                    results[i] = Conflict("duplicate proposal in the batch", code="duplicate_tx")
                    continue
                seen.add(res.tx.tx_id)
                endorsed.append(res)
        receipts = iter(
            await self.submit_endorsed(app, endorsed, wait=wait, timeout_s=timeout_s)
            if endorsed
            else []
        )
        return [next(receipts) if isinstance(r, Endorsed) else r for r in results]

    async def _preverify(self, items: Sequence[SignedProposal]) -> None:
        """Check a batch's proposal signatures on the crypto threads (off the event loop).

        The verdicts land in the verification cache, where :meth:`check_proposal` finds
        them; libsodium releases the GIL, so this uses the other cores.
        """
        jobs = []
        for signed in items:
            try:
                creator = self.membership.validate(signed.proposal.creator)
            except CertificateError:
                continue  # check_proposal reports it
            message = signed.signed_message()
            if message is not None:  # else check_proposal reports it
                jobs.append((creator.suite, creator.public_key, message, signed.signature))
        jobs = list(dict.fromkeys(jobs))  # a signed batch's proposals share one check
        if len(jobs) >= PREVERIFY_MIN_BATCH:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in self._verify_on_threads(jobs)))

    def _verify_on_threads(self, jobs: Sequence[tuple[str, bytes, bytes, bytes]]) -> list[Any]:
        """Split signature checks over the crypto threads; their futures (verdicts go to
        the verification cache)."""
        step = -(-len(jobs) // self.options.crypto_threads)
        return [
            self._crypto.submit(_verify_all, jobs[i : i + step]) for i in range(0, len(jobs), step)
        ]

    def _preverify_transactions(self, txs: Sequence[Transaction]) -> None:
        """Check forwarded transactions' signatures on the crypto threads, in the
        background: the verdicts wait in the verification cache for validation."""
        when = _now()
        jobs = list(
            dict.fromkeys(  # a signed batch's transactions share their checks
                job for tx in txs for job in compute_signature_checks(tx, self.membership, when)
            )
        )
        if jobs:
            self._verify_on_threads(jobs)  # not awaited: validation finds what is done

    async def evaluate(self, app: str, signed: SignedProposal) -> Any:
        caller = self.check_proposal(app, signed, read=True)
        result = await self.simulate(app, signed, caller, submit=False)
        return result.response

    def install_package(self, archive: bytes) -> InstalledPackage:
        return self.packages.install(archive)

    def update_crl(self, org: str, crl_pem: bytes) -> None:
        """Apply a new revocation list for ``org`` (checked against the org's CA).

        It takes effect now (see :mod:`meridian.node.revocations`), and is recorded in
        the data directory *before* it applies, so that a revocation this node acted on
        is never forgotten by a restart (or by ``ledger verify``). A copy goes to the
        network directory for other tools.
        """
        when = _now()
        staged = get_membership(self.history)  # every org: revocations of any of them
        staged.restore_revocations(self.membership.revocations())
        staged.update_crl(org, crl_pem, received_at=when)  # refuses a bad CRL: no change
        save_revocations(self.data_dir, staged)
        self.membership.update_crl(org, crl_pem, received_at=when)
        write_file(self.layout.crl_file(org), crl_pem)

    def status(self) -> dict[str, Any]:
        now = int(time.time() * 1000)
        return {
            "node": self.id,
            "org": self.entry.org,
            "network": self.config.network,
            "uptime_s": (now - self.started_ms) // 1000,
            "sandbox": self.sandbox_mode,
            "apps": {
                name: {
                    "height": ch.height,
                    "pending": ch.queued(),
                    "last_commit_age_ms": now - ch.last_commit_ms if ch.last_commit_ms else None,
                    "halted": ch.halted,
                    "members": sorted(ch.rules.members),
                    "consensus": ch.orderer.status(),
                }
                for name, ch in self.channels.items()
            },
            "peers": {
                "connected": [] if self.transport is None else self.transport.connected(),
                "dropped_frames": dict(self.dropped_frames),
            },
        }


def _now() -> datetime:
    return datetime.now(UTC)


def _verify_all(jobs: Sequence[tuple[str, bytes, bytes, bytes]]) -> None:
    for job in jobs:
        verify_cached(*job)


def is_admin_of(identity: Identity, org: str) -> bool:
    return str(identity.role) == "admin" and identity.org == org


__all__ = ["LIFECYCLE", "Endorsed", "Node", "NodeOptions", "is_admin_of"]
