"""The `meridian` command end to end, as a user types it (real processes, loopback)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main

from meridian.cli.main import app as cli_app
from meridian.cli.procs import free_port_block

from .conftest import EXAMPLE


def _every_command() -> list[list[str]]:
    """Every command and group of the CLI, read from the CLI itself (none forgotten)."""
    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:  # a (Typer's) click command
        found.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(cli_app), [])
    return found


COMMANDS = _every_command()


def meridian(
    *args: str, network: Path | None = None, who: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "meridian.cli.main"]
    if network is not None:
        argv += ["--network", str(network)]
    if who is not None:
        argv += ["--as", who]
    result = subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "meridian")
def test_every_command_has_help(command: list[str]) -> None:
    result = meridian(*command, "--help")
    assert "Usage: meridian" in result.stdout
    assert len(result.stdout.splitlines()) > 4


@pytest.fixture()
def cli_network(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "net"
    base = str(free_port_block(2))
    meridian("network", "init", str(root), "--orgs", "2", "--nodes", "1", "--base-port", base)
    try:
        yield root
    finally:
        meridian("down", network=root, check=False)
        for pid_file in root.glob("nodes/*/data/node.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_cli_journey(cli_network: Path, tmp_path: Path) -> None:
    net = cli_network
    meridian("up", "--detach", network=net)
    status = as_json(meridian("--json", "status", network=net))
    assert status["nodes"][0]["apps"]["demo"]["height"] == 0

    archive = tmp_path / "at.tar.gz"
    package = as_json(
        meridian("contract", "package", str(EXAMPLE), "-o", str(archive), "--json", network=net)
    )
    assert package["package_id"].startswith("asset-transfer:")
    installed = as_json(
        meridian("contract", "install", str(archive), "--json", network=net, who="org1/admin")
    )
    assert installed["package_id"] == package["package_id"]
    for who in ("org1/admin", "org2/admin"):
        meridian(
            "contract",
            "approve",
            "asset-transfer",
            "--package-id",
            package["package_id"],
            network=net,
            who=who,
        )
    meridian(
        "contract",
        "commit",
        "asset-transfer",
        "--package-id",
        package["package_id"],
        network=net,
        who="org1/admin",
    )
    listed = as_json(meridian("contract", "list", "--json", network=net))["contracts"]
    assert [(c["name"], c["sequence"]) for c in listed] == [("asset-transfer", 1)]

    submitted = as_json(
        meridian(
            "tx",
            "submit",
            "asset-transfer",
            "create",
            "car-1",
            "alice",
            "300",
            "--json",
            network=net,
        )
    )
    assert submitted["code"] == "VALID" and submitted["response"]["value"] == 300
    evaluated = as_json(
        meridian("tx", "evaluate", "asset-transfer", "by_owner", "alice", "--json", network=net)
    )
    assert [a["id"] for a in evaluated["response"]] == ["car-1"]
    shown = as_json(meridian("tx", "show", submitted["tx_id"], "--json", network=net))
    assert shown["block"] == submitted["block"]
    block = as_json(meridian("block", "show", str(submitted["block"]), "--json", network=net))
    assert block["codes"] == ["VALID"]
    events = meridian(
        "events", "--from", "0", "--count", str(submitted["block"] + 1), "--json", network=net
    )
    blocks = [json.loads(line) for line in events.stdout.splitlines()]
    assert [b["block"] for b in blocks] == list(range(submitted["block"] + 1))

    shown_set = as_json(meridian("consenters", "show", "--json", network=net))
    assert shown_set == {"app": "demo", "nodes": ["node1"], "sequence": 0, "default": True}
    changed = as_json(meridian("consenters", "set", "node1", "--json", network=net))
    assert changed == {"nodes": ["node1"], "sequence": 1}
    assert as_json(meridian("consenters", "show", "--json", network=net))["default"] is False
    wrong = meridian("consenters", "set", "node7", "--json", network=net, check=False)
    assert wrong.returncode == 1 and as_json(wrong)["error"]["code"] == "contract_rejected"

    refused = meridian("tx", "submit", "nope", "f", "--json", network=net, check=False)
    assert refused.returncode == 1
    assert as_json(refused)["error"]["code"] == "unknown_contract"
    human = meridian("tx", "submit", "nope", "f", network=net, check=False)
    assert "[unknown_contract]" in human.stderr and "hint:" in human.stderr

    meridian("down", network=net)
    verified = as_json(meridian("ledger", "verify", "--json", network=net))["ledgers"]
    assert verified[0]["ok"] and verified[0]["valid"] == verified[0]["transactions"]


def test_ledger_verify_finds_tampering(cli_network: Path) -> None:
    """`meridian ledger verify` re-derives state, key history and verdicts from the
    blocks: an edit of any of them in the database is reported (exit 1)."""
    net = cli_network
    meridian("up", "--detach", network=net)
    try:
        meridian("contract", "deploy", str(EXAMPLE), network=net)
        for i in range(3):
            meridian("tx", "submit", "asset-transfer", "create", f"v{i}", "ann", "1", network=net)
    finally:
        meridian("down", network=net)
    path = net / "nodes" / "node1" / "data" / "ledgers" / "demo.sqlite"
    edits = {
        "state": ("UPDATE state SET value='\"forged\"' WHERE key='v1'", "state differs"),
        "history": (
            "UPDATE history SET value='\"forged\"' WHERE key='v2'",
            "key history differs",
        ),
        "codes": (
            "UPDATE blocks SET codes='[3]' WHERE number=(SELECT MAX(number) FROM blocks)",
            "different verdicts",
        ),
    }
    for name, (sql, expected) in edits.items():
        backup = path.read_bytes()
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute(sql).rowcount >= 1, name
            conn.commit()
        found = meridian("ledger", "verify", "--node", "node1", "--json", network=net, check=False)
        assert found.returncode == 1, (name, found.stdout)
        report = as_json(found)  # one JSON document, failing or not
        assert report["ok"] is False
        [demo] = [v for v in report["ledgers"] if v["app"] == "demo"]
        assert not demo["ok"] and any(expected in p for p in demo["problems"]), (name, demo)
        path.write_bytes(backup)
    verified = as_json(meridian("ledger", "verify", "--node", "node1", "--json", network=net))
    assert all(v["ok"] for v in verified["ledgers"])
