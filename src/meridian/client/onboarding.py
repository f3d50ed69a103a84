"""Onboarding through the SDK: sign-up, app users, usage and invoices, webhooks.

The calls of a developer's journey (``docs/service-network.md``)::

    from meridian.client import connect
    from meridian.client.onboarding import register, issue_user, invoice_text, add_webhook

    reg = register("http://127.0.0.1:7050", org="acme", name="Acme Software Ltd",
                   details={"contact": "dev@acme.example"})   # no identity needed
    reg.save("net/orgs/acme/users/admin")                      # cert.pem + key.pem (0600)
    with connect("http://127.0.0.1:7050", reg.identity) as gw:
        issue_user(gw, "shop", "alice")                        # a key-custody app
        print(invoice_text(gw, "shop"))
        add_webhook(gw, "shop", "https://hooks.acme.example/meridian")

Each function is one gateway request (``docs/gateway-api.md``), except
:func:`revoke_user`, which also proposes the governance change; errors are the typed
exceptions of :mod:`meridian.errors`, as everywhere in the SDK.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..crypto.certs import load_cert_der
from ..crypto.suites import load_signer
from ..errors import Forbidden, InvalidInput
from ..network.config import write_file
from .core import Identity, raise_for_error
from .governance import Governance
from .sync import DEFAULT_TIMEOUT_S, Gateway

ORG_TYPES = ("developer", "enterprise")
INVOICE_FORMATS = ("json", "text", "html")
USAGE_SCOPES = ("network", "local")
DELIVERY_STATES = ("pending", "delivered", "failed")


@dataclass(frozen=True, slots=True)
class Registration:
    """What a sign-up returns: the org's CA, the governance proposal that registered
    it, and its admin — an :class:`Identity` when the gateway made the key (returned
    once), else the certificate PEM for the key behind ``admin_csr``."""

    org: str
    ca_pem: str
    proposal: dict[str, Any]
    admin_cert_pem: str
    admin_key_pem: str | None

    @property
    def admin(self) -> Identity | str:
        identity = self.identity
        return identity if identity is not None else self.admin_cert_pem

    @property
    def identity(self) -> Identity | None:
        """The admin identity, when the gateway returned its key."""
        if self.admin_key_pem is None:
            return None
        return Identity(
            load_cert_der(self.admin_cert_pem.encode()), load_signer(self.admin_key_pem.encode())
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``cert.pem`` (and ``key.pem``, 0600, when the key was returned) into
        ``folder``, the layout :meth:`Identity.from_dir` reads."""
        folder = Path(folder)
        if self.admin_key_pem is not None:
            write_file(folder / "key.pem", self.admin_key_pem.encode(), secret=True)
        write_file(folder / "cert.pem", self.admin_cert_pem.encode())
        return folder


