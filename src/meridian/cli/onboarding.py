"""``meridian developer`` (sign-up) and ``meridian app`` (a developer's app: its users,
usage, invoices and webhooks)::

    meridian developer register --org acme --name "Acme Ltd" --detail contact=dev@acme.example
    meridian --as acme/admin --app shop app user add carol --generate-key --out ./carol
    meridian --as acme/admin --app shop app user revoke carol
    meridian --as acme/admin --app shop app invoice --month 2025-06
    meridian --as acme/admin --app shop app webhook add https://hooks.acme.example/m
    meridian --as acme/admin --app shop app webhook deliveries --state failed

Sign-up needs no identity: it goes to an operator node's portal (``--url``, default the
first node) and writes the new org's admin into the network directory
(``orgs/<org>/users/admin``), so ``--as <org>/admin`` works at once. The ``app``
commands sign as ``--as`` and talk to ``--url``, or else the first node hosting the app.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import orjson
import typer
from rich.markup import escape

from ..client import Gateway
from ..client import onboarding as sdk
from ..client.governance import get_org
from ..crypto.certs import make_csr
from ..crypto.suites import ED25519, get_suite
from ..errors import Conflict, InvalidInput, NotFound
from ..network.config import NETWORK_FILE, write_file
from .common import Settings, console, handle_errors, output, settings

T = TypeVar("T")

developer_app = typer.Typer(
    help="Sign up a developer or enterprise org at an operator node's portal.",
    no_args_is_help=True,
)
app = typer.Typer(
    help="Your app (global --app): issue users, read usage and invoices, manage webhooks.",
    no_args_is_help=True,
)
user_app = typer.Typer(
    help="Issue and revoke the app's users (as its owner's admin).", no_args_is_help=True
)
webhook_app = typer.Typer(
    help="Webhooks: signed POSTs of the app's blocks and contract events.", no_args_is_help=True
)
app.add_typer(user_app, name="user")
app.add_typer(webhook_app, name="webhook")

AS_HELP = "Identity ORG/NAME or a folder (default: the global --as)."
MONTH_HELP = "Billing month YYYY-MM (default: the current one)."
MAX_DETAILS = 8


class OrgType(StrEnum):
    DEVELOPER = "developer"
    ENTERPRISE = "enterprise"


class InvoiceFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    HTML = "html"


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


# ----------------------------------------------------------------------- developer


@developer_app.command("register")
def register_cmd(
    ctx: typer.Context,
    org: str = typer.Option(..., "--org", help="The new org's id (e.g. acme)."),
    name: str = typer.Option(..., "--name", help="Legal name of the organisation."),
    detail: list[str] = typer.Option(
        [], "--detail", help="A real-name detail key=value (repeatable, at most 8)."
    ),
    org_type: OrgType = typer.Option(OrgType.DEVELOPER, "--type", help="Kind of org."),
    url: str | None = typer.Option(
        None, "--url", help="Operator node's gateway (default: the global --url, or node 1)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Folder for the admin's cert.pem and key.pem (default: the network "
        "directory's orgs/ORG/users/admin, so that --as ORG/admin works).",
    ),
) -> None:
    """Register an org (no identity needed); the node answering becomes its home node."""
    s = settings(ctx)
    with handle_errors(s.json):
        details = _parse_details(detail)
        network, default_url = _network_of(s)
        url = url or s.url or default_url
        if url is None:
            raise InvalidInput("no network directory here: give --url", code="no_url")
        folder = out or s.layout.user_dir(org, "admin")
        if (folder / "cert.pem").exists() or (folder / "key.pem").exists():
            raise Conflict(
                f"{folder} already holds an identity", code="identity_exists", hint="use --out"
            )
        reg = sdk.register(
            url, network=network, org=org, name=name, details=details, org_type=org_type.value
        )
        reg.save(folder)
    proposal = reg.proposal
    data = {"org": reg.org, "ca": reg.ca_pem, "proposal": proposal, "admin_dir": str(folder)}

    def human() -> None:
        console.print(
            f"registered [bold]{escape(reg.org)}[/]: proposal {proposal.get('id', '?')} "
            f"[bold]{escape(str(proposal.get('status')))}[/]"
        )
        console.print(f"admin identity written to {escape(str(folder))} (key.pem is 0600)")
        if out is None:
            console.print(f"sign as it with --as {escape(reg.org)}/admin")

    output(s, data, human)


def _parse_details(pairs: list[str]) -> dict[str, str]:
    if len(pairs) > MAX_DETAILS:
        raise InvalidInput(f"at most {MAX_DETAILS} --detail fields", code="malformed")
    details: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--detail {pair!r} is not key=value", code="malformed")
        details[key] = value
    return details


def _network_of(s: Settings) -> tuple[str | None, str | None]:
    """The network id and first node's URL, if there is a network directory."""
    if not (s.network_dir / NETWORK_FILE).is_file():
        return None, None
    config = s.config()
    return config.network, config.nodes[0].url if config.nodes else None


# ---------------------------------------------------------------------------- app


