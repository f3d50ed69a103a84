"""``meridian tx``, ``meridian block`` and ``meridian events``."""

from __future__ import annotations

import orjson
import typer
from rich.markup import escape

from ..client import BlockEvent
from .common import console, handle_errors, output, parse_args, settings

app = typer.Typer(help="Submit, evaluate and inspect transactions.", no_args_is_help=True)
block_app = typer.Typer(help="Inspect blocks.", no_args_is_help=True)

ARGS_HELP = "Arguments; each is parsed as JSON when it can be (42, true, {...}), else a string."


@app.command("submit")
def submit(
    ctx: typer.Context,
    contract: str = typer.Argument(..., help="Contract name."),
    function: str = typer.Argument(..., help="Transaction function."),
    args: list[str] = typer.Argument(None, help=ARGS_HELP),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once accepted."),
) -> None:
    """Submit a transaction and (by default) wait until it is committed."""
    s = settings(ctx)
    with handle_errors(s.json), s.gateway() as gw:
        c = gw.app(s.app_name()).contract(contract)
        values = parse_args(args or [])
        if no_wait:
            commit = c.submit_async(function, *values)
            data = {"tx_id": commit.tx_id, "status": "pending", "response": commit.result}
        else:
            receipt = c.submit_receipt(function, *values)
            data = {
                "tx_id": receipt.tx_id,
                "status": receipt.status,
                "block": receipt.block,
                "code": receipt.code,
                "response": receipt.response,
            }
    output(
        s,
        data,
        lambda: console.print(
            f"[green]{data['status']}[/] tx {data['tx_id'][:16]}… "
            f"{'in block ' + str(data.get('block')) if data.get('block') is not None else ''}\n"
            f"response: {escape(str(data['response']))}"
        ),
    )


@app.command("evaluate")
def evaluate(
    ctx: typer.Context,
    contract: str = typer.Argument(..., help="Contract name."),
    function: str = typer.Argument(..., help="Function (query or transaction, not ordered)."),
    args: list[str] = typer.Argument(None, help=ARGS_HELP),
) -> None:
    """Evaluate a function on one node without ordering it."""
    s = settings(ctx)
    with handle_errors(s.json), s.gateway() as gw:
        result = gw.app(s.app_name()).contract(contract).evaluate(function, *parse_args(args or []))
    output(s, {"response": result}, lambda: console.print_json(data=result))


@app.command("show")
def show(ctx: typer.Context, tx_id: str = typer.Argument(..., help="Transaction id.")) -> None:
    """Status and receipt of a transaction."""
    s = settings(ctx)
    with handle_errors(s.json), s.gateway() as gw:
        receipt = gw.app(s.app_name()).transaction(tx_id)
    data = {
        "tx_id": receipt.tx_id,
        "status": receipt.status,
        "block": receipt.block,
        "index": receipt.index,
        "code": receipt.code,
        "response": receipt.response,
        "events": receipt.events,
    }
    output(s, data, lambda: console.print_json(data=data))


@block_app.command("show")
def block_show(
    ctx: typer.Context,
    number: str = typer.Argument("latest", help="Block number or 'latest'."),
) -> None:
    """A block: header, transactions and their validation codes."""
    s = settings(ctx)
    with handle_errors(s.json), s.gateway() as gw:
        data = gw.app(s.app_name()).block(number)

    def human() -> None:
        header = data["block"]["header"]
        console.print(
            f"[bold]block {header['number']}[/] hash {data['hash']}\n"
            f"previous {header['previous_hash']}\ndata_hash {header['data_hash']}\n"
            f"time {header['timestamp_ms']}  txs {header['tx_count']}"
        )
        for tx, code in zip(data["block"]["transactions"], data["codes"], strict=True):
            p = tx["signed_proposal"]["proposal"]
            colour = "green" if code == "VALID" else "red"
            console.print(
                f"  [{colour}]{code:<24}[/] "
                + escape(f"{p['contract']}.{p['function']}({', '.join(map(str, p['args']))})")
            )

    output(s, data, human)


def events(
    ctx: typer.Context,
    from_block: int = typer.Option(None, "--from", help="First block (default: next one)."),
    count: int = typer.Option(0, help="Stop after this many blocks (0: follow forever)."),
) -> None:
    """Follow committed blocks and contract events (resumable with --from).

    With --json, each block is one line of JSON (JSON Lines).
    """
    s = settings(ctx)
    seen = 0
    with handle_errors(s.json), s.gateway() as gw:
        for block in gw.app(s.app_name()).events(start=from_block):
            data = {
                "block": block.block,
                "hash": block.hash,
                "txs": block.txs,
                "events": block.events,
            }
            if s.json:  # one JSON object per line (JSON Lines), flushed as blocks commit
                print(orjson.dumps(data).decode(), flush=True)
            else:
                _print_block(block)
            seen += 1
            if count and seen >= count:
                break


def _print_block(block: BlockEvent) -> None:
    names = ", ".join(f"{e['contract']}.{e['name']}" for e in block.events)
    console.print(f"block {block.block}: {len(block.txs)} tx {escape(names)}")
