"""A channel: one application's ledger on this node, with its ordering and commit loop.

Accepting a transaction means writing it to the app's durable pending queue
(:class:`~meridian.ledger.pending.PendingStore`) before acknowledging it, so an
acknowledged transaction survives ``kill -9``: on restart, pending transactions not
yet in a block are ordered again (and committed ones dropped, by tx id). Ledger
writes run on one committer thread per channel, pending writes on another, so
accepting never waits for a block commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from ..consensus.core import ChainTip
from ..contracts.lifecycle import LIFECYCLE, ContractDefinition, get_definition
from ..crypto.certs import Membership
from ..errors import Busy, Conflict, Unavailable
from ..ledger.pending import PendingStore
from ..ledger.store import CommitBatch, LedgerStore
from ..types import ZERO_DIGEST, Block, BlockHeader, Transaction, TxCode, Version
from .ordering import Orderer
from .validate import AppRules, BlockValidator

log = logging.getLogger("meridian.node")

MAX_PENDING = 50_000
DROP_EVERY_S = 1.0
VALIDATE_SLICE = 100  # transactions validated between two turns of the event loop


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of a transaction, as the gateway reports it."""

    tx_id: str
    status: str  # "committed" | "pending"
    block: int | None = None
    index: int | None = None
    code: TxCode | None = None
    response: Any = None
    events: tuple[dict[str, Any], ...] = field(default=())

    @property
    def valid(self) -> bool:
        return self.code is TxCode.VALID

    def to_dict(self) -> dict[str, Any]:
        return {
            "tx_id": self.tx_id,
            "status": self.status,
            "block": self.block,
            "index": self.index,
            "code": None if self.code is None else self.code.name,
            "valid": self.valid if self.code is not None else None,
            "response": self.response,
            "events": list(self.events),
        }


def receipt_of(tx: Transaction, block: int, index: int, code: TxCode) -> Receipt:
    valid = code is TxCode.VALID
    return Receipt(
        tx.tx_id,
        "committed",
        block,
        index,
        code,
        tx.result.response if valid else None,
        tuple(e.to_dict() for e in tx.result.events) if valid else (),
    )


class WriterState:
    """The validator's view of committed state, on the committer's connection."""

    def __init__(self, ledger: LedgerStore) -> None:
        self.ledger = ledger

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None:
        return self.ledger.get(ns, key, writer=True)

    def get_range(self, ns: str, start: str, end: str, limit: int) -> list[Any]:
        return self.ledger.get_range(ns, start, end, limit, writer=True)

    def committed_among(self, tx_ids: Sequence[str]) -> set[str]:
        return self.ledger.known_tx_ids(tx_ids, writer=True)

    def stored_bytes(self) -> int:
        return self.ledger.stored_bytes(writer=True)


RulesFor = Callable[[BlockHeader], Awaitable[AppRules]]
Committed = Callable[[CommitBatch], Awaitable[None]]


