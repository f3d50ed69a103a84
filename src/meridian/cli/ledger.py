"""``meridian ledger verify``: offline re-check of a node's ledgers."""

from __future__ import annotations

import functools
from typing import Any

import typer
from rich.progress import Progress, TaskID

from ..errors import Corruption, NotFound
from ..node.verify import verify_node
from .common import console, handle_errors, output, settings

app = typer.Typer(help="Check ledgers.", no_args_is_help=True)


@app.command("verify")
def verify(
    ctx: typer.Context,
    node: str = typer.Option(None, help="Node whose ledgers to check (default: every node)."),
) -> None:
    """Re-check hash chain, Merkle roots, verdicts and state of every app ledger."""
    s = settings(ctx)
    results: list[dict[str, Any]] = []
    with handle_errors(s.json):
        config = s.config()
        nodes = [config.node(node)] if node else list(config.nodes)
        with Progress(console=console, transient=True, disable=s.json) as bar:
            for entry in nodes:
                reports = verify_node(
                    s.layout,
                    entry.id,
                    progress=lambda app, e=entry: functools.partial(  # type: ignore[misc]
                        _advance, bar, bar.add_task(f"{e.id}/{app}", total=None)
                    ),
                )
                for app_name, report in reports:
                    results.append(
                        {
                            "node": entry.id,
                            "app": app_name,
                            "ok": report.ok,
                            "blocks": report.blocks,
                            "transactions": report.transactions,
                            "valid": report.valid,
                            "state_keys": report.state_keys,
                            "problems": report.problems,
                        }
                    )
        if not results:
            raise NotFound(
                "no ledgers found",
                code="no_ledger",
                hint="start the network once with 'meridian up'",
            )

    def human() -> None:
        for r in results:
            mark = "[green]ok[/]" if r["ok"] else "[bold red]FAILED[/]"
            console.print(
                f"{mark} {r['node']}/{r['app']}: {r['blocks']} blocks, "
                f"{r['transactions']} txs ({r['valid']} valid), "
                f"{r['state_keys']} state keys"
            )
            for problem in r["problems"]:
                console.print(f"   [red]{problem}[/]")

    ok = all(r["ok"] for r in results)
    output(s, {"ok": ok, "ledgers": results}, human)  # --json: one document, even failing
    if not ok:
        if s.json:
            raise typer.Exit(1)
        with handle_errors(s.json):
            raise Corruption("ledger verification failed", code="verify_failed")


def _advance(bar: Progress, task: TaskID, done: int, total: int) -> None:
    bar.update(task, completed=done, total=total)
