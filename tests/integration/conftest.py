"""Fixtures that run real node processes on loopback, always stopped afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meridian.cli.procs import NodeProcess, free_port_block, wait_healthy
from meridian.client import Gateway, Identity, connect
from meridian.client.lifecycle import deploy
from meridian.errors import MeridianError
from meridian.network.config import BlockConfig, NetworkConfig, NetworkLayout, NodeEntry
from meridian.network.init import InitOptions, init_network

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "asset_transfer"
FIXTURES = ROOT / "tests" / "integration" / "contracts"


@dataclass
class RunningNetwork:
    layout: NetworkLayout
    config: NetworkConfig
    procs: list[NodeProcess]

    @property
    def url(self) -> str:
        return self.config.nodes[0].url

    def node_url(self, org: str) -> str:
        """The gateway of ``org``'s first node (the first node if the org runs none)."""
        return next((n.url for n in self.config.nodes if n.org == org), self.url)

    def gateway(self, who: str = "org1/user1", url: str | None = None, **kw: object) -> Gateway:
        org, name = who.split("/")
        return connect(
            url or self.node_url(org),
            Identity.from_dir(self.layout.user_dir(org, name)),
            network=self.config.network,
            **kw,
        )  # type: ignore[arg-type]

    def start(self, sandbox: str = "auto") -> None:
        """(Re)start every node process and wait until healthy."""
        self.procs = [self._spawn(entry, sandbox) for entry in self.config.nodes]
        try:
            wait_healthy(self.procs, timeout_s=60)
        except BaseException:
            self.stop()  # a fixture that fails to start leaves no process behind
            raise

    def _spawn(self, entry: NodeEntry, sandbox: str = "auto") -> NodeProcess:
        return NodeProcess(
            entry,
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meridian.node.main",
                    "--network",
                    str(self.layout.root),
                    "--node",
                    entry.id,
                    "--sandbox",
                    sandbox,
                    "--log-level",
                    "WARNING",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(self.layout.data_dir(entry.id) / "stderr.log", "ab"),
                start_new_session=True,
            ),
        )

    def proc(self, node_id: str) -> NodeProcess:
        return next(p for p in self.procs if p.entry.id == node_id)

    def kill_node(self, node_id: str) -> None:
        """SIGKILL one node (no clean shutdown)."""
        p = self.proc(node_id)
        if p.proc.poll() is None:
            os.killpg(p.proc.pid, signal.SIGKILL)
        p.proc.wait(10)

    def start_node(self, node_id: str) -> None:
        """Restart one node and wait until it answers."""
        started = self._spawn(self.config.node(node_id))
        self.procs = [started if p.entry.id == node_id else p for p in self.procs]
        try:
            wait_healthy([started], timeout_s=60)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        """SIGKILL every node (no clean shutdown)."""
        for p in self.procs:
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait(10)

    def stop(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.proc.terminate()
        for p in self.procs:
            try:
                p.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait(10)

    def deploy(self, source: Path = EXAMPLE, policy: str = "ANY") -> dict[str, object]:
        members = self.config.app("demo").members
        admins = [self.gateway(f"{org}/admin") for org in members]
        running = {n.org for n in self.config.nodes}
        installers = [gw for gw, org in zip(admins, members, strict=True) if org in running]
        try:
            return deploy(admins, "demo", source, policy=policy, install_on=installers)
        finally:
            for gw in admins:
                gw.close()


def verify_ledgers(net: RunningNetwork) -> list[dict[str, Any]]:
    """Run `meridian ledger verify --json` on a stopped network; assert every ledger is ok."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "meridian.cli.main",
            "--network",
            str(net.layout.root),
            "--json",
            "ledger",
            "verify",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ledgers: list[dict[str, Any]] = json.loads(result.stdout)["ledgers"]
    assert ledgers and all(ledger["ok"] for ledger in ledgers), ledgers
    return ledgers


def make_network(tmp: Path, *, orgs: int = 2, nodes: int = 1, **block: int) -> RunningNetwork:
    layout = NetworkLayout(tmp / "network")
    config = init_network(
        layout.root,
        InitOptions(
            orgs=orgs,
            nodes=nodes,
            base_port=free_port_block(2 * nodes),
            block=BlockConfig(**block) if block else BlockConfig(),
        ),
    )
    return RunningNetwork(layout, config, [])


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    """A one-node, two-org network with asset-transfer deployed (shared by a module)."""
    net = make_network(tmp_path_factory.mktemp("net"))
    net.start()
    try:
        net.deploy()
        yield net
    finally:
        net.stop()


@pytest.fixture()
def fresh_network(tmp_path: Path) -> Iterator[RunningNetwork]:
    """A network of its own for tests that kill or restart nodes."""
    net = make_network(tmp_path)
    try:
        yield net
    finally:
        net.kill()


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "") -> Any:
    """``check()``'s first truthy value; typed errors count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = check()
        except MeridianError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
