"""The storage seam and its SQLite backend (WAL, durable commits).

One :class:`SqliteLedger` per application ledger (one file per app in the node's
data directory). :meth:`SqliteLedger.commit_block` writes a block, its validation
codes, its state writes, the transaction index, key history and events in **one**
SQLite transaction (``synchronous=FULL``): a node killed at any instant restarts
with either all of a block or none of it.

Threads: all writes happen on the caller's writer connection (the node uses one
committer thread per ledger); reads use :meth:`reader`, a connection per thread.
Transactions acknowledged but not yet in a block live beside the ledger in a
:class:`~meridian.ledger.pending.PendingStore`.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from .. import codec
from ..contracts.api import HistoryEntry
from ..crypto.hashing import Digest
from ..errors import Corruption, InvalidInput
from ..types import Block, BlockHeader, Transaction, TxCode, Version

# 2: blocks.stored (storage quotas); the governance configuration as one entry per item
LEDGER_FORMAT = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    number INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    header BLOB NOT NULL,
    body BLOB NOT NULL,
    codes BLOB NOT NULL,
    result_root BLOB NOT NULL,
    certificate BLOB NOT NULL,
    stored INTEGER NOT NULL  -- the app's stored bytes after this block (storage quota)
);
CREATE TABLE IF NOT EXISTS txs (
    tx_id TEXT PRIMARY KEY,
    block INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    code INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    block INTEGER NOT NULL,
    tx INTEGER NOT NULL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    block INTEGER NOT NULL,
    tx INTEGER NOT NULL,
    tx_id TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    value TEXT,
    PRIMARY KEY (ns, key, block, tx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    block INTEGER NOT NULL,
    tx INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    tx_id TEXT NOT NULL,
    contract TEXT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (block, tx, idx)
) WITHOUT ROWID;
"""

_FIELD_RE = re.compile(r"^[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64}){0,7}$")
_OPS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One key's new value (``None`` with ``delete``) as of ``version``."""

    ns: str
    key: str
    value: Any
    delete: bool
    version: Version
    tx_id: str


@dataclass(frozen=True, slots=True)
class BlockEvent:
    block: int
    tx: int
    idx: int
    tx_id: str
    contract: str
    name: str
    payload: Any


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """Everything one block commit writes, produced by validation."""

    block: Block
    codes: tuple[TxCode, ...]
    writes: tuple[StateWrite, ...]
    events: tuple[BlockEvent, ...]
    result_root: Digest
    # the app's stored bytes once the block is committed: the encoded size of every
    # valid transaction so far (what the plan's storage quota bounds; see validate.py)
    stored_bytes: int
    certificate: bytes = b""  # the consensus commit certificate (canonical JSON)


@dataclass(frozen=True, slots=True)
class TxLocation:
    tx_id: str
    block: int
    index: int
    code: TxCode


