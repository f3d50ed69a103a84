"""Webhooks: contract events and block notices POSTed to an app developer's URL.

An app registers a webhook (URL, kinds ``event``/``block``, optional contract filter).
For every committed block the node *enqueues* one delivery per matching webhook in a
durable SQLite queue (WAL, ``synchronous=FULL``: a delivery is a promise to the
developer), and the :class:`Dispatcher` POSTs them, retrying with exponential back-off
until a ``2xx`` acknowledges them or ``max_attempts`` is spent; then the delivery is
``failed`` and stays queryable (and re-deliverable) through :meth:`WebhookStore.deliveries`.

Guarantees (what a receiver can rely on):

* **At least once.** A delivery whose attempt was in flight when the node stopped is
  sent again. The delivery id is a digest of (webhook id, dedupe key), so it is the same
  on every attempt and every re-enqueue: receivers dedupe on ``Meridian-Delivery``.
* **Never again after an ack.** Enqueueing is idempotent by (webhook id, dedupe key):
  re-enqueueing a block after a restart keeps the delivered row as it is.
* **Order is not guaranteed** between deliveries (retries overtake); data carries the
  block number.

Every request is signed by the node (headers)::

    Meridian-Delivery   dl_<24 hex>     same id on every attempt
    Meridian-Timestamp  <ms since epoch> of this attempt
    Meridian-Signature  <suite>=<standard base64 signature>

The signature covers ``compute_signing_digest("webhook", network, M)`` where
``M = compute_digest_parts(utf8(delivery id), u64be(timestamp), sha256(body))``
(length-prefixed parts, see :mod:`meridian.crypto.hashing`), so it cannot be replayed
as another delivery, another body, another network or another kind of signature.
Receivers check it with :func:`verify_delivery` and refuse stale timestamps.

URLs are checked by :func:`validate_webhook_url`: http(s) only, no credentials, and
never one of the node's own endpoints. Host names are compared as written; a DNS name
that resolves to the node is not detected here (that needs egress rules).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import ipaddress
import logging
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, urlsplit

import httpx
import orjson

from .. import codec
from ..crypto.hashing import Digest, compute_digest, compute_digest_parts, compute_signing_digest
from ..crypto.suites import Signer, verify
from ..errors import Conflict, InvalidInput, MeridianError, NotFound
from ..types import NAME_RE, SYSTEM_CONTRACT_RE

log = logging.getLogger("meridian.gateway.webhooks")

DOMAIN_WEBHOOK: Final = "webhook"
KIND_EVENT: Final = "event"
KIND_BLOCK: Final = "block"
KINDS: Final = frozenset({KIND_EVENT, KIND_BLOCK})

STATE_PENDING: Final = "pending"
STATE_DELIVERED: Final = "delivered"
STATE_FAILED: Final = "failed"
STATES: Final = frozenset({STATE_PENDING, STATE_DELIVERED, STATE_FAILED})

H_DELIVERY: Final = "Meridian-Delivery"
H_TIMESTAMP: Final = "Meridian-Timestamp"
H_SIGNATURE: Final = "Meridian-Signature"

MAX_URL_CHARS = 2048
MAX_WEBHOOKS_PER_APP = 16
MAX_OWNER_CHARS = 256
MAX_DEDUPE_KEY_CHARS = 256
MAX_BODY_BYTES = 1 * 2**20
MAX_ERROR_CHARS = 512
MAX_LIST_LIMIT = 1000
MAX_SIGNATURE_HEADER_CHARS = 1024
DEFAULT_MAX_AGE_MS = 300_000

_SCHEMES = {"http": 80, "https": 443}
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_U64_MAX = 2**64 - 1


# ---------------------------------------------------------------------------- URLs


def _bad_url(message: str, hint: str) -> InvalidInput:
    return InvalidInput(message, code="bad_webhook_url", hint=hint)


def is_local_host(host: str) -> bool:
    """True iff ``host`` names this machine: loopback, unspecified, or ``localhost``."""
    host = host.lower().rstrip(".")
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _same_host(url_host: str, forbidden_host: str) -> bool:
    a, b = url_host.lower().rstrip("."), forbidden_host.lower().strip("[]").rstrip(".")
    return a == b or (is_local_host(b) and is_local_host(a))


def _split_url(url: str) -> SplitResult:
    if not isinstance(url, str) or not url:
        raise _bad_url("webhook URL is missing", "give an http:// or https:// URL")
    if len(url) > MAX_URL_CHARS:
        raise _bad_url(
            f"webhook URL is {len(url)} characters, over {MAX_URL_CHARS}", "use a shorter URL"
        )
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _bad_url("webhook URL contains whitespace or control characters", "encode them")
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise _bad_url(f"webhook URL cannot be parsed: {exc}", "check the URL") from exc


def _port_of(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError as exc:
        raise _bad_url("webhook URL has an invalid port", "use a port in 1..65535") from exc
    if port == 0:
        raise _bad_url("webhook URL has port 0", "use a port in 1..65535")
    return port if port is not None else _SCHEMES[parts.scheme.lower()]


def validate_webhook_url(url: str, forbidden: Collection[tuple[str, int]]) -> str:
    """``url`` if a webhook may be sent there; InvalidInput(code="bad_webhook_url") if not.

    ``forbidden`` holds the node's own (host, port) endpoints (gateway, peer-to-peer).
    A local forbidden host (loopback, ``0.0.0.0``, ``localhost``) matches every local
    spelling of the URL's host; other local ports stay allowed.
    """
    parts = _split_url(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise _bad_url(
            f"webhook URL scheme {parts.scheme or '(none)'!r} is not allowed",
            "use an http:// or https:// URL",
        )
    if "@" in parts.netloc:
        raise _bad_url(
            "webhook URL carries credentials (user:password@)",
            "remove them; verify Meridian-Signature on the receiver instead",
        )
    host = parts.hostname
    if not host:
        raise _bad_url("webhook URL has no host", "use a URL like https://example.com/hook")
    port = _port_of(parts)
    for bad_host, bad_port in forbidden:
        if port == bad_port and _same_host(host, bad_host):
            raise _bad_url(
                f"webhook URL points at this node's own endpoint {host}:{port}",
                "point the webhook at your own receiver, not at the node",
            )
    return url


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Webhook:
    """One registration: where an app's events and/or block notices go."""

    id: str
    app: str
    url: str
    kinds: frozenset[str]
    contract: str | None
    created_ms: int
    owner: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app,
            "url": self.url,
            "kinds": sorted(self.kinds),
            "contract": self.contract,
            "created_ms": self.created_ms,
            "owner": self.owner,
        }


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notice for one webhook, and where its delivery stands."""

    id: str
    app: str
    webhook_id: str
    url: str
    kind: str
    dedupe_key: str
    body: bytes
    state: str
    attempts: int
    next_attempt_ms: int | None
    created_ms: int
    last_attempt_ms: int | None
    last_error: str | None
    last_status: int | None

    def get_data(self) -> Any:
        """The payload as enqueued (the ``data`` field of the body)."""
        return orjson.loads(self.body)["data"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "app": self.app,
            "webhook": self.webhook_id,
            "url": self.url,
            "kind": self.kind,
            "dedupe_key": self.dedupe_key,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_ms": self.next_attempt_ms,
            "created_ms": self.created_ms,
            "last_attempt_ms": self.last_attempt_ms,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "data": self.get_data(),
        }


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Back-off: ``base * 2**(n-1)`` after the n-th failure, capped, then ±jitter."""

    max_attempts: int = 12
    base_ms: int = 1_000
    cap_ms: int = 300_000
    jitter: float = 0.1


