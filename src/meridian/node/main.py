"""Running one node process: ``python -m meridian.node.main --network DIR --node ID``.

The node serves its gateway on the host and port the network configuration gives
it, logs to ``<data dir>/node.log`` (and stderr), and writes ``<data dir>/node.pid``
while it runs. SIGTERM and SIGINT stop it cleanly; SIGKILL is safe too (the ledger
and pending transactions are durable).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
from pathlib import Path

import uvicorn

from ..gateway.app import create_app
from ..network.config import NetworkLayout
from .node import Node, NodeOptions

GC_GEN0_THRESHOLD = 50_000  # allocations between young collections (default 700)


def setup_logging(log_file: Path, level: str = "INFO") -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level)
    for handler in (logging.FileHandler(log_file), logging.StreamHandler()):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def run_node(
    network_dir: Path, node_id: str, *, options: NodeOptions | None = None, log_level: str = "INFO"
) -> None:
    """Run one node in the foreground until it is signalled to stop."""
    layout = NetworkLayout(network_dir)
    node = Node(layout, node_id, options)
    setup_logging(node.data_dir / "node.log", log_level)
    # Long-lived objects (modules, config) leave the collector's view, and young
    # collections run less often: fewer, shorter pauses under load.
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    pid_file = node.data_dir / "node.pid"
    pid_file.write_text(str(os.getpid()))
    # uvicorn re-raises the SIGTERM it handled once the server has stopped; as an
    # exception it lets the clean-up below run (the default action would not).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        config = uvicorn.Config(
            create_app(node),
            host=node.entry.host,
            port=node.entry.port,
            log_level=log_level.lower(),
            access_log=False,
            loop="uvloop",
            http="httptools",
            timeout_graceful_shutdown=5,
            log_config=None,
        )
        uvicorn.Server(config).run()
    finally:
        pid_file.unlink(missing_ok=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one Meridian node.")
    parser.add_argument("--network", required=True, type=Path, help="network directory")
    parser.add_argument("--node", required=True, help="node id in network.json")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "none"])
    args = parser.parse_args(argv)
    from ..contracts.sandbox import SandboxLimits

    options = NodeOptions(limits=SandboxLimits(mode=args.sandbox))
    run_node(args.network, args.node, options=options, log_level=args.log_level)


if __name__ == "__main__":
    main()
