"""The p2p transport: mutual TLS with node certificates, framing, limits and reconnects.

Every scenario runs on loopback inside ``asyncio.run``; an ``AsyncExitStack`` stops
every transport and closes every raw connection it opened, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meridian.crypto.certs import CertificateAuthority, Membership, Role
from meridian.errors import Forbidden, InvalidInput
from meridian.network.config import NetworkConfig, NetworkLayout
from meridian.network.init import InitOptions, init_network
from meridian.p2p import (
    GREETING,
    PREAMBLE,
    Authenticate,
    FrameDecoder,
    FrameError,
    PeerAddress,
    Transport,
    TransportLimits,
    create_ssl_context,
    encode_frame,
)

HOST = "127.0.0.1"
NODES = ("node1", "node2", "node3")
DEADLINE_S = 5.0
FAST = TransportLimits(handshake_timeout_s=2.0, reconnect_min_s=0.02, reconnect_max_s=0.2)


# --- network, identities, harness -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Net:
    config: NetworkConfig
    layout: NetworkLayout

    @property
    def ca_pems(self) -> list[bytes]:
        return [org.ca_pem for org in self.config.orgs]

    def node_identity(self, node_id: str) -> tuple[bytes, bytes]:
        return _read_identity(self.layout.node_dir(node_id))

    def user_identity(self, org: str, name: str) -> tuple[bytes, bytes]:
        return _read_identity(self.layout.user_dir(org, name))


def _read_identity(folder: Path) -> tuple[bytes, bytes]:
    return (folder / "cert.pem").read_bytes(), (folder / "key.pem").read_bytes()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    root = tmp_path_factory.mktemp("p2p") / "net"
    config = init_network(root, InitOptions(orgs=3, nodes=3))
    return Net(config, NetworkLayout(root))


def make_authenticate(config: NetworkConfig) -> Authenticate:
    """Accept only node certificates whose name is a node of ``config`` in the right org."""
    membership = Membership({org.id: org.ca_pem for org in config.orgs})
    node_orgs = {node.id: node.org for node in config.nodes}

    def authenticate(cert_der: bytes) -> str:
        identity = membership.validate(cert_der)
        if identity.role is not Role.NODE or node_orgs.get(identity.name) != identity.org:
            raise Forbidden(f"{identity.org}/{identity.name} ({identity.role}) is not a node")
        return identity.name

    return authenticate


@dataclass
class Node:
    """A running transport and what it has received."""

    transport: Transport
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    connects: list[str] = field(default_factory=list)

    def payloads_from(self, peer: str) -> list[bytes]:
        return [payload for sender, payload in self.frames if sender == peer]


class Cluster:
    """Starts transports on free loopback ports; the exit stack stops them."""

    def __init__(self, net: Net, stack: contextlib.AsyncExitStack) -> None:
        self.net = net
        self.stack = stack
        self.ports: dict[str, int] = {}

    async def start(
        self,
        node_id: str,
        *,
        limits: TransportLimits = FAST,
        peers: Sequence[str] = NODES,
        port: int = 0,
        on_frame: Callable[[Node, str, bytes], None] | None = None,
        identity: tuple[bytes, bytes] | None = None,
        dial_ports: dict[str, int] | None = None,
    ) -> Node:
        """Start ``node_id``; it dials the peers above it at their known ports."""
        cert_pem, key_pem = identity or self.net.node_identity(node_id)
        ports = {**self.ports, **(dial_ports or {})}
        addresses = [PeerAddress(p, HOST, ports.get(p, 0)) for p in peers if p != node_id]
        node: Node

        def receive(peer: str, payload: bytes) -> None:
            if on_frame is not None:
                on_frame(node, peer, payload)
            node.frames.append((peer, payload))

        transport = Transport(
            node_id=node_id,
            listen=PeerAddress(node_id, HOST, port),
            cert_pem=cert_pem,
            key_pem=key_pem,
            ca_pems=self.net.ca_pems,
            peers=addresses,
            authenticate=make_authenticate(self.net.config),
            on_frame=receive,
            limits=limits,
        )
        node = Node(transport)
        transport.on_connect(node.connects.append)
        await transport.start()
        self.stack.push_async_callback(transport.stop)
        self.ports[node_id] = transport.port
        return node

    async def start_all(self) -> dict[str, Node]:
        """node3, node2, node1: each acceptor listens before its diallers start."""
        nodes = {n: await self.start(n) for n in reversed(NODES)}
        await wait_until(lambda: all(len(n.transport.connected()) == 2 for n in nodes.values()))
        return nodes

    async def raw_tls(
        self, port: int, identity: tuple[bytes, bytes]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A hand-driven TLS client presenting ``identity`` (cert, key)."""
        ctx = create_ssl_context(
            server_side=False, cert_pem=identity[0], key_pem=identity[1], ca_pems=self.net.ca_pems
        )
        reader, writer = await asyncio.open_connection(HOST, port)
        self.stack.callback(writer.transport.abort)
        assert await reader.readexactly(len(GREETING)) == GREETING  # the acceptor speaks first
        await writer.start_tls(ctx, server_hostname="")
        return reader, writer

    async def raw_session(
        self, port: int, identity: tuple[bytes, bytes]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A raw link after the preamble exchange, or None if the server refused it."""
        reader, writer = await self.raw_tls(port, identity)
        try:
            writer.write(PREAMBLE)
            async with asyncio.timeout(DEADLINE_S):
                if await reader.readexactly(len(PREAMBLE)) == PREAMBLE:
                    return reader, writer
        except (OSError, EOFError):
            pass
        writer.transport.abort()
        return None


@contextlib.asynccontextmanager
async def cluster(net: Net) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        yield Cluster(net, stack)


async def wait_until(condition: Callable[[], bool], what: str = "condition") -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {DEADLINE_S}s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_closed_by_peer(reader: asyncio.StreamReader) -> None:
    """Return once the other side has closed the connection (EOF or reset)."""
    async with asyncio.timeout(DEADLINE_S):
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass


def numbered(i: int, size: int = 200) -> bytes:
    return i.to_bytes(4, "big") + bytes(size - 4)


async def assert_frames_flow(a: Node, b: Node) -> None:
    a_id, b_id = a.transport.node_id, b.transport.node_id
    await wait_until(
        lambda: b_id in a.transport.connected() and a_id in b.transport.connected(),
        f"{a_id} <-> {b_id} link",
    )
    before_a, before_b = len(a.payloads_from(b_id)), len(b.payloads_from(a_id))
    assert a.transport.send(b_id, b"ping")
    assert b.transport.send(a_id, b"pong")
    await wait_until(lambda: len(b.payloads_from(a_id)) > before_b, f"{a_id} -> {b_id}")
    await wait_until(lambda: len(a.payloads_from(b_id)) > before_a, f"{b_id} -> {a_id}")
    assert b.payloads_from(a_id)[-1] == b"ping"
    assert a.payloads_from(b_id)[-1] == b"pong"


# --- frames (pure) ----------------------------------------------------------------------


@given(
    payloads=st.lists(st.binary(min_size=1, max_size=300), max_size=20),
    chunk=st.integers(min_value=1, max_value=700),
)
def test_decoder_yields_payloads_in_order_however_chunked(
    payloads: list[bytes], chunk: int
) -> None:
    wire = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder(300)
    out: list[bytes] = []
    for start in range(0, len(wire), chunk):
        decoder.feed(wire[start : start + chunk])
        while (payload := decoder.next_frame()) is not None:
            out.append(payload)
    assert out == payloads
    assert not decoder.pending


@pytest.mark.parametrize(
    ("header", "code"),
    [(0, "empty_frame"), (301, "oversized_frame"), (2**32 - 1, "oversized_frame")],
)
def test_invalid_frame_header_is_refused_before_its_body(header: int, code: str) -> None:
    decoder = FrameDecoder(300)
    decoder.feed(header.to_bytes(4, "big"))
    with pytest.raises(FrameError) as info:
        decoder.next_frame()
    assert info.value.code == code


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(InvalidInput):
        TransportLimits(max_frame_bytes=2**32)
    with pytest.raises(InvalidInput):
        TransportLimits(reconnect_min_s=3.0, reconnect_max_s=2.0)


# --- links ------------------------------------------------------------------------------


def test_three_nodes_link_pairwise_and_exchange_pipelined_frames(net: Net) -> None:
    async def scenario() -> None:
        async with cluster(net) as c:
            nodes = await c.start_all()
            for node_id, node in nodes.items():
                assert node.transport.connected() == [n for n in NODES if n != node_id]
                assert sorted(node.connects) == node.transport.connected()
            n1, n2, n3 = (nodes[n] for n in NODES)
            count = 3000
            for i in range(count):  # no awaits: all queued, then written in batches
                assert n1.transport.send("node3", numbered(i))
                assert n3.transport.send("node1", numbered(i))
            n2.transport.broadcast(b"hello from node2")
            await wait_until(lambda: len(n3.payloads_from("node1")) == count, "node1 -> node3")
            await wait_until(lambda: len(n1.payloads_from("node3")) == count, "node3 -> node1")
            await wait_until(lambda: all(n.payloads_from("node2") for n in (n1, n3)), "broadcast")
            assert n3.payloads_from("node1") == [numbered(i) for i in range(count)]
            assert n1.payloads_from("node3") == [numbered(i) for i in range(count)]
            assert n1.payloads_from("node2") == n3.payloads_from("node2") == [b"hello from node2"]
            await assert_frames_flow(n1, n2)
            await assert_frames_flow(n2, n3)
            # exactly one connection per pair: each node brought up two links, once
            for node in nodes.values():
                stats = node.transport.stats
                assert stats["links_up"] == 2 and stats["reconnects"] == 0, stats
                assert stats["handshake_failures"] == stats["rejected_peers"] == 0, stats
            assert n1.transport.stats["frames_out"] == count + 1
            assert n3.transport.stats["frames_in"] == count + 2  # + broadcast + ping

    asyncio.run(scenario())


def test_restarted_peers_reconnect_and_frames_flow_again(net: Net) -> None:
    async def scenario() -> None:
        async with cluster(net) as c:
            nodes = await c.start_all()
            # the acceptor restarts on the same port: its diallers come back
            port3 = c.ports["node3"]
            await nodes["node3"].transport.stop()
            await wait_until(lambda: "node3" not in nodes["node1"].transport.connected())
            new3 = await c.start("node3", port=port3)
            await wait_until(lambda: new3.transport.connected() == ["node1", "node2"], "node3 up")
            await assert_frames_flow(nodes["node1"], new3)
            await assert_frames_flow(nodes["node2"], new3)
            assert nodes["node1"].connects.count("node3") == 2
            assert nodes["node1"].transport.stats["reconnects"] == 1
            # a dialler restarts: it dials again and its new links are accepted
            await nodes["node1"].transport.stop()
            new1 = await c.start("node1", port=c.ports["node1"])
            await wait_until(lambda: new1.transport.connected() == ["node2", "node3"], "node1 up")
            await assert_frames_flow(new1, nodes["node2"])
            await assert_frames_flow(new1, new3)

    asyncio.run(scenario())


def test_new_connection_from_a_peer_replaces_the_old_one(net: Net) -> None:
    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2", peers=("node1", "node2"))
            n1 = await c.start("node1", peers=("node1", "node2"))
            await assert_frames_flow(n1, n2)
            # "node1 restarted": a new connection with node1's identity takes over ...
            session = await c.raw_session(n2.transport.port, net.node_identity("node1"))
            assert session is not None
            await wait_until(lambda: n1.transport.stats["reconnects"] == 1, "old link dropped")
            # ... until the real node1 dials again and replaces it in turn
            await wait_closed_by_peer(session[0])
            assert n2.transport.stats["links_up"] == 3
            assert n2.transport.stats["rejected_peers"] == 0
            await assert_frames_flow(n1, n2)

    asyncio.run(scenario())


def test_invalid_send_to_unknown_or_unconnected_peer_returns_false(net: Net) -> None:
    async def scenario() -> None:
        async with cluster(net) as c:
            node = await c.start("node1")
            assert node.transport.send("node9", b"x") is False
            assert node.transport.send("node2", b"x") is False  # known, not connected
            assert node.transport.stats["dropped_sends"] == 2
            with pytest.raises(InvalidInput):
                node.transport.send("node2", b"")
            with pytest.raises(InvalidInput):
                node.transport.send("node2", bytes(FAST.max_frame_bytes + 1))

    asyncio.run(scenario())


def test_invalid_send_beyond_the_queue_limit_is_dropped(net: Net) -> None:
    limits = TransportLimits(max_frame_bytes=500, max_queue_bytes=1000, reconnect_min_s=0.02)

    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2", peers=("node1", "node2"), limits=limits)
            n1 = await c.start("node1", peers=("node1", "node2"), limits=limits)
            await wait_until(lambda: n1.transport.connected() == ["node2"])
            results = [n1.transport.send("node2", numbered(i, 300)) for i in range(4)]
            assert results == [True, True, True, False]  # 1200 queued bytes > 1000
            await wait_until(lambda: len(n2.frames) == 3)
            assert n2.payloads_from("node1") == [numbered(i, 300) for i in range(3)]
            assert n1.transport.stats["dropped_sends"] == 1

    asyncio.run(scenario())


def test_invalid_on_frame_exception_is_counted_and_reading_goes_on(net: Net) -> None:
    def explode(node: Node, peer: str, payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")

    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2", peers=("node1", "node2"), on_frame=explode)
            n1 = await c.start("node1", peers=("node1", "node2"))
            await wait_until(lambda: n1.transport.connected() == ["node2"])
            assert n1.transport.send("node2", b"boom")
            assert n1.transport.send("node2", b"after")
            await wait_until(lambda: n2.payloads_from("node1") == [b"after"])
            assert n2.transport.stats["bad_frames"] == 1
            assert n2.transport.stats["links_up"] == 1  # the link survived

    asyncio.run(scenario())


# --- who may connect --------------------------------------------------------------------


def test_invalid_foreign_ca_client_is_refused_and_listener_keeps_serving(net: Net) -> None:
    foreign = CertificateAuthority.create("org1").issue("node1", Role.NODE)
    assert foreign.key_pem is not None
    identity = (foreign.cert_pem, foreign.key_pem)  # same org and name, another CA

    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2", peers=("node1", "node2"))
            session = await c.raw_session(n2.transport.port, identity)
            assert session is None
            await wait_until(lambda: n2.transport.stats["handshake_failures"] == 1)
            assert n2.transport.connected() == []
            n1 = await c.start("node1", peers=("node1", "node2"))
            await wait_until(lambda: n2.transport.connected() == ["node1"], "real node1")
            await assert_frames_flow(n1, n2)

    asyncio.run(scenario())


def test_invalid_foreign_ca_server_is_refused_by_the_dialler(net: Net) -> None:
    foreign = CertificateAuthority.create("org2").issue("node2", Role.NODE)
    assert foreign.key_pem is not None
    identity = (foreign.cert_pem, foreign.key_pem)  # same org and name, another CA

    async def scenario() -> None:
        async with cluster(net) as c:
            fake = await c.start("node2", peers=("node1", "node2"), identity=identity)
            n1 = await c.start("node1", peers=("node1", "node2"))
            await wait_until(lambda: n1.transport.stats["handshake_failures"] >= 2, "retries")
            assert n1.transport.connected() == fake.transport.connected() == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        (("org1", "admin"), "admin role"),
        (("org2", "user1"), "client role"),
        ("node3", "a node that node2 must dial, not accept"),
        ("node2", "node2's own identity"),
    ],
)
def test_invalid_peer_identity_is_rejected(
    net: Net, who: tuple[str, str] | str, reason: str
) -> None:
    identity = net.node_identity(who) if isinstance(who, str) else net.user_identity(*who)

    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2")
            assert await c.raw_session(n2.transport.port, identity) is None, reason
            await wait_until(lambda: n2.transport.stats["rejected_peers"] == 1, reason)
            assert n2.transport.stats["handshake_failures"] == 0
            assert n2.transport.connected() == []

    asyncio.run(scenario())


def test_invalid_dialled_address_answering_as_another_node(net: Net) -> None:
    async def scenario() -> None:
        async with cluster(net) as c:
            n3 = await c.start("node3")
            # node1 believes node2 listens where node3 does
            n1 = await c.start("node1", dial_ports={"node2": n3.transport.port})
            await wait_until(lambda: n1.transport.stats["rejected_peers"] >= 1, "rejection")
            await wait_until(lambda: n1.transport.connected() == ["node3"], "the real node3")
            await wait_until(lambda: n3.transport.connected() == ["node1"], "node3 accepted")
            assert n3.transport.stats["links_up"] == 1  # the impostor link never replaced it

    asyncio.run(scenario())


def test_invalid_non_tls_bytes_and_silence_are_handshake_failures(net: Net) -> None:
    limits = TransportLimits(handshake_timeout_s=0.5, reconnect_min_s=0.02)

    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2", peers=("node1", "node2"), limits=limits)
            reader, writer = await asyncio.open_connection(HOST, n2.transport.port)
            c.stack.callback(writer.transport.abort)
            writer.write(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 4)
            await wait_closed_by_peer(reader)
            await wait_until(lambda: n2.transport.stats["handshake_failures"] == 1, "garbage")
            silent_reader, silent = await asyncio.open_connection(HOST, n2.transport.port)
            c.stack.callback(silent.transport.abort)
            await wait_closed_by_peer(silent_reader)  # handshake_timeout_s
            assert n2.transport.stats["handshake_failures"] == 2
            n1 = await c.start("node1", peers=("node1", "node2"), limits=limits)
            await wait_until(lambda: n2.transport.connected() == ["node1"], "listener serves")
            await assert_frames_flow(n1, n2)

    asyncio.run(scenario())


# --- bad frames -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "counter"), [(0, "bad_frames"), (2**32 - 1, "oversized_frames")]
)
def test_invalid_frame_length_closes_the_connection(net: Net, length: int, counter: str) -> None:
    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2", peers=("node1", "node2"))
            session = await c.raw_session(n2.transport.port, net.node_identity("node1"))
            assert session is not None
            reader, writer = session
            await wait_until(lambda: n2.transport.connected() == ["node1"])
            writer.write(encode_frame(b"fine") + length.to_bytes(4, "big") + b"junk")
            await wait_closed_by_peer(reader)
            assert n2.transport.stats[counter] == 1
            assert n2.payloads_from("node1") == [b"fine"]
            await wait_until(lambda: n2.transport.connected() == [], "link dropped")

    asyncio.run(scenario())


def test_invalid_oversized_frame_drops_the_link_then_the_pair_reconnects(net: Net) -> None:
    small = TransportLimits(max_frame_bytes=1024, reconnect_min_s=0.02, reconnect_max_s=0.2)

    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2", peers=("node1", "node2"), limits=small)
            n1 = await c.start("node1", peers=("node1", "node2"))
            await wait_until(lambda: n1.transport.connected() == ["node2"])
            assert n1.transport.send("node2", bytes(2000))  # fine for node1, too big for node2
            await wait_until(lambda: n2.transport.stats["oversized_frames"] == 1)
            await wait_until(lambda: n2.transport.stats["links_up"] == 2, "node2 re-accepts")
            await wait_until(lambda: n1.transport.stats["links_up"] == 2, "node1 redials")
            await assert_frames_flow(n1, n2)
            assert n2.payloads_from("node1") == [b"ping"]

    asyncio.run(scenario())


def test_invalid_stalled_frame_is_timed_out_but_an_idle_link_is_not(net: Net) -> None:
    stall_s = 0.3
    limits = TransportLimits(stall_timeout_s=stall_s, reconnect_min_s=0.02)

    async def scenario() -> None:
        async with cluster(net) as c:
            n2 = await c.start("node2", peers=("node1", "node2"), limits=limits)
            session = await c.raw_session(n2.transport.port, net.node_identity("node1"))
            assert session is not None
            reader, writer = session
            await asyncio.sleep(2 * stall_s)  # idle for longer than the stall timeout
            writer.write(encode_frame(b"still here"))
            await wait_until(lambda: n2.payloads_from("node1") == [b"still here"])
            started = time.monotonic()
            writer.write((100).to_bytes(4, "big") + bytes(10))  # 10 of 100 bytes, then nothing
            await wait_closed_by_peer(reader)
            assert time.monotonic() - started >= stall_s * 0.9
            assert n2.transport.stats["stalled"] == 1
            assert n2.transport.connected() == []

    asyncio.run(scenario())
