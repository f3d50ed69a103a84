"""The durable queue of accepted transactions not yet in a block.

A transaction is acknowledged to its client only once it is here (SQLite, WAL,
``synchronous=FULL``), so an acknowledgement survives ``kill -9``. It lives in a file
of its own beside the ledger so that accepting new transactions never waits for a
block commit (nor the other way round). The two files are not updated atomically
together: after a block commits, its transactions are dropped from here; if the node
dies in between, recovery drops every pending transaction the ledger already holds
(by tx id) before ordering the rest again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ..types import Transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL
);
"""


class PendingStore:
    """Accepted, not yet committed transactions of one app, in arrival order."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def add(self, txs: Sequence[Transaction]) -> None:
        """Durably remember ``txs`` (idempotent by tx id) — the acknowledgement point."""
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT OR IGNORE INTO pending (tx_id, body) VALUES (?,?)",
                [(tx.tx_id, tx.encode()) for tx in txs],
            )

    def get_all(self) -> list[Transaction]:
        rows = self._conn.execute("SELECT body FROM pending ORDER BY seq").fetchall()
        return [Transaction.decode(row[0]) for row in rows]

    def drop(self, tx_ids: Sequence[str]) -> None:
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("DELETE FROM pending WHERE tx_id=?", [(t,) for t in tx_ids])

    def close(self) -> None:
        self._conn.close()