def _connect(s: Settings, who: str | None) -> tuple[Gateway, str]:
    """A gateway as ``who`` for the app: ``--url``, else the app's first hosting node."""
    name = s.app_name()
    url = s.url
    if url is None:
        config = s.config()
        try:
            hosts = list(config.hosting_nodes(config.app(name)))
        except NotFound:
            hosts = []
        url = config.node(hosts[0]).url if hosts else None
    return s.gateway(who, url=url), name


def _on_app(
    ctx: typer.Context, who: str | None, call: Callable[[Gateway, str], T]
) -> tuple[Settings, T]:
    """``call(gateway, app)`` as ``who`` for the app (errors: the CLI's typed output)."""
    s = settings(ctx)
    with handle_errors(s.json):
        gw, app_name = _connect(s, who)
        with gw:
            return s, call(gw, app_name)


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="User name (the certificate's CN; user@app)."),
    csr: Path | None = typer.Option(
        None, "--csr", help="The user's CSR (PEM, CN=NAME, O=owner) for an own-key app."
    ),
    generate_key: bool = typer.Option(
        False, "--generate-key", help="Own-key app: make the key and CSR here (needs --out)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for cert.pem (and key.pem, 0600, with --generate-key)."
    ),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Issue a user of the app. Own-key apps need a CSR (--csr or --generate-key);
    key-custody apps take none: the home node keeps the key and signs for the user."""
    s = settings(ctx)
    with handle_errors(s.json):
        if csr is not None and generate_key:
            raise InvalidInput("give --csr or --generate-key, not both", code="malformed")
        if generate_key and out is None:
            raise InvalidInput("--generate-key writes key.pem: give --out DIR", code="malformed")
        gw, app_name = _connect(s, who)
        with gw:
            key_pem: bytes | None = None
            csr_pem = csr.read_bytes() if csr is not None else None
            if generate_key:
                signer = get_suite(ED25519).generate()
                key_pem = signer.private_pem()
                csr_pem = make_csr(signer, name, get_org(gw.identity.cert_der))
            issued = sdk.issue_user(gw, app_name, name, csr=csr_pem)
        if out is not None:
            if key_pem is not None:
                write_file(out / "key.pem", key_pem, secret=True)
            write_file(out / "cert.pem", issued["cert"].encode())
    data = {**issued, "out": str(out) if out is not None else None}

    def human() -> None:
        console.print(f"issued [bold]{escape(issued['user'])}[/] ({issued['key_mode']} key)")
        if out is not None:
            files = "cert.pem and key.pem" if key_pem is not None else "cert.pem"
            console.print(f"{files} written to {escape(str(out))}")
        else:
            sys.stdout.write(issued["cert"])

    output(s, data, human)


@user_app.command("revoke")
def user_revoke(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The user to revoke (NAME of NAME@APP)."),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Revoke a user of the app, as its owner's admin, at the org's home node (--url):
    the node signs the org CA's revocation list (custodial signing for the user stops
    at once) and you propose it as a governance 'revoke' change, signed as --as; once
    executed, every node refuses the user's certificates. Safe to run again if the
    proposal failed; 'already_revoked' once the network enforces it."""
    s, done = _on_app(ctx, who, lambda gw, app_name: sdk.revoke_user(gw, app_name, name))
    proposal = done.proposal
    data = {
        "user": done.user,
        "org": done.org,
        "serials": [str(serial) for serial in done.serials],
        "crl_number": done.crl_number,
        "proposal": proposal,
    }

    def human() -> None:
        serials = ", ".join(str(serial) for serial in done.serials)
        console.print(f"revoked [bold]{escape(done.user)}[/]: certificate serial(s) {serials}")
        console.print(
            f"governance proposal {proposal.get('id', '?')} "
            f"[bold]{escape(str(proposal.get('status')))}[/]"
        )
        if not done.executed:
            console.print(
                "the network enforces the revocation once the proposal executes "
                "(meridian gov proposals)"
            )

    output(s, data, human)


USAGE_COUNTERS = (
    "requests",
    "transactions",
    "throttled",
    "peak_tps",
    "storage_bytes",
    "storage_peak_bytes",
)


