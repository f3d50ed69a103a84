"""The service-network side of a node's gateway: onboarding, app users, plans,
usage and invoices, webhooks and the regulator's audit log.

Governance itself (proposals, approvals) needs no endpoint of its own: changes are
ordinary transactions of the ``_governance`` contract on the ``governance`` app, signed
by the deciding orgs' admins. What lives here is what a node does *for* its users:

* **Registration** (``POST /v1/developers``): the node's operator runs a portal. The
  gateway makes the new org's CA, keeps the CA key sealed in its key vault (to issue
  the org's app users later), proposes ``register_org`` with the operator's registrar
  identity, and returns the org's admin certificate (for the admin's CSR, or with a
  fresh key returned once).
* **App users** (``POST /v1/apps/{app}/users``): issued by the owner org's CA on the
  node that registered it (its *home node*). Own-key apps send a CSR; key-custody apps
  get a key made and sealed here, and their back-end then has transactions signed for
  a user (``POST /v1/apps/{app}/users/{name}/transactions``) after authenticating.
  The key vault registers every certificate issued, so the owner's admin can revoke a
  user there (``POST /v1/apps/{app}/users/{name}/revoke``): the home node signs the
  owner CA's CRL of what the network does not enforce yet and returns it; the admin
  then proposes the governance
  ``revoke`` change itself (the gateway holds no key of the org's admins).
* **Plans**: every app request is metered; submits are rate limited to the plan's TPS
  (429 + Retry-After), monthly requests and storage are capped; invoices per month.
  Usage and invoices cover every hosting node's gateway (:mod:`.peer_usage`), and the
  requests quota counts them too (refreshed in the background, so eventually
  consistent); the TPS limit stays per gateway.
* **Webhooks**: contract events and block notices POSTed to the developer, signed by
  this node, retried with back-off; failures can be listed and redelivered.
* **Audit**: the regulator (and operators) read every administrative action.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from ..client.core import Identity as ClientIdentity
from ..client.core import ProposalBuilder
from ..contracts.lifecycle import LIFECYCLE
from ..crypto.certs import CertificateAuthority, Identity, Role, load_cert_der, load_signer
from ..crypto.suites import ED25519, get_suite
from ..errors import (
    Busy,
    Conflict,
    Forbidden,
    InvalidInput,
    MeridianError,
    NotFound,
    Unavailable,
)
from ..network.config import GOVERNANCE_APP
from ..network.contract import proposal_key
from ..network.governance import GOVERNANCE
from ..network.plans import (
    NetworkUsage,
    billing_month,
    compute_invoice,
    compute_network_usage,
    render_invoice_html,
    render_invoice_text,
)
from ..node.channel import Channel
from ..node.node import Node
from .custody import KeyVault, validate_csr_for
from .peer_usage import (
    PEER_REFRESH_EVERY_S,
    SCOPE_LOCAL,
    PeerRequests,
    PeerUsageClient,
    parse_scope,
)
from .quotas import RateLimiter, UsageMeter, check_requests_quota, check_storage_quota
from .webhooks import Dispatcher, WebhookStore

log = logging.getLogger("meridian.gateway")

CA_USER_PREFIX = "ca."  # the vault keeps a registered org's CA key as governance/ca.<org>
REGISTRAR_PREFIX = "registrar-"  # a node's registrar identity is CN registrar-<node>
FEED_EVERY_S = 0.2
REGISTRATION_WAIT_S = 30.0
PRUNE_EVERY_S = 3600.0
DELIVERY_RETENTION_MS = 30 * 24 * 3600 * 1000  # delivered and failed ones, 30 days
REGISTRATIONS_PER_HOUR = 60
MAX_AUDIT_ROWS = 1000

Caller = Callable[..., Awaitable[Identity]]


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Stores:
    vault: KeyVault
    meter: UsageMeter
    webhooks: WebhookStore
    dispatcher: Dispatcher
    registrar: ClientIdentity | None
    peers: PeerUsageClient


class Services:
    """Per-node state behind the service endpoints (in the node's data directory),
    opened when the gateway starts."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.limiter = RateLimiter()
        self._second: dict[str, tuple[int, int]] = {}  # app -> (second, transactions in it)
        self._homes: dict[str, str] = {}  # org -> the node that registered it
        self._homes_read = 0  # governance blocks _find_home_node has read
        self._registrations: list[float] = []  # monotonic times of recent sign-ups
        self._stores: _Stores | None = None
        self._tasks: tuple[asyncio.Task[None], ...] = ()
        self.peer_requests = PeerRequests()  # other gateways' counts, for the quota
        self._refresh_now = asyncio.Event()

    def open(self) -> None:
        node = self.node
        data = node.data_dir
        config = node.config
        forbidden = [(n.host, p) for n in config.nodes for p in (n.port, n.p2p_port)]
        webhooks = WebhookStore(data / "webhooks.sqlite", forbidden=forbidden)
        registrar_dir = node.layout.node_dir(node.id) / "registrar"
        registrar = None
        if (registrar_dir / "cert.pem").is_file():
            registrar = ClientIdentity.from_dir(registrar_dir)
        self._stores = _Stores(
            vault=KeyVault(data / "vault", network=config.network),
            meter=UsageMeter(data / "usage.sqlite"),
            webhooks=webhooks,
            dispatcher=Dispatcher(webhooks, node.signer, config.network),
            registrar=registrar,
            peers=PeerUsageClient(node.signer, node.cert_der, config.network),
        )

    @property
    def stores(self) -> _Stores:
        if self._stores is None:
            raise Unavailable("the gateway is starting", code="starting", hint="retry shortly")
        return self._stores

    @property
    def vault(self) -> KeyVault:
        return self.stores.vault

    @property
    def meter(self) -> UsageMeter:
        return self.stores.meter

    @property
    def webhooks(self) -> WebhookStore:
        return self.stores.webhooks

    @property
    def dispatcher(self) -> Dispatcher:
        return self.stores.dispatcher

    @property
    def registrar(self) -> ClientIdentity | None:
        return self.stores.registrar

    @property
    def peers(self) -> PeerUsageClient:
        return self.stores.peers

    def start(self) -> None:
        self.open()
        self._tasks = (
            asyncio.create_task(self.dispatcher.run(), name="webhook-dispatcher"),
            asyncio.create_task(self._feed_webhooks(), name="webhook-feeder"),
            asyncio.create_task(self._flush_meter(), name="usage-flush"),
            asyncio.create_task(self._refresh_peer_requests(), name="peer-usage"),
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._stores is not None:
            await self.peers.aclose()
            self.meter.close()
            self.webhooks.close()
            self.vault.close()
            self._stores = None

    # ------------------------------------------------------------------ plans

    def admit(self, app: str, *, transactions: int = 0, org: str | None = None) -> None:
        """Meter one request to ``app``; refuse it (429 / 403) over the app's plan. The
        regulator's reads are neither billed to the app nor limited by its plan."""
        now = _now_ms()
        config = self.node.config
        if org is not None and not transactions and config.is_regulator(org):
            return
        try:
            app_config = config.app(app)
        except NotFound:
            return  # the route reports the unknown app
        if not app_config.plan:  # consortium apps and governance: metered, not limited
            self._record(app, now, transactions)
            return
        plan = config.plan(app_config.plan)
        if self.peer_requests.note_traffic(app):
            self._refresh_now.set()  # busy again: fetch the peers' counts at once
        try:
            check_requests_quota(self.get_network_requests(app, billing_month(now)), plan)
            if transactions:
                self.limiter.check(app, plan.tps, cost=transactions)
                stored = self.node.channel(app).stored_bytes  # no read per request
                self.meter.set_storage(app, now, stored)
                check_storage_quota(stored, plan)
        except MeridianError:
            self.meter.record_throttled(app, now)
            raise
        self._record(app, now, transactions)

    def _record(self, app: str, now_ms: int, transactions: int) -> None:
        self.meter.record_requests(app, now_ms)
        if not transactions:
            return
        second, count = self._second.get(app, (0, 0))
        count = count + transactions if second == now_ms // 1000 else transactions
        self._second[app] = (now_ms // 1000, count)
        self.meter.record_transactions(app, now_ms, transactions, tps_sample=count)

    async def _flush_meter(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.meter.flush()
            except Exception:
                log.exception("usage meter flush failed")

    # ---------------------------------------------------- usage across nodes

    def get_network_requests(self, app: str, month: str) -> int:
        """The app's requests of ``month`` here plus what the other hosting nodes'
        gateways last reported (at most PEER_REFRESH_EVERY_S old while it is busy)."""
        return self.meter.get_requests(app, month) + self.peer_requests.get(
            app, month, self._peer_ids(app)
        )

    def _peer_ids(self, app: str) -> list[str]:
        config = self.node.config  # observers too: members read through them, billed
        return [n for n in config.replicas(config.app(app)) if n != self.node.id]

    async def get_network_usage(self, app: str, month: str) -> NetworkUsage:
        """``app``'s usage of ``month`` on every hosting node: this gateway's meter and
        each other node's local view, asked in parallel; nodes that do not answer
        within PEER_USAGE_TIMEOUT_S are reported missing."""
        local = self.meter.get_usage(app, month)  # validates app and month first
        config = self.node.config
        entries = [config.node(n) for n in self._peer_ids(app)]
        found, missing = await self.peers.gather(entries, app, month)
        for node, usage in found.items():
            self.peer_requests.update(app, node, month, usage.requests)
        return compute_network_usage(app, month, {self.node.id: local, **found}, missing)

    def is_hosting_node(self, app: str, identity: Identity) -> bool:
        """Whether ``identity`` is the certificate of a node holding ``app`` (a gateway,
        hosting or observing, asking for this one's share of the app's usage)."""
        if identity.role is not Role.NODE:
            return False
        config = self.node.config
        try:
            entry = config.node(identity.name)
            hosts = entry.id in config.replicas(config.app(app))
        except NotFound:
            return False
        return (
            hosts
            and entry.org == identity.org
            and load_cert_der(entry.cert_pem) == identity.cert_der
        )

    async def _refresh_peer_requests(self) -> None:
        """Every PEER_REFRESH_EVERY_S (or at once when an app gets busy again), fetch
        the other gateways' request counts of the planned apps busy here."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_now.wait(), PEER_REFRESH_EVERY_S)
            self._refresh_now.clear()
            try:
                await self._refresh_peer_counts()
            except Exception:
                log.exception("refreshing the peers' request counts failed")

    async def _refresh_peer_counts(self) -> None:
        config = self.node.config
        month = billing_month(_now_ms())
        jobs = []
        for app in self.peer_requests.active_apps():
            try:
                app_config = config.app(app)
            except NotFound:
                continue
            entries = [config.node(n) for n in self._peer_ids(app)]
            if app_config.plan and app in self.node.channels and entries:
                jobs.append((app, entries))
        answers = await asyncio.gather(
            *(self.peers.gather(entries, app, month) for app, entries in jobs)
        )
        for (app, _), (found, _) in zip(jobs, answers, strict=True):
            for node, usage in found.items():
                self.peer_requests.update(app, node, month, usage.requests)

    # --------------------------------------------------------------- webhooks

    async def _feed_webhooks(self) -> None:
        """Enqueue each committed block's notice and events for the apps' webhooks;
        forget settled deliveries after DELIVERY_RETENTION_MS."""
        pruned_at = 0.0
        while True:
            await asyncio.sleep(FEED_EVERY_S)
            if time.monotonic() - pruned_at > PRUNE_EVERY_S:
                pruned_at = time.monotonic()
                self.webhooks.prune(_now_ms() - DELIVERY_RETENTION_MS)
            for app, channel in list(self.node.channels.items()):
                try:
                    if self._feed(app, channel):
                        self.dispatcher.wake()
                except Exception:
                    log.exception("%s: webhook feed failed", app)

    def _feed(self, app: str, channel: Channel) -> bool:
        hooks = self.webhooks.list(app)
        for hook in hooks:  # an org that lost access to the app loses its webhooks too
            if not self.node.may_read_ledger(app, hook.owner.split("/")[0]):
                log.warning("%s: removing webhook %s of %s (no access)", app, hook.id, hook.owner)
                self.webhooks.delete(app, hook.id)
        if not self.webhooks.list(app):
            return False
        start = self.webhooks.last_enqueued(app) + 1
        for number in range(start, channel.height):
            block = channel.ledger.get_block(number)
            codes = channel.ledger.get_codes(number) or ()
            if block is None:
                return number > start
            now = _now_ms()
            notice = {
                "block": number,
                "hash": block.header.hash.hex(),
                "timestamp_ms": block.header.timestamp_ms,
                "txs": [
                    {"tx_id": tx.tx_id, "code": code.name}
                    for tx, code in zip(block.transactions, codes, strict=True)
                ],
            }
            self.webhooks.enqueue(
                app,
                "block",
                notice,
                contract=None,
                dedupe_key=f"block:{number}",
                now_ms=now,
                block=number,
            )
            for e in channel.ledger.get_events(number, number + 1):
                event = {
                    "block": e.block,
                    "tx_id": e.tx_id,
                    "contract": e.contract,
                    "name": e.name,
                    "payload": e.payload,
                }
                key = f"event:{e.block}:{e.tx}:{e.idx}"
                self.webhooks.enqueue(
                    app,
                    "event",
                    event,
                    contract=e.contract,
                    dedupe_key=key,
                    now_ms=now,
                    block=number,
                )
            self.webhooks.record_enqueued(app, number)
        return channel.height > start

    # ---------------------------------------------------------- registration

    async def register(self, body: Any) -> dict[str, Any]:
        """Register an enterprise or developer org (see the module docstring)."""
        if self.registrar is None:
            raise Unavailable(
                f"node {self.node.id} does not take registrations",
                code="registration_closed",
                hint="register through an operator node that runs a registrar",
            )
        org = _text(body, "org", 32)
        org_type = body.get("type", "developer")
        if org_type not in ("developer", "enterprise"):
            raise InvalidInput("type must be developer or enterprise", code="malformed")
        config = self.node.config
        if org in {o.id for o in config.orgs}:
            raise Conflict(f"org {org!r} already exists", code="duplicate_name")
        ca = CertificateAuthority.create(org)
        change = {
            "kind": "register_org",
            "id": org,
            "type": org_type,
            "name": _text(body, "name", 256),
            "details": _details(body.get("details", {}), max_fields=8, max_chars=128),
            "ca": ca.cert_pem.decode(),
        }
        admin_csr = body.get("admin_csr")
        if admin_csr is not None and not isinstance(admin_csr, str):
            raise InvalidInput("admin_csr must be a PEM string", code="malformed")
        if admin_csr is not None:
            validate_csr_for(admin_csr.encode(), org=org, user="admin")
        self._admit_registration()
        self._keep_ca(org, ca)  # first: an org this node registered can always issue
        try:
            proposal = await self._submit_governance(self.registrar, "propose", [change, 7 * 86400])
        except Unavailable:
            raise  # accepted, and may still execute: the CA key stays
        except MeridianError:
            self.vault.delete(GOVERNANCE_APP, CA_USER_PREFIX + org)  # refused: nothing kept
            raise
        result: dict[str, Any] = {"org": org, "ca": ca.cert_pem.decode(), "proposal": proposal}
        if admin_csr is not None:
            result["admin"] = {"cert": ca.sign_csr(admin_csr.encode(), Role.ADMIN).decode()}
        else:
            issued = ca.issue("admin", Role.ADMIN)
            assert issued.key_pem is not None
            result["admin"] = {"cert": issued.cert_pem.decode(), "key": issued.key_pem.decode()}
        return result

    def _admit_registration(self) -> None:
        """At most REGISTRATIONS_PER_HOUR sign-ups per node (they need no identity)."""
        now = time.monotonic()
        recent = [t for t in self._registrations if now - t < 3600]
        if len(recent) >= REGISTRATIONS_PER_HOUR:
            raise Busy(
                f"this portal took {len(recent)} registrations in the last hour",
                retry_after_s=3600 - (now - recent[0]),
                code="registration_throttled",
                hint="retry later, or register through another operator's portal",
            )
        self._registrations = [*recent, now]

    def _keep_ca(self, org: str, ca: CertificateAuthority) -> None:
        self.vault.import_signer(GOVERNANCE_APP, CA_USER_PREFIX + org, load_signer(ca.key_pem))
        self.vault.store_certificate(GOVERNANCE_APP, CA_USER_PREFIX + org, ca.cert_pem)

    def _get_ca(self, org: str) -> CertificateAuthority:
        user = CA_USER_PREFIX + org
        try:
            cert = self.vault.get_certificate(GOVERNANCE_APP, user)
            key = self.vault.get_signer(GOVERNANCE_APP, user).private_pem()
        except NotFound as exc:
            home = self._find_home_node(org)
            hint = (
                f"issue and revoke {org}'s app users through its home node {home}"
                if home
                else f"no node registered {org}, so none keeps its CA key: {org} issues its"
                " identities and signs its CRLs with its own CA (docs/identity.md)"
            )
            raise Conflict(
                f"{org}'s CA is not kept on node {self.node.id}",
                code="ca_not_here",
                hint=hint,
                details={"home_node": home} if home else None,
            ) from exc
        return CertificateAuthority.load(cert, key)

    def _find_home_node(self, org: str) -> str | None:
        """The node whose registrar proposed ``org``'s executed ``register_org`` (its
        home node), from this node's governance ledger; None if there is none (an org
        admitted with ``add_org`` has its CA key off the network). The ledger is read
        once: each call looks only at the governance blocks committed since the last."""
        channel = self.node.channels.get(GOVERNANCE_APP)
        if channel is None:
            return None
        ledger, height = channel.ledger, channel.height
        for event in ledger.get_events(self._homes_read, height):
            payload = event.payload if isinstance(event.payload, dict) else {}
            if event.contract != GOVERNANCE or event.name != "executed":
                continue
            if payload.get("kind") != "register_org":
                continue
            found = ledger.get(GOVERNANCE, proposal_key(str(payload.get("proposal"))))
            proposal = found[0] if found is not None else None
            if not isinstance(proposal, dict):
                continue
            name = str(proposal.get("proposer", {}).get("name", ""))
            if name.startswith(REGISTRAR_PREFIX):
                self._homes[str(proposal["change"]["id"])] = name.removeprefix(REGISTRAR_PREFIX)
        self._homes_read = max(self._homes_read, height)
        home = self._homes.get(org)
        return home if home in {n.id for n in self.node.config.nodes} else None

    async def _submit_governance(
        self, identity: ClientIdentity, function: str, args: list[Any]
    ) -> Any:
        signed = ProposalBuilder(identity, self.node.config.network).build(
            GOVERNANCE_APP, GOVERNANCE, function, tuple(args)
        )
        receipt = await self.node.submit(
            GOVERNANCE_APP, signed, wait=True, timeout_s=REGISTRATION_WAIT_S
        )
        if receipt.status != "committed" or not receipt.valid:
            raise Unavailable(
                f"the governance transaction is {receipt.status} "
                f"({receipt.code.name if receipt.code else 'not committed yet'})",
                code="governance_pending",
                hint="retry shortly; query the proposal with 'meridian gov proposals'",
            )
        return receipt.response

    # -------------------------------------------------------------- app users

    def issue_user(self, app: str, caller: Identity, body: Any) -> dict[str, Any]:
        """Issue app user ``name`` (CN=name, O=owner, attribute app=<app>)."""
        config = self.node.config
        app_config = config.app(app)
        if caller.role != "admin" or caller.org != app_config.owner:
            raise Forbidden(
                f"only an admin of {app}'s owner ({app_config.owner or 'none'}) issues its users",
                code="not_admin",
            )
        name = _text(body, "name", 64)
        csr = body.get("csr")
        ca = self._get_ca(app_config.owner)
        attrs = {"app": app}
        if app_config.key_mode == "own":
            if not isinstance(csr, str):
                raise InvalidInput(
                    f"app {app} uses own keys: send a CSR for CN={name}, O={app_config.owner}",
                    code="csr_required",
                )
            validate_csr_for(csr.encode(), org=app_config.owner, user=name)
            cert = ca.sign_csr(csr.encode(), Role.CLIENT, attrs)
            self.vault.record_issued(app, name, cert)  # to find it if the user is revoked
            return {"user": f"{name}@{app}", "cert": cert.decode(), "key_mode": "own"}
        if csr is not None:
            raise InvalidInput(
                f"app {app} uses key custody: the gateway makes the key; send no CSR",
                code="custody_app",
            )
        signer = get_suite(ED25519).generate()
        public_key = signer.crypto_key.public_key()
        cert = ca.issue(name, Role.CLIENT, attrs=attrs, public_key=public_key).cert_pem
        self.vault.import_user(app, name, signer, cert)  # key and certificate at once
        return {"user": f"{name}@{app}", "cert": cert.decode(), "key_mode": "custody"}

    def revoke_user(self, app: str, caller: Identity, name: str) -> dict[str, Any]:
        """Revoke app user ``name`` as an admin of the app's owner: every certificate
        the owner's CA issued to ``name@app`` is marked revoked in the vault (custodial
        signing for it stops at once) and a CRL of the CA's revocations the network
        does not enforce yet is signed and returned, for the caller's admin to propose
        as a governance ``revoke``.

        Idempotent until the network enforces it (see :meth:`KeyVault.revoke_user`):
        then 409 ``already_revoked``."""
        app_config = self.node.config.app(app)
        owner = app_config.owner
        if caller.role != Role.ADMIN or caller.org != owner or "app" in caller.attrs:
            raise Forbidden(
                f"only an admin of {app}'s owner ({owner or 'none'}) revokes its users",
                code="not_admin",
            )
        ca = self._get_ca(owner)  # 409 ca_not_here elsewhere than its home node

        def is_published(serial: int) -> bool:
            return (owner, serial) in self.node.config.revoked

        done = self.vault.revoke_user(app, name, ca, is_published=is_published)
        return {
            "user": f"{name}@{app}",
            "org": done.org,
            "serials": [str(serial) for serial in done.serials],
            "crl": done.crl_pem.decode(),
            "crl_number": done.crl_number,
            "change": {"kind": "revoke", "org": done.org, "crl": done.crl_pem.decode()},
        }

    def custody_identity(self, app: str, caller: Identity, name: str) -> ClientIdentity:
        """The custodial user ``name`` of ``app``, for a caller of its owner org."""
        app_config = self.node.config.app(app)
        if app_config.key_mode != "custody":
            raise Forbidden(f"app {app} does not use key custody", code="not_custody")
        if caller.org != app_config.owner or "app" in caller.attrs:
            raise Forbidden(
                f"only {app_config.owner}'s back-end (an identity of the org, not an app "
                f"user) may sign for {app}'s users",
                code="not_the_backend",
            )
        cert = self.vault.get_certificate(app, name)
        return ClientIdentity(load_cert_der(cert), self.vault.get_signer(app, name))

    # -------------------------------------------------------------- invoices

    async def invoice(self, app: str, month: str | None) -> dict[str, Any]:
        """The invoice of ``app`` for ``month``, over its usage on every hosting node."""
        config = self.node.config
        app_config = config.app(app)
        if not app_config.plan:
            raise NotFound(f"app {app} has no plan: nothing is billed", code="no_plan")
        now = _now_ms()
        usage = await self.get_network_usage(app, month or billing_month(now))
        return compute_invoice(
            network=config.network,
            app=app,
            owner=app_config.owner,
            plan=config.plan(app_config.plan),
            usage=usage,
            issued_ms=now,
        )

    # ------------------------------------------------------------------ audit

    def audit(self, limit: int) -> list[dict[str, Any]]:
        """Administrative actions on this node's channels, oldest first."""
        rows: list[dict[str, Any]] = []
        for app, channel in self.node.channels.items():
            contract = GOVERNANCE if app == GOVERNANCE_APP else LIFECYCLE
            for e in channel.ledger.get_events(0, channel.height):
                if e.contract != contract:
                    continue
                header = channel.ledger.get_header(e.block)
                rows.append(
                    {
                        "channel": app,
                        "block": e.block,
                        "tx_id": e.tx_id,
                        "time_ms": header.timestamp_ms if header else None,
                        "contract": e.contract,
                        "action": e.name,
                        "details": e.payload,
                    }
                )
        rows.sort(key=lambda r: (r["time_ms"] or 0, r["channel"], r["block"]))
        return rows[-limit:]


def _text(body: Any, key: str, max_chars: int) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise InvalidInput(f"'{key}' must be text of 1..{max_chars} characters", code="malformed")
    return value


def _details(value: Any, *, max_fields: int, max_chars: int) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > max_fields:
        raise InvalidInput(
            f"'details' must be an object of at most {max_fields} fields", code="malformed"
        )
    for key, text in value.items():
        if not isinstance(text, str) or len(text) > max_chars or len(key) > 32:
            raise InvalidInput(
                f"detail {key!r} must be text of at most {max_chars} characters",
                code="malformed",
            )
    return dict(value)


def register_routes(app: FastAPI, services: Services, caller: Caller, body_of: Any) -> None:
    """Add the service-network endpoints to the gateway ``app``."""
    node = services.node

    @app.get("/v1/network", tags=["network"], summary="The current network configuration")
    async def network(request: Request) -> Any:
        identity = await caller(request)
        height, config = node.get_config_snapshot()
        return {
            "height": height,
            "version": config.version,
            "config": config.to_dict_for(identity.org),
        }

    @app.get("/v1/plans", tags=["network"], summary="Resource plans (prices in fen, CNY)")
    async def plans(request: Request) -> Any:
        await caller(request)
        return {"currency": "CNY", "plans": [p.to_dict() for p in node.config.plans]}

    @app.post(
        "/v1/developers",
        tags=["onboarding"],
        summary="Register a developer or enterprise org (unauthenticated sign-up)",
    )
    async def register(request: Request) -> Any:
        return await services.register(await body_of(request))

    @app.post("/v1/apps/{app_name}/users", tags=["onboarding"], summary="Issue an app user")
    async def issue_user(app_name: str, request: Request) -> Any:
        identity = await caller(request)
        return services.issue_user(app_name, identity, await body_of(request))

    @app.post(
        "/v1/apps/{app_name}/users/{user}/revoke",
        tags=["onboarding"],
        summary="Revoke an app user: sign the owner CA's CRL (the owner's admin proposes it)",
    )
    async def revoke_user(app_name: str, user: str, request: Request) -> Any:
        identity = await caller(request)
        return services.revoke_user(app_name, identity, user)

    @app.post(
        "/v1/apps/{app_name}/users/{user}/transactions",
        tags=["onboarding"],
        summary="Key custody: submit a transaction signed for an app user",
    )
    async def custody_submit(app_name: str, user: str, request: Request) -> Any:
        identity = await caller(request)
        body = await body_of(request)
        signer = services.custody_identity(app_name, identity, user)
        args = body.get("args", []) if isinstance(body, dict) else None
        if not isinstance(args, list):
            raise InvalidInput("'args' must be a list", code="malformed")
        services.admit(app_name, transactions=1)
        signed = ProposalBuilder(signer, node.config.network).build(
            app_name, _text(body, "contract", 64), _text(body, "function", 64), tuple(args)
        )
        receipt = await node.submit(app_name, signed, wait=True)
        return {"receipt": receipt.to_dict()}

    @app.get(
        "/v1/apps/{app_name}/usage",
        tags=["plans"],
        summary="Metered usage of a month (scope=network: every hosting node; local: this one)",
    )
    async def usage(
        app_name: str, request: Request, month: str | None = None, scope: str | None = None
    ) -> Any:
        # another hosting node's gateway may ask for this one's share (unmetered)
        await caller(request, app_name, peer=scope == SCOPE_LOCAL)
        where = parse_scope(scope)
        when = month or billing_month(_now_ms())
        if where == SCOPE_LOCAL:
            local = services.meter.get_usage(app_name, when).to_dict()
            return {**local, "scope": SCOPE_LOCAL, "node": node.id}
        return (await services.get_network_usage(app_name, when)).to_dict()

    @app.get(
        "/v1/apps/{app_name}/invoice",
        tags=["plans"],
        summary="Monthly invoice (format=json|text|html)",
    )
    async def invoice(
        app_name: str, request: Request, month: str | None = None, format: str = "json"
    ) -> Any:
        await caller(request, app_name)
        if format not in ("json", "text", "html"):
            raise InvalidInput("format is json, text or html", code="malformed")
        bill = await services.invoice(app_name, month)
        if format == "text":
            return PlainTextResponse(render_invoice_text(bill))
        if format == "html":
            return HTMLResponse(render_invoice_html(bill))
        return bill

    @app.post("/v1/apps/{app_name}/webhooks", tags=["webhooks"], summary="Register a webhook")
    async def add_webhook(app_name: str, request: Request) -> Any:
        identity = await caller(request, app_name, read=False, ledger=True)  # participants only
        body = await body_of(request)
        kinds = body.get("kinds", ["event", "block"]) if isinstance(body, dict) else None
        if not isinstance(kinds, list):
            raise InvalidInput("'kinds' must be a list", code="malformed")
        channel = node.channel(app_name)
        hook = services.webhooks.register(
            app_name,
            _text(body, "url", 2048),
            kinds,
            contract=body.get("contract"),
            owner=f"{identity.org}/{identity.name}",
            now_ms=_now_ms(),
            start_block=channel.height,  # the blocks committed from now on
        )
        return hook.to_dict()

    @app.get("/v1/apps/{app_name}/webhooks", tags=["webhooks"], summary="List webhooks")
    async def list_webhooks(app_name: str, request: Request) -> Any:
        await caller(request, app_name, ledger=True)
        return {"webhooks": [h.to_dict() for h in services.webhooks.list(app_name)]}

    @app.delete(
        "/v1/apps/{app_name}/webhooks/{webhook_id}", tags=["webhooks"], summary="Remove one"
    )
    async def delete_webhook(app_name: str, webhook_id: str, request: Request) -> Any:
        identity = await caller(request, app_name, read=False, ledger=True)
        hook = services.webhooks.get(app_name, webhook_id)
        owner = hook.owner.split("/")[0]
        if identity.org not in (owner, node.config.app(app_name).owner):
            raise Forbidden(
                f"webhook {webhook_id} belongs to {owner}: only it or the app's owner may "
                "delete it",
                code="not_the_owner",
            )
        services.webhooks.delete(app_name, webhook_id)
        return {"ok": True}

    @app.get(
        "/v1/apps/{app_name}/webhooks/deliveries",
        tags=["webhooks"],
        summary="Deliveries (state=pending|delivered|failed)",
    )
    async def deliveries(app_name: str, request: Request, state: str | None = None) -> Any:
        await caller(request, app_name, ledger=True)
        rows = services.webhooks.deliveries(app_name, state=state)
        return {"deliveries": [d.to_dict() for d in rows]}

    @app.post(
        "/v1/apps/{app_name}/webhooks/deliveries/{delivery_id}/redeliver",
        tags=["webhooks"],
        summary="Try a failed delivery again",
    )
    async def redeliver(app_name: str, delivery_id: str, request: Request) -> Any:
        await caller(request, app_name, read=False, ledger=True)
        delivery = services.webhooks.redeliver(app_name, delivery_id, _now_ms())
        services.dispatcher.wake()
        return delivery.to_dict()

    @app.get(
        "/v1/audit",
        tags=["network"],
        summary="Audit log: every administrative action (regulator and operators)",
    )
    async def audit(request: Request, limit: int = MAX_AUDIT_ROWS) -> Any:
        identity = await caller(request)
        config = node.config
        if not (config.is_regulator(identity.org) or identity.org in config.operators):
            raise Forbidden("the audit log is for the regulator and operators", code="forbidden")
        if not 0 < limit <= MAX_AUDIT_ROWS:
            raise InvalidInput(f"limit must be 1..{MAX_AUDIT_ROWS}", code="malformed")
        return {"actions": services.audit(limit)}


__all__ = ["Services", "register_routes"]
