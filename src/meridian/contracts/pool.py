"""The node's side of user contracts: a pool of warm, sandboxed worker processes.

:class:`ContractPool` runs calls of one contract package in up to ``workers``
processes at once (started lazily, kept warm, replaced when they die, time out or
reach ``max_calls_per_worker``). During a call the worker's Context operations come
back here and are applied, in order, to the :class:`SimulationContext` of the call,
the one place that records reads and writes.

Errors (all :mod:`meridian.errors`, with stable codes):

* ``NotFound("unknown_function")``, ``ContractArgumentError("bad_argument")``;
* ``ContractFailure`` with ``contract_rejected`` (the contract raised ContractError),
  ``contract_error`` (any other exception), ``contract_timeout``,
  ``contract_resource_limit``, ``contract_forbidden``, ``contract_crashed``,
  ``contract_load_failed``, ``contract_bad_value`` (the return value is not JSON);
* the first error a SimulationContext operation raised, as itself, even if the
  contract caught it inside the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from .. import codec
from ..errors import (
    ContractArgumentError,
    ContractFailure,
    InvalidInput,
    MeridianError,
    NotFound,
    Unavailable,
)
from .sandbox import (
    SandboxLimits,
    compute_worker_command,
    compute_worker_env,
    resolve_sandbox_mode,
    validate_package_dir,
)
from .simulation import SimulationContext
from .worker import (
    BAD_ARGUMENT,
    FINAL_ERROR_CODES,
    FORBIDDEN,
    FRAME_HEADER,
    MAX_FRAME_BYTES,
    RESOURCE_LIMIT,
    UNKNOWN_FUNCTION,
    encode_frame,
)

log = logging.getLogger("meridian.contracts")

EXIT_WAIT_S = 1.0
STARTUP_TIMEOUT_S = 30.0
STREAM_LIMIT_BYTES = 2**20
CLOSE_WAIT_S = 5.0
STDERR_LOG_BYTES = 64 * 1024
STDERR_LINE_CHARS = 500
LIMIT_SIGNALS = frozenset({signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL})
RETIRING_CODES = frozenset({RESOURCE_LIMIT, FORBIDDEN})
DEFAULT_LIMITS = SandboxLimits()
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """A contract function: ``kind`` is "transaction" or "query"; ``params`` are
    (name, annotation text) after ``ctx`` (a ``*args`` parameter is named ``*name``)."""

    name: str
    kind: str
    params: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ContractInfo:
    """What a contract package offers."""

    functions: Mapping[str, FunctionInfo]


class _WorkerGone(Exception):
    """The worker died (``exited``) or broke the protocol; it must not be used again."""

    def __init__(self, message: str, *, exited: bool = False) -> None:
        super().__init__(message)
        self.exited = exited


# ------------------------------------------------------------------------------- worker


class _Worker:
    """One worker process (its own process group) and its pipes."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label
        self.calls = 0
        self.busy = False  # a request was sent and its final answer not yet read
        self.retire = False
        if proc.stderr is None or proc.stdin is None or proc.stdout is None:
            raise Unavailable("worker pipes missing")
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._stderr_task = asyncio.create_task(_drain_stderr(proc.stderr, label))

    @classmethod
    async def start(cls, argv: tuple[str, ...], cwd: str, label: str) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=STREAM_LIMIT_BYTES,
            cwd=cwd,
            env=compute_worker_env(),
            start_new_session=True,
        )
        return cls(proc, f"{label}[{proc.pid}]")

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.retire

    async def send(self, message: Mapping[str, Any]) -> None:
        self._stdin.write(encode_frame(message))
        try:
            await self._stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise _WorkerGone(f"cannot write to the worker: {exc}", exited=True) from exc

    async def receive(self) -> dict[str, Any]:
        """The next message; _WorkerGone at EOF or on anything but a well-formed frame."""
        try:
            (size,) = FRAME_HEADER.unpack(await self._stdout.readexactly(FRAME_HEADER.size))
            if size > MAX_FRAME_BYTES:
                raise _WorkerGone(f"the worker sent a frame of {size} bytes")
            message = orjson.loads(await self._stdout.readexactly(size))
        except asyncio.IncompleteReadError:
            raise _WorkerGone("the worker closed its output", exited=True) from None
        except orjson.JSONDecodeError:
            raise _WorkerGone("the worker sent a malformed frame") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise _WorkerGone("the worker sent a message without an op")
        return message

    async def wait_ready(self) -> None:
        """Wait for the worker to have loaded the contract (or reported why it can't)."""
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                message = await self.receive()
        except TimeoutError:
            raise ContractFailure(
                f"the contract did not load within {STARTUP_TIMEOUT_S} s",
                code="contract_load_failed",
            ) from None
        except _WorkerGone as exc:
            raise await _death_error(self, exc) from None
        if message["op"] != "ready":
            raise ContractFailure("the worker did not start properly", code="contract_crashed")

    def kill(self) -> None:
        """SIGKILL the whole process group (bubblewrap takes its namespace down)."""
        self.retire = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def exit_status(self, timeout_s: float) -> int | None:
        """The exit status once the process has ended, or None if it is still running."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        return self.proc.returncode

    async def wait_closed(self) -> None:
        """Kill, then wait for the process and its stderr to end."""
        self.kill()
        self._stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), CLOSE_WAIT_S)
            await asyncio.wait_for(self._stderr_task, CLOSE_WAIT_S)


async def _drain_stderr(stream: asyncio.StreamReader, label: str) -> None:
    """Log the worker's stderr line by line, truncated, up to STDERR_LOG_BYTES in all."""
    budget, pending = STDERR_LOG_BYTES, b""
    while chunk := await stream.read(4096):
        *lines, pending = (pending + chunk).split(b"\n")
        if len(pending) > STDERR_LINE_CHARS:
            lines, pending = [*lines, pending], b""
        budget = _log_lines(label, lines, budget)
    _log_lines(label, [pending] if pending else [], budget)


