"""Shared CLI plumbing: options, identity and gateway resolution, output, errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import typer
from rich.console import Console
from rich.markup import escape

from ..client import Gateway, Identity, connect
from ..errors import MeridianError
from ..network.config import NetworkConfig, NetworkLayout
from ..network.history import load_latest

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Settings:
    network_dir: Path
    identity: str | None  # None: the first operator org's user1
    url: str | None
    app: str | None
    json: bool

    @property
    def layout(self) -> NetworkLayout:
        return NetworkLayout(self.network_dir)

    def config(self) -> NetworkConfig:
        """The newest configuration known here (nodes added by governance included)."""
        return load_latest(self.layout)

    def app_name(self) -> str:
        if self.app:
            return self.app
        apps = self.config().apps
        if not apps:
            raise MeridianError(
                "this network has no app yet",
                code="no_app",
                hint="name one with --app, or create one through governance (create_app)",
            )
        return apps[0].name

    def default_identity(self) -> str:
        """``user1`` of the first operator org (``org1/user1`` on a default network)."""
        config = self.config()
        orgs = [o.id for o in config.orgs if o.type == "operator"] or [o.id for o in config.orgs]
        return f"{orgs[0]}/user1" if orgs else "org1/user1"

    def identity_dir(self, spec: str | None = None) -> Path:
        """``org/name`` inside the network directory, or a folder path."""
        spec = spec or self.identity or self.default_identity()
        path = Path(spec)
        if (path / "cert.pem").is_file():
            return path
        org, _, name = spec.partition("/")
        found = self.layout.user_dir(org, name or "user1")
        if not (found / "cert.pem").is_file():
            raise MeridianError(
                f"no identity {spec!r} (looked for {found}/cert.pem)",
                code="no_identity",
                hint="use --as ORG/NAME (e.g. org1/admin) or a folder holding cert.pem and key.pem",
            )
        return found

    def gateway(self, spec: str | None = None, url: str | None = None) -> Gateway:
        identity = Identity.from_dir(self.identity_dir(spec))
        config = self.config()
        first = next((n for n in config.nodes if not n.is_observer), config.nodes[0])
        url = url or self.url or os.environ.get("MERIDIAN_URL") or first.url
        return connect(url, identity, network=config.network)


def admin_gateways(s: Settings, app_name: str, admins: str) -> list[Gateway]:
    """Gateways of the admins who approve a change of ``app_name``: ``admins``
    (comma-separated identities) or every participating member's admin, each through a
    node that hosts the app — its own org's if it runs one (its node sees its
    approvals)."""
    config = s.config()
    app = config.app(app_name)
    hosting = [config.node(n) for n in config.hosting_nodes(app)]
    specs = [a for a in admins.split(",") if a] or [f"{org}/admin" for org in app.writers]
    gateways = []
    for spec in specs:
        org = spec.split("/")[0]
        own = next((n for n in hosting if n.org == org), hosting[0] if hosting else None)
        gateways.append(s.gateway(spec, url=own.url if own is not None else None))
    return gateways


def installer_gateways(s: Settings, app_name: str) -> list[Gateway]:
    """One admin gateway per node hosting ``app_name``: the node's own org's admin when
    that org participates in the app, else the app owner's (or first member's) admin —
    members' admins may install on the nodes that host their app."""
    config = s.config()
    app = config.app(app_name)
    fallback = app.owner or app.writers[0]
    return [
        s.gateway(f"{node.org if node.org in app.writers else fallback}/admin", url=node.url)
        for node in (config.node(n) for n in config.hosting_nodes(app))
    ]


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    if not isinstance(obj, Settings):
        raise typer.Exit(2)
    return obj


def output(s: Settings, data: Any, human: Callable[[], None] | None = None) -> None:
    """Print ``data`` as JSON with --json, else the human rendering (or pretty JSON)."""
    if s.json or human is None:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        human()


@contextmanager
def handle_errors(json_mode: bool = False) -> Iterator[None]:
    """Turn Meridian errors into a clear message (and exit code 1), once, at the edge."""
    try:
        yield
    except MeridianError as exc:
        if json_mode:
            sys.stdout.write(orjson.dumps({"error": exc.to_dict()}).decode() + "\n")
        else:
            err_console.print(f"[bold red]error[/] {escape(f'[{exc.code}] {exc.message}')}")
            if exc.hint:
                err_console.print(f"[yellow]hint:[/] {escape(exc.hint)}")
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        unreachable = MeridianError(
            f"cannot reach the gateway: {exc}",
            code="unreachable",
            hint="is the network up? try 'meridian up --detach'",
        )
        if json_mode:
            sys.stdout.write(orjson.dumps({"error": unreachable.to_dict()}).decode() + "\n")
        else:
            err_console.print(f"[bold red]error[/] {escape(str(unreachable))}")
            err_console.print(f"[yellow]hint:[/] {escape(unreachable.hint or '')}")
        raise typer.Exit(1) from None


def parse_args(raw: list[str]) -> list[Any]:
    """Each CLI argument is JSON if it parses as such (numbers, objects), else a string."""
    out: list[Any] = []
    for text in raw:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
        if isinstance(value, float):
            raise MeridianError(
                f"argument {text!r} is a float; use integers", code="float_not_allowed"
            )
        out.append(value)
    return out