def register(
    url: str,
    *,
    network: str | None = None,
    org: str,
    name: str,
    details: Mapping[str, str] | None = None,
    org_type: str = "developer",
    admin_csr: bytes | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Registration:
    """Register a developer or enterprise org at an operator node's portal
    (``POST /v1/developers``, unauthenticated). That node becomes the org's home node.

    ``network``, when given, is checked against the node's (``wrong_network``), so a
    sign-up never lands on another network by mistake.
    """
    if org_type not in ORG_TYPES:
        raise InvalidInput(f"org_type must be one of {', '.join(ORG_TYPES)}", code="malformed")
    body: dict[str, Any] = {
        "org": org,
        "type": org_type,
        "name": name,
        "details": dict(details or {}),
    }
    if admin_csr is not None:
        body["admin_csr"] = admin_csr.decode()
    with httpx.Client(base_url=url, timeout=timeout_s) as http:
        if network is not None:
            _check_network(http, network)
        reply = raise_for_error(http.post("/v1/developers", json=body))
    admin = reply["admin"]
    return Registration(
        org=reply["org"],
        ca_pem=reply["ca"],
        proposal=reply["proposal"],
        admin_cert_pem=admin["cert"],
        admin_key_pem=admin.get("key"),
    )


def _check_network(http: httpx.Client, network: str) -> None:
    found = raise_for_error(http.get("/v1/health")).get("network")
    if found != network:
        raise Forbidden(
            f"the node serves network {found!r}, not {network!r}",
            code="wrong_network",
            hint="check the URL",
        )


# ------------------------------------------------------------------------- app users


def issue_user(
    gateway: Gateway, app: str, name: str, *, csr: bytes | None = None
) -> dict[str, Any]:
    """Issue user ``name`` of ``app`` as its owner's admin, at the owner's home node:
    ``{"user": "name@app", "cert", "key_mode"}``. Own-key apps need the user's ``csr``
    (``CN=name, O=owner``); key-custody apps take none (the gateway keeps the key)."""
    body: dict[str, Any] = {"name": name}
    if csr is not None:
        body["csr"] = csr.decode()
    result: dict[str, Any] = gateway.request("POST", f"/v1/apps/{app}/users", body)
    return result


def submit_as(
    gateway: Gateway, app: str, user: str, contract: str, function: str, *args: Any
) -> dict[str, Any]:
    """Key custody: submit ``contract.function(*args)`` signed by the gateway for
    ``user``, waiting for the commit; the receipt."""
    body = {"contract": contract, "function": function, "args": list(args)}
    result = gateway.request("POST", f"/v1/apps/{app}/users/{user}/transactions", body)
    receipt: dict[str, Any] = result["receipt"]
    return receipt


@dataclass(frozen=True, slots=True)
class UserRevocation:
    """A revoked app user: its certificates' ``serials``, the owner CA's ``crl_pem``
    that lists them (with any other revocation not enforced yet), and the governance
    ``proposal`` that published it (``proposal["status"] == "executed"`` once the
    network enforces it)."""

    user: str
    org: str
    serials: tuple[int, ...]
    crl_pem: str
    crl_number: int
    proposal: dict[str, Any]

    @property
    def executed(self) -> bool:
        return self.proposal.get("status") == "executed"


def revoke_user(gateway: Gateway, app: str, name: str) -> UserRevocation:
    """Revoke user ``name`` of ``app``, end to end, as its owner's admin at the owner's
    home node (the node that keeps the org's CA key).

    1. ``POST /v1/apps/{app}/users/{name}/revoke``: the home node marks every
       certificate of ``name@app`` revoked (a custodial user's key signs no more, at
       once) and signs the owner CA's CRL, which lists every serial that CA revoked;
    2. the caller proposes the governance ``revoke`` change with that CRL, signed by
       its own admin identity. Under the default policy (``ANY subject``) the org's
       own approval executes it in that transaction, and the call returns once the
       gateway's node has committed it: from then on every gateway refuses the
       certificates (``certificate_revoked``) and validation marks them invalid. Under
       a stricter policy the proposal stays ``open`` for the other approvers.

    If step 2 fails (the error is raised), call again: until the network enforces the
    revocation the gateway signs a fresh CRL with the same serials; afterwards it is
    Conflict(code="already_revoked")."""
    signed: dict[str, Any] = gateway.request("POST", f"/v1/apps/{app}/users/{name}/revoke")
    gov = Governance(gateway)
    proposal = gov.propose(gov.revoke(signed["org"], signed["crl"]))
    return UserRevocation(
        user=signed["user"],
        org=signed["org"],
        serials=tuple(int(serial) for serial in signed["serials"]),
        crl_pem=signed["crl"],
        crl_number=int(signed["crl_number"]),
        proposal=proposal,
    )


# ------------------------------------------------------------------ usage, invoices


def usage(
    gateway: Gateway, app: str, month: str | None = None, *, scope: str = "network"
) -> dict[str, Any]:
    """Metered usage of ``month`` (``YYYY-MM``, default the current one).

    ``scope="network"`` (the default): the app's usage on every hosting node, summed
    by the gateway, with ``complete``, ``missing`` (nodes that did not answer) and
    ``by_node``; ``scope="local"``: what this gateway alone served."""
    if scope not in USAGE_SCOPES:
        raise InvalidInput(f"scope must be one of {', '.join(USAGE_SCOPES)}", code="bad_scope")
    params = {**_month(month), "scope": scope}
    result: dict[str, Any] = gateway.request("GET", f"/v1/apps/{app}/usage", params=params)
    return result


def invoice(gateway: Gateway, app: str, month: str | None = None) -> dict[str, Any]:
    """The invoice of ``month`` (amounts in integer fen), over the app's usage on every
    hosting node (``complete`` is false, and ``missing`` names them, if some did not
    answer)."""
    result: dict[str, Any] = gateway.request(
        "GET", f"/v1/apps/{app}/invoice", params={**_month(month), "format": "json"}
    )
    return result


def invoice_text(gateway: Gateway, app: str, month: str | None = None) -> str:
    """The invoice rendered as plain text."""
    return get_text(gateway, f"/v1/apps/{app}/invoice", {**_month(month), "format": "text"})


def invoice_html(gateway: Gateway, app: str, month: str | None = None) -> str:
    """The invoice rendered as an HTML page."""
    return get_text(gateway, f"/v1/apps/{app}/invoice", {**_month(month), "format": "html"})


def get_text(gateway: Gateway, path: str, params: dict[str, Any] | None = None) -> str:
    """A signed GET whose success is text rather than JSON (errors stay typed)."""
    http = gateway._http  # the SDK's own transport; the signature is built as request() does
    request = http.build_request("GET", path, params=params)
    request.headers.update(gateway.builder.headers("GET", request.url, b""))
    response = http.send(request)
    if response.status_code >= 400:
        raise_for_error(response)
    return response.text


def _month(month: str | None) -> dict[str, Any]:
    return {} if month is None else {"month": month}


# ------------------------------------------------------------------------- webhooks


def add_webhook(
    gateway: Gateway,
    app: str,
    url: str,
    kinds: Sequence[str] = ("event", "block"),
    contract: str | None = None,
) -> dict[str, Any]:
    """Register a webhook for ``app``'s block notices and/or contract events (of
    ``contract`` only, if given); the webhook, with its ``id``."""
    body: dict[str, Any] = {"url": url, "kinds": list(kinds)}
    if contract is not None:
        body["contract"] = contract
    result: dict[str, Any] = gateway.request("POST", f"/v1/apps/{app}/webhooks", body)
    return result


def list_webhooks(gateway: Gateway, app: str) -> list[dict[str, Any]]:
    hooks: list[dict[str, Any]] = gateway.request("GET", f"/v1/apps/{app}/webhooks")["webhooks"]
    return hooks


def delete_webhook(gateway: Gateway, app: str, webhook_id: str) -> None:
    """Remove a webhook (the registering org or the app's owner only)."""
    gateway.request("DELETE", f"/v1/apps/{app}/webhooks/{webhook_id}")


def deliveries(gateway: Gateway, app: str, state: str | None = None) -> list[dict[str, Any]]:
    """Webhook deliveries, optionally only those ``pending``, ``delivered`` or ``failed``."""
    if state is not None and state not in DELIVERY_STATES:
        raise InvalidInput(f"state must be one of {', '.join(DELIVERY_STATES)}", code="malformed")
    params = {} if state is None else {"state": state}
    path = f"/v1/apps/{app}/webhooks/deliveries"
    rows: list[dict[str, Any]] = gateway.request("GET", path, params=params)["deliveries"]
    return rows


def redeliver(gateway: Gateway, app: str, delivery_id: str) -> dict[str, Any]:
    """Try a (failed) delivery again; the delivery, pending again."""
    path = f"/v1/apps/{app}/webhooks/deliveries/{delivery_id}/redeliver"
    result: dict[str, Any] = gateway.request("POST", path)
    return result


__all__ = [
    "Registration",
    "UserRevocation",
    "add_webhook",
    "delete_webhook",
    "deliveries",
    "get_text",
    "invoice",
    "invoice_html",
    "invoice_text",
    "issue_user",
    "list_webhooks",
    "redeliver",
    "register",
    "revoke_user",
    "submit_as",
    "usage",
]