@app.command("usage")
def usage_cmd(
    ctx: typer.Context,
    month: str | None = typer.Option(None, "--month", help=MONTH_HELP),
    local: bool = typer.Option(
        False, "--local", help="Only what this gateway served (default: every hosting node)."
    ),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """The app's metered usage of a month: summed over every node hosting it (--local:
    this gateway's share only)."""
    scope = "local" if local else "network"
    s, data = _on_app(ctx, who, lambda gw, app_name: sdk.usage(gw, app_name, month, scope=scope))

    def human() -> None:
        where = f"on {data.get('node')}" if local else "on every hosting node"
        console.print(f"usage of [bold]{escape(s.app_name())}[/] in {data.get('month')}, {where}")
        for key in USAGE_COUNTERS:
            console.print(f"  {key:<20} {data.get(key)}")
        if data.get("complete") is False:
            missing = ", ".join(data.get("missing", []))
            console.print(
                f"[bold red]incomplete[/]: no answer from {escape(missing)}; "
                "the totals leave out what they served"
            )
        for node, row in (data.get("by_node") or {}).items():
            counts = ", ".join(f"{k} {row.get(k)}" for k in ("requests", "transactions"))
            console.print(f"  {escape(node):<20} {counts}")

    output(s, data, human)


@app.command("invoice")
def invoice_cmd(
    ctx: typer.Context,
    month: str | None = typer.Option(None, "--month", help=MONTH_HELP),
    fmt: InvoiceFormat = typer.Option(
        InvoiceFormat.TEXT, "--format", help="text (printed), json (amounts in fen) or html."
    ),
    output_file: Path | None = typer.Option(
        None, "--output", "-o", help="Write the invoice to this file instead of stdout."
    ),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """The app's invoice of a month (--json: the JSON form)."""
    fmt = InvoiceFormat.JSON if settings(ctx).json else fmt
    fetch = {
        InvoiceFormat.JSON: sdk.invoice,
        InvoiceFormat.HTML: sdk.invoice_html,
        InvoiceFormat.TEXT: sdk.invoice_text,
    }[fmt]
    s, bill = _on_app(ctx, who, lambda gw, app_name: fetch(gw, app_name, month))
    with handle_errors(s.json):
        if output_file is not None:
            text = bill if isinstance(bill, str) else _json_text(bill)
            write_file(output_file, text.encode())
    if output_file is not None:
        output(s, {"output": str(output_file)}, lambda: console.print(f"wrote {output_file}"))
    elif isinstance(bill, str):
        sys.stdout.write(bill if bill.endswith("\n") else bill + "\n")
    else:
        output(s, bill)


def _json_text(data: Any) -> str:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n"


# ------------------------------------------------------------------------ webhooks


@webhook_app.command("add")
def webhook_add(
    ctx: typer.Context,
    url: str = typer.Argument(..., help="http(s) URL that receives the signed POSTs."),
    kinds: str = typer.Option("event,block", "--kinds", help="Comma-separated: event, block."),
    contract: str | None = typer.Option(
        None, "--contract", help="Only the events of this contract."
    ),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Register a webhook: each new block notice and contract event is POSTed to URL."""
    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    s, hook = _on_app(
        ctx, who, lambda gw, app_name: sdk.add_webhook(gw, app_name, url, wanted, contract)
    )
    output(s, hook, lambda: console.print(f"webhook [bold]{hook['id']}[/] → {escape(url)}"))


@webhook_app.command("list")
def webhook_list(
    ctx: typer.Context, who: str | None = typer.Option(None, "--as", help=AS_HELP)
) -> None:
    """The app's webhooks."""
    from rich.table import Table

    s, hooks = _on_app(ctx, who, sdk.list_webhooks)

    def human() -> None:
        table = Table("id", "url", "kinds", "contract", "owner")
        for h in hooks:
            table.add_row(
                h["id"], escape(h["url"]), ",".join(h["kinds"]), h["contract"] or "-", h["owner"]
            )
        console.print(table)

    output(s, {"webhooks": hooks}, human)


@webhook_app.command("rm")
def webhook_rm(
    ctx: typer.Context,
    webhook_id: str = typer.Argument(..., metavar="ID", help="The webhook's id."),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Remove a webhook (its registering org or the app's owner)."""
    s, _ = _on_app(ctx, who, lambda gw, app_name: sdk.delete_webhook(gw, app_name, webhook_id))
    output(s, {"ok": True, "id": webhook_id}, lambda: console.print(f"removed {webhook_id}"))


@webhook_app.command("deliveries")
def webhook_deliveries(
    ctx: typer.Context,
    state: DeliveryState | None = typer.Option(None, "--state", help="Only these deliveries."),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Webhook deliveries and where each stands (attempts, last error)."""
    from rich.table import Table

    wanted = state.value if state is not None else None
    s, rows = _on_app(ctx, who, lambda gw, app_name: sdk.deliveries(gw, app_name, wanted))

    def human() -> None:
        table = Table("id", "webhook", "kind", "state", "attempts", "last error")
        for d in rows:
            error = d.get("last_error") or d.get("last_status") or ""
            table.add_row(
                d["id"], d["webhook"], d["kind"], d["state"], str(d["attempts"]), escape(str(error))
            )
        console.print(table)

    output(s, {"deliveries": rows}, human)


@webhook_app.command("redeliver")
def webhook_redeliver(
    ctx: typer.Context,
    delivery_id: str = typer.Argument(..., metavar="ID", help="The delivery's id."),
    who: str | None = typer.Option(None, "--as", help=AS_HELP),
) -> None:
    """Try a failed delivery again (it is pending again)."""
    s, delivery = _on_app(ctx, who, lambda gw, app_name: sdk.redeliver(gw, app_name, delivery_id))
    output(s, delivery, lambda: console.print(f"delivery {delivery_id} {delivery['state']}"))


__all__ = ["app", "developer_app"]