def compute_backoff_ms(policy: RetryPolicy, failures: int, rng: random.Random) -> int:
    """Delay before the next attempt after ``failures`` (>= 1) failed attempts."""
    delay = min(policy.base_ms * 2 ** min(failures - 1, 62), policy.cap_ms)
    spread = rng.uniform(-policy.jitter, policy.jitter) if policy.jitter else 0.0
    return max(0, round(delay * (1.0 + spread)))


def compute_delivery_id(webhook_id: str, dedupe_key: str) -> str:
    """The stable id of the delivery of ``dedupe_key`` to ``webhook_id``."""
    digest = compute_digest_parts(b"webhook-delivery", webhook_id.encode(), dedupe_key.encode())
    return "dl_" + digest.hex()[:24]


# ---------------------------------------------------------------------------- store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    url TEXT NOT NULL,
    kinds TEXT NOT NULL,
    contract TEXT,
    created_ms INTEGER NOT NULL,
    owner TEXT NOT NULL,
    start_block INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS webhooks_unique
    ON webhooks (app, url, kinds, IFNULL(contract, ''));
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    webhook_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    created_ms INTEGER NOT NULL,
    last_attempt_ms INTEGER,
    last_error TEXT,
    last_status INTEGER,
    UNIQUE (webhook_id, dedupe_key)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_ms);
