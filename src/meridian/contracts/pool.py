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
import subprocess
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

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
from .api import CallerIdentity
from .sandbox import (
    SandboxLimits,
    compute_worker_command,
    compute_worker_env,
    resolve_sandbox_mode,
    validate_package_dir,
)
from .simulation import MAX_INVOKE_DEPTH, SimulationContext
from .worker import (
    BAD_ARGUMENT,
    FINAL_ERROR_CODES,
    FORBIDDEN,
    FRAME_HEADER,
    MAX_FRAME_BYTES,
    RESOURCE_LIMIT,
    UNKNOWN_FUNCTION,
)

log = logging.getLogger("meridian.contracts")

EXIT_WAIT_S = 1.0
STARTUP_TIMEOUT_S = 30.0
CLOSE_WAIT_S = 5.0
STDERR_LOG_BYTES = 64 * 1024
STDERR_LINE_CHARS = 500
LIMIT_SIGNALS = frozenset({signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL})
RETIRING_CODES = frozenset({RESOURCE_LIMIT, FORBIDDEN})
DEFAULT_LIMITS = SandboxLimits()
MAX_BATCH = 64
BATCH_FRAME_SLACK = 64 * 1024  # room for the batch envelope around the calls
WATCHDOG_TICK_S = 0.05  # how often deadlines are checked (their precision)
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
_FINAL_OPS = frozenset({"return", "value", "error"})
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


class _Call:
    """One request: its message, context, first host error, outcome and deadline."""

    __slots__ = ("ctx", "depth", "encoded", "first_error", "future", "op", "started")

    def __init__(
        self, request: Mapping[str, Any], ctx: SimulationContext | None, future: asyncio.Future[Any]
    ) -> None:
        self.op = request["op"]
        self.encoded = orjson.dumps(request)  # once; batches are spliced from these
        if len(self.encoded) > MAX_FRAME_BYTES - BATCH_FRAME_SLACK:
            raise ContractArgumentError(
                f"the call is {len(self.encoded)} bytes, over the limit of "
                f"{MAX_FRAME_BYTES - BATCH_FRAME_SLACK}",
                code=BAD_ARGUMENT,
            )
        self.ctx = ctx
        self.depth = ctx.depth if ctx is not None else 0
        self.future = future
        self.first_error: MeridianError | None = None
        self.started = 0.0  # loop time the worker began it (0: not yet)


class _PoolHooks(Protocol):
    """What a worker tells its pool."""

    def on_call_started(self, worker: _Worker, call: _Call) -> None: ...
    def on_batch_done(self, worker: _Worker) -> None: ...
    def on_gone(self, worker: _Worker, gone: _WorkerGone) -> None: ...