class LedgerStore(Protocol):
    """What the node needs from a ledger backend (SQLite here; PostgreSQL later).

    ``writer=True`` reads go through the committing thread's own connection (the
    validator's view); all other reads may run on any thread.
    """

    def height(self) -> int: ...
    def get_header(self, number: int) -> BlockHeader | None: ...
    def get_block(self, number: int) -> Block | None: ...
    def get_codes(self, number: int) -> tuple[TxCode, ...] | None: ...
    def get_result_root(self, number: int) -> Digest | None: ...
    def get_certificate(self, number: int) -> bytes | None: ...
    def get_tx(self, tx_id: str) -> TxLocation | None: ...
    def known_tx_ids(self, tx_ids: Sequence[str], *, writer: bool = False) -> set[str]: ...
    def commit_block(self, batch: CommitBatch) -> None: ...
    def stored_bytes(self, *, writer: bool = False) -> int: ...
    def get(self, ns: str, key: str, *, writer: bool = False) -> tuple[Any, Version] | None: ...
    def get_range(
        self, ns: str, start: str, end: str, limit: int, *, writer: bool = False
    ) -> list[tuple[str, Any, Version]]: ...
    def query(
        self, ns: str, selector: Mapping[str, Any], limit: int
    ) -> list[tuple[str, Any, Version]]: ...
    def get_history(self, ns: str, key: str, limit: int) -> list[HistoryEntry]: ...
    def get_history_range(
        self, ns: str, start: str, end: str
    ) -> list[tuple[int, str, Any | None]]: ...
    def get_events(self, from_block: int, to_block: int) -> list[BlockEvent]: ...
    def close(self) -> None: ...


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _check_format(conn: sqlite3.Connection, path: Path) -> None:
    """Stamp a new ledger with :data:`LEDGER_FORMAT`; refuse one of another format
    (its tables or the meaning of its keys differ) instead of misreading it."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found == LEDGER_FORMAT:
        return
    has_blocks = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='blocks'"
    ).fetchone()
    if found == 0 and not has_blocks:
        conn.execute(f"PRAGMA user_version={LEDGER_FORMAT}")
        return
    raise InvalidInput(
        f"ledger {path} has format {found or 1}; this node reads format {LEDGER_FORMAT}",
        code="ledger_format",
        hint="move the file aside: the node syncs the channel again from its peers "
        "(a single-node network starts a new ledger)",
    )


def _dumps(value: Any) -> str:
    return codec.encode(value).decode()


class SqliteLedger:
    """One app's ledger in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(path)
        try:
            _check_format(self._writer, path)
        except BaseException:
            self._writer.close()
            raise
        self._writer.executescript(_SCHEMA)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []

    # ------------------------------------------------------------------ connections

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer.close()

    @contextmanager
    def _atomic(self) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction on the writer: all of it commits, or none."""
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------------ blocks

    def height(self) -> int:
        """Number of committed blocks (the next block's number)."""
        row = self.reader().execute("SELECT MAX(number) FROM blocks").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def get_header(self, number: int) -> BlockHeader | None:
        row = (
            self.reader().execute("SELECT header FROM blocks WHERE number=?", (number,)).fetchone()
        )
        return None if row is None else BlockHeader.from_dict(orjson.loads(row[0]))

    def get_block(self, number: int) -> Block | None:
        row = (
            self.reader()
            .execute("SELECT header, body FROM blocks WHERE number=?", (number,))
            .fetchone()
        )
        if row is None:
            return None
        return _decode_block(row[0], row[1], number)

    def get_codes(self, number: int) -> tuple[TxCode, ...] | None:
        row = self.reader().execute("SELECT codes FROM blocks WHERE number=?", (number,)).fetchone()
        return None if row is None else tuple(TxCode(c) for c in orjson.loads(row[0]))

    def get_result_root(self, number: int) -> Digest | None:
        row = (
            self.reader()
            .execute("SELECT result_root FROM blocks WHERE number=?", (number,))
            .fetchone()
        )
        return None if row is None else Digest(row[0])

    def get_certificate(self, number: int) -> bytes | None:
        """The commit certificate stored with block ``number`` (empty if none)."""
        row = (
            self.reader()
            .execute("SELECT certificate FROM blocks WHERE number=?", (number,))
            .fetchone()
        )
        return None if row is None else bytes(row[0])

    def stored_bytes(self, *, writer: bool = False) -> int:
        """The app's stored bytes after the last committed block (0 before any)."""
        conn = self._writer if writer else self.reader()
        row = conn.execute("SELECT stored FROM blocks ORDER BY number DESC LIMIT 1").fetchone()
        return 0 if row is None else int(row[0])

    def iter_raw_blocks(
        self,
    ) -> Iterator[tuple[int, bytes, bytes, bytes, bytes, bytes, bytes, int]]:
        """(number, hash, header, body, codes, result_root, certificate, stored) in
        order."""
        yield from self.reader().execute(
            "SELECT number, hash, header, body, codes, result_root, certificate, stored "
            "FROM blocks ORDER BY number"
        )

    def get_tx(self, tx_id: str) -> TxLocation | None:
        row = (
            self.reader()
            .execute("SELECT block, idx, code FROM txs WHERE tx_id=?", (tx_id,))
            .fetchone()
        )
        return None if row is None else TxLocation(tx_id, row[0], row[1], TxCode(row[2]))

    def known_tx_ids(self, tx_ids: Sequence[str], *, writer: bool = False) -> set[str]:
        """The subset of ``tx_ids`` already in a committed block."""
        conn = self._writer if writer else self.reader()
        found: set[str] = set()
        for i in range(0, len(tx_ids), 500):
            chunk = tx_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                r[0] for r in conn.execute(f"SELECT tx_id FROM txs WHERE tx_id IN ({marks})", chunk)
            )
        return found

    def commit_block(self, batch: CommitBatch) -> None:
        """Write the block and everything derived from it in one atomic step."""
        block = batch.block
        number = block.header.number
        with self._atomic() as conn:
            conn.execute(
                "INSERT INTO blocks VALUES (?,?,?,?,?,?,?,?)",
                (
                    number,
                    block.header.hash,
                    block.header.encode(),
                    b"[" + b",".join(t.encode() for t in block.transactions) + b"]",
                    codec.encode([int(c) for c in batch.codes]),
                    batch.result_root,
                    batch.certificate,
                    batch.stored_bytes,
                ),
            )
            conn.executemany(
                "INSERT OR IGNORE INTO txs VALUES (?,?,?,?)",
                [
                    (tx.tx_id, number, i, int(code))
                    for i, (tx, code) in enumerate(
                        zip(block.transactions, batch.codes, strict=True)
                    )
                ],
            )
            self._apply_writes(conn, batch.writes, block.header.timestamp_ms)
            conn.executemany(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?)",
                [
                    (e.block, e.tx, e.idx, e.tx_id, e.contract, e.name, _dumps(e.payload))
                    for e in batch.events
                ],
            )

    @staticmethod
    def _apply_writes(
        conn: sqlite3.Connection, writes: Sequence[StateWrite], timestamp_ms: int
    ) -> None:
        final = {(w.ns, w.key): w for w in writes}  # in block order: the last write wins
        upserts = [
            (w.ns, w.key, _dumps(w.value), w.version.block, w.version.tx)
            for w in final.values()
            if not w.delete
        ]
        deletes = [(w.ns, w.key) for w in final.values() if w.delete]
        conn.executemany("INSERT OR REPLACE INTO state VALUES (?,?,?,?,?)", upserts)
        conn.executemany("DELETE FROM state WHERE ns=? AND key=?", deletes)
        conn.executemany(
            "INSERT INTO history VALUES (?,?,?,?,?,?,?)",
            [
                (
                    w.ns,
                    w.key,
                    w.version.block,
                    w.version.tx,
                    w.tx_id,
                    timestamp_ms,
                    None if w.delete else _dumps(w.value),
                )
                for w in writes
            ],
        )

    # ------------------------------------------------------------------------- state

    def get(self, ns: str, key: str, *, writer: bool = False) -> tuple[Any, Version] | None:
        conn = self._writer if writer else self.reader()
        row = conn.execute(
            "SELECT value, block, tx FROM state WHERE ns=? AND key=?", (ns, key)
        ).fetchone()
        return None if row is None else (orjson.loads(row[0]), Version(row[1], row[2]))

    def get_range(
        self, ns: str, start: str, end: str, limit: int, *, writer: bool = False
    ) -> list[tuple[str, Any, Version]]:
        conn = self._writer if writer else self.reader()
        sql = "SELECT key, value, block, tx FROM state WHERE ns=? AND key>=?"
        params: list[Any] = [ns, start]
        if end:
            sql += " AND key<?"
            params.append(end)
        sql += " ORDER BY key LIMIT ?"
        params.append(limit)
        return [(k, orjson.loads(v), Version(b, t)) for k, v, b, t in conn.execute(sql, params)]

    def query(
        self, ns: str, selector: Mapping[str, Any], limit: int
    ) -> list[tuple[str, Any, Version]]:
        where, params = compile_selector(selector)
        sql = f"SELECT key, value, block, tx FROM state WHERE ns=? {where} ORDER BY key LIMIT ?"
        rows = self.reader().execute(sql, [ns, *params, limit])
        return [(k, orjson.loads(v), Version(b, t)) for k, v, b, t in rows]

    def get_history(self, ns: str, key: str, limit: int) -> list[HistoryEntry]:
        rows = self.reader().execute(
            "SELECT tx_id, block, timestamp_ms, value FROM history WHERE ns=? AND key=? "
            "ORDER BY block, tx LIMIT ?",
            (ns, key, limit),
        )
        return [
            HistoryEntry(tx_id, block, ts, None if v is None else orjson.loads(v), v is None)
            for tx_id, block, ts, v in rows
        ]

    def get_history_range(self, ns: str, start: str, end: str) -> list[tuple[int, str, Any | None]]:
        """Every committed write to keys in ``[start, end)`` of ``ns``: (block, key,
        value; None for a delete), in commit order."""
        rows = self.reader().execute(
            "SELECT block, key, value FROM history WHERE ns=? AND key>=? AND key<? "
            "ORDER BY block, tx, key",
            (ns, start, end),
        )
        return [(block, key, None if v is None else orjson.loads(v)) for block, key, v in rows]

    def iter_state(self) -> Iterator[tuple[str, str, str, int, int]]:
        yield from self.reader().execute(
            "SELECT ns, key, value, block, tx FROM state ORDER BY ns, key"
        )

    def iter_history(self) -> Iterator[tuple[Any, ...]]:
        """Every key-history row, in (ns, key, block, tx) order (for ledger verify)."""
        yield from self.reader().execute(
            "SELECT ns, key, block, tx, tx_id, timestamp_ms, value FROM history "
            "ORDER BY ns, key, block, tx"
        )

    def get_events(self, from_block: int, to_block: int) -> list[BlockEvent]:
        rows = self.reader().execute(
            "SELECT block, tx, idx, tx_id, contract, name, payload FROM events "
            "WHERE block>=? AND block<? ORDER BY block, tx, idx",
            (from_block, to_block),
        )
        return [
            BlockEvent(b, t, i, tx_id, c, n, orjson.loads(p)) for b, t, i, tx_id, c, n, p in rows
        ]


