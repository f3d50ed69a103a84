"""``meridian contract``: package, install, approve, commit, deploy, list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..client.lifecycle import deploy, lifecycle_call, load_package, next_sequence
from ..contracts.package import build_archive
from .common import (
    admin_gateways,
    console,
    handle_errors,
    installer_gateways,
    output,
    settings,
)

app = typer.Typer(help="Contract packages and their lifecycle on an app.", no_args_is_help=True)


@app.command("package")
def package_cmd(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Package folder with meridian.json."),
    out: Path = typer.Option(None, "--output", "-o", help="Archive to write (NAME.tar.gz)."),
) -> None:
    """Build a deterministic package archive and print its package id."""
    s = settings(ctx)
    with handle_errors(s.json):
        package_id, archive = build_archive(source)
        target = out or Path(f"{package_id.split(':')[0]}.tar.gz")
        target.write_bytes(archive)
    output(
        s,
        {"package_id": package_id, "archive": str(target)},
        lambda: console.print(f"{package_id}\n[dim]wrote {target}[/]"),
    )


@app.command("install")
def install_cmd(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Package folder or archive."),
) -> None:
    """Install a package on the node (as an org admin: --as org1/admin)."""
    s = settings(ctx)
    with handle_errors(s.json), s.gateway() as gw:
        _, archive = load_package(source)
        result = gw.install(archive)
    output(s, result, lambda: console.print(f"[green]installed[/] {result['package_id']}"))


PAST = {"approve": "approved", "commit": "committed"}


def _lifecycle_cmd(function: str) -> Any:
    def command(
        ctx: typer.Context,
        name: str = typer.Argument(..., help="Contract name on the app."),
        package_id: str = typer.Option(..., "--package-id", help="NAME:SHA256 from install."),
        version: str = typer.Option("1.0", help="Version label."),
        sequence: int = typer.Option(0, help="Definition sequence (0: the next one)."),
        policy: str = typer.Option(
            "ANY", help="Endorsement policy: ANY, ALL, MAJORITY or K-of(org1,org2)."
        ),
    ) -> None:
        s = settings(ctx)
        with handle_errors(s.json), s.gateway() as gw:
            app_name = s.app_name()
            seq = sequence or next_sequence(gw, app_name, name)
            result = lifecycle_call(gw, app_name, function, name, version, seq, package_id, policy)
        output(
            s,
            result,
            lambda: console.print(
                f"[green]{PAST[function]}[/] {name} sequence {seq} ({result.get('package_id')})"
            ),
        )

    command.__doc__ = {
        "approve": "Approve a contract definition for your org (as its admin).",
        "commit": "Commit a definition once enough member orgs approved it.",
    }[function]
    return command


app.command("approve")(_lifecycle_cmd("approve"))
app.command("commit")(_lifecycle_cmd("commit"))


@app.command("deploy")
def deploy_cmd(
    ctx: typer.Context,
    source: Path = typer.Argument(..., help="Package folder or archive."),
    admins: str = typer.Option(
        "",
        help="Comma-separated admin identities that approve "
        "(default: every org's admin in the network dir).",
    ),
    policy: str = typer.Option("ANY", help="Endorsement policy (ANY, ALL, MAJORITY, K-of(...))."),
) -> None:
    """Install on every node hosting the app, approve by each participating member's
    admin, and commit (or upgrade) in one step."""
    s = settings(ctx)
    with handle_errors(s.json):
        app_name = s.app_name()
        gateways = admin_gateways(s, app_name, admins)
        installers = installer_gateways(s, app_name)
        try:
            result = deploy(gateways, app_name, source, policy=policy, install_on=installers)
        finally:
            for gw in (*gateways, *installers):
                gw.close()
    output(
        s,
        result,
        lambda: console.print(
            f"[green]deployed[/] {result['name']} sequence {result['sequence']} on {app_name}"
        ),
    )


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Committed contract definitions of the app."""
    from rich.table import Table

    s = settings(ctx)
    with handle_errors(s.json), s.gateway() as gw:
        rows = gw.app(s.app_name()).contracts()

    def human() -> None:
        table = Table("name", "version", "sequence", "policy", "package id")
        for r in rows:
            table.add_row(r["name"], r["version"], str(r["sequence"]), r["policy"], r["package_id"])
        console.print(table)

    output(s, {"contracts": rows}, human)