def _log_lines(label: str, lines: list[bytes], budget: int) -> int:
    """Log what fits in ``budget`` bytes; the budget left (negative once exhausted)."""
    for line in lines:
        if budget > 0:
            text = _UNPRINTABLE.sub("?", line.decode(errors="replace"))[:STDERR_LINE_CHARS]
            log.info("contract %s: %s", label, text)
            budget -= len(line) + 1
            if budget <= 0:
                log.warning("contract %s: further output dropped", label)
    return budget


# ------------------------------------------------------------------------- conversation

_Handler = Callable[[SimulationContext, Mapping[str, Any]], Any]

_SYNC_OPS: dict[str, _Handler] = {
    "get": lambda ctx, m: ctx.get_state(m["key"]),
    "put": lambda ctx, m: ctx.put_state(m["key"], m["value"]),
    "delete": lambda ctx, m: ctx.delete_state(m["key"]),
    "add": lambda ctx, m: ctx.add(m["key"], m["delta"]),
    "emit": lambda ctx, m: ctx.emit(m["name"], m["payload"]),
    "range": lambda ctx, m: ctx.get_range(m["start"], m["end"], m["limit"]),
    "query": lambda ctx, m: ctx.query(m["selector"], m["limit"]),
    "history": lambda ctx, m: [h.to_dict() for h in ctx.get_history(m["key"], m["limit"])],
}
_REPLY_OPS = frozenset({"get", "range", "query", "history", "invoke"})
_OP_FIELDS = {
    "get": ("key",),
    "put": ("key", "value"),
    "delete": ("key",),
    "add": ("key", "delta"),
    "emit": ("name", "payload"),
    "range": ("start", "end", "limit"),
    "query": ("selector", "limit"),
    "history": ("key", "limit"),
    "invoke": ("contract", "function", "args"),
}


async def _op_invoke(ctx: SimulationContext, message: Mapping[str, Any]) -> Any:
    contract, function, args = message["contract"], message["function"], message["args"]
    if not isinstance(contract, str) or not isinstance(function, str) or not isinstance(args, list):
        raise ContractFailure(
            "invoke() takes a contract name, a function name and JSON arguments",
            code="contract_bad_value",
        )
    return await ctx.invoke_async(contract, function, args)