def _decode_block(header: bytes, body: bytes, number: int) -> Block:
    try:
        h = BlockHeader.from_dict(orjson.loads(header))
        txs = tuple(Transaction.from_dict(t) for t in orjson.loads(body))
    except (InvalidInput, orjson.JSONDecodeError) as exc:
        raise Corruption(
            f"block {number} in the store does not decode: {exc}",
            hint="run 'meridian ledger verify' and restore from a peer",
        ) from exc
    return Block(h, txs)


def compile_selector(selector: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Translate a JSON query selector into a SQL condition on the stored documents.

    ``{"owner": "alice", "value": {"$gte": 10}, "kind": {"$in": ["a", "b"]}}``: every
    field must match (AND). Fields are dotted paths of ``[A-Za-z0-9_]`` segments;
    operators are ``$eq $ne $gt $gte $lt $lte $in``; operands are strings, integers,
    booleans or null (lists of those for ``$in``).
    """
    if len(selector) > 16:
        raise InvalidInput("a selector may have at most 16 fields", code="bad_query")
    clauses: list[str] = []
    params: list[Any] = []
    for field, cond in selector.items():
        if not isinstance(field, str) or not _FIELD_RE.match(field):
            raise InvalidInput(f"selector field {field!r} is not a dotted name", code="bad_query")
        expr = f"json_extract(value, '$.{field}')"
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, operand in ops.items():
            clauses.append(_compile_op(expr, op, operand, params))
    return "".join(f" AND {c}" for c in clauses), params


def _compile_op(expr: str, op: str, operand: Any, params: list[Any]) -> str:
    if op == "$in":
        if not isinstance(operand, list) or not operand or len(operand) > 100:
            raise InvalidInput("$in takes a list of 1..100 values", code="bad_query")
        values = [_scalar(item) for item in operand if item is not None]
        params.extend(values)
        clauses = [f"{expr} IN ({','.join('?' * len(values))})"] if values else []
        if len(values) < len(operand):
            clauses.append(f"{expr} IS NULL")
        return f"({' OR '.join(clauses)})"
    if op not in _OPS:
        raise InvalidInput(
            f"unknown selector operator {op!r}",
            code="bad_query",
            hint="use one of $eq $ne $gt $gte $lt $lte $in",
        )
    if operand is None:
        return f"{expr} IS {'NOT ' if op == '$ne' else ''}NULL"
    params.append(_scalar(operand))
    return f"{expr} {_OPS[op]} ?"


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise InvalidInput("selector integers must fit in 64 signed bits", code="bad_query")
        return value
    raise InvalidInput(
        "selector operands must be strings, integers, booleans or null", code="bad_query"
    )