CREATE INDEX IF NOT EXISTS deliveries_app ON deliveries (app, created_ms);
CREATE TABLE IF NOT EXISTS cursors (
    app TEXT PRIMARY KEY,
    last_block INTEGER NOT NULL
);
"""

_DELIVERY_COLUMNS = (
    "d.id, d.app, d.webhook_id, w.url, d.kind, d.dedupe_key, d.body, d.state, d.attempts,"
    " d.next_attempt_ms, d.created_ms, d.last_attempt_ms, d.last_error, d.last_status"
)
_DELIVERY_FROM = "deliveries d JOIN webhooks w ON w.id = d.webhook_id"


def _validate_app(app: str) -> str:
    if not isinstance(app, str) or not NAME_RE.match(app):
        raise InvalidInput(f"app name must match {NAME_RE.pattern}", code="malformed")
    return app


def _validate_kinds(kinds: Collection[str]) -> frozenset[str]:
    items = [kinds] if isinstance(kinds, str) else list(kinds)
    if not all(isinstance(kind, str) for kind in items):
        items = []  # refused below, like an unknown kind (never a TypeError)
    chosen = frozenset(items)
    if not chosen or not chosen <= KINDS:
        raise InvalidInput(
            f"webhook kinds must be a non-empty subset of {sorted(KINDS)}",
            code="bad_webhook",
            hint='use ["event"], ["block"] or ["event", "block"]',
        )
    return chosen


def _validate_contract(contract: str | None, kinds: frozenset[str]) -> str | None:
    if contract is None:
        return None
    if not isinstance(contract, str) or not (
        NAME_RE.match(contract) or SYSTEM_CONTRACT_RE.match(contract)
    ):
        raise InvalidInput("webhook contract filter is not a contract name", code="bad_webhook")
    if KIND_EVENT not in kinds:
        raise InvalidInput(
            "a contract filter only applies to event webhooks",
            code="bad_webhook",
            hint='add "event" to kinds or drop the contract filter',
        )
    return contract


def _validate_owner(owner: str) -> str:
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER_CHARS:
        raise InvalidInput(f"webhook owner must be 1..{MAX_OWNER_CHARS} chars", code="malformed")
    return owner


def _webhook_of(row: tuple[Any, ...]) -> Webhook:
    wid, app, url, kinds, contract, created_ms, owner = row
    return Webhook(wid, app, url, frozenset(kinds.split(",")), contract, created_ms, owner)


def _delivery_of(row: tuple[Any, ...]) -> Delivery:
    (did, app, webhook_id, url, kind, dedupe_key, body, state, attempts) = row[:9]
    next_ms, created_ms, last_ms, last_error, last_status = row[9:]
    return Delivery(
        did, app, webhook_id, url, kind, dedupe_key, bytes(body), state, attempts,
        next_ms, created_ms, last_ms, last_error, last_status,
    )  # fmt: skip


def _matching(hooks: Iterable[Webhook], kind: str, contract: str | None) -> Iterator[str]:
    """Ids of the webhooks that want a notice of ``kind`` (from ``contract``)."""
    for hook in hooks:
        if kind not in hook.kinds:
            continue
        if kind == KIND_EVENT and hook.contract is not None and hook.contract != contract:
            continue
        yield hook.id


def _encode_body(delivery_id: str, app: str, kind: str, webhook_id: str, data: Any) -> bytes:
    body = {"delivery": delivery_id, "app": app, "kind": kind, "webhook": webhook_id, "data": data}
    encoded = codec.encode(body)
    if len(encoded) > MAX_BODY_BYTES:
        raise InvalidInput(
            f"webhook body would be {len(encoded)} bytes, over {MAX_BODY_BYTES}",
            code="too_large",
            hint="send a reference (tx id, block number) instead of the data",
        )
    return encoded


class WebhookStore:
    """Registrations, the durable delivery queue and resume cursors, in one SQLite file.

    Thread-safe (one connection behind a lock): the gateway registers from its
    handlers while the dispatcher drains the queue. Every write is one transaction.
    """

    def __init__(
        self,
        path: Path,
        *,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        forbidden: Collection[tuple[str, int]] = (),
    ) -> None:
        self.path = path
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._forbidden = tuple(forbidden)
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed as a whole or rolled back."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # ------------------------------------------------------------ registrations

    def register(
        self,
        app: str,
        url: str,
        kinds: Collection[str],
        *,
        contract: str | None = None,
        owner: str,
        now_ms: int,
        start_block: int = 0,
    ) -> Webhook:
        """A new webhook, notified of blocks from ``start_block`` on; Conflict if the
        app has too many or the same one already. If the app had no resume cursor, it
        starts just before ``start_block`` (nothing older is fed for nobody)."""
        chosen = _validate_kinds(kinds)
        hook = Webhook(
            id="wh_" + secrets.token_hex(8),
            app=_validate_app(app),
            url=validate_webhook_url(url, self._forbidden),
            kinds=chosen,
            contract=_validate_contract(contract, chosen),
            created_ms=now_ms,
            owner=_validate_owner(owner),
        )
        with self._atomic() as conn:
            self._check_room(conn, hook)
            conn.execute(
                "INSERT INTO webhooks VALUES (?,?,?,?,?,?,?,?)",
                (
                    hook.id,
                    app,
                    hook.url,
                    ",".join(sorted(chosen)),
                    hook.contract,
                    now_ms,
                    owner,
                    start_block,
                ),
            )
            conn.execute("INSERT OR IGNORE INTO cursors VALUES (?, ?)", (app, start_block - 1))
        return hook

    def _check_room(self, conn: sqlite3.Connection, hook: Webhook) -> None:
        (count,) = conn.execute("SELECT COUNT(*) FROM webhooks WHERE app=?", (hook.app,)).fetchone()
        if count >= MAX_WEBHOOKS_PER_APP:
            raise Conflict(
                f"app {hook.app} already has {count} webhooks",
                code="too_many_webhooks",
                hint=f"delete one first (at most {MAX_WEBHOOKS_PER_APP} per app)",
            )
        same = conn.execute(
            "SELECT id FROM webhooks WHERE app=? AND url=? AND kinds=? AND IFNULL(contract,'')=?",
            (hook.app, hook.url, ",".join(sorted(hook.kinds)), hook.contract or ""),
        ).fetchone()
        if same is not None:
            raise Conflict(
                f"app {hook.app} already has webhook {same[0]} for this URL and kinds",
                code="duplicate_webhook",
                hint=f"use webhook {same[0]}, or delete it first",
                details={"webhook": same[0]},
            )

    def list(self, app: str) -> list[Webhook]:
        """The app's webhooks, oldest first."""
        rows = self._read(
            "SELECT id, app, url, kinds, contract, created_ms, owner FROM webhooks"
            " WHERE app=? ORDER BY created_ms, rowid",
            (app,),
        )
        return [_webhook_of(row) for row in rows]

    def get(self, app: str, webhook_id: str) -> Webhook:
        rows = self._read(
            "SELECT id, app, url, kinds, contract, created_ms, owner FROM webhooks"
            " WHERE app=? AND id=?",
            (app, webhook_id),
        )
        if not rows:
            raise NotFound(
                f"app {app} has no webhook {webhook_id!r}",
                code="unknown_webhook",
                hint="list the app's webhooks to see their ids",
            )
        return _webhook_of(rows[0])

    def delete(self, app: str, webhook_id: str) -> None:
        """Remove a webhook and its queued and past deliveries."""
        self.get(app, webhook_id)
        with self._atomic() as conn:
            conn.execute("DELETE FROM deliveries WHERE webhook_id=?", (webhook_id,))
            conn.execute("DELETE FROM webhooks WHERE app=? AND id=?", (app, webhook_id))

    # ------------------------------------------------------------ queue

    def enqueue(
        self,
        app: str,
        kind: str,
        payload: dict[str, Any],
        *,
        contract: str | None,
        dedupe_key: str,
        now_ms: int,
        block: int | None = None,
    ) -> builtins.list[str]:
        """Queue ``payload`` for every matching webhook; the ids of those deliveries.

        Idempotent by (webhook, ``dedupe_key``): enqueueing again (after a restart)
        leaves an existing delivery, delivered or not, untouched.
        """
        self._validate_enqueue(kind, payload, dedupe_key)
        with self._atomic() as conn:
            rows = conn.execute(
                "SELECT id, app, url, kinds, contract, created_ms, owner FROM webhooks"
                " WHERE app=? AND start_block <= ? ORDER BY created_ms, rowid",
                (app, 2**62 if block is None else block),
            ).fetchall()
            ids = []
            for webhook_id in _matching(map(_webhook_of, rows), kind, contract):
                delivery_id = compute_delivery_id(webhook_id, dedupe_key)
                body = _encode_body(delivery_id, app, kind, webhook_id, payload)
                conn.execute(
                    "INSERT OR IGNORE INTO deliveries (id, app, webhook_id, kind, dedupe_key,"
                    " body, state, next_attempt_ms, created_ms) VALUES (?,?,?,?,?,?,?,?,?)",
                    (delivery_id, app, webhook_id, kind, dedupe_key, body, STATE_PENDING,
                     now_ms, now_ms),
                )  # fmt: skip
                ids.append(delivery_id)
        return ids

    @staticmethod
    def _validate_enqueue(kind: str, payload: dict[str, Any], dedupe_key: str) -> None:
        if kind not in KINDS:
            raise InvalidInput(f"unknown webhook kind {kind!r}", code="malformed")
        if not isinstance(payload, dict):
            raise InvalidInput("webhook payload must be a JSON object", code="malformed")
        codec.validate_value(payload, what="webhook payload")
        if not isinstance(dedupe_key, str) or not 0 < len(dedupe_key) <= MAX_DEDUPE_KEY_CHARS:
            raise InvalidInput(
                f"dedupe key must be 1..{MAX_DEDUPE_KEY_CHARS} chars", code="malformed"
            )

    def due(self, now_ms: int, limit: int) -> builtins.list[Delivery]:
        """Pending deliveries whose next attempt is due, most overdue first."""
        rows = self._read(
            f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM}"
            " WHERE d.state=? AND d.next_attempt_ms <= ?"
            " ORDER BY d.next_attempt_ms, d.rowid LIMIT ?",
            (STATE_PENDING, now_ms, limit),
        )
        return [_delivery_of(row) for row in rows]

    def get_delivery(self, delivery_id: str) -> Delivery:
        rows = self._read(
            f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM} WHERE d.id=?", (delivery_id,)
        )
        if not rows:
            raise NotFound(f"no webhook delivery {delivery_id!r}", code="unknown_delivery")
        return _delivery_of(rows[0])

    def mark_delivered(self, delivery_id: str, now_ms: int, status_code: int) -> None:
        """The receiver acknowledged ``delivery_id`` (a 2xx answer)."""
        with self._atomic() as conn:
            self._pending_attempts(conn, delivery_id)
            conn.execute(
                "UPDATE deliveries SET state=?, attempts=attempts+1, next_attempt_ms=NULL,"
                " last_attempt_ms=?, last_status=?, last_error=NULL WHERE id=?",
                (STATE_DELIVERED, now_ms, status_code, delivery_id),
            )

    def mark_failed_attempt(
        self, delivery_id: str, now_ms: int, error: str, status_code: int | None
    ) -> Delivery:
        """Record a failed attempt: schedule the next with back-off, or give up."""
        with self._atomic() as conn:
            attempts = self._pending_attempts(conn, delivery_id) + 1
            if attempts >= self.policy.max_attempts:
                state, next_ms = STATE_FAILED, None
            else:
                state = STATE_PENDING
                next_ms = now_ms + compute_backoff_ms(self.policy, attempts, self._rng)
            conn.execute(
                "UPDATE deliveries SET state=?, attempts=?, next_attempt_ms=?,"
                " last_attempt_ms=?, last_error=?, last_status=? WHERE id=?",
                (state, attempts, next_ms, now_ms, error[:MAX_ERROR_CHARS], status_code,
                 delivery_id),
            )  # fmt: skip
        return self.get_delivery(delivery_id)

    @staticmethod
    def _pending_attempts(conn: sqlite3.Connection, delivery_id: str) -> int:
        row = conn.execute(
            "SELECT state, attempts FROM deliveries WHERE id=?", (delivery_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no webhook delivery {delivery_id!r}", code="unknown_delivery")
        if row[0] != STATE_PENDING:
            raise Conflict(
                f"webhook delivery {delivery_id} is {row[0]}, not pending",
                code="delivery_not_pending",
            )
        return int(row[1])

    def deliveries(
        self, app: str, state: str | None = None, limit: int = 100
    ) -> builtins.list[Delivery]:
        """The app's deliveries, newest first, optionally only those in ``state``."""
        if state is not None and state not in STATES:
            raise InvalidInput(
                f"unknown delivery state {state!r}",
                code="malformed",
                hint=f"use one of: {', '.join(sorted(STATES))}",
            )
        if not 0 < limit <= MAX_LIST_LIMIT:
            raise InvalidInput(f"limit must be 1..{MAX_LIST_LIMIT}", code="malformed")
        rows = self._read(
            f"SELECT {_DELIVERY_COLUMNS} FROM {_DELIVERY_FROM}"
            " WHERE d.app=? AND (? IS NULL OR d.state=?)"
            " ORDER BY d.created_ms DESC, d.rowid DESC LIMIT ?",
            (app, state, state, limit),
        )
        return [_delivery_of(row) for row in rows]

    def redeliver(self, app: str, delivery_id: str, now_ms: int) -> Delivery:
        """Put a failed delivery back in the queue, with a fresh attempt budget."""
        with self._atomic() as conn:
            row = conn.execute(
                "SELECT state FROM deliveries WHERE app=? AND id=?", (app, delivery_id)
            ).fetchone()
            if row is None:
                raise NotFound(
                    f"app {app} has no webhook delivery {delivery_id!r}",
                    code="unknown_delivery",
                    hint="list the app's deliveries to see their ids",
                )
            if row[0] != STATE_FAILED:
                raise Conflict(
                    f"webhook delivery {delivery_id} is {row[0]}; only failed ones are redelivered",
                    code="delivery_not_failed",
                )
            conn.execute(
                "UPDATE deliveries SET state=?, attempts=0, next_attempt_ms=? WHERE id=?",
                (STATE_PENDING, now_ms, delivery_id),
            )
        return self.get_delivery(delivery_id)

    def prune(self, before_ms: int) -> int:
        """Forget delivered and failed deliveries last tried before ``before_ms``.

        Only prune what can no longer be re-enqueued (blocks before the resume cursor),
        or a re-enqueue would deliver it again.
        """
        with self._atomic() as conn:
            cur = conn.execute(
                "DELETE FROM deliveries WHERE state IN (?, ?) AND last_attempt_ms < ?",
                (STATE_DELIVERED, STATE_FAILED, before_ms),
            )
            return cur.rowcount

    # ------------------------------------------------------------ resume cursor

    def record_enqueued(self, app: str, block: int) -> None:
        """Remember that every notice of ``block`` is enqueued (call after the last one)."""
        with self._atomic() as conn:
            conn.execute(
                "INSERT INTO cursors VALUES (?, ?) ON CONFLICT (app)"
                " DO UPDATE SET last_block = max(last_block, excluded.last_block)",
                (app, block),
            )

    def last_enqueued(self, app: str) -> int:
        """The highest block fully enqueued for ``app``, -1 if none: resume after it."""
        rows = self._read("SELECT last_block FROM cursors WHERE app=?", (app,))
        return int(rows[0][0]) if rows else -1


# ---------------------------------------------------------------------------- signatures


def compute_delivery_digest(
    network: str, delivery_id: str, timestamp_ms: int, body: bytes
) -> Digest:
    """What the node signs for one delivery attempt (see the module docstring)."""
    message = compute_digest_parts(
        delivery_id.encode(), timestamp_ms.to_bytes(8, "big"), compute_digest(body)
    )
    return compute_signing_digest(DOMAIN_WEBHOOK, network, message)


def sign_delivery(
    signer: Signer, network: str, body: bytes, timestamp_ms: int, delivery_id: str
) -> dict[str, str]:
    """The headers that let a receiver check a delivery came from this node."""
    if not 0 <= timestamp_ms <= _U64_MAX:
        raise InvalidInput("timestamp_ms must be a non-negative 64-bit integer", code="malformed")
    digest = compute_delivery_digest(network, delivery_id, timestamp_ms, body)
    return {
        H_DELIVERY: delivery_id,
        H_TIMESTAMP: str(timestamp_ms),
        H_SIGNATURE: f"{signer.suite}={codec.b64(signer.sign(digest))}",
    }


def verify_delivery(
    headers: Mapping[str, str],
    body: bytes,
    *,
    network: str,
    suite: str,
    public_key: bytes,
    now_ms: int,
    max_age_ms: int = DEFAULT_MAX_AGE_MS,
) -> bool:
    """True iff ``headers`` sign ``body`` with ``public_key`` within ``max_age_ms`` of now.

    Header names are matched case-insensitively; never raises on bad input. Receivers
    should also drop a ``Meridian-Delivery`` id they already processed.
    """
    lower = {str(k).lower(): v for k, v in headers.items()}
    delivery_id = lower.get(H_DELIVERY.lower())
    stamp = lower.get(H_TIMESTAMP.lower())
    signature = lower.get(H_SIGNATURE.lower())
    if not (isinstance(delivery_id, str) and isinstance(stamp, str)):
        return False
    if not (isinstance(signature, str) and len(signature) <= MAX_SIGNATURE_HEADER_CHARS):
        return False
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 20):
        return False
    timestamp_ms = int(stamp)
    if timestamp_ms > _U64_MAX or abs(now_ms - timestamp_ms) > max_age_ms:
        return False
    named_suite, _, encoded = signature.partition("=")
    if named_suite != suite:
        return False
    try:
        raw = codec.unb64(encoded, what="signature")
    except InvalidInput:
        return False
    digest = compute_delivery_digest(network, delivery_id, timestamp_ms, body)
    return verify(suite, public_key, digest, raw)


# ---------------------------------------------------------------------------- dispatcher


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Dispatcher:
    """Background worker that POSTs due deliveries; run it as a task, cancel to stop.

    Polls the store every ``poll_interval_s`` (or at once after :meth:`wake`), keeps at
    most ``max_in_flight`` requests going, and records every outcome in the store. A
    ``2xx`` is an acknowledgement; any other status (redirects are not followed), a
    connection error or a timeout is a failed attempt. Nothing escapes the loop.
    """

    def __init__(
        self,
        store: WebhookStore,
        signer: Signer,
        network: str,
        *,
        poll_interval_s: float = 0.2,
        max_in_flight: int = 8,
        timeout_s: float = 5.0,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._signer = signer
        self._network = network
        self._poll_interval_s = poll_interval_s
        self._max_in_flight = max_in_flight
        self._timeout_s = timeout_s
        self._clock_ms = clock_ms
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Look for due deliveries now (safe to call from any thread)."""
        loop, event = self._loop, self._wake
        if loop is None or event is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout_s), follow_redirects=False, trust_env=False
        )
        try:
            while True:
                try:
                    self._start_due(client)
                except Exception:
                    log.exception("webhook dispatcher: polling the queue failed")
                await self._sleep()
        finally:
            tasks = list(self._in_flight.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.aclose()
            self._wake = None

    async def _sleep(self) -> None:
        event = self._wake
        if event is None:
            return
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        # that races with the event being set, and the worker would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._poll_interval_s):
                await event.wait()
        event.clear()

    def _start_due(self, client: httpx.AsyncClient) -> None:
        room = self._max_in_flight - len(self._in_flight)
        if room <= 0:
            return
        due = self._store.due(self._clock_ms(), room + len(self._in_flight))
        for delivery in [d for d in due if d.id not in self._in_flight][:room]:
            task = asyncio.create_task(self._deliver(client, delivery))
            self._in_flight[delivery.id] = task
            task.add_done_callback(functools.partial(self._finished, delivery.id))

    def _finished(self, delivery_id: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(delivery_id, None)

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        try:
            status, error = await self._post(client, delivery)
            now = self._clock_ms()
            if status is not None and 200 <= status < 300:
                self._store.mark_delivered(delivery.id, now, status)
            else:
                self._store.mark_failed_attempt(delivery.id, now, error, status)
            self._in_flight.pop(delivery.id, None)
            if self._wake is not None:
                self._wake.set()  # a slot is free; an unrecorded outcome waits for the poll
        except MeridianError as exc:  # e.g. the webhook was deleted meanwhile
            log.info("webhook delivery %s not recorded: %s", delivery.id, exc)
        except Exception:
            log.exception("webhook delivery %s: unexpected error", delivery.id)

    async def _post(self, client: httpx.AsyncClient, delivery: Delivery) -> tuple[int | None, str]:
        """(status, error text) of one attempt; status None if no answer came."""
        headers = sign_delivery(
            self._signer, self._network, delivery.body, self._clock_ms(), delivery.id
        )
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = "meridian-webhooks/1"
        try:
            async with asyncio.timeout(self._timeout_s):
                request = client.build_request(
                    "POST", delivery.url, content=delivery.body, headers=headers
                )
                response = await client.send(request, stream=True)
                await response.aclose()  # the answer's status is all we need
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return response.status_code, f"HTTP {response.status_code}"