class _Conversation:
    """Serves one request's Context operations until the worker's final answer."""

    def __init__(self, worker: _Worker, ctx: SimulationContext | None) -> None:
        self._worker = worker
        self._ctx = ctx
        self._first_error: MeridianError | None = None

    async def run(self, request: Mapping[str, Any]) -> Any:
        self._worker.busy = True
        self._worker.calls += 1
        await self._worker.send(request)
        while True:
            message = await self._worker.receive()
            op = message["op"]
            if op in ("return", "value", "error"):
                self._worker.busy = False
                return self._finish(message)
            await self._serve(op, message)

    async def _serve(self, op: str, message: Mapping[str, Any]) -> None:
        fields = _OP_FIELDS.get(op)
        if self._ctx is None or fields is None or not all(f in message for f in fields):
            raise _WorkerGone(f"the worker sent an unexpected or incomplete {op!r}")
        if self._first_error is None:
            try:
                value = await self._apply(self._ctx, op, message)
            except MeridianError as exc:
                self._first_error = exc
            else:
                if op in _REPLY_OPS:
                    await self._worker.send({"op": "value", "value": value})
                return
        if op in _REPLY_OPS:
            error = self._first_error
            await self._worker.send({"op": "error", "code": error.code, "message": error.message})

    @staticmethod
    async def _apply(ctx: SimulationContext, op: str, message: Mapping[str, Any]) -> Any:
        if op == "invoke":
            return await _op_invoke(ctx, message)
        return _SYNC_OPS[op](ctx, message)

    def _finish(self, message: Mapping[str, Any]) -> Any:
        if self._first_error is not None:
            raise self._first_error
        if message["op"] == "error":
            raise self._final_error(message)
        value = message.get("value")
        try:
            codec.validate_value(value, what="contract return value")
        except InvalidInput as exc:
            raise ContractFailure(exc.message, code="contract_bad_value") from None
        return value

    def _final_error(self, message: Mapping[str, Any]) -> MeridianError:
        code, text = message.get("code"), message.get("message")
        if code not in FINAL_ERROR_CODES or not isinstance(text, str):
            raise _WorkerGone(f"the worker sent an unknown error {code!r}")
        if code in RETIRING_CODES:
            self._worker.retire = True
        if code == UNKNOWN_FUNCTION:
            return NotFound(text, code=code)
        if code == BAD_ARGUMENT:
            return ContractArgumentError(text, code=code)
        return ContractFailure(text, code=str(code))


# --------------------------------------------------------------------------------- pool


@dataclass(slots=True)
class _Slot:
    worker: _Worker | None = None


