"""``meridian consenters``: which nodes order an app, and changing them."""

from __future__ import annotations

from typing import Any

import typer

from ..client.lifecycle import set_consenters
from ..contracts.lifecycle import LIFECYCLE
from .common import admin_gateways, console, handle_errors, output, settings

app = typer.Typer(
    help="The nodes that order an app's blocks (its consenters).", no_args_is_help=True
)


@app.command("show")
def show_cmd(ctx: typer.Context) -> None:
    """The app's consenters: the configured set (among its hosting nodes), or every node
    that hosts it."""
    s = settings(ctx)
    with handle_errors(s.json):
        config = s.config()
        app_name = s.app_name()
        with s.gateway() as gw:
            configured = gw.app(app_name).contract(LIFECYCLE).evaluate("consenters")
        hosting = config.consenting_nodes(config.app(app_name))
        chosen = [n for n in configured["nodes"] or () if n in hosting]
        nodes = chosen or list(hosting)
        result: dict[str, Any] = {
            "app": app_name,
            "nodes": nodes,
            "sequence": configured["sequence"],
            "default": configured["nodes"] is None,
        }
    where = "default: every node hosting it" if result["default"] else "configured"
    output(
        s,
        result,
        lambda: console.print(
            f"{app_name}: {', '.join(nodes)} [dim]({where}, sequence {result['sequence']})[/]"
        ),
    )


@app.command("set")
def set_cmd(
    ctx: typer.Context,
    nodes: str = typer.Argument(..., help="Comma-separated node ids, e.g. node1,node2,node3."),
    admins: str = typer.Option(
        "",
        help="Comma-separated admin identities that approve "
        "(default: every member org's admin, each through its own org's node).",
    ),
) -> None:
    """Approve by each member org's admin and commit a new consenter set.

    It orders every block after the one that commits the change. Keep enough nodes
    for a quorum (n - f of the new set must stay up), or the app cannot order again.
    """
    s = settings(ctx)
    with handle_errors(s.json):
        app_name = s.app_name()
        gateways = admin_gateways(s, app_name, admins)
        try:
            result = set_consenters(gateways, app_name, [n for n in nodes.split(",") if n])
        finally:
            for gw in gateways:
                gw.close()
    output(
        s,
        result,
        lambda: console.print(
            f"[green]consenters of {app_name}[/]: {', '.join(result['nodes'])} "
            f"(sequence {result['sequence']}), from the next block on"
        ),
    )
