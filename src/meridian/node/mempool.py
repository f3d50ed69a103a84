"""The mempool: transactions waiting to be ordered on one channel.

Every node keeps the transactions it accepted itself (durably, in the pending store)
and those forwarded by its peers, so that whichever consenter leads can propose them
and a change of leader loses nothing. The pool is deduplicated by transaction id,
bounded in count and bytes (a full pool refuses with ``Busy`` — never a silent
drop for the node's own clients), and served oldest first. A transaction leaves
the pool when a block holding it is committed. The node re-forwards its own
transactions that are still waiting after ``REFORWARD_MS`` (a peer may have missed
them while a link was down).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from ..crypto.hashing import Digest
from ..errors import Busy
from ..types import Transaction, compute_tx_hash

REFORWARD_MS = 2_000


@dataclass(slots=True)
class _Entry:
    tx: Transaction
    hash: Digest  # the transaction's Merkle leaf (compact proposals name it)
    size: int
    own: bool
    arrived_ms: int
    forwarded_ms: int


class Mempool:
    def __init__(self, *, max_txs: int, max_bytes: int) -> None:
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self._entries: dict[str, _Entry] = {}  # insertion order is arrival order
        self._by_hash: dict[Digest, str] = {}
        self._bytes = 0
        self.refused = 0  # forwarded transactions refused because the pool was full

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._entries

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def check_room(self, count: int, size: int) -> None:
        """Busy if ``count`` more transactions of ``size`` bytes would not fit."""
        if len(self._entries) + count > self.max_txs or self._bytes + size > self.max_bytes:
            raise Busy(
                f"{len(self._entries)} transactions ({self._bytes} bytes) are waiting to be "
                "ordered; the pool is full",
                retry_after_s=1.0,
                hint="retry after a short pause; the network is ordering at capacity",
            )

    def add(
        self,
        txs: Iterable[Transaction],
        now_ms: int,
        *,
        own: bool,
        needed: Collection[Digest] = (),
    ) -> list[Transaction]:
        """Add what is new; returns the transactions added.

        Own transactions were already admitted with :meth:`check_room` (and are
        durable), so they always go in; forwarded ones are refused when full, unless
        ``needed`` (by hash) to rebuild a proposal this node must judge.
        """
        added = []
        for tx in txs:
            if tx.tx_id in self._entries:
                if own:
                    self._entries[tx.tx_id].own = True
                continue
            size = len(tx.encode())
            full = len(self._entries) >= self.max_txs or self._bytes + size > self.max_bytes
            tx_hash = compute_tx_hash(tx)
            if full and not own and tx_hash not in needed:
                self.refused += 1
                continue
            entry = _Entry(tx, tx_hash, size, own, now_ms, now_ms)
            self._entries[tx.tx_id] = entry
            self._by_hash[entry.hash] = tx.tx_id
            self._bytes += size
            added.append(tx)
        return added

    def remove(self, tx_ids: Iterable[str]) -> list[int]:
        """Forget committed transactions; returns the arrival times of own ones."""
        arrivals = []
        for tx_id in tx_ids:
            entry = self._entries.pop(tx_id, None)
            if entry is not None:
                self._bytes -= entry.size
                self._by_hash.pop(entry.hash, None)
                if entry.own:
                    arrivals.append(entry.arrived_ms)
        return arrivals

    def find(self, hashes: Sequence[Digest]) -> tuple[list[Transaction], list[Digest]]:
        """The transactions with these hashes, in order, and the hashes not here."""
        found, missing = [], []
        for h in hashes:
            tx_id = self._by_hash.get(h)
            if tx_id is None:
                missing.append(h)
            else:
                found.append(self._entries[tx_id].tx)
        return found, missing

    def take(self, max_txs: int, max_bytes: int) -> list[Transaction]:
        """The oldest transactions that fit in one block (they stay until committed)."""
        batch: list[Transaction] = []
        size = 0
        for entry in self._entries.values():
            if len(batch) >= max_txs or size + entry.size > max_bytes:
                break
            batch.append(entry.tx)
            size += entry.size
        return batch

    def due_for_forward(self, now_ms: int, every_ms: int = REFORWARD_MS) -> Sequence[Transaction]:
        """Own transactions still waiting ``every_ms`` after they were last forwarded."""
        due = []
        for entry in self._entries.values():
            if entry.own and now_ms - entry.forwarded_ms >= every_ms:
                entry.forwarded_ms = now_ms
                due.append(entry.tx)
        return due