class _Worker(asyncio.SubprocessProtocol):
    """One worker process (its own process group), driven by pipe callbacks.

    Frames from the worker are handled as they arrive, in order: Context operations
    are applied to the call's :class:`SimulationContext` and answered at once, so a
    call costs the event loop one wake-up per round trip and a single await.
    """

    def __init__(self, label: str, hooks: _PoolHooks) -> None:
        self.label = label
        self.hooks = hooks
        self.calls = 0
        self.batch: deque[_Call] = deque()  # sent, final answer not yet read; [0] is running
        self.retire = False
        self.transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._inbox = bytearray()
        self._stderr = bytearray()
        self._stderr_budget = STDERR_LOG_BYTES
        self._gone: _WorkerGone | None = None
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def start(cls, argv: tuple[str, ...], cwd: str, label: str, hooks: _PoolHooks) -> _Worker:
        loop = asyncio.get_running_loop()
        worker = cls(label, hooks)
        transport, _ = await loop.subprocess_exec(
            lambda: worker,
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=compute_worker_env(),
            start_new_session=True,
        )
        worker.label = f"{label}[{transport.get_pid()}]"
        return worker

    # ------------------------------------------------------------- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stdin = self.transport.get_pipe_transport(0) if self.transport else None
        self._stdin = stdin  # type: ignore[assignment]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self._log_stderr(data)
            return
        self._inbox += data
        try:
            while (message := self._next_frame()) is not None:
                self._dispatch(message)
        except _WorkerGone as exc:
            self._fail(exc)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._fail(_WorkerGone("the worker closed its output", exited=True))
        elif fd == 2 and self._stderr:
            self._log_stderr(b"\n")

    def process_exited(self) -> None:
        code = self.transport.get_returncode() if self.transport else None
        if not self._exited.done():
            self._exited.set_result(-1 if code is None else code)
        self._fail(_WorkerGone("the worker exited", exited=True))

    # ---------------------------------------------------------------------- framing

    def _next_frame(self) -> dict[str, Any] | None:
        if len(self._inbox) < FRAME_HEADER.size:
            return None
        (size,) = FRAME_HEADER.unpack_from(self._inbox)
        if size > MAX_FRAME_BYTES:
            raise _WorkerGone(f"the worker sent a frame of {size} bytes")
        end = FRAME_HEADER.size + size
        if len(self._inbox) < end:
            return None
        body = bytes(self._inbox[FRAME_HEADER.size : end])
        del self._inbox[:end]
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _WorkerGone("the worker sent a malformed frame") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise _WorkerGone("the worker sent a message without an op")
        return message

    def send(self, message: Mapping[str, Any]) -> None:
        self.send_raw(orjson.dumps(message))

    def send_raw(self, body: bytes) -> None:
        """One frame; the pool keeps every frame under MAX_FRAME_BYTES."""
        if self._gone is not None or self._stdin is None or self._stdin.is_closing():
            return  # the pool learns of the death through on_gone
        self._stdin.write(FRAME_HEADER.pack(len(body)) + body)

    # --------------------------------------------------------------------- requests

    async def wait_ready(self) -> None:
        """Wait for the worker to have loaded the contract (or reported why it can't)."""
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await asyncio.shield(self._ready)
        except TimeoutError:
            raise ContractFailure(
                f"the contract did not load within {STARTUP_TIMEOUT_S} s",
                code="contract_load_failed",
            ) from None
        except _WorkerGone as exc:
            raise await _death_error(self, exc) from None

    @property
    def busy(self) -> bool:
        return bool(self.batch)

    def run(self, calls: list[_Call]) -> None:
        """Send a batch: one request alone, or several calls the worker runs in order."""
        if len(calls) == 1:
            body = calls[0].encoded
        else:
            body = b'{"op":"calls","calls":[' + b",".join(c.encoded for c in calls) + b"]}"
        self.send_raw(body)
        self.batch.extend(calls)
        self.calls += len(calls)
        self.hooks.on_call_started(self, calls[0])

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if not self._ready.done():
            if op != "ready":
                raise _WorkerGone("the worker did not start properly")
            self._ready.set_result(None)
            return
        if not self.batch:
            raise _WorkerGone(f"the worker sent {op!r} while idle")
        call = self.batch[0]
        if op not in _FINAL_OPS:
            self._serve(call, op, message)
            return
        self.batch.popleft()
        if op == "error" and message.get("code") in RETIRING_CODES:
            self.retire = True  # its sandbox flag or memory is spent, whoever is told
        if not call.future.done():
            self._settle(call, message)
        if self.retire or not self.batch:
            self.hooks.on_batch_done(self)
        else:
            self.hooks.on_call_started(self, self.batch[0])

    def _serve(self, call: _Call, op: str, message: Mapping[str, Any]) -> None:
        fields = _OP_FIELDS.get(op)
        if call.ctx is None or fields is None or not all(f in message for f in fields):
            raise _WorkerGone(f"the worker sent an unexpected or incomplete {op!r}")
        if call.first_error is None:
            if op == "invoke":
                task = asyncio.get_running_loop().create_task(self._invoke(call, message))
                task.add_done_callback(_consume)
                return
            try:
                value = _SYNC_OPS[op](call.ctx, message)
            except MeridianError as exc:
                call.first_error = exc
            except Exception as exc:  # a bug or an unexpected storage error: fail the call
                log.exception("contract %s: %s failed", self.label, op)
                call.first_error = ContractFailure(
                    f"the node could not serve {op}: {type(exc).__name__}", code="contract_error"
                )
            else:
                if op in _REPLY_OPS:
                    self.send({"op": "value", "value": value})
                return
        if op in _REPLY_OPS:
            self._send_error(call)

    async def _invoke(self, call: _Call, message: Mapping[str, Any]) -> None:
        try:
            value = await _op_invoke(call.ctx, message)  # type: ignore[arg-type]
        except MeridianError as exc:
            call.first_error = call.first_error or exc
            self._send_error(call)
        except Exception as exc:
            log.exception("contract %s: invoke failed", self.label)
            call.first_error = call.first_error or ContractFailure(
                f"the invoked call failed: {type(exc).__name__}", code="contract_error"
            )
            self._send_error(call)
        else:
            self.send({"op": "value", "value": value})

    def _send_error(self, call: _Call) -> None:
        error = call.first_error
        if error is not None:
            self.send({"op": "error", "code": error.code, "message": error.message})

    def _settle(self, call: _Call, message: Mapping[str, Any]) -> None:
        try:
            call.future.set_result(self._finish(call, message))
        except MeridianError as exc:
            call.future.set_exception(exc)
        except _WorkerGone as exc:  # it broke the protocol: never trust it again
            call.future.set_exception(
                ContractFailure(f"the contract worker misbehaved: {exc}", code="contract_crashed")
            )
            self.retire = True

    def _finish(self, call: _Call, message: Mapping[str, Any]) -> Any:
        if call.first_error is not None:
            raise call.first_error
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
            self.retire = True
        if code == UNKNOWN_FUNCTION:
            return NotFound(text, code=code)
        if code == BAD_ARGUMENT:
            return ContractArgumentError(text, code=code)
        return ContractFailure(text, code=str(code))

    def _fail(self, gone: _WorkerGone) -> None:
        if self._gone is not None:
            return
        self._gone = gone
        if not self._ready.done():
            self._ready.set_exception(gone)
            self._ready.exception()  # mark retrieved: the waiter may already be gone
        self.hooks.on_gone(self, gone)

    # ----------------------------------------------------------------------- ending

    def kill(self) -> None:
        """SIGKILL the whole process group (bubblewrap takes its namespace down)."""
        self.retire = True
        if self.transport is not None and not self._exited.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.transport.get_pid(), signal.SIGKILL)

    async def exit_status(self, timeout_s: float) -> int | None:
        """The exit status once the process has ended, or None if it is still running."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._exited), timeout_s)
        return None

    async def wait_closed(self) -> None:
        """Kill, then wait for the process to end."""
        self.kill()
        await self.exit_status(CLOSE_WAIT_S)
        if self.transport is not None:
            self.transport.close()

    def _log_stderr(self, data: bytes) -> None:
        """Log the worker's stderr line by line, truncated, up to STDERR_LOG_BYTES."""
        self._stderr += data
        *lines, rest = self._stderr.split(b"\n")
        if len(rest) > STDERR_LINE_CHARS:
            lines, rest = [*lines, rest], bytearray()
        self._stderr = bytearray(rest)
        self._stderr_budget = _log_lines(self.label, [bytes(x) for x in lines], self._stderr_budget)


