"""Starting, watching and stopping node processes of a network directory."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..errors import Unavailable
from ..network.config import NetworkConfig, NetworkLayout, NodeEntry


@dataclass
class NodeProcess:
    entry: NodeEntry
    proc: subprocess.Popen[bytes]


def start_nodes(
    layout: NetworkLayout, config: NetworkConfig, *, detach: bool, sandbox: str = "auto"
) -> list[NodeProcess]:
    """Start every node of the network whose identity is in this directory, each as its
    own process (nodes of the configuration that run elsewhere are skipped)."""
    return [
        start_node_process(layout, entry, detach=detach, sandbox=sandbox)
        for entry in config.nodes
        if (layout.node_dir(entry.id) / "key.pem").is_file()
    ]


def start_node_process(
    layout: NetworkLayout, entry: NodeEntry, *, detach: bool, sandbox: str = "auto"
) -> NodeProcess:
    """Start one node as its own process (detached: its own session, output to
    ``stdout.log`` in its data directory)."""
    data_dir = layout.data_dir(entry.id)
    data_dir.mkdir(parents=True, exist_ok=True)
    out = open(data_dir / "stdout.log", "ab") if detach else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meridian.node.main",
                "--network",
                str(layout.root),
                "--node",
                entry.id,
                "--sandbox",
                sandbox,
            ],
            stdout=out,
            stderr=subprocess.STDOUT if detach else None,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )
    finally:
        if out is not None:
            out.close()  # the child has its own copy of the descriptor
    return NodeProcess(entry, proc)


def wait_healthy(nodes: list[NodeProcess], timeout_s: float = 60.0) -> None:
    """Wait until every node answers /v1/health; Unavailable if one dies or times out."""
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    while pending:
        node = pending[0]
        if node.proc.poll() is not None:
            raise Unavailable(
                f"node {node.entry.id} exited with code {node.proc.returncode}",
                code="node_failed",
                hint="see its log in <network>/nodes/<node>/data/node.log",
            )
        try:
            if httpx.get(f"{node.entry.url}/v1/health", timeout=1.0).status_code == 200:
                pending.pop(0)
                continue
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise Unavailable(
                f"node {node.entry.id} did not become healthy in {timeout_s} s", code="node_timeout"
            )
        time.sleep(0.1)


def running_pids(layout: NetworkLayout, config: NetworkConfig) -> dict[str, int]:
    """Node id → pid of nodes whose pid file names a live process."""
    found = {}
    for entry in config.nodes:
        pid_file = layout.data_dir(entry.id) / "node.pid"
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            continue
        found[entry.id] = pid
    return found


def stop_pids(pids: dict[str, int], timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after ``timeout_s``."""
    for pid in pids.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.1)
    for pid in pids.values():
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def stop_processes(nodes: list[NodeProcess], timeout_s: float = 15.0) -> None:
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.terminate()
    for node in nodes:
        try:
            node.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port_block(count: int) -> int:
    """A base port with ``count`` consecutive free loopback ports."""
    for base in range(20000 + os.getpid() % 20000, 60000, 17):
        if _ports_free(base, count):
            return base
    raise Unavailable("no free loopback ports", code="no_free_port")


def _ports_free(base: int, count: int) -> bool:
    socks: list[socket.socket] = []
    try:
        for port in range(base, base + count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in socks:
            sock.close()


def data_dirs(layout: NetworkLayout, config: NetworkConfig) -> list[Path]:
    return [layout.data_dir(n.id) for n in config.nodes]
