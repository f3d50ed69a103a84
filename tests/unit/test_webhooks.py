"""Webhooks: URL checks, the durable delivery queue, back-off, signatures, dispatch.

Dispatch scenarios run inside ``asyncio.run`` against a tiny HTTP/1.1 receiver on
127.0.0.1 (port 0); every server and task is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from meridian.crypto.suites import get_suite
from meridian.errors import Conflict, InvalidInput, NotFound
from meridian.gateway.webhooks import (
    MAX_WEBHOOKS_PER_APP,
    Delivery,
    Dispatcher,
    RetryPolicy,
    WebhookStore,
    compute_backoff_ms,
    sign_delivery,
    validate_webhook_url,
    verify_delivery,
)

HOST = "127.0.0.1"
NETWORK = "testnet"
APP = "shop"
OWNER = "org1/admin"
T0 = 1_700_000_000_000
GATEWAY = (HOST, 8080)
P2P = ("0.0.0.0", 7051)
NODE_ENDPOINTS = (GATEWAY, P2P)
DEADLINE_S = 4.0
ED25519 = get_suite("ed25519")
SIGNER = ED25519.generate()
NO_JITTER = RetryPolicy(jitter=0.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WebhookStore]:
    s = WebhookStore(tmp_path / "webhooks.sqlite", policy=NO_JITTER, forbidden=NODE_ENDPOINTS)
    yield s
    s.close()


def _register(store: WebhookStore, url: str = "https://example.com/hook", **kw) -> str:
    kinds = kw.pop("kinds", ("event", "block"))
    return store.register(APP, url, kinds, owner=OWNER, now_ms=T0, **kw).id


def _enqueue(store: WebhookStore, key: str = "block:1", kind: str = "block", **kw) -> list[str]:
    payload = kw.pop("payload", {"block": 1})
    contract = kw.pop("contract", None)
    now_ms = kw.pop("now_ms", T0)
    return store.enqueue(APP, kind, payload, contract=contract, dedupe_key=key, now_ms=now_ms, **kw)


# --- URL validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://example.com:8080/hook?x=1",
        "http://127.0.0.1:9999/hook",  # a receiver on loopback, another port
        "http://localhost:8081/",
        "http://[::1]:9000/hook",
    ],
)
def test_valid_webhook_urls_are_accepted(url: str) -> None:
    assert validate_webhook_url(url, NODE_ENDPOINTS) == url


def _refused(url: str, forbidden=NODE_ENDPOINTS) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        validate_webhook_url(url, forbidden)
    assert info.value.code == "bad_webhook_url"
    assert info.value.hint
    return info.value


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "ws://example.com/hook",
        "example.com/hook",
        "//example.com/hook",
    ],
)
def test_invalid_scheme(url: str) -> None:
    err = _refused(url)
    assert "http" in (err.hint or "")


@pytest.mark.parametrize("url", ["http://", "https:///hook", "http://:8081/hook", "https://?x"])
def test_invalid_no_host(url: str) -> None:
    _refused(url)


@pytest.mark.parametrize(
    "url", ["https://user:secret@example.com/hook", "https://user@example.com/hook"]
)
def test_invalid_userinfo(url: str) -> None:
    _refused(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost:8080/hook",
        "HTTP://LOCALHOST:8080/hook",
        "http://[::1]:8080/",
        "http://0.0.0.0:8080/",
        "http://127.0.0.1:7051/",  # the peer-to-peer port, node bound to 0.0.0.0
        "https://localhost:7051/",
    ],
)
def test_invalid_node_own_endpoint(url: str) -> None:
    err = _refused(url)
    assert "node" in err.message


def test_invalid_node_own_endpoint_default_port() -> None:
    forbidden = [("node1.example.org", 443), ("node1.example.org", 80)]
    _refused("https://node1.example.org/hook", forbidden)
    _refused("http://NODE1.example.org/hook", forbidden)
    assert validate_webhook_url("https://node1.example.org:8443/hook", forbidden)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com:99999/hook",
        "https://example.com:0/hook",
        "https://example.com/ho ok",
        "https://example.com/\nhook",
        "https://example.com/" + "a" * 2048,
        "",
    ],
)
def test_invalid_malformed_url(url: str) -> None:
    _refused(url)


# --- registrations ---------------------------------------------------------------------


def test_register_list_get_delete(store: WebhookStore) -> None:
    hook = store.register(
        APP, "https://example.com/a", ["event"], contract="token", owner=OWNER, now_ms=T0
    )
    assert hook.id.startswith("wh_") and len(hook.id) == 3 + 16
    assert (hook.app, hook.kinds, hook.contract, hook.owner) == (
        APP,
        frozenset({"event"}),
        "token",
        OWNER,
    )
    other = _register(store, "https://example.com/b", kinds=["block"])
    assert [h.id for h in store.list(APP)] == [hook.id, other]
    assert store.get(APP, hook.id) == hook
    assert store.list("other-app") == []

    store.delete(APP, hook.id)
    assert [h.id for h in store.list(APP)] == [other]
    with pytest.raises(NotFound) as info:
        store.get(APP, hook.id)
    assert info.value.code == "unknown_webhook"


def test_invalid_unknown_webhook(store: WebhookStore) -> None:
    hook = _register(store)
    with pytest.raises(NotFound):
        store.delete(APP, "wh_0000000000000000")
    with pytest.raises(NotFound):
        store.get("other-app", hook)  # ids are scoped to their app


def test_invalid_too_many_webhooks(store: WebhookStore) -> None:
    for i in range(MAX_WEBHOOKS_PER_APP):
        _register(store, f"https://example.com/{i}")
    with pytest.raises(Conflict) as info:
        _register(store, "https://example.com/one-more")
    assert info.value.code == "too_many_webhooks"
    store.register("other-app", "https://example.com/x", ["block"], owner=OWNER, now_ms=T0)


def test_invalid_duplicate_webhook(store: WebhookStore) -> None:
    first = _register(store, kinds=["event", "block"])
    with pytest.raises(Conflict) as info:
        _register(store, kinds=["block", "event"])
    assert info.value.code == "duplicate_webhook"
    assert info.value.details == {"webhook": first}
    _register(store, kinds=["block"])  # other kinds: another webhook
    _register(store, kinds=["event"], contract="token")  # other filter: another webhook


@pytest.mark.parametrize(
    ("kinds", "contract"),
    [([], None), (["tx"], None), (["event", "commit"], None), (["block"], "token")],
)
def test_invalid_register_kinds(store: WebhookStore, kinds: list[str], contract) -> None:
    with pytest.raises(InvalidInput) as info:
        _register(store, kinds=kinds, contract=contract)
    assert info.value.code == "bad_webhook"


def test_invalid_register_node_url(store: WebhookStore) -> None:
    with pytest.raises(InvalidInput) as info:
        _register(store, "http://localhost:8080/hook")
    assert info.value.code == "bad_webhook_url"
    with pytest.raises(InvalidInput):
        store.register("Bad App", "https://example.com", ["block"], owner=OWNER, now_ms=T0)


# --- the queue ----------------------------------------------------------------------------


def test_enqueue_matches_kinds_and_contract(store: WebhookStore) -> None:
    every_event = _register(store, "https://example.com/events", kinds=["event"])
    token_only = _register(store, "https://example.com/token", kinds=["event"], contract="token")
    blocks = _register(store, "https://example.com/blocks", kinds=["block"])

    def targets(ids: list[str]) -> set[str]:
        return {store.get_delivery(i).webhook_id for i in ids}

    ev = {"block": 3, "name": "Transfer"}
    assert targets(_enqueue(store, "ev:1", "event", payload=ev, contract="token")) == {
        every_event,
        token_only,
    }
    assert targets(_enqueue(store, "ev:2", "event", payload=ev, contract="nft")) == {every_event}
    assert targets(_enqueue(store, "block:3", "block", payload={"block": 3})) == {blocks}
    delivery = store.get_delivery(_enqueue(store, "block:3")[0])
    assert orjson.loads(delivery.body) == {
        "app": APP,
        "data": {"block": 3},
        "delivery": delivery.id,
        "kind": "block",
        "webhook": blocks,
    }


def test_enqueue_is_idempotent_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.sqlite"
    store = WebhookStore(path, policy=NO_JITTER)
    try:
        _register(store, kinds=["block"])
        [acked] = _enqueue(store, "block:1")
        [pending] = _enqueue(store, "block:2", payload={"block": 2})
        store.mark_delivered(acked, T0 + 10, 200)
        store.record_enqueued(APP, 2)
    finally:
        store.close()

    store = WebhookStore(path, policy=NO_JITTER)  # the node restarted
    try:
        assert store.last_enqueued(APP) == 2
        assert _enqueue(store, "block:1", now_ms=T0 + 50) == [acked]  # same id again
        assert _enqueue(store, "block:2", payload={"block": 2}, now_ms=T0 + 50) == [pending]
        assert [d.id for d in store.due(T0 + 100, 10)] == [pending]
        assert store.get_delivery(acked).state == "delivered"
        assert len(store.deliveries(APP)) == 2
    finally:
        store.close()


def test_last_enqueued_is_monotonic(store: WebhookStore) -> None:
    assert store.last_enqueued(APP) == -1
    store.record_enqueued(APP, 5)
    store.record_enqueued(APP, 3)
    assert store.last_enqueued(APP) == 5
    assert store.last_enqueued("other-app") == -1


def test_invalid_enqueue(store: WebhookStore) -> None:
    _register(store)
    with pytest.raises(InvalidInput):
        _enqueue(store, payload={"amount": 1.5})
    with pytest.raises(InvalidInput):
        _enqueue(store, kind="tx")
    with pytest.raises(InvalidInput):
        _enqueue(store, key="")
    with pytest.raises(InvalidInput):
        _enqueue(store, payload={"blob": "x" * 2**21})
    assert store.deliveries(APP) == []


def test_delete_drops_queued_deliveries(store: WebhookStore) -> None:
    hook = _register(store)
    _enqueue(store)
    store.delete(APP, hook)
    assert store.due(T0, 10) == []
    assert store.deliveries(APP) == []


# --- back-off, give-up, queries ------------------------------------------------------------


def _fail(store: WebhookStore, delivery_id: str, now_ms: int) -> Delivery:
    return store.mark_failed_attempt(delivery_id, now_ms, "HTTP 503", 503)


def test_backoff_schedule_and_give_up(store: WebhookStore) -> None:
    _register(store)
    [did] = _enqueue(store)
    now, delays = T0, []
    for _ in range(11):
        assert [d.id for d in store.due(now, 10)] == [did]
        delivery = _fail(store, did, now)
        assert delivery.state == "pending"
        assert delivery.next_attempt_ms is not None
        delays.append(delivery.next_attempt_ms - now)
        assert store.due(delivery.next_attempt_ms - 1, 10) == []  # not before its time
        now = delivery.next_attempt_ms
    assert delays == [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000,
                      300_000, 300_000]  # fmt: skip

    last = store.mark_failed_attempt(did, now, "ConnectError: refused", None)  # the 12th
    assert (last.state, last.attempts, last.next_attempt_ms) == ("failed", 12, None)
    assert (last.last_error, last.last_status) == ("ConnectError: refused", None)
    assert store.due(now + 10**9, 10) == []
    with pytest.raises(Conflict):
        _fail(store, did, now)


def test_backoff_jitter_is_bounded_and_seeded() -> None:
    policy = RetryPolicy()

    def schedule(seed: int) -> list[int]:
        rng = random.Random(seed)
        return [compute_backoff_ms(policy, n, rng) for n in range(1, 16)]

    nominal = [min(1000 * 2 ** (n - 1), 300_000) for n in range(1, 16)]
    first = schedule(7)
    assert first == schedule(7)
    assert first != nominal
    for got, want in zip(first, nominal, strict=True):
        assert 0.9 * want <= got <= 1.1 * want


def test_query_failures_and_redeliver(store: WebhookStore) -> None:
    _register(store)
    store.policy = RetryPolicy(max_attempts=2, jitter=0.0)
    [ok] = _enqueue(store, "block:1")
    [bad] = _enqueue(store, "block:2", payload={"block": 2}, now_ms=T0 + 1)
    store.mark_delivered(ok, T0 + 5, 204)
    _fail(store, bad, T0 + 5)
    _fail(store, bad, T0 + 2_000)

    [failed] = store.deliveries(APP, state="failed")
    assert (failed.id, failed.attempts, failed.last_status) == (bad, 2, 503)
    assert failed.last_error == "HTTP 503"
    assert failed.get_data() == {"block": 2}
    assert [d.id for d in store.deliveries(APP, state="delivered")] == [ok]
    assert [d.id for d in store.deliveries(APP)] == [bad, ok]  # newest first

    again = store.redeliver(APP, bad, T0 + 9_000)
    assert (again.state, again.attempts, again.next_attempt_ms) == ("pending", 0, T0 + 9_000)
    assert [d.id for d in store.due(T0 + 9_000, 10)] == [bad]
    with pytest.raises(Conflict) as info:
        store.redeliver(APP, ok, T0 + 9_000)
    assert info.value.code == "delivery_not_failed"
    with pytest.raises(NotFound):
        store.redeliver("other-app", bad, T0)
    with pytest.raises(InvalidInput):
        store.deliveries(APP, state="lost")


# --- signatures ----------------------------------------------------------------------------

BODY = b'{"app":"shop","data":{"block":1},"delivery":"dl_1","kind":"block","webhook":"wh_1"}'


@pytest.mark.parametrize("suite", ["ed25519", "p256"])
def test_signature_round_trip(suite: str) -> None:
    signer = get_suite(suite).generate()
    headers = sign_delivery(signer, NETWORK, BODY, T0, "dl_1")
    assert headers["Meridian-Delivery"] == "dl_1"
    assert headers["Meridian-Timestamp"] == str(T0)
    assert headers["Meridian-Signature"].startswith(f"{suite}=")
    key = signer.public_key_bytes()
    now_ms = T0 + 1_000
    assert verify_delivery(
        headers, BODY, network=NETWORK, suite=suite, public_key=key, now_ms=now_ms
    )
    lower = {k.lower(): v for k, v in headers.items()}  # receivers may lowercase names
    assert verify_delivery(lower, BODY, network=NETWORK, suite=suite, public_key=key, now_ms=now_ms)


def _check(
    headers: dict[str, str],
    body: bytes = BODY,
    *,
    network: str = NETWORK,
    suite: str = "ed25519",
    public_key: bytes = SIGNER.public_key_bytes(),
    now_ms: int = T0,
    max_age_ms: int = 300_000,
) -> bool:
    return verify_delivery(
        headers,
        body,
        network=network,
        suite=suite,
        public_key=public_key,
        now_ms=now_ms,
        max_age_ms=max_age_ms,
    )


def test_invalid_signature_tampered() -> None:
    headers = sign_delivery(SIGNER, NETWORK, BODY, T0, "dl_1")
    assert _check(headers)
    assert not _check(headers, BODY.replace(b'"block":1', b'"block":2'))
    assert not _check({**headers, "Meridian-Delivery": "dl_2"})
    assert not _check({**headers, "Meridian-Timestamp": str(T0 + 1)})
    assert not _check(headers, network="othernet")
    assert not _check(headers, public_key=ED25519.generate().public_key_bytes())
    assert not _check(headers, suite="p256")


def test_invalid_signature_stale_or_future() -> None:
    headers = sign_delivery(SIGNER, NETWORK, BODY, T0, "dl_1")
    assert _check(headers, now_ms=T0 + 300_000)
    assert not _check(headers, now_ms=T0 + 300_001)
    assert not _check(headers, now_ms=T0 - 300_001)
    assert not _check(headers, now_ms=T0 + 10_000, max_age_ms=5_000)


@pytest.mark.parametrize(
    "change",
    [
        {"Meridian-Signature": "ed25519=not base64!"},
        {"Meridian-Signature": "ed25519="},
        {"Meridian-Signature": "garbage"},
        {"Meridian-Timestamp": "-5"},
        {"Meridian-Timestamp": "1e12"},
        {"Meridian-Timestamp": ""},
    ],
)
def test_invalid_signature_malformed_headers(change: dict[str, str]) -> None:
    headers = sign_delivery(SIGNER, NETWORK, BODY, T0, "dl_1")
    assert not _check({**headers, **change})
    for name in headers:
        assert not _check({k: v for k, v in headers.items() if k != name})


# --- dispatch against a real receiver ----------------------------------------------------


@dataclass
class Receiver:
    """HTTP/1.1 on loopback answering ``statuses`` in turn (the last one repeats)."""

    statuses: list[int]
    requests: list[tuple[str, dict[str, str], bytes, int]] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((head[0], headers, body, time.time_ns() // 1_000_000))
            status = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n"
                f"Location: http://{HOST}:{self.port}/elsewhere\r\n\r\n".encode()
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"


@contextlib.asynccontextmanager
async def receiving(statuses: list[int]) -> AsyncIterator[Receiver]:
    receiver = Receiver(statuses)
    server = await asyncio.start_server(receiver.handle, HOST, 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def dispatching(store: WebhookStore, **kw) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(store, SIGNER, NETWORK, poll_interval_s=kw.pop("poll_s", 0.01), **kw)
    task = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(DEADLINE_S):  # a worker that won't stop fails the test
                await task


async def settled(store: WebhookStore, delivery_id: str) -> Delivery:
    async with asyncio.timeout(DEADLINE_S):
        while (delivery := store.get_delivery(delivery_id)).state == "pending":
            await asyncio.sleep(0.01)
    return delivery


def _fast_store(tmp_path: Path, max_attempts: int) -> WebhookStore:
    policy = RetryPolicy(max_attempts=max_attempts, base_ms=10, cap_ms=40)
    return WebhookStore(tmp_path / "webhooks.sqlite", policy=policy, rng=random.Random(1))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_dispatch_retries_until_acknowledged(tmp_path: Path) -> None:
    store = _fast_store(tmp_path, max_attempts=5)

    async def scenario() -> Delivery:
        async with receiving([500, 500, 200]) as receiver, dispatching(store):
            hook = store.register(APP, receiver.url, ["event"], owner=OWNER, now_ms=_now_ms())
            [did] = store.enqueue(
                APP, "event", {"block": 7, "name": "Paid"}, contract="token",
                dedupe_key="ev:7:0", now_ms=_now_ms(),
            )  # fmt: skip
            delivery = await settled(store, did)
            assert len(receiver.requests) == 3
            for line, headers, body, seen_ms in receiver.requests:
                assert line == "POST /hook HTTP/1.1"
                assert headers["content-type"] == "application/json"
                assert headers["meridian-delivery"] == did
                assert verify_delivery(
                    headers, body, network=NETWORK, suite="ed25519",
                    public_key=SIGNER.public_key_bytes(), now_ms=seen_ms,
                )  # fmt: skip
                assert orjson.loads(body) == {
                    "delivery": did, "app": APP, "kind": "event", "webhook": hook.id,
                    "data": {"block": 7, "name": "Paid"},
                }  # fmt: skip
            return delivery

    try:
        delivery = asyncio.run(scenario())
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 3, 200)
    finally:
        store.close()


def test_dispatch_gives_up_when_receiver_is_down(tmp_path: Path) -> None:
    store = _fast_store(tmp_path, max_attempts=3)

    async def scenario() -> Delivery:
        async with receiving([200]) as receiver:
            url = receiver.url  # the port is free again once the server stops
        store.register(APP, url, ["block"], owner=OWNER, now_ms=_now_ms())
        async with dispatching(store):
            [did] = _enqueue(store, now_ms=_now_ms())
            return await settled(store, did)

    try:
        delivery = asyncio.run(scenario())
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 3, None)
        assert delivery.last_error and "Connect" in delivery.last_error
        assert store.deliveries(APP, state="failed") == [delivery]
    finally:
        store.close()


def test_dispatch_does_not_follow_redirects(tmp_path: Path) -> None:
    store = _fast_store(tmp_path, max_attempts=2)

    async def scenario() -> tuple[Delivery, int]:
        async with receiving([307]) as receiver, dispatching(store):
            store.register(APP, receiver.url, ["block"], owner=OWNER, now_ms=_now_ms())
            [did] = _enqueue(store, now_ms=_now_ms())
            return await settled(store, did), len(receiver.requests)

    try:
        delivery, requests = asyncio.run(scenario())
        assert (delivery.state, delivery.last_status, requests) == ("failed", 307, 2)
    finally:
        store.close()


def test_dispatch_wake_skips_the_poll_wait(tmp_path: Path) -> None:
    store = _fast_store(tmp_path, max_attempts=2)

    async def scenario() -> Delivery:
        async with receiving([200]) as receiver, dispatching(store, poll_s=60.0) as dispatcher:
            store.register(APP, receiver.url, ["block"], owner=OWNER, now_ms=_now_ms())
            await asyncio.sleep(0.05)  # the dispatcher polled once and now sleeps
            [did] = _enqueue(store, now_ms=_now_ms())
            dispatcher.wake()
            return await settled(store, did)

    try:
        assert asyncio.run(scenario()).state == "delivered"
    finally:
        store.close()


def test_prune_forgets_only_settled_deliveries_tried_before_the_cut(store: WebhookStore) -> None:
    _register(store)
    [old] = _enqueue(store, "block:1")
    [recent] = _enqueue(store, "block:2", payload={"block": 2}, now_ms=T0 + 1)
    [waiting] = _enqueue(store, "block:3", payload={"block": 3}, now_ms=T0 + 2)
    store.mark_delivered(old, T0 + 5, 200)
    store.mark_delivered(recent, T0 + 50_000, 200)
    assert store.prune(T0 + 10_000) == 1
    assert sorted(d.id for d in store.deliveries(APP)) == sorted([recent, waiting])
