"""The network configuration at each governance height.

Every block of an app channel names, in its header, the governance height whose
configuration validates it (``config_height``); every node therefore needs the view
*at that height*, not merely the latest one. Views change only when a governance
block executes a change, so the history keeps one view per change, rebuilt at start
from the history of the configuration's entries in the governance ledger.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

from .. import codec
from ..errors import InvalidInput, MeridianError
from ..ledger.store import LedgerStore, SqliteLedger
from .config import GOVERNANCE_APP, MAX_CONFIG_BYTES, NetworkConfig, NetworkLayout, write_file
from .governance import CONFIG_END, CONFIG_PREFIX, GOVERNANCE, compute_view_after

MAX_VIEWS = 100_000


class ConfigHistory:
    """Views by governance height: ``at(h)`` is the configuration after the first ``h``
    governance blocks."""

    def __init__(self, genesis: NetworkConfig) -> None:
        self.genesis = genesis
        self._heights: list[int] = [0]
        self._views: list[NetworkConfig] = [genesis]
        self.height = 0  # governance blocks committed on this node

    @property
    def latest(self) -> NetworkConfig:
        return self._views[-1]

    @property
    def changed_at(self) -> int:
        """The governance height of the latest configuration: what app blocks name (a
        voter that has it has the configuration; later non-changing governance blocks
        need not be waited for)."""
        return self._heights[-1]

    def at(self, height: int) -> NetworkConfig:
        """The configuration after ``height`` governance blocks (≤ :attr:`height`)."""
        if height > self.height:
            raise ValueError(f"governance height {height} is not committed here yet")
        return self._views[bisect.bisect_right(self._heights, height) - 1]

    def first_height_with(self, app: str) -> int | None:
        """The first governance height whose configuration has ``app`` (its genesis)."""
        for height, view in zip(self._heights, self._views, strict=True):
            if any(a.name == app for a in view.apps):
                return height
        return None

    def views(self) -> tuple[NetworkConfig, ...]:
        return tuple(self._views)

    def process_block(self, number: int, config: NetworkConfig | None) -> None:
        """Governance block ``number`` was committed; ``config`` if it changed it."""
        if number != self.height:
            raise ValueError(f"governance block {number} out of order (height {self.height})")
        self.height = number + 1
        if config is not None:
            if len(self._views) >= MAX_VIEWS:
                raise ValueError("too many configuration changes to keep")
            self._heights.append(self.height)
            self._views.append(config)

    def load(self, ledger: LedgerStore) -> None:
        """Rebuild from a governance ledger (at start)."""
        writes: dict[int, list[tuple[str, Any]]] = {}
        for block, key, value in ledger.get_history_range(GOVERNANCE, CONFIG_PREFIX, CONFIG_END):
            writes.setdefault(block, []).append((key, value))
        for number in range(ledger.height()):
            self.process_block(number, compute_view_after(self.latest, writes.get(number, ())))


BOOTSTRAP_FILE = "bootstrap.json"


def load_bootstrap(data_dir: Path) -> tuple[int, NetworkConfig] | None:
    """The configuration a joining node's operator gave it (``meridian node add``):
    what the node acts on — its own entry, its peers, its channels — until its
    governance ledger has caught up with the height it was taken at."""
    path = data_dir / BOOTSTRAP_FILE
    if not path.is_file():
        return None
    doc = codec.decode(path.read_bytes(), max_bytes=MAX_CONFIG_BYTES, what=BOOTSTRAP_FILE)
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(field), int) for field in ("height", "version")
    ):
        raise InvalidInput(f"{path} is not a bootstrap file", code="bad_config")
    config = NetworkConfig.from_dict(doc.get("config"))
    return doc["height"], dataclasses.replace(config, version=doc["version"])


def save_bootstrap(data_dir: Path, height: int, config: NetworkConfig) -> None:
    doc = {"height": height, "version": config.version, "config": config.to_dict()}
    write_file(data_dir / BOOTSTRAP_FILE, codec.encode(doc))


def load_latest(layout: NetworkLayout) -> NetworkConfig:
    """The newest configuration this network directory knows: the governance ledgers
    and bootstrap files of its nodes, else the genesis ``network.json`` (for tools such
    as the CLI, which see nodes added by governance this way)."""
    genesis = layout.load()
    best_height, best = 0, genesis
    nodes_dir = layout.root / "nodes"
    for node_dir in sorted(nodes_dir.iterdir()) if nodes_dir.is_dir() else []:
        data_dir = node_dir / "data"
        candidates = []
        with contextlib.suppress(MeridianError, OSError, ValueError):
            bootstrap = load_bootstrap(data_dir)
            if bootstrap is not None:
                candidates.append(bootstrap)
        ledger_path = data_dir / "ledgers" / f"{GOVERNANCE_APP}.sqlite"
        if ledger_path.is_file():
            with contextlib.suppress(MeridianError, OSError, ValueError, sqlite3.Error):
                history = ConfigHistory(genesis)
                ledger = SqliteLedger(ledger_path)
                try:
                    history.load(ledger)
                finally:
                    ledger.close()
                candidates.append((history.height, history.latest))
        for height, config in candidates:
            if height > best_height:
                best_height, best = height, config
    return best
