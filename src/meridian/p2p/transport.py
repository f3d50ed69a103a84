"""Node-to-node transport: one mutually authenticated TLS connection per node pair.

Promises
--------
* **One connection per pair.** Of two nodes, the one whose id sorts lower (plain string
  comparison) dials; the other only accepts. An acceptor refuses a dialler whose id
  sorts higher than its own. When a new authenticated connection from a peer arrives
  while an old one exists, the new one replaces the old (the peer restarted). The
  dialler reconnects forever, with exponential back-off from ``reconnect_min_s`` to
  ``reconnect_max_s``, while the transport runs.
* **Mutual TLS 1.3.** Both sides present their node certificate and verify the other's
  against every member organisation's CA. Host names are not checked: identity comes
  from the certificate through the ``authenticate`` callback, which maps the peer's
  certificate (DER) to its node id. A peer is rejected if ``authenticate`` raises, names
  this node, names a node that is not a configured peer, or (when dialling) is not the
  node that was dialled.
* **Greeting.** The acceptor first sends :data:`GREETING` in clear; the dialler starts
  TLS only once it has it (so no TLS bytes reach the acceptor before its TLS is set up).
* **Preamble.** After TLS and authentication each side sends :data:`PREAMBLE` (protocol
  and version). The acceptor sends it only after accepting the dialler, so a link is
  reported up on either side only once *both* sides have accepted each other.
* **Framing.** Then each direction is a stream of frames: a 4-byte big-endian length and
  that many payload bytes (:mod:`meridian.p2p.frames`). Payloads are opaque; the layer
  above multiplexes its channels inside them. Frames from one peer arrive in the order
  they were sent, unless the connection drops in between (frames queued or in flight
  on a dropped connection are lost; ``on_connect`` tells the layer above to catch up).
* **Never blocks the caller.** :meth:`Transport.send` only enqueues; one writer task per
  connection drains the queue, writing many frames before each ``drain()``.

Bad input and limits (:class:`TransportLimits`)
-----------------------------------------------
* Non-TLS bytes, a failed or slow handshake (``handshake_timeout_s``), a missing or bad
  preamble: count ``handshake_failures``, close. The listener keeps serving.
* A certificate the CAs accept but ``authenticate`` (or the rules above) does not:
  count ``rejected_peers``, close.
* A frame header of length 0 (``bad_frames``) or above ``max_frame_bytes``
  (``oversized_frames``): close that connection at once; the dialler reconnects later.
* A frame whose body does not complete within ``stall_timeout_s`` of its first byte:
  count ``stalled``, close. Idle connections (no frame started) are never timed out.
* An outgoing queue above ``max_queue_bytes``: the send is refused (``dropped_sends``).
* An exception from ``on_frame``: logged, counted in ``bad_frames``; reading goes on.

All methods must be called on the event loop that runs :meth:`Transport.start`;
``on_frame`` and ``on_connect`` callbacks are called on it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CertificateError, InvalidInput, Unavailable
from .frames import HEADER_BYTES, MAX_FRAME_LIMIT_BYTES, FrameDecoder, FrameError, encode_header

__all__ = [
    "GREETING",
    "PREAMBLE",
    "STAT_NAMES",
    "Authenticate",
    "OnFrame",
    "PeerAddress",
    "Transport",
    "TransportLimits",
    "create_ssl_context",
]

log = logging.getLogger("meridian.p2p")

PREAMBLE = b"MERIDIAN-P2P/1\n"
# Sent in clear by the acceptor before it starts TLS; the dialler starts TLS only once
# it has it. Without it a ClientHello can reach the acceptor's plain stream before TLS
# is set up there, and (with uvloop) the handshake then hangs.
GREETING = b"MERIDIAN-TLS\n"
READ_CHUNK_BYTES = 256 * 1024
WRITE_BATCH_BYTES = 256 * 1024  # frames joined into one write (one TLS record run)
CLOSE_TIMEOUT_S = 1.0  # graceful TLS close on stop(), then abort

STAT_NAMES = (
    "frames_in",
    "frames_out",
    "bytes_in",  # payload bytes, headers excluded
    "bytes_out",
    "bad_frames",
    "oversized_frames",
    "stalled",
    "handshake_failures",
    "rejected_peers",
    "dropped_sends",  # refused by send(), or still queued when their connection closed
    "reconnects",  # links to a peer that had been connected before
    "links_up",  # authenticated links established
    "dial_failures",  # TCP connects that failed (peer down or unreachable)
)

OnFrame = Callable[[str, bytes], None]
"""(peer node id, payload), called on the event loop."""

Authenticate = Callable[[bytes], str]
"""Peer certificate DER -> peer node id; raises MeridianError if not acceptable."""

_NETWORK_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError)  # incl. SSL, timeout


@dataclass(frozen=True, slots=True)
class PeerAddress:
    node_id: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.node_id or not self.host or not 0 <= self.port <= 65535:
            raise InvalidInput(f"bad peer address {self!r}", code="bad_config")


@dataclass(frozen=True, slots=True)
class TransportLimits:
    max_frame_bytes: int = 64 * 2**20
    max_queue_bytes: int = 256 * 2**20  # per peer outgoing queue; beyond: drop + count
    stall_timeout_s: float = 20.0  # a frame started must complete within this
    handshake_timeout_s: float = 10.0
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 2.0

    def __post_init__(self) -> None:
        ok = (
            0 < self.max_frame_bytes <= MAX_FRAME_LIMIT_BYTES
            and self.max_queue_bytes >= self.max_frame_bytes
            and self.stall_timeout_s > 0
            and self.handshake_timeout_s > 0
            and 0 < self.reconnect_min_s <= self.reconnect_max_s
        )
        if not ok:
            raise InvalidInput(
                f"inconsistent transport limits {self!r}",
                code="bad_config",
                hint="sizes and times must be positive, max_queue_bytes >= max_frame_bytes "
                f"and max_frame_bytes <= {MAX_FRAME_LIMIT_BYTES}",
            )


def create_ssl_context(
    *, server_side: bool, cert_pem: bytes, key_pem: bytes, ca_pems: Sequence[bytes]
) -> ssl.SSLContext:
    """A TLS 1.3-only context presenting ``cert_pem`` and requiring a cert from ``ca_pems``."""
    if not ca_pems:
        raise InvalidInput("at least one CA certificate is needed", code="bad_config")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # identity comes from the certificate, via authenticate
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata="\n".join(pem.decode("ascii") for pem in ca_pems))
        _load_identity(ctx, cert_pem, key_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidInput(
            f"unusable TLS identity or CA certificates: {exc}",
            code="bad_tls_identity",
            hint="pass the node's cert.pem and key.pem and the org CA PEMs",
        ) from exc
    return ctx


def _load_identity(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``ssl`` only loads keys from files: use a private temporary directory."""
    with tempfile.TemporaryDirectory(prefix="meridian-tls-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        ctx.load_cert_chain(cert_path, key_path)


def _get_peer_cert_der(writer: asyncio.StreamWriter) -> bytes:
    ssl_object = writer.get_extra_info("ssl_object")
    cert_der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not cert_der:
        raise CertificateError("the peer presented no certificate", code="certificate_missing")
    return bytes(cert_der)


class _Link:
    """One live, authenticated connection to a peer and its outgoing queue."""

    __slots__ = ("closed", "peer", "queue", "queued_bytes", "reader", "tasks", "wake", "writer")

    def __init__(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        self.closed = asyncio.Event()
        self.tasks: tuple[asyncio.Task[None], ...] = ()


class Transport:
    """Authenticated, framed, multiplexed links to the other nodes (see the module doc)."""

    def __init__(
        self,
        *,
        node_id: str,
        listen: PeerAddress,
        cert_pem: bytes,
        key_pem: bytes,
        ca_pems: Sequence[bytes],
        peers: Sequence[PeerAddress],
        authenticate: Authenticate,
        on_frame: OnFrame,
        limits: TransportLimits = TransportLimits(),
    ) -> None:
        if listen.node_id != node_id:
            raise InvalidInput(
                f"listen address is for {listen.node_id}, not {node_id}", code="bad_config"
            )
        ids = [peer.node_id for peer in peers]
        if len(set(ids)) != len(ids) or node_id in ids:
            raise InvalidInput(
                "peers must be distinct and not include this node", code="bad_config"
            )
        self._node_id = node_id
        self._listen = listen
        self._peers = {peer.node_id: peer for peer in peers}
        self._server_ctx = create_ssl_context(
            server_side=True, cert_pem=cert_pem, key_pem=key_pem, ca_pems=ca_pems
        )
        self._client_ctx = create_ssl_context(
            server_side=False, cert_pem=cert_pem, key_pem=key_pem, ca_pems=ca_pems
        )
        self._authenticate = authenticate
        self._on_frame = on_frame
        self._limits = limits
        self._links: dict[str, _Link] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._running = False
        self._connect_callbacks: list[Callable[[str], None]] = []
        self._ever_connected: set[str] = set()
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    # --- public API ---------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def port(self) -> int:
        """The port actually listened on (useful with ``listen.port == 0``)."""
        if self._server is None or not self._server.sockets:
            return self._listen.port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Listen, and start dialling every peer whose id sorts above this node's."""
        if self._running:
            return
        try:
            self._server = await asyncio.start_server(
                self._on_inbound, self._listen.host, self._listen.port
            )
        except OSError as exc:
            raise Unavailable(
                f"cannot listen on {self._listen.host}:{self._listen.port}: {exc}",
                code="listen_failed",
                hint="is another process using this port?",
            ) from exc
        self._running = True
        log.info("%s listening on %s:%d", self._node_id, self._listen.host, self.port)
        for peer in self._peers.values():
            if self._is_dialler_for(peer.node_id):
                self._spawn(self._dial_forever(peer), f"p2p-dial-{peer.node_id}")

    async def stop(self) -> None:
        """Stop listening and dialling, close every connection, cancel every task."""
        self._running = False
        if self._server is not None:
            self._server.close()
        links = list(self._links.values())
        await asyncio.gather(*(self._close_gracefully(link) for link in links))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in list(self._links.values()):  # registered while we were closing
            self._close_link(link, "stopped")
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def send(self, peer: str, payload: bytes) -> bool:
        """Enqueue ``payload`` for ``peer``; False (counted) if unknown, down or queue full.

        Raises InvalidInput for a payload no peer could accept (empty, not bytes, or
        above ``max_frame_bytes``): that is a bug in the caller, not a network condition.
        """
        self._validate_payload(payload)
        link = self._links.get(peer)
        if link is None or link.closed.is_set():
            return self._refuse_send(peer, "not connected")
        if link.queued_bytes + len(payload) > self._limits.max_queue_bytes:
            return self._refuse_send(peer, "outgoing queue full")
        link.queue.append(payload)
        link.queued_bytes += len(payload)
        link.wake.set()
        return True

    def broadcast(self, payload: bytes) -> None:
        """Enqueue ``payload`` for every connected peer."""
        self._validate_payload(payload)
        for peer in list(self._links):
            self.send(peer, payload)

    def set_peers(self, peers: Sequence[PeerAddress], ca_pems: Sequence[bytes] = ()) -> None:
        """Change the peer set (a configuration change): links to dropped peers close,
        new peers are dialled (by the lower id), and ``ca_pems`` are trusted too."""
        for pem in ca_pems:
            for ctx in (self._server_ctx, self._client_ctx):
                ctx.load_verify_locations(cadata=pem.decode("ascii"))
        wanted = {peer.node_id: peer for peer in peers if peer.node_id != self._node_id}
        for gone in set(self._peers) - set(wanted):
            link = self._links.get(gone)
            if link is not None:
                self._close_link(link, "no longer a peer")
        added = [p for p in wanted.values() if p.node_id not in self._peers]
        self._peers = wanted
        if self._running:
            for peer in added:
                if self._is_dialler_for(peer.node_id):
                    self._spawn(self._dial_forever(peer), f"p2p-dial-{peer.node_id}")

    def connected(self) -> list[str]:
        """Peer ids with a live authenticated connection, sorted."""
        return sorted(peer for peer, link in self._links.items() if not link.closed.is_set())

    def on_connect(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(peer)`` whenever a link to a peer comes up."""
        self._connect_callbacks.append(callback)

    # --- connection set-up --------------------------------------------------------------

    def _is_dialler_for(self, peer: str) -> bool:
        return self._node_id < peer

    def _on_inbound(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._running:
            writer.transport.abort()
            return
        self._spawn(self._accept(reader, writer), "p2p-accept")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        timeout_s = self._limits.handshake_timeout_s
        remote = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(timeout_s):
                writer.write(GREETING)
                await writer.start_tls(self._server_ctx, ssl_handshake_timeout=timeout_s)
                peer = self._get_authenticated_peer(writer, dialled=None)
                if peer is None:
                    writer.transport.abort()
                    return
                await self._exchange_preamble(reader, writer)
        except _NETWORK_ERRORS as exc:
            self._count_handshake_failure(writer, f"inbound from {remote}", exc)
            return
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        self._register_link(peer, reader, writer)

    async def _dial_forever(self, peer: PeerAddress) -> None:
        delay_s = self._limits.reconnect_min_s
        while self._running and self._peers.get(peer.node_id) == peer:
            link = await self._dial(peer)
            if link is None:
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._limits.reconnect_max_s)
                continue
            delay_s = self._limits.reconnect_min_s
            await link.closed.wait()
            await asyncio.sleep(delay_s)

    async def _dial(self, peer: PeerAddress) -> _Link | None:
        timeout_s = self._limits.handshake_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                reader, writer = await asyncio.open_connection(peer.host, peer.port)
        except OSError as exc:
            self.stats["dial_failures"] += 1
            log.debug("%s: cannot reach %s: %r", self._node_id, peer, exc)
            return None
        try:
            async with asyncio.timeout(timeout_s):
                if await reader.readexactly(len(GREETING)) != GREETING:
                    raise ConnectionError("the peer did not greet as a Meridian node")
                await writer.start_tls(self._client_ctx, ssl_handshake_timeout=timeout_s)
                peer_id = self._get_authenticated_peer(writer, dialled=peer.node_id)
                if peer_id is None:
                    writer.transport.abort()
                    return None
                await self._exchange_preamble(reader, writer)
        except _NETWORK_ERRORS as exc:
            self._count_handshake_failure(writer, f"dialling {peer.node_id}", exc)
            return None
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        return self._register_link(peer_id, reader, writer)

    async def _exchange_preamble(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(PREAMBLE)
        received = await reader.readexactly(len(PREAMBLE))
        if received != PREAMBLE:
            raise ConnectionError(f"unexpected preamble {received!r}")

    def _count_handshake_failure(
        self, writer: asyncio.StreamWriter, where: str, exc: BaseException
    ) -> None:
        self.stats["handshake_failures"] += 1
        log.warning("%s: handshake failed (%s): %r", self._node_id, where, exc)
        writer.transport.abort()

    def _get_authenticated_peer(
        self, writer: asyncio.StreamWriter, dialled: str | None
    ) -> str | None:
        """The peer's node id, or None (counted in ``rejected_peers``) if not acceptable."""
        peer: str | None = None
        try:
            peer = self._authenticate(_get_peer_cert_der(writer))
        except Exception as exc:  # a bad certificate is a verdict, whatever raised
            problem: str | None = f"authentication failed: {exc}"
        else:
            problem = self._get_peer_id_problem(peer, dialled)
        if problem is None:
            return peer
        self.stats["rejected_peers"] += 1
        log.warning(
            "%s: rejected peer %s: %s", self._node_id, peer or dialled or "(inbound)", problem
        )
        return None

    def _get_peer_id_problem(self, peer: str, dialled: str | None) -> str | None:
        if peer == self._node_id:
            return "it presented this node's own identity"
        if peer not in self._peers:
            return "it is not a configured peer"
        if dialled is not None and peer != dialled:
            return f"dialled {dialled!r} but it is {peer!r}"
        if dialled is None and self._is_dialler_for(peer):
            return f"it dialled, but {self._node_id} is the one to dial {peer}"
        return None

    def _register_link(
        self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Link | None:
        if not self._running:
            writer.transport.abort()
            return None
        old = self._links.get(peer)
        if old is not None:
            self._close_link(old, "replaced by a new connection")
        link = _Link(peer, reader, writer)
        self._links[peer] = link
        link.tasks = (
            self._spawn(self._read_loop(link), f"p2p-read-{peer}"),
            self._spawn(self._write_loop(link), f"p2p-write-{peer}"),
        )
        self.stats["links_up"] += 1
        if peer in self._ever_connected:
            self.stats["reconnects"] += 1
        self._ever_connected.add(peer)
        log.info("%s: link to %s is up", self._node_id, peer)
        for callback in list(self._connect_callbacks):
            try:
                callback(peer)
            except Exception:
                log.exception("%s: on_connect callback failed for %s", self._node_id, peer)
        return link

    # --- running links ------------------------------------------------------------------

    async def _read_loop(self, link: _Link) -> None:
        reason = "cancelled"
        try:
            await self._read_frames(link)
            reason = "closed by peer"
        except TimeoutError:
            self.stats["stalled"] += 1
            reason = f"frame stalled for more than {self._limits.stall_timeout_s}s"
        except FrameError as exc:
            self.stats["oversized_frames" if exc.code == "oversized_frame" else "bad_frames"] += 1
            reason = exc.message
        except _NETWORK_ERRORS as exc:
            reason = f"read failed: {exc!r}"
        finally:
            self._close_link(link, reason)

    async def _read_frames(self, link: _Link) -> None:
        """Deliver frames until EOF; TimeoutError if a started frame stalls."""
        decoder = FrameDecoder(self._limits.max_frame_bytes)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as deadline:
            while True:
                data = await link.reader.read(READ_CHUNK_BYTES)
                if not data:
                    return
                decoder.feed(data)
                completed = 0
                while not link.closed.is_set() and (payload := decoder.next_frame()) is not None:
                    completed += 1
                    self._deliver(link.peer, payload)
                if not decoder.pending:
                    deadline.reschedule(None)
                elif completed or deadline.when() is None:  # a new frame has started
                    deadline.reschedule(loop.time() + self._limits.stall_timeout_s)

    def _deliver(self, peer: str, payload: bytes) -> None:
        self.stats["frames_in"] += 1
        self.stats["bytes_in"] += len(payload)
        try:
            self._on_frame(peer, payload)
        except Exception:
            self.stats["bad_frames"] += 1
            log.exception("%s: on_frame failed for a frame from %s", self._node_id, peer)

    async def _write_loop(self, link: _Link) -> None:
        reason = "cancelled"
        try:
            while True:
                if not link.queue:
                    link.wake.clear()
                    await link.wake.wait()
                    continue
                link.writer.writelines(self._take_batch(link))
                await link.writer.drain()
        except _NETWORK_ERRORS as exc:
            reason = f"write failed: {exc!r}"
        finally:
            self._close_link(link, reason)

    def _take_batch(self, link: _Link) -> list[bytes]:
        """Dequeue frames up to about WRITE_BATCH_BYTES (at least one), headers included."""
        batch: list[bytes] = []
        size = 0
        while link.queue and size < WRITE_BATCH_BYTES:
            payload = link.queue.popleft()
            batch += (encode_header(len(payload)), payload)
            size += HEADER_BYTES + len(payload)
            link.queued_bytes -= len(payload)
            self.stats["frames_out"] += 1
            self.stats["bytes_out"] += len(payload)
        return batch

    def _close_link(self, link: _Link, reason: str, *, graceful: bool = False) -> None:
        if link.closed.is_set():
            return
        link.closed.set()
        if self._links.get(link.peer) is link:
            del self._links[link.peer]
        if link.queue:
            self.stats["dropped_sends"] += len(link.queue)
            link.queue.clear()
            link.queued_bytes = 0
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
        if graceful:
            link.writer.close()
        else:
            link.writer.transport.abort()
        log.info("%s: link to %s closed: %s", self._node_id, link.peer, reason)

    async def _close_gracefully(self, link: _Link) -> None:
        self._close_link(link, "stopping", graceful=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await link.writer.wait_closed()
        link.writer.transport.abort()

    # --- helpers ------------------------------------------------------------------------

    def _validate_payload(self, payload: bytes) -> None:
        if not isinstance(payload, bytes) or not 0 < len(payload) <= self._limits.max_frame_bytes:
            raise InvalidInput(
                f"a frame payload must be 1..{self._limits.max_frame_bytes} bytes",
                code="bad_frame_payload",
            )

    def _refuse_send(self, peer: str, reason: str) -> bool:
        self.stats["dropped_sends"] += 1
        log.debug("%s: dropped a frame for %s: %s", self._node_id, peer, reason)
        return False

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._on_task_done)
        return task

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: task %s failed", self._node_id, task.get_name(), exc_info=task.exception()
            )
