"""The node's side of user contracts: a pool of warm, sandboxed worker processes.

:class:`ContractPool` runs calls of one contract package in up to ``workers``
processes at once (started lazily, kept warm, replaced when they die, get stuck or
reach ``max_calls_per_worker``). An idle worker takes a batch of queued calls and
runs them concurrently (see :mod:`.worker` for the protocol). Their Context
operations come back here tagged with the call's index in the batch and are applied,
in order, to the :class:`SimulationContext` of that call, the one place that records
reads and writes; the answers a wave of calls waits for go back in one frame.

Deadlines (``call_timeout_s``, wall clock, checked every ``WATCHDOG_TICK_S``). The
node keeps two, and neither relies on what the worker says of its calls' time: a batch
of n calls must be over (n + 1) * ``call_timeout_s`` after it was sent, whatever the
worker sends meanwhile and also while this side owes the worker answers (a nested call
still running); and a worker that owes the node a frame (from when a batch or a wave's
answers were sent until its next frame) and sends nothing for ``call_timeout_s`` is
stuck. When either passes: if one call of its batch is unfinished, that call fails
with ``contract_timeout`` (a call alone, as retried and nested calls are, thus ends
within 2 * ``call_timeout_s``); if several are, the worker is killed and none of them
is blamed: each fails with ``contract_aborted``, which the caller answers by running
it again from scratch, alone (``solo``), on a fresh Simulation
(:class:`~meridian.contracts.registry.RestartableCall`), so that the culprit then
times out on its own. The same holds for a worker that dies (one call: the death's
error; several: ``contract_aborted``) and for the calls left unfinished when a call's
sandbox violation or memory exhaustion stops the batch. A worker that exits with
``UNBLAMED_EXIT`` stopped without blaming any call (see :mod:`.worker`): even a single
unfinished call is then aborted. The worker itself ends a call whose time (its own
turns plus its waits for this side's answers, not its co-runners' turns nor the time
this side held its answer back for their nested calls, which each answer tells as
``held_ms``) passes ``call_timeout_s`` (``contract_timeout``), so that an honest call
that reads state in a loop ends at its own budget without disturbing its co-runners;
the node's deadlines are what holds when the worker does not.

Errors (all :mod:`meridian.errors`, with stable codes):

* ``NotFound("unknown_function")``, ``ContractArgumentError("bad_argument")``;
* ``ContractFailure`` with ``contract_rejected`` (the contract raised ContractError),
  ``contract_error`` (any other exception), ``contract_timeout``,
  ``contract_resource_limit``, ``contract_forbidden``, ``contract_crashed``,
  ``contract_load_failed``, ``contract_bad_value`` (the return value is not JSON),
  ``contract_aborted`` (the batch stopped without blaming the call: run it again alone);
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
    FRAME_HEADER,
    MAX_FRAME_BYTES,
    STOPPING_CODES,
    TIMEOUT,
    UNBLAMED_EXIT,
    UNKNOWN_FUNCTION,
    compute_frame_bodies,
    encode_op,
)

log = logging.getLogger("meridian.contracts")

EXIT_WAIT_S = 1.0
STARTUP_TIMEOUT_S = 30.0
CLOSE_WAIT_S = 5.0
STDERR_LOG_BYTES = 64 * 1024
STDERR_LINE_CHARS = 500
LIMIT_SIGNALS = frozenset({signal.SIGXCPU, signal.SIGXFSZ, signal.SIGKILL})
DEFAULT_LIMITS = SandboxLimits()
MAX_BATCH = 64
BATCH_FRAME_SLACK = 64 * 1024  # room for the batch envelope around the calls
MAX_UNREAD_BYTES = 16 * 2**20  # of the node's frames a worker may leave unread
MAX_HELD_MS = 999_999_999  # the "held_ms" of a reply, capped to keep its size bounded
WATCHDOG_TICK_S = 0.05  # how often deadlines are checked (their precision)
ABORTED = "contract_aborted"  # the batch stopped, the call unblamed: run it again alone
_REPLIES_HEAD = b'{"op":"replies","replies":['
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
    """One request: its message, context, first host error and outcome; ``solo``: it
    must run in a batch of its own."""

    __slots__ = ("ctx", "depth", "encoded", "first_error", "future", "op", "solo")

    def __init__(
        self,
        request: Mapping[str, Any],
        ctx: SimulationContext | None,
        future: asyncio.Future[Any],
        *,
        solo: bool = False,
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
        self.solo = solo


class _PoolHooks(Protocol):
    """What a worker tells its pool."""

    def on_batch_started(self, worker: _Worker) -> None: ...
    def on_batch_done(self, worker: _Worker) -> None: ...
    def on_gone(self, worker: _Worker, gone: _WorkerGone) -> None: ...


class _Worker(asyncio.SubprocessProtocol):
    """One worker process (its own process group), driven by pipe callbacks.

    It runs one batch at a time. Ops from the worker are handled as they arrive, in
    order: Context operations are applied to their call's :class:`SimulationContext`,
    and the answers of a wave go back in one frame once the worker waits and all of
    them are ready (an ``invoke`` is answered when its nested call ends); a call's
    final op settles its future at once. A call that sent an op needing an answer
    sends nothing more (not even its final op) until it has the answer: a worker that
    breaks this is gone (killed), so that each call has at most one answer pending.
    """

    def __init__(self, label: str, hooks: _PoolHooks) -> None:
        self.label = label
        self.hooks = hooks
        self.calls = 0
        self.batch: list[_Call | None] = []  # the running batch by index; None once ended
        self.unfinished = 0
        self.silent_since: float | None = None  # loop time from which it owes a frame
        self.deadline: float | None = None  # loop time by which its batch must be over
        self.retire = False
        self.transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._inbox = bytearray()
        self._replies: list[tuple[bytes, float]] = []  # the wave's answers, when ready
        self._owed: set[int] = set()  # calls (by index) the wave owes an answer
        self._invoking: set[_Call] = set()  # calls whose invoke is still running
        self._waiting = False  # the worker waits for the wave's answers
        self._waiting_since = 0.0  # loop time from which it did
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

    def send_raw(self, *bodies: bytes) -> None:
        """The frames of one message; the pool keeps every frame under MAX_FRAME_BYTES.

        A worker that left more than MAX_UNREAD_BYTES of the earlier messages unread is
        gone (it is broken: an honest one reads a message before it answers, and the
        node sends the next one only then), so one message is the most that piles up
        on top of that bound."""
        if self._gone is not None or self._stdin is None or self._stdin.is_closing():
            return  # the pool learns of the death through on_gone
        if self._stdin.get_write_buffer_size() > MAX_UNREAD_BYTES:
            self._fail(_WorkerGone(f"the worker left over {MAX_UNREAD_BYTES} bytes unread"))
            return
        for body in bodies:
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
        return self.unfinished > 0

    def run(self, calls: list[_Call], timeout_s: float) -> None:
        """Send a batch: calls the worker runs concurrently, or one describe.

        Its deadline, whatever the worker says meanwhile, is ``timeout_s`` per call plus
        one: an honest batch stays under it (its calls' turns run one at a time, and each
        call's ``timeout_s`` includes its waits for the node's answers)."""
        if calls[0].op == "call":
            body = b'{"op":"calls","calls":[' + b",".join(c.encoded for c in calls) + b"]}"
        else:
            body = calls[0].encoded
        self.batch = list(calls)
        self.unfinished = len(calls)
        self._reset_wave()
        self.calls += len(calls)
        now = asyncio.get_running_loop().time()
        self.silent_since = now
        self.deadline = now + timeout_s * (len(calls) + 1)
        self.hooks.on_batch_started(self)
        self.send_raw(body)  # last: it may find the worker gone

    def get_overdue(self, now: float, timeout_s: float) -> str | None:
        """Why the running batch is overdue at loop time ``now``, or None if it is not."""
        if self.deadline is not None and now > self.deadline:
            return f"its batch of {len(self.batch)} ran past its deadline"
        if self.silent_since is not None and now - self.silent_since > timeout_s:
            return f"the worker sent nothing for {timeout_s} s"
        return None

    def take_unfinished(self) -> list[_Call]:
        """End the batch here: the calls it had not finished (their futures untouched)."""
        calls = [call for call in self.batch if call is not None]
        self.batch = []
        self.unfinished = 0
        self.silent_since = None
        self.deadline = None
        self._reset_wave()
        return calls

    def _reset_wave(self) -> None:
        self._replies = []
        self._owed = set()
        self._invoking = set()
        self._waiting = False

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if not self._ready.done():
            if op != "ready":
                raise _WorkerGone("the worker did not start properly")
            self._ready.set_result(None)
            return
        if not self.batch:
            raise _WorkerGone(f"the worker sent {op!r} while idle")
        if op != "ops" or self._waiting:
            raise _WorkerGone(f"the worker sent {op!r} out of turn")
        ops, wait = message.get("ops"), message.get("wait")
        if not isinstance(ops, list) or not isinstance(wait, bool):
            raise _WorkerGone("the worker sent a malformed ops frame")
        for item in ops:
            self._apply(item)
            if not self.unfinished:
                self._end_batch()
                return
        if not wait:
            self.silent_since = asyncio.get_running_loop().time()
            return
        if not self._owed:
            raise _WorkerGone("the worker waits for no answer")
        self._waiting = True
        self._waiting_since = asyncio.get_running_loop().time()
        self.silent_since = None  # the node owes the worker now
        self._answer()

    def _apply(self, item: Any) -> None:
        """Apply one op from the worker to its call."""
        index = item.get("i") if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < len(self.batch):
            raise _WorkerGone("the worker sent an op without a call index")
        call = self.batch[index]
        if call is None:
            raise _WorkerGone(f"the worker sent an op for call {index}, which had ended")
        if index in self._owed:  # a call waiting for an answer says nothing more
            raise _WorkerGone(f"the worker sent an op for call {index} before its answer")
        op = item.get("op")
        if op in _FINAL_OPS:
            self._end_call(index, call, item)
        else:
            self._serve(index, call, op, item)

    def _serve(self, index: int, call: _Call, op: Any, message: Mapping[str, Any]) -> None:
        fields = _OP_FIELDS.get(op)
        if call.ctx is None or fields is None or not all(f in message for f in fields):
            raise _WorkerGone(f"the worker sent an unexpected or incomplete {op!r}")
        if op in _REPLY_OPS:
            self._owed.add(index)
        if call.first_error is None:
            if op == "invoke":
                self._invoking.add(call)
                task = asyncio.get_running_loop().create_task(self._invoke(index, call, message))
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
                    self._reply(index, call, value)
                return
        if op in _REPLY_OPS:
            self._reply_error(index, call)

    async def _invoke(self, index: int, call: _Call, message: Mapping[str, Any]) -> None:
        value: Any = None
        try:
            value = await _op_invoke(call.ctx, message)  # type: ignore[arg-type]
        except MeridianError as exc:
            call.first_error = call.first_error or exc
        except Exception as exc:
            log.exception("contract %s: invoke failed", self.label)
            call.first_error = call.first_error or ContractFailure(
                f"the invoked call failed: {type(exc).__name__}", code="contract_error"
            )
        if call not in self._invoking:
            return  # its batch ended without it (the worker was stopped or died)
        self._invoking.discard(call)
        if call.first_error is None:
            self._reply(index, call, value)
        else:
            self._reply_error(index, call)
        self._answer()

    def _reply(self, index: int, call: _Call, value: Any) -> None:
        try:
            reply = encode_op({"i": index, "op": "value", "value": value})
            self._replies.append((reply, asyncio.get_running_loop().time()))
        except InvalidInput as exc:
            call.first_error = ContractFailure(
                f"the answer is too large for the worker: {exc.message}", code="contract_limit"
            )
            self._reply_error(index, call)

    def _reply_error(self, index: int, call: _Call) -> None:
        error = call.first_error
        if error is not None:
            reply = {"i": index, "op": "error", "code": error.code, "message": error.message}
            self._replies.append((orjson.dumps(reply), asyncio.get_running_loop().time()))

    def _answer(self) -> None:
        """Send the wave's answers once the worker waits and all of them are ready, each
        with how long it was held back after it was ready (while the worker waited)."""
        if not self._waiting or self._invoking:
            return
        now = asyncio.get_running_loop().time()
        replies = [
            _compute_held_reply(reply, now - max(ready, self._waiting_since))
            for reply, ready in self._replies
        ]
        bodies = compute_frame_bodies(_REPLIES_HEAD, replies, b"]}")
        self._reset_wave()
        self.silent_since = now
        self.send_raw(*bodies)  # last: it may find the worker gone

    def _end_call(self, index: int, call: _Call, message: Mapping[str, Any]) -> None:
        self.batch[index] = None
        self.unfinished -= 1
        code = message.get("code") if message["op"] == "error" else None
        if code == TIMEOUT or message.get("retire") is True:
            self.retire = True  # the worker keeps a greenlet it gave up on
        if not call.future.done() and not self._settle(call, message):
            self.retire = True  # it broke the protocol: its batch is not to be trusted
            _abort(self.label, self.take_unfinished(), f"call {index} ended malformed")
        elif code in STOPPING_CODES:
            self.retire = True  # its sandbox flag or memory is spent, whoever is told
            _abort(self.label, self.take_unfinished(), f"call {index} ended with {code}")

    def _end_batch(self) -> None:
        self.batch = []
        self.silent_since = None
        self.deadline = None
        self._reset_wave()
        self.hooks.on_batch_done(self)

    def _settle(self, call: _Call, message: Mapping[str, Any]) -> bool:
        """Settle the call's future from its final op; False if that op broke the
        protocol."""
        try:
            call.future.set_result(self._finish(call, message))
        except MeridianError as exc:
            call.future.set_exception(exc)
        except _WorkerGone as exc:  # it broke the protocol: never trust it again
            call.future.set_exception(
                ContractFailure(f"the contract worker misbehaved: {exc}", code="contract_crashed")
            )
            return False
        return True

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


def _compute_held_reply(reply: bytes, held_s: float) -> bytes:
    """``reply`` (an encoded object) with ``"held_ms"`` first; the field's at most 20
    bytes fit the frame envelope that :func:`compute_frame_bodies` leaves spare."""
    held_ms = min(max(0, round(held_s * 1000)), MAX_HELD_MS)
    return b'{"held_ms":%d,' % held_ms + reply[1:]


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
    ``MAX_BATCH``, a fair share of the queue) in one message and runs them
    concurrently, so a busy node pays one round trip per wave of Context operations
    rather than one per operation. The module docstring gives the deadlines and what
    happens to a batch's other calls when one of them fails its worker.
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
        self, function: str, args: list[Any], ctx: SimulationContext, *, solo: bool = False
    ) -> asyncio.Future[Any]:
        """Queue ``function(ctx, *args)``; the future of its return value (no task needed).

        ``solo``: run it in a batch of its own (a call run again after ``contract_aborted``).
        """
        request = {
            "op": "call",
            "function": function,
            "args": _validate_args(args),
            "ctx": _ctx_to_dict(ctx),
        }
        return self._enqueue(request, ctx, solo=solo)

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
        self, request: Mapping[str, Any], ctx: SimulationContext | None, *, solo: bool = False
    ) -> asyncio.Future[Any]:
        if self._closed:
            raise Unavailable("the contract pool is closed", code="contract_pool_closed")
        call = _Call(request, ctx, asyncio.get_running_loop().create_future(), solo=solo)
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
                worker.run(batch, self.limits.call_timeout_s)

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
        """A fair share of the queue that fits one frame (a solo call goes alone)."""
        first = queue.popleft()
        if first.op != "call" or first.solo:
            return [first]
        size = min(MAX_BATCH, max(1, (len(queue) + 1) // self._workers))  # first included
        batch, budget = [first], MAX_FRAME_BYTES - BATCH_FRAME_SLACK - len(first.encoded)
        while queue and len(batch) < size:
            nxt = queue[0]
            if nxt.future.done():
                queue.popleft()
                continue
            if nxt.op != "call" or nxt.solo or len(nxt.encoded) + 1 > budget:
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

    def on_batch_started(self, worker: _Worker) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Find stuck workers (one periodic check, not a timer per batch)."""
        loop = asyncio.get_running_loop()
        timeout_s = self.limits.call_timeout_s
        tick = min(WATCHDOG_TICK_S, timeout_s / 10)
        while not self._closed and any(w is not None and w.busy for w in self._slots):
            await asyncio.sleep(tick)
            now = loop.time()
            for worker in list(self._slots):
                why = worker.get_overdue(now, timeout_s) if worker is not None else None
                if worker is not None and why is not None:
                    self._expire(worker, why)

    def on_batch_done(self, worker: _Worker) -> None:
        if worker.retire or worker.calls >= self.limits.max_calls_per_worker:
            self._release(worker, None)
        self._kick()

    def on_gone(self, worker: _Worker, gone: _WorkerGone) -> None:
        calls = worker.take_unfinished()
        if len(calls) == 1:
            self._spawn(_fail_with_death(worker, gone, calls[0]))
        else:
            _abort(worker.label, calls, f"the worker died ({gone})")
        self._release(worker, None)
        self._kick()

    def _expire(self, worker: _Worker, why: str) -> None:
        """``worker`` is stuck: time out its one unfinished call, or abort several."""
        calls = worker.take_unfinished()
        timeout_s = self.limits.call_timeout_s
        if len(calls) == 1:
            error = ContractFailure(
                f"the call took longer than {timeout_s} s ({why})", code=TIMEOUT
            )
            _fail_call(calls[0], error)
        else:
            _abort(worker.label, calls, why)
        self._release(worker, None)
        self._kick()

    def _release(self, worker: _Worker, error: MeridianError | None) -> None:
        """Take ``worker`` out of its slot and stop it (see :meth:`_discard`)."""
        for index, slot in enumerate(self._slots):
            if slot is worker:
                self._slots[index] = None
        self._discard(worker, error)

    def _discard(self, worker: _Worker, error: MeridianError | None) -> None:
        """Kill ``worker``; calls it had not finished fail with ``error`` (or are aborted)."""
        calls = worker.take_unfinished()
        if error is not None:
            for call in calls:
                _fail_call(call, error)
        else:
            _abort(worker.label, calls, "the worker was stopped")
        worker.kill()
        self._spawn(worker.wait_closed())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)