def _consume(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


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


async def _op_invoke(ctx: SimulationContext, message: Mapping[str, Any]) -> Any:
    contract, function, args = message["contract"], message["function"], message["args"]
    if not isinstance(contract, str) or not isinstance(function, str) or not isinstance(args, list):
        raise ContractFailure(
            "invoke() takes a contract name, a function name and JSON arguments",
            code="contract_bad_value",
        )
    return await ctx.invoke_async(contract, function, args)


# --------------------------------------------------------------------------------- pool


class ContractPool:
    """Runs one contract package's calls in ``workers`` sandboxed processes.

    ``entry`` is ``"module:ClassName"``, importable from ``package_dir`` (which is put
    first on the worker's ``sys.path``). ``sandbox_mode`` is the mode in use after
    ``"auto"`` is resolved: ``"bwrap"`` or ``"none"``.

    Calls wait in one queue; an idle worker takes a batch of them (up to
    ``MAX_BATCH``, a fair share of the queue) in one message and runs them in order,
    so a busy node pays one round trip per batch rather than per call. Each call
    still has its own deadline: a call over ``call_timeout_s`` gets
    ``contract_timeout``, its worker is killed, and the calls queued behind it in the
    batch go back to the front of the queue for another worker.
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
        self._workers = workers
        self._slots: list[_Worker | None] = [None] * (workers + MAX_INVOKE_DEPTH)
        self._starting: set[int] = set()
        # one queue per invoke depth: [0] holds proposals' own calls, [d] calls made d deep
        self._queues: list[deque[_Call]] = [deque() for _ in range(MAX_INVOKE_DEPTH + 1)]
        self._reaping: set[asyncio.Task[None]] = set()
        self._info: ContractInfo | None = None
        self._closed = False
        self._watchdog: asyncio.Task[None] | None = None

    @property
    def info(self) -> ContractInfo | None:
        """The contract's functions once :meth:`describe` has run, else None."""
        return self._info

    async def describe(self) -> ContractInfo:
        """The contract's functions (asked of a worker once, then cached)."""
        if self._info is None:
            value = await self._submit({"op": "describe"}, None)
            self._info = _parse_contract_info(value)
        return self._info

    async def call(self, function: str, args: list[Any], ctx: SimulationContext) -> Any:
        """Run ``function(ctx, *args)`` in a worker; the contract's return value."""
        return await self.start_call(function, args, ctx)

    def start_call(
        self, function: str, args: list[Any], ctx: SimulationContext
    ) -> asyncio.Future[Any]:
        """Queue ``function(ctx, *args)``; the future of its return value (no task needed)."""
        request = {
            "op": "call",
            "function": function,
            "args": _validate_args(args),
            "ctx": _ctx_to_dict(ctx),
        }
        return self._enqueue(request, ctx)

    async def close(self, *, drain_s: float = 0.0) -> None:
        """Refuse new calls; after up to ``drain_s`` for those already accepted to finish,
        fail what is left, kill every worker (its process group) and wait for them."""
        self._closed = True
        deadline = asyncio.get_running_loop().time() + drain_s
        while (any(self._queues) or any(w is not None and w.busy for w in self._slots)) and (
            asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.05)
        closed = Unavailable("the contract pool is closed", code="contract_pool_closed")
        self._fail_queued(closed)
        for index, worker in enumerate(self._slots):
            if worker is not None:
                self._discard(worker, closed)
                self._slots[index] = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        while self._reaping:  # reaping one worker can schedule more work: drain it all
            await asyncio.gather(*list(self._reaping), return_exceptions=True)

    # ------------------------------------------------------------------- scheduling

    async def _submit(self, request: Mapping[str, Any], ctx: SimulationContext | None) -> Any:
        return await self._enqueue(request, ctx)

    def _enqueue(
        self, request: Mapping[str, Any], ctx: SimulationContext | None
    ) -> asyncio.Future[Any]:
        if self._closed:
            raise Unavailable("the contract pool is closed", code="contract_pool_closed")
        call = _Call(request, ctx, asyncio.get_running_loop().create_future())
        self._queues[call.depth].append(call)
        self._kick()
        return call.future

    def _kick(self) -> None:
        """Hand queued calls to idle workers; start workers for empty slots.

        Calls made by other contracts' calls (``ctx.invoke``) go first: their callers
        hold workers. Slots past ``workers`` are reserved, one per invoke depth, for
        such calls only: however many callers wait on nested calls, the deepest waiting
        level always has a worker, so invokes cannot deadlock.
        """
        for index, worker in enumerate(self._slots):
            depth = index - self._workers + 1 if index >= self._workers else 0
            if not (self._queues[depth] if depth else any(self._queues)):
                continue
            if worker is None:
                if index not in self._starting:
                    self._starting.add(index)  # now, not when the task first runs
                    self._spawn(self._start_slot(index))
            elif not worker.busy and (batch := self._take(depth)):
                worker.run(batch)

    def _take(self, depth: int) -> list[_Call] | None:
        """Work for an idle worker: a reserved slot takes its depth, others anything."""
        depths = [depth] if depth else range(MAX_INVOKE_DEPTH, -1, -1)
        for d in depths:
            queue = self._queues[d]
            while queue and queue[0].future.done():
                queue.popleft()  # its caller gave up (cancelled): don't run it
            if queue:
                return [queue.popleft()] if d else self._take_batch(queue)
        return None

    def _take_batch(self, queue: deque[_Call]) -> list[_Call]:
        """A fair share of the queue that fits one frame."""
        first = queue.popleft()
        if first.op != "call":
            return [first]
        size = min(MAX_BATCH, max(1, len(queue) // self._workers))
        batch, budget = [first], MAX_FRAME_BYTES - BATCH_FRAME_SLACK - len(first.encoded)
        while queue and len(batch) < size and queue[0].op == "call":
            nxt = queue[0]
            if nxt.future.done():
                queue.popleft()
                continue
            if len(nxt.encoded) + 1 > budget:
                break
            budget -= len(nxt.encoded) + 1
            batch.append(queue.popleft())
        return batch

    def _fail_queued(self, error: MeridianError) -> None:
        for queue in self._queues:
            while queue:
                _fail_call(queue.popleft(), error)

    async def _start_slot(self, index: int) -> None:
        try:
            worker = await self._start_worker()
        except MeridianError as exc:
            if not any(self._slots):  # no worker at all: nothing queued can run
                self._fail_queued(exc)
            else:
                log.warning("contract %s: could not start a worker: %s", self.entry, exc)
            return
        finally:
            self._starting.discard(index)
        if self._closed:
            self._discard(worker, None)
            return
        self._slots[index] = worker
        self._kick()

    async def _start_worker(self) -> _Worker:
        validate_package_dir(self.sandbox_mode, self.package_dir)
        try:
            worker = await _Worker.start(self._command.argv, self._command.cwd, self.entry, self)
        except OSError as exc:
            raise ContractFailure(
                f"cannot start a contract worker: {exc}", code="contract_crashed"
            ) from exc
        try:
            await worker.wait_ready()
        except BaseException:
            self._discard(worker, None)
            raise
        return worker

    # ------------------------------------------------------------- worker callbacks

    def on_call_started(self, worker: _Worker, call: _Call) -> None:
        call.started = asyncio.get_running_loop().time()
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Expire calls over their deadline (one periodic check, not a timer per call)."""
        loop = asyncio.get_running_loop()
        tick = min(WATCHDOG_TICK_S, self.limits.call_timeout_s / 10)
        while not self._closed and any(w is not None and w.busy for w in self._slots):
            await asyncio.sleep(tick)
            now = loop.time()
            for worker in list(self._slots):
                if worker is not None and worker.batch:
                    call = worker.batch[0]
                    if call.started and now - call.started > self.limits.call_timeout_s:
                        self._expire(worker, call)

    def on_batch_done(self, worker: _Worker) -> None:
        if worker.retire or worker.calls >= self.limits.max_calls_per_worker:
            self._release(worker, None)
        self._kick()

    def on_gone(self, worker: _Worker, gone: _WorkerGone) -> None:
        if worker.batch:
            current = worker.batch.popleft()
            self._spawn(_fail_with_death(worker, gone, current))
        self._release(worker, None)
        self._kick()

    def _expire(self, worker: _Worker, call: _Call) -> None:
        if not worker.batch or worker.batch[0] is not call:
            return
        worker.batch.popleft()
        _fail_call(
            call,
            ContractFailure(
                f"the call took longer than {self.limits.call_timeout_s} s",
                code="contract_timeout",
            ),
        )
        self._release(worker, None)
        self._kick()

    def _release(self, worker: _Worker, error: MeridianError | None) -> None:
        """Take ``worker`` out of its slot; its unstarted calls go back to the queue."""
        for index, slot in enumerate(self._slots):
            if slot is worker:
                self._slots[index] = None
        self._discard(worker, error)

    def _discard(self, worker: _Worker, error: MeridianError | None) -> None:
        while worker.batch:
            call = worker.batch.pop()
            if error is not None:
                _fail_call(call, error)
            elif not call.future.done():
                self._queues[call.depth].appendleft(call)
        worker.kill()
        self._spawn(worker.wait_closed())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)


def _fail_call(call: _Call, error: BaseException) -> None:
    if not call.future.done():
        call.future.set_exception(error)


async def _fail_with_death(worker: _Worker, gone: _WorkerGone, call: _Call) -> None:
    _fail_call(call, await _death_error(worker, gone))


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
    try:  # the frame size is checked once, when the request is encoded (_Call)
        codec.validate_value(args, what="arguments")
    except InvalidInput as exc:
        raise ContractArgumentError(exc.message, code=BAD_ARGUMENT, hint=exc.hint) from exc
    return args


def _ctx_to_dict(ctx: SimulationContext) -> dict[str, Any]:
    return {
        "tx_id": ctx.tx_id,
        "timestamp_ms": ctx.timestamp_ms,
        "caller": _caller_dict(ctx.caller),
        "app": ctx.app,
        "contract": ctx.contract,
    }


_CALLER_DICTS: dict[str, dict[str, Any]] = {}


def _caller_dict(caller: CallerIdentity) -> dict[str, Any]:
    """``caller.to_dict()``, memoised by certificate fingerprint (fixed per certificate)."""
    if not caller.fingerprint:
        return caller.to_dict()
    found = _CALLER_DICTS.get(caller.fingerprint)
    if found is None:
        if len(_CALLER_DICTS) >= 4096:
            _CALLER_DICTS.clear()
        found = _CALLER_DICTS[caller.fingerprint] = caller.to_dict()
    return found


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
