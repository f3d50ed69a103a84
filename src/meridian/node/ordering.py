"""Ordering: turning accepted transactions into a sequence of blocks.

:class:`Orderer` is the seam the BFT consensus plugs into. :class:`SoloOrderer` is
the single-node implementation: a FIFO queue cut into blocks when ``max_txs`` are
waiting or ``timeout_ms`` after the first one arrived, whichever comes first. Blocks
are delivered one at a time; the next block is cut only after the previous one was
committed (its hash and result root go into the next header).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..crypto.hashing import Digest
from ..ledger.merkle import compute_root
from ..types import Block, BlockHeader, Transaction, compute_tx_hash


@dataclass(frozen=True, slots=True)
class ChainTip:
    """What the next block builds on."""

    height: int  # the next block's number
    previous_hash: Digest
    last_result_root: Digest
    last_timestamp_ms: int


Deliver = Callable[[Block], Awaitable[None]]


class Orderer(Protocol):
    def submit(self, txs: Sequence[Transaction]) -> None:
        """Queue transactions (already durably accepted) for ordering."""

    async def run(self, tip: Callable[[], ChainTip], deliver: Deliver) -> None:
        """Order forever, delivering each block in sequence."""


def compute_block(
    network: str, app: str, tip: ChainTip, txs: Sequence[Transaction], now_ms: int
) -> Block:
    """The next block over ``tip`` holding ``txs`` (timestamps strictly increase)."""
    header = BlockHeader(
        network=network,
        app=app,
        number=tip.height,
        previous_hash=tip.previous_hash,
        data_hash=compute_root([compute_tx_hash(tx) for tx in txs]),
        last_result_root=tip.last_result_root,
        timestamp_ms=max(now_ms, tip.last_timestamp_ms + 1),
        tx_count=len(txs),
    )
    return Block(header, tuple(txs))


class SoloOrderer:
    """Single-node ordering by block size or time."""

    def __init__(self, network: str, app: str, *, max_txs: int, timeout_ms: int) -> None:
        self.network = network
        self.app = app
        self.max_txs = max_txs
        self.timeout_s = timeout_ms / 1000
        self._queue: list[Transaction] = []
        self._arrived = asyncio.Event()

    def submit(self, txs: Sequence[Transaction]) -> None:
        self._queue.extend(txs)
        self._arrived.set()

    async def run(self, tip: Callable[[], ChainTip], deliver: Deliver) -> None:
        while True:
            await self._arrived.wait()
            deadline = time.monotonic() + self.timeout_s
            while len(self._queue) < self.max_txs and time.monotonic() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(
                        self._arrived.wait(), max(0.0, deadline - time.monotonic())
                    )
                except TimeoutError:
                    break
            batch, self._queue = self._queue[: self.max_txs], self._queue[self.max_txs :]
            if not self._queue:
                self._arrived.clear()
            if batch:
                await deliver(
                    compute_block(self.network, self.app, tip(), batch, int(time.time() * 1000))
                )