def _fail_call(call: _Call, error: BaseException) -> None:
    if not call.future.done():
        call.future.set_exception(error)


def _abort(label: str, calls: list[_Call], why: str) -> None:
    """Fail the co-runners of an unknown culprit with ``contract_aborted`` (none is
    blamed: each is run again alone, on a fresh Simulation)."""
    if not calls:
        return
    log.info("contract %s: %s; %d unfinished call(s) aborted", label, why, len(calls))
    for call in calls:
        _fail_call(
            call,
            ContractFailure(
                f"the call was stopped with its worker's batch ({why}); run it again alone",
                code=ABORTED,
            ),
        )


async def _fail_with_death(worker: _Worker, gone: _WorkerGone, call: _Call) -> None:
    """The one unfinished call of a dead worker gets the death's error, unless the worker
    stopped blaming no call: then it runs again alone, as co-runners would."""
    status = await _get_exit_status(worker, gone)
    if status == UNBLAMED_EXIT:
        _abort(worker.label, [call], "the worker stopped without blaming a call")
    else:
        _fail_call(call, _compute_death_error(status, gone))


async def _death_error(worker: _Worker, gone: _WorkerGone) -> ContractFailure:
    return _compute_death_error(await _get_exit_status(worker, gone), gone)


async def _get_exit_status(worker: _Worker, gone: _WorkerGone) -> int | None:
    """The exit status of a worker that exited (None if unknown), once it is killed."""
    status = await worker.exit_status(EXIT_WAIT_S) if gone.exited else None
    worker.kill()
    return status


def _compute_death_error(status: int | None, gone: _WorkerGone) -> ContractFailure:
    """contract_resource_limit if an rlimit (or the OOM killer) ended it, else crashed."""
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
