"""A contract exercising every Context operation and every way a call can fail."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import greenlet

from meridian.contracts import Context, Contract, ContractError, query, transaction

WORKER_TOKEN = os.urandom(8).hex()  # tells the tests which worker process ran a call


class Probe(Contract):
    @transaction
    def put(self, ctx: Context, key: str, value: Any) -> None:
        ctx.put_state(key, value)

    @query
    def get(self, ctx: Context, key: str) -> Any:
        return ctx.get_state(key)

    @transaction
    def put_then_get(self, ctx: Context, key: str, value: Any) -> Any:
        ctx.put_state(key, value)
        return ctx.get_state(key)

    @transaction
    def delete(self, ctx: Context, key: str) -> None:
        ctx.delete_state(key)

    @transaction
    def bump(self, ctx: Context, key: str, by: int) -> None:
        ctx.add(key, by)

    @query
    def scan(self, ctx: Context, start: str, end: str, limit: int = 1000) -> list[Any]:
        return [[k, v] for k, v in ctx.get_range(start, end, limit)]

    @query
    def find(self, ctx: Context, selector: dict) -> list[Any]:
        return [[k, v] for k, v in ctx.query(selector)]

    @query
    def history(self, ctx: Context, key: str) -> list[Any]:
        return [[h.tx_id, h.block, h.value, h.deleted] for h in ctx.get_history(key)]

    @transaction
    def announce(self, ctx: Context, name: str, payload: Any = None) -> None:
        ctx.emit(name, payload)

    @transaction
    def relay(self, ctx: Context, contract: str, function: str, *args: Any) -> Any:
        return ctx.invoke(contract, function, *args)

    @query
    def whoami(self, ctx: Context) -> dict:
        return {
            "tx_id": ctx.tx_id,
            "timestamp_ms": ctx.timestamp_ms,
            "app": ctx.app,
            "contract": ctx.contract,
            "org": ctx.caller.org,
            "name": ctx.caller.name,
            "role": ctx.caller.role,
            "team": ctx.caller.attr("team"),
        }

    @query
    def typed(
        self, ctx: Context, s: str, n: int, b: bool, items: list, obj: dict, maybe: int | None
    ) -> list[Any]:
        return [s, n, b, items, obj, maybe]

    @query
    def chatty(self, ctx: Context, text: str) -> str:
        print(text)
        print("\x00\x00\x00\x10{not a frame")
        return text

    @transaction
    def swallow_bad_key(self, ctx: Context) -> str:
        try:
            ctx.put_state("", 1)
            ctx.get_state("after")
        except ContractError:
            return "caught"
        return "not caught"

    @transaction
    def reject(self, ctx: Context, why: str) -> None:
        raise ContractError(why)

    @transaction
    def explode(self, ctx: Context) -> None:
        raise ValueError("boom")

    @query
    def spin(self, ctx: Context) -> None:
        while True:
            pass

    @query
    def hog(self, ctx: Context) -> int:
        chunks = []
        while True:
            chunks.append(bytearray(16 * 2**20))

    @query
    def dial(self, ctx: Context) -> str:
        import socket

        try:
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        except OSError as exc:
            return f"swallowed {type(exc).__name__}"
        return "connected"

    @transaction
    def scribble(self, ctx: Context, path: str) -> str:
        try:
            with open(path, "w") as f:
                f.write("x")
        except OSError as exc:
            return f"swallowed {type(exc).__name__}"
        return "written"

    @query
    def read(self, ctx: Context, path: str) -> str:
        with open(path) as f:
            return f.read()

    @query
    def exists(self, ctx: Context, path: str) -> bool:
        return os.path.exists(path)

    @query
    def spawn(self, ctx: Context) -> int:
        return os.system("true")

    @query
    def bad_return(self, ctx: Context) -> Any:
        return {"ratio": 0.5}

    @query
    def unencodable_put(self, ctx: Context) -> None:
        ctx.put_state("k", {1, 2})

    @query
    def echo(self, ctx: Context, value: Any) -> Any:
        return value

    @query
    def nap(self, ctx: Context, ms: int) -> str:
        time.sleep(ms / 1000)
        return WORKER_TOKEN

    @query
    def token(self, ctx: Context) -> str:
        return WORKER_TOKEN

    @query
    def die(self, ctx: Context) -> None:
        os._exit(7)

    @query
    def corrupt(self, ctx: Context) -> None:
        for fd in range(3, 16):  # whichever is the protocol pipe gets a bogus frame header
            with contextlib.suppress(OSError):
                os.write(fd, b"\x7f\xff\xff\xffjunk")

    def helper(self) -> None:
        """Not marked: not callable from outside."""

    @query
    def bad_key_then_dial(self, ctx: Context) -> str:
        """A host error first, then a sandbox violation the contract swallows."""
        with contextlib.suppress(Exception):  # the fixture misbehaves on purpose
            ctx.put_state("", 1)
        return self.dial(ctx)

    @transaction
    def get_then_put(self, ctx: Context, key: str, value: Any) -> Any:
        """Read a key, then write it: one answer to wait for."""
        found = ctx.get_state(key)
        ctx.put_state(key, value)
        return found

    @transaction
    def bump_then_get(self, ctx: Context, key: str, by: int, other: str) -> Any:
        """An increment the node applies before the read is answered."""
        ctx.add(key, by)
        return ctx.get_state(other)

    @query
    def get_then_spin(self, ctx: Context, key: str) -> None:
        ctx.get_state(key)
        while True:
            pass

    @query
    def read_forever(self, ctx: Context, key: str) -> None:
        while True:
            ctx.get_state(key)

    @query
    def dial_then_get(self, ctx: Context, key: str) -> Any:
        """A sandbox violation the contract swallows, then a read (a switch)."""
        self.dial(ctx)
        return ctx.get_state(key)

    @query
    def get_then_hog(self, ctx: Context, key: str) -> int:
        ctx.get_state(key)
        return self.hog(ctx)

    @query
    def get_then_die(self, ctx: Context, key: str) -> None:
        ctx.get_state(key)
        os._exit(7)

    @transaction
    def get_then_relay(self, ctx: Context, key: str, contract: str, function: str) -> Any:
        """A read, then an invoke: two waves."""
        ctx.get_state(key)
        return ctx.invoke(contract, function)

    @query
    def read_times(self, ctx: Context, key: str, n: int) -> Any:
        """Read ``key`` ``n`` times, one wave each."""
        return [ctx.get_state(key) for _ in range(n)][-1]

    @query
    def hold_then_get(self, ctx: Context, mb: int, key: str) -> int:
        """Hold ``mb`` MiB across a read (a wave)."""
        block = bytearray(mb * 2**20)
        ctx.get_state(key)
        return len(block) // 2**20

    @query
    def allocate(self, ctx: Context, mb: int) -> int:
        return len(bytearray(mb * 2**20)) // 2**20

    @query
    def hold_then_nap_forever(self, ctx: Context, mb: int, key: str) -> None:
        """Hold ``mb`` MiB, then read and nap 0.1 s for ever (until timed out)."""
        block = bytearray(mb * 2**20)
        while block:
            ctx.get_state(key)
            time.sleep(0.1)

    @query
    def read_then_allocate(self, ctx: Context, key: str, n: int, mb: int) -> int:
        """Read ``key`` ``n`` times, one wave each, then allocate ``mb`` MiB."""
        for _ in range(n):
            ctx.get_state(key)
        return self.allocate(ctx, mb)

    # Calls that misuse the worker's internals, as a hostile contract may: the node must
    # not rely on what the worker says of itself.

    @query
    def keep_talking(self, ctx: Context, every_ms: int) -> None:
        """Never end, but tell the node every ``every_ms`` that the batch is alive (an
        empty ops frame, written past the worker's scheduler)."""
        while True:
            ctx._batch._channel.write({"op": "ops", "wait": False, "ops": []})
            time.sleep(every_ms / 1000)

    @transaction
    def invoke_unawaited(self, ctx: Context, contract: str, function: str, *args: Any) -> str:
        """Send an invoke without waiting for its answer, then return."""
        op = {"i": ctx._index, "op": "invoke", "contract": contract, "function": function}
        ctx._batch.post(ctx._encode({**op, "args": list(args)}))
        return "posted"

    @query
    def reads_unawaited(self, ctx: Context, key: str, n: int) -> str:
        """Send ``n`` reads without waiting for their answers, then return."""
        for _ in range(n):
            ctx._batch.post(ctx._encode({"i": ctx._index, "op": "get", "key": key}))
        return "posted"

    @query
    def ask_without_reading(self, ctx: Context, key: str, n: int) -> None:
        """Ask the node for ``key`` ``n`` times (past the scheduler), read none of the
        answers, and never end."""
        for _ in range(n):
            op = {"i": ctx._index, "op": "get", "key": key}
            ctx._batch._channel.write({"op": "ops", "wait": True, "ops": [op]})
        while True:
            time.sleep(0.01)

    @query
    def dial_between_turns(self, ctx: Context, key: str) -> Any:
        """Have the worker's scheduler dial out (a violation, swallowed) when it next
        sends, outside any call's turn; then read."""
        channel = ctx._batch._channel
        write_bodies = channel.write_bodies

        def dialing(bodies: Any) -> None:
            channel.write_bodies = write_bodies
            self.dial(ctx)
            write_bodies(bodies)

        channel.write_bodies = dialing
        return ctx.get_state(key)

    @query
    def switch_away(self, ctx: Context) -> None:
        """Switch to the worker's scheduler by itself, without an op (it is never
        resumed, and its greenlet stays alive)."""
        greenlet.getcurrent().parent.switch(None)
