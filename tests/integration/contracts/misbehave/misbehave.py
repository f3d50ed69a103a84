"""A contract that misbehaves on purpose, one way per function (integration tests).

Every transaction first writes ``key`` so the tests can show that nothing of a failed
call reaches the ledger; ``peek`` reads it back.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from meridian.contracts import Context, Contract, ContractError, query, transaction

BLOAT_VALUE_CHARS = 100 * 1024


def _mark(ctx: Context, key: str) -> None:
    ctx.put_state(key, "written before misbehaving")


class Misbehave(Contract):
    @transaction
    def behave(self, ctx: Context, key: str) -> str:
        _mark(ctx, key)
        return "ok"

    @query
    def peek(self, ctx: Context, key: str) -> Any:
        return ctx.get_state(key)

    @transaction
    def reject(self, ctx: Context, key: str) -> None:
        _mark(ctx, key)
        raise ContractError("misbehave refuses politely")

    @transaction
    def crash(self, ctx: Context, key: str) -> Any:
        _mark(ctx, key)
        return {}[key]

    @transaction
    def exit_now(self, ctx: Context, key: str) -> None:
        _mark(ctx, key)
        os._exit(7)

    @transaction
    def spin(self, ctx: Context, key: str) -> None:
        _mark(ctx, key)
        while True:
            pass

    @transaction
    def hog(self, ctx: Context, key: str) -> None:
        _mark(ctx, key)
        chunks: list[bytearray] = []
        while True:
            chunks.append(bytearray(32 * 2**20))

    @transaction
    def connect(self, ctx: Context, key: str, port: int, swallow: bool) -> str:
        """Send an HTTP request to 127.0.0.1:port; ``swallow`` hides the failure."""
        _mark(ctx, key)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
                conn.sendall(b"GET /v1/health HTTP/1.0\r\n\r\n")
                return conn.recv(4096).decode(errors="replace")
        except OSError as exc:
            if swallow:
                return f"no luck: {exc}"
            raise

    @transaction
    def write_file(self, ctx: Context, key: str, path: str, how: str) -> str:
        """Write ``path`` (relative paths land in the package directory)."""
        _mark(ctx, key)
        if how == "open":
            with open(path, "w") as f:
                f.write("misbehave was here")
        elif how == "os.open":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"misbehave was here")
            os.close(fd)
        else:
            os.mkdir(path)
        return os.path.abspath(path)

    @transaction
    def read_file(self, ctx: Context, key: str, path: str) -> str:
        _mark(ctx, key)
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")

    @query
    def read_own(self, ctx: Context, name: str) -> str:
        """Read a file of this package (allowed: it is the contract's own code)."""
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name)) as f:
            return f.read()

    @query
    def list_dir(self, ctx: Context, path: str) -> list[str]:
        return sorted(os.listdir(path))

    @query
    def returns_float(self, ctx: Context) -> Any:
        return 0.5

    @transaction
    def bloat(self, ctx: Context, count: int) -> int:
        """Write ``count`` values of 100 KiB each (every one under the value limit)."""
        for i in range(count):
            ctx.put_state(f"bloat/{i}", "b" * BLOAT_VALUE_CHARS)
        return count