class ContractPool:
    """Runs one contract package's calls in ``workers`` sandboxed processes.

    ``entry`` is ``"module:ClassName"``, importable from ``package_dir`` (which is put
    first on the worker's ``sys.path``). ``sandbox_mode`` is the mode in use after
    ``"auto"`` is resolved: ``"bwrap"`` or ``"none"``.
    """

    def __init__(
        self,
        package_dir: Path,
        entry: str,
        *,
        workers: int = 2,
        limits: SandboxLimits = DEFAULT_LIMITS,
    ) -> None:
        if workers < 1:
            raise InvalidInput("a contract pool needs at least one worker")
        self.package_dir = Path(package_dir).resolve()
        self.entry = entry
        self.limits = limits
        self.sandbox_mode = resolve_sandbox_mode(limits.mode)
        self._command = compute_worker_command(self.sandbox_mode, self.package_dir, entry, limits)
        self._slots: asyncio.Queue[_Slot] = asyncio.Queue()
        for _ in range(workers):
            self._slots.put_nowait(_Slot())
        self._live: set[_Worker] = set()
        self._reaping: set[asyncio.Task[None]] = set()
        self._info: ContractInfo | None = None
        self._closed = False

    async def describe(self) -> ContractInfo:
        """The contract's functions (asked of a worker once, then cached)."""
        if self._info is None:
            value = await self._request({"op": "describe"}, None)
            self._info = _parse_contract_info(value)
        return self._info

    async def call(self, function: str, args: list[Any], ctx: SimulationContext) -> Any:
        """Run ``function(ctx, *args)`` in a worker; the contract's return value."""
        request = {
            "op": "call",
            "function": function,
            "args": _validate_args(args),
            "ctx": _ctx_to_dict(ctx),
        }
        return await self._request(request, ctx)

    async def close(self) -> None:
        """Kill every worker (its whole process group) and wait for them to end."""
        self._closed = True
        workers, self._live = list(self._live), set()
        await asyncio.gather(
            *(w.wait_closed() for w in workers), *self._reaping, return_exceptions=True
        )

    async def _request(self, request: Mapping[str, Any], ctx: SimulationContext | None) -> Any:
        async with self._checkout() as worker:
            timeout = asyncio.timeout(self.limits.call_timeout_s)
            try:
                async with timeout:
                    return await _Conversation(worker, ctx).run(request)
            except TimeoutError:
                if not timeout.expired():
                    raise
                raise ContractFailure(
                    f"the call took longer than {self.limits.call_timeout_s} s",
                    code="contract_timeout",
                ) from None
            except _WorkerGone as exc:
                raise await _death_error(worker, exc) from None

    @contextlib.asynccontextmanager
    async def _checkout(self) -> AsyncIterator[_Worker]:
        if self._closed:
            raise Unavailable("the contract pool is closed", code="contract_pool_closed")
        slot = await self._slots.get()
        try:
            if slot.worker is None or not slot.worker.alive:
                slot.worker = await self._start_worker()
            yield slot.worker
        finally:
            worker = slot.worker
            if worker is not None and (self._closed or not self._is_reusable(worker)):
                self._discard(worker)
                slot.worker = None
            self._slots.put_nowait(slot)

    def _is_reusable(self, worker: _Worker) -> bool:
        """Idle, alive, not retired and under its call budget."""
        calls_left = worker.calls < self.limits.max_calls_per_worker
        return not worker.busy and worker.alive and calls_left

    async def _start_worker(self) -> _Worker:
        validate_package_dir(self.sandbox_mode, self.package_dir)
        try:
            worker = await _Worker.start(self._command.argv, self._command.cwd, self.entry)
        except OSError as exc:
            raise ContractFailure(
                f"cannot start a contract worker: {exc}", code="contract_crashed"
            ) from exc
        self._live.add(worker)
        try:
            await worker.wait_ready()
        except BaseException:
            self._discard(worker)
            raise
        return worker

    def _discard(self, worker: _Worker) -> None:
        self._live.discard(worker)
        worker.kill()
        task = asyncio.get_running_loop().create_task(worker.wait_closed())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)


async def _death_error(worker: _Worker, gone: _WorkerGone) -> ContractFailure:
    """contract_resource_limit if an rlimit (or the OOM killer) ended it, else crashed."""
    status = await worker.exit_status(EXIT_WAIT_S) if gone.exited else None
    worker.kill()
    signum = -status if status is not None and status < 0 else None
    if status is not None and status > 128:  # bubblewrap reports 128 + signal
        signum = status - 128
    if signum in LIMIT_SIGNALS:
        return ContractFailure(
            f"the contract worker was killed by signal {signum} (resource limit)",
            code="contract_resource_limit",
        )
    return ContractFailure(
        f"the contract worker died: {gone} (exit status {status})", code="contract_crashed"
    )


def _validate_args(args: Any) -> list[Any]:
    if not isinstance(args, list):
        raise ContractArgumentError("arguments must be a JSON list", code=BAD_ARGUMENT)
    try:
        codec.validate_value(args, what="arguments")
        encode_frame({"args": args})
    except InvalidInput as exc:
        raise ContractArgumentError(exc.message, code=BAD_ARGUMENT, hint=exc.hint) from exc
    return args


def _ctx_to_dict(ctx: SimulationContext) -> dict[str, Any]:
    return {
        "tx_id": ctx.tx_id,
        "timestamp_ms": ctx.timestamp_ms,
        "caller": ctx.caller.to_dict(),
        "app": ctx.app,
        "contract": ctx.contract,
    }


def _parse_contract_info(value: Any) -> ContractInfo:
    functions = value.get("functions") if isinstance(value, dict) else None
    if not isinstance(functions, dict):
        raise ContractFailure("the worker described the contract badly", code="contract_crashed")
    try:
        infos = {
            name: FunctionInfo(
                name, str(f["kind"]), tuple((str(p), str(t)) for p, t in f["params"])
            )
            for name, f in functions.items()
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractFailure(
            "the worker described the contract badly", code="contract_crashed"
        ) from exc
    return ContractInfo(MappingProxyType(infos))


__all__ = ["ContractInfo", "ContractPool", "FunctionInfo", "SandboxLimits"]