class Channel:
    """One app's ledger on this node: accept, order, validate, commit, notify."""

    def __init__(
        self,
        rules: AppRules,
        ledger: LedgerStore,
        pending: PendingStore,
        membership: Membership,
        orderer: Orderer,
        *,
        rules_for: RulesFor | None = None,
        on_committed: Committed | None = None,
    ) -> None:
        """``orderer`` is this channel's consensus driver (it also holds the mempool).

        ``rules`` are the app's rules now (what the gateway checks requests against);
        ``rules_for(header)`` those that validate a block (its configuration height —
        it waits until this node has committed that governance height);
        ``on_committed(batch)`` runs after each commit, before the next block."""
        self.rules = rules
        self.app = rules.app
        self._rules_for = rules_for
        self._on_committed = on_committed
        self.ledger = ledger
        self.pending = pending
        self._accepting = ThreadPoolExecutor(1, thread_name_prefix=f"accept-{rules.app}")
        self._to_drop: list[str] = []
        self._dropped_at = 0.0
        self.membership = membership
        self.orderer = orderer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"commit-{self.app}")
        self._pending_ids: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[Receipt]]] = {}
        self._new_block = asyncio.Condition()
        self._tip = self._load_tip()
        # what the app stores (validation's measure), as of the last commit here
        self.stored_bytes = ledger.stored_bytes()
        self._task: asyncio.Task[None] | None = None
        self.last_commit_ms = 0
        self._failed: str | None = None
        self._definitions: dict[str, ContractDefinition | None] = {}

    # --------------------------------------------------------------------- lifecycle

    def _load_tip(self) -> ChainTip:
        height = self.ledger.height()
        if height == 0:
            return ChainTip(0, ZERO_DIGEST, ZERO_DIGEST, 0)
        header = self.ledger.get_header(height - 1)
        root = self.ledger.get_result_root(height - 1)
        if header is None or root is None:
            raise Unavailable(f"ledger of {self.app} is missing block {height - 1}")
        return ChainTip(height, header.hash, root, header.timestamp_ms, header.proposer)

    @property
    def halted(self) -> str | None:
        """Why this channel stopped committing (a failed commit, or consensus halted)."""
        return self._failed or self.orderer.halted

    async def start(self) -> None:
        """Re-queue acknowledged transactions that were not yet committed, then run."""
        pending = await self._run(self.pending.get_all)
        committed = await self._run(
            self.ledger.known_tx_ids, [t.tx_id for t in pending], writer=True
        )
        if committed:
            await self._run(self.pending.drop, sorted(committed))
        redo = [t for t in pending if t.tx_id not in committed]
        if redo:
            log.info("%s: re-ordering %d acknowledged transactions", self.app, len(redo))
            self._pending_ids.update(t.tx_id for t in redo)
            self.orderer.submit(redo)
        self._task = asyncio.create_task(self.orderer.run(lambda: self._tip, self._commit))
        self._task.add_done_callback(self._on_orderer_done)

    def _on_orderer_done(self, task: asyncio.Task[None]) -> None:
        """Ordering never ends by itself: if it did, say so everywhere (status, log)."""
        if task.cancelled():
            return
        exc = task.exception()
        self._failed = self._failed or f"ordering stopped: {exc!r}"
        log.error("%s: %s", self.app, self._failed, exc_info=exc)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._executor.shutdown(wait=True)
        self._accepting.shutdown(wait=True)
        self.ledger.close()
        self.pending.close()

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    # ---------------------------------------------------------------------- accepting

    @property
    def height(self) -> int:
        return self._tip.height

    def queued(self) -> int:
        return len(self._pending_ids)

    def is_pending(self, tx_id: str) -> bool:
        return tx_id in self._pending_ids

    async def accept(self, txs: Sequence[Transaction]) -> None:
        """Durably accept endorsed transactions for ordering (the acknowledgement point)."""
        if self.halted:
            raise Unavailable(
                f"app {self.app} stopped committing: {self.halted}", code="channel_halted"
            )
        self.orderer.check_room(txs)
        if len(self._pending_ids) + len(txs) > MAX_PENDING:
            raise Busy(
                f"{len(self._pending_ids)} transactions are waiting to be ordered",
                retry_after_s=1.0,
                hint="retry after a short pause",
            )
        for tx in txs:
            if tx.tx_id in self._pending_ids:
                raise Conflict(f"transaction {tx.tx_id} is already pending", code="duplicate_tx")
        self._pending_ids.update(tx.tx_id for tx in txs)  # reserved now: a concurrent twin
        # is refused. Shielded: once the write starts the transactions get ordered even if
        # the client goes away, so nothing durable waits for a restart to be ordered.
        await asyncio.shield(self._persist_and_order(txs))

    async def _persist_and_order(self, txs: Sequence[Transaction]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._accepting, self.pending.add, txs)
        except BaseException:
            self._pending_ids.difference_update(tx.tx_id for tx in txs)
            raise
        self.orderer.submit(txs)

    def waiter(self, tx_id: str) -> asyncio.Future[Receipt]:
        fut: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_id, []).append(fut)
        return fut

    async def wait_for_all(
        self, tx_ids: Sequence[str], futures: Sequence[asyncio.Future[Receipt]], timeout_s: float
    ) -> list[Receipt]:
        """Receipts of the awaited transactions; "pending" for those not committed in time."""
        if futures:
            await asyncio.wait(futures, timeout=timeout_s)
        receipts = []
        for tx_id, fut in zip(tx_ids, futures, strict=True):
            if fut.done():
                receipts.append(fut.result())
                continue
            fut.cancel()
            waiters = self._waiters.get(tx_id, [])
            if fut in waiters:
                waiters.remove(fut)
            if not waiters:
                self._waiters.pop(tx_id, None)
            receipts.append(Receipt(tx_id, "pending"))
        return receipts

    # ----------------------------------------------------------------------- commit

    async def _validate(self, block: Block) -> CommitBatch:
        """Validate on the event loop in slices (validation is pure Python: a thread would
        only contend for the GIL), then the commit's disk work goes to the committer."""
        rules = self.rules if self._rules_for is None else await self._rules_for(block.header)
        validator = BlockValidator(block, WriterState(self.ledger), self.membership, rules)
        while validator.step(VALIDATE_SLICE):
            await asyncio.sleep(0)
        return validator.finish()

    async def _commit(self, block: Block, certificate: bytes) -> None:
        """Validate and commit a decided block with its commit certificate."""
        try:
            batch = replace(await self._validate(block), certificate=certificate)
            await self._run(self.ledger.commit_block, batch)
        except Exception as exc:  # a node that cannot commit must stop, loudly
            self._failed = f"commit of block {block.header.number} failed: {exc!r}"
            log.exception("%s: %s", self.app, self._failed)
            raise
        header = block.header
        self.stored_bytes = batch.stored_bytes
        self._tip = ChainTip(
            header.number + 1, header.hash, batch.result_root, header.timestamp_ms, header.proposer
        )
        if any(w.ns == LIFECYCLE for w in batch.writes):
            self._definitions.clear()
        if self._on_committed is not None:
            await self._on_committed(batch)
        self.last_commit_ms = int(time.time() * 1000)
        self._drop_pending([tx.tx_id for tx in block.transactions])
        for index, (tx, code) in enumerate(zip(block.transactions, batch.codes, strict=True)):
            self._pending_ids.discard(tx.tx_id)
            for fut in self._waiters.pop(tx.tx_id, []):
                if not fut.done():
                    fut.set_result(receipt_of(tx, block.header.number, index, code))
        async with self._new_block:
            self._new_block.notify_all()

    def _drop_pending(self, tx_ids: list[str]) -> None:
        """Forget committed transactions in the pending queue, at most every DROP_EVERY_S.

        Leftovers are harmless: recovery drops whatever the ledger already holds.
        """
        self._to_drop.extend(tx_ids)
        now = time.monotonic()
        if now - self._dropped_at >= DROP_EVERY_S:
            batch, self._to_drop = self._to_drop, []
            self._dropped_at = now
            asyncio.get_running_loop().run_in_executor(self._accepting, self.pending.drop, batch)

    async def wait_for_block(self, number: int, timeout_s: float) -> bool:
        """Wait until block ``number`` is committed; False on timeout."""
        async with self._new_block:
            try:
                await asyncio.wait_for(
                    self._new_block.wait_for(lambda: self._tip.height > number), timeout_s
                )
            except TimeoutError:
                return False
        return True

    def get_definition(self, name: str) -> ContractDefinition | None:
        """The committed definition of contract ``name`` (cached until the next change)."""
        if name not in self._definitions:
            self._definitions[name] = get_definition(self.ledger.get, name)
        return self._definitions[name]

    def get_receipt(self, tx_id: str) -> Receipt | None:
        loc = self.ledger.get_tx(tx_id)
        if loc is None:
            return Receipt(tx_id, "pending") if tx_id in self._pending_ids else None
        block = self.ledger.get_block(loc.block)
        if block is None:
            return None
        return receipt_of(block.transactions[loc.index], loc.block, loc.index, loc.code)
