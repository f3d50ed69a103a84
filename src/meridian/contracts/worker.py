"""The contract worker process: runs one contract package's calls for the node.

Started by :mod:`.sandbox` (``python -I -c <bootstrap> MERIDIAN_ROOT PACKAGE ENTRY LIMITS``
or ``python -m meridian.contracts.worker PACKAGE ENTRY LIMITS``). At start it lowers its
own rlimits, keeps the original stdin/stdout as the protocol channel (fd 0 becomes
``/dev/null`` and fd 1 a copy of stderr, so ``print`` can't corrupt the protocol),
installs the :class:`AuditGuard`, imports the contract, sends ``{"op": "ready"}`` (also
when loading failed: requests are then answered with the load error) and serves
requests until stdin closes.

Protocol: frames of a 4-byte big-endian length and orjson bytes (at most
:data:`MAX_FRAME_BYTES`). The parent sends ``{"op": "describe"}`` or a batch
``{"op": "calls", "calls": [{"op": "call", "function", "args", "ctx"}, ...]}`` (one
call is a batch of one). The worker runs a batch's calls concurrently, one greenlet
each (:class:`Batch`): a call runs until it ends or needs an answer. Everything the
calls say is an *op* tagged with the call's index ``i`` in the batch, in the order
said: Context operations (``get``, ``range``, ``query``, ``history``, ``invoke`` need
an answer; ``put``, ``delete``, ``add``, ``emit`` do not) and one final op per call
(``{"i", "op": "return", "value"}`` or ``{"i", "op": "error", "code", "message"}``,
with ``"retire": true`` if the worker keeps the call's greenlet alive;
``describe`` is answered the same way, as call 0). Ops wait in an outbox; when no
call can go on, the worker sends them in ``{"op": "ops", "ops": [...], "wait": true}``
(split over several frames if need be; ``wait`` is on the last) and reads the
parent's answers, ``{"op": "replies", "replies": [{"held_ms", "i", "op": "value",
"value"} or {"held_ms", "i", "op": "error", "code", "message"}, ...]}`` (possibly
several frames), one per waiting call: a *wave*. ``held_ms`` is how long the parent
held that answer back after it was ready (waiting for other calls' nested calls). A
call that sent an op needing an answer sends nothing more until it has it; the
parent kills a worker that breaks this. When every call has ended the outbox goes
out with ``"wait": false``; it also goes out that way whenever a running batch has
sent nothing for a tenth of ``call_timeout_s``, so that the parent can tell a slow
batch from a stuck one.

A call's time is limited to ``call_timeout_s``: the worker sums, around its switches,
the time the call runs and the time it waits for the parent's answers (not the time
the other calls run, nor the ``held_ms`` of its answers); past the limit the call ends
with ``contract_timeout`` at its next switch (and is never resumed), so a call cannot
outlive its budget by reading state in a loop. A sandbox violation is charged to the
call that was running when it appeared, a MemoryError to the call that raised it if it
is the batch's last call alive: that call ends (``contract_forbidden``,
``contract_resource_limit``) and the worker stops the batch (the parent retires it and
runs the calls left unfinished again, each alone). A MemoryError while other calls
(which hold memory too) are alive, unfinished or given up on, or a violation that
appeared while no call's turn ran, is no one call's: the worker exits at once with
status :data:`UNBLAMED_EXIT`, and the parent runs every call it has not seen end
again, alone.

The audit hook is a second layer, not a security boundary on its own: the OS sandbox
(bubblewrap, uid 65534, rlimits) is what contains hostile code.
"""

from __future__ import annotations

import errno
import functools
import importlib
import inspect
import os
import resource
import struct
import sys
import time
import traceback
import types
import typing
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import greenlet
import orjson

from .. import codec
from ..errors import InvalidInput
from .api import CallerIdentity, Contract, ContractError, HistoryEntry, get_kind

MAX_FRAME_BYTES = 4 * 2**20
FRAME_ENVELOPE_BYTES = 64  # room for the "ops" or "replies" frame around its items
MAX_OP_BYTES = MAX_FRAME_BYTES - FRAME_ENVELOPE_BYTES  # one op or reply, encoded
MAX_MESSAGE_CHARS = 2000
HEARTBEAT_FRACTION = 0.1  # of call_timeout_s: the longest a running batch keeps quiet
FRAME_HEADER = struct.Struct(">I")

# Worker → parent final error codes; the parent accepts only these.
UNKNOWN_FUNCTION = "unknown_function"
BAD_ARGUMENT = "bad_argument"
REJECTED = "contract_rejected"
ERROR = "contract_error"
RESOURCE_LIMIT = "contract_resource_limit"
FORBIDDEN = "contract_forbidden"
LOAD_FAILED = "contract_load_failed"
BAD_VALUE = "contract_bad_value"
LIMIT = "contract_limit"
TIMEOUT = "contract_timeout"
FINAL_ERROR_CODES = frozenset(
    {
        UNKNOWN_FUNCTION,
        BAD_ARGUMENT,
        REJECTED,
        ERROR,
        RESOURCE_LIMIT,
        FORBIDDEN,
        LOAD_FAILED,
        BAD_VALUE,
        LIMIT,
        TIMEOUT,
    }
)
STOPPING_CODES = frozenset({RESOURCE_LIMIT, FORBIDDEN})  # the batch stops after these
UNBLAMED_EXIT = 4  # exit status: the worker stopped its batch without blaming a call

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
FORBIDDEN_EVENTS = frozenset(
    {
        "os.remove",
        "os.rename",
        "os.mkdir",
        "os.rmdir",
        "os.chmod",
        "os.chown",
        "os.link",
        "os.symlink",
        "os.truncate",
        "os.utime",
        "os.chflags",
        "os.lchflags",
        "os.setxattr",
        "os.removexattr",
        "os.mkfifo",
        "os.mknod",
        "os.system",
        "os.exec",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.startfile",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "pty.spawn",
        "resource.setrlimit",
        "resource.prlimit",
        "_thread.start_new_thread",
        "sqlite3.connect",
        "shutil.rmtree",
        "shutil.chown",
        "webbrowser.open",
        "urllib.Request",
        "http.client.connect",
        "ftplib.connect",
        "smtplib.connect",
        "poplib.connect",
        "imaplib.open",
        "nntplib.connect",
        "telnetlib.Telnet.open",
        "syslog.openlog",
        "syslog.syslog",
    }
)
FORBIDDEN_PREFIXES = ("socket.", "ctypes.", "subprocess.", "_winapi.", "msvcrt.")
FORBIDDEN_IMPORTS = frozenset(
    {
        "_ctypes",
        "ctypes",
        "_posixsubprocess",
        "subprocess",
        "multiprocessing",
        "_xxsubinterpreters",
        "_testcapi",
        "_testinternalcapi",
    }
)
LISTING_EVENTS = frozenset({"os.listdir", "os.scandir"})


class CallFailed(Exception):
    """A call (or the load) ends with this error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = _clip(message)

    def to_frame(self) -> dict[str, Any]:
        return {"op": "error", "code": self.code, "message": self.message}

    def to_op(self, index: int, *, retire: bool = False) -> bytes:
        """The final op of call ``index`` that ends with this error; ``retire``: the
        parent is to retire the worker after the batch."""
        return orjson.dumps({"i": index, **self.to_frame(), **({"retire": True} if retire else {})})


class HostError(ContractError):
    """A Context operation failed on the node's side (e.g. a bad key or a size limit).

    The whole call fails with the first such error even if the contract catches it.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class SandboxViolation(PermissionError):
    """Raised into contract code that attempts an operation the sandbox forbids."""


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def describe_exception(exc: BaseException) -> str:
    """``"<ExcType>: <message>"`` as callers see it."""
    return _clip(f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------ channel


READ_CHUNK_BYTES = 64 * 1024


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """One frame; TypeError if not JSON-encodable, InvalidInput if over the size bound."""
    body = orjson.dumps(message)
    if len(body) > MAX_FRAME_BYTES:
        raise InvalidInput(
            f"message of {len(body)} bytes is over {MAX_FRAME_BYTES}", code="too_large"
        )
    return FRAME_HEADER.pack(len(body)) + body


def encode_op(op: Mapping[str, Any]) -> bytes:
    """One op or reply; TypeError if not JSON-encodable, InvalidInput over MAX_OP_BYTES."""
    body = orjson.dumps(op)
    if len(body) > MAX_OP_BYTES:
        raise InvalidInput(f"message of {len(body)} bytes is over {MAX_OP_BYTES}", code="too_large")
    return body


def compute_frame_bodies(head: bytes, items: Sequence[bytes], tail: bytes) -> list[bytes]:
    """``head + items joined by commas + tail``, split so that each body fits a frame.

    Every item must be at most :data:`MAX_OP_BYTES` and ``head + tail`` at most
    :data:`FRAME_ENVELOPE_BYTES`.
    """
    budget = MAX_FRAME_BYTES - len(head) - len(tail)
    if sum(len(item) + 1 for item in items) <= budget + 1:
        return [head + b",".join(items) + tail]
    bodies: list[bytes] = []
    start, used = 0, 0
    for end, item in enumerate(items):
        if end > start and used + len(item) > budget:
            bodies.append(head + b",".join(items[start:end]) + tail)
            start, used = end, 0
        used += len(item) + 1
    bodies.append(head + b",".join(items[start:]) + tail)
    return bodies


class Channel:
    """Blocking frame I/O over two file descriptors (the worker's side); reads are
    buffered, and several frames go out in one system call."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self._in = fd_in
        self._out = fd_out
        self._inbox = bytearray()

    @classmethod
    def from_stdio(cls) -> Channel:
        """Take over fds 0 and 1; leave fd 0 on /dev/null and fd 1 on stderr."""
        fd_in, fd_out = os.dup(0), os.dup(1)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(fd_in, fd_out)

    def read(self) -> dict[str, Any] | None:
        """The next message, or None when the parent closed the channel."""
        header = self._read_exactly(FRAME_HEADER.size)
        if header is None:
            return None
        (size,) = FRAME_HEADER.unpack(header)
        body = self._read_exactly(size) if size <= MAX_FRAME_BYTES else None
        message = orjson.loads(body) if body is not None else None
        if not isinstance(message, dict):
            os._exit(3)  # the parent broke the protocol: nothing sensible left to do
        return message

    def write(self, message: Mapping[str, Any]) -> None:
        self._write_all(encode_frame(message))

    def write_bodies(self, bodies: Sequence[bytes]) -> None:
        """Frames around ``bodies`` (each at most MAX_FRAME_BYTES), in one go."""
        self._write_all(b"".join(FRAME_HEADER.pack(len(b)) + b for b in bodies))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._out, view) :]
        view.release()

    def _read_exactly(self, size: int) -> bytes | None:
        while len(self._inbox) < size:
            chunk = os.read(self._in, max(READ_CHUNK_BYTES, size - len(self._inbox)))
            if not chunk:
                return None
            self._inbox += chunk
        data = bytes(self._inbox[:size])
        del self._inbox[:size]
        return data


# -------------------------------------------------------------------------------- guard


class AuditGuard:
    """An audit hook that stops writes, sockets, processes, ctypes and similar.

    Forbidden events raise :class:`SandboxViolation` and are remembered in
    :attr:`violation` even if the contract catches the exception. Reads (``open`` for
    reading, directory listings) outside ``readable_roots`` fail as if the file did not
    exist, as they would under bubblewrap; they are not violations.
    """

    def __init__(self, readable_roots: list[str]) -> None:
        self.violation: str | None = None
        self._roots = tuple(dict.fromkeys(os.path.realpath(r) for r in readable_roots))
        self._busy = False

    def install(self) -> None:
        for name in FORBIDDEN_IMPORTS:
            sys.modules.pop(name, None)  # so that importing them again is audited
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._check(event, args)
        finally:
            self._busy = False

    def _check(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            self._check_open(*args[:3])
        elif event in LISTING_EVENTS:
            self._check_read(args[0] if args and args[0] is not None else ".")
        elif event == "import":
            if args[0] in FORBIDDEN_IMPORTS:
                self._forbid(f"import {args[0]}")
        elif event in FORBIDDEN_EVENTS or event.startswith(FORBIDDEN_PREFIXES):
            self._forbid(event)

    def _check_open(self, path: Any, mode: Any, flags: Any) -> None:
        writes = isinstance(flags, int) and flags >= 0 and flags & _WRITE_FLAGS
        if writes or (isinstance(mode, str) and any(c in mode for c in "wax+")):
            self._forbid(f"open {path!r} for writing")
        if isinstance(path, (str, bytes)):
            self._check_read(path)

    def _check_read(self, path: Any) -> None:
        if isinstance(path, int):
            return
        real = os.path.realpath(os.fsdecode(path))
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in self._roots):
            raise FileNotFoundError(
                errno.ENOENT, "not available inside the contract sandbox", os.fsdecode(path)
            )

    def _forbid(self, what: str) -> NoReturn:
        if self.violation is None:
            self.violation = what
        raise SandboxViolation(errno.EPERM, f"the contract sandbox forbids {what}")


def compute_readable_roots(package_dir: str) -> list[str]:
    """What contract code may read: its package, the interpreter, meridian, sys.path."""
    roots = [package_dir, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    return roots + [p for p in sys.path if p and os.path.isdir(p)]


def apply_rlimits(limits: Mapping[str, Any]) -> None:
    """Lower this process's rlimits (never raise them) before contract code runs."""
    cpu = int(limits["cpu_seconds"])
    _lower(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    _lower(resource.RLIMIT_CPU, cpu, cpu + 1)
    _lower(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    _lower(resource.RLIMIT_FSIZE, 0)
    _lower(resource.RLIMIT_CORE, 0)
    if os.getuid() != 0:
        _lower(resource.RLIMIT_NPROC, 0)  # no new processes or threads for this user


def _lower(which: int, soft: int, hard: int | None = None) -> None:
    _, current_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


# ---------------------------------------------------------------------------- functions


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    text: str  # the annotation as written
    hint: Any  # the resolved annotation, or _Unresolved


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A marked method: its kind and the parameters after ``ctx``."""

    name: str
    kind: str
    params: tuple[ParamSpec, ...]
    required: int
    rest: ParamSpec | None  # the *args parameter, if any

    def to_dict(self) -> dict[str, Any]:
        params = [[p.name, p.text] for p in self.params]
        if self.rest is not None:
            params.append([f"*{self.rest.name}", self.rest.text])
        return {"kind": self.kind, "params": params}


@dataclass(frozen=True, slots=True)
class _Unresolved:
    text: str


_TYPING_NAMES = {
    "Any": Any,
    "Optional": typing.Optional,
    "Union": typing.Union,
    "List": list,
    "Dict": dict,
}
_UNION_ORIGINS = (typing.Union, types.UnionType)


def compute_function_specs(cls: type[Contract]) -> dict[str, FunctionSpec]:
    """The marked methods of a contract class, with their parameter annotations."""
    specs: dict[str, FunctionSpec] = {}
    for name in dir(cls):
        fn = getattr(cls, name, None)
        kind = None if name.startswith("_") else get_kind(fn)
        if kind is not None and callable(fn):
            specs[name] = _compute_spec(name, kind, fn)
    return specs


def _compute_spec(name: str, kind: str, fn: Callable[..., Any]) -> FunctionSpec:
    globalns = getattr(fn, "__globals__", {})
    params = list(inspect.signature(fn).parameters.values())[2:]  # self, ctx
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    required = sum(1 for p in positional if p.default is p.empty)
    return FunctionSpec(
        name,
        kind,
        tuple(_param_spec(p, globalns) for p in positional),
        required,
        _param_spec(rest, globalns) if rest is not None else None,
    )


def _param_spec(param: inspect.Parameter, globalns: dict[str, Any]) -> ParamSpec:
    annotation = param.annotation
    if annotation is param.empty:
        return ParamSpec(param.name, "Any", Any)
    if not isinstance(annotation, str):
        return ParamSpec(param.name, inspect.formatannotation(annotation), annotation)
    try:
        hint = eval(annotation, {**_TYPING_NAMES, **globalns})  # the contract's own text
    except Exception:
        hint = _Unresolved(annotation)
    return ParamSpec(param.name, annotation, hint)


def validate_args(spec: FunctionSpec, args: list[Any]) -> None:
    """Raise bad_argument unless ``args`` fit the method's count and annotations."""
    top = len(spec.params)
    if len(args) < spec.required or (spec.rest is None and len(args) > top):
        names = ", ".join(p.name for p in spec.params)
        wanted = str(top) if spec.required == top else f"{spec.required} to {top}"
        if spec.rest is not None:
            wanted = f"at least {spec.required}"
        raise CallFailed(
            BAD_ARGUMENT, f"{spec.name}() takes {wanted} argument(s) ({names}), got {len(args)}"
        )
    for i, value in enumerate(args):
        param = spec.params[i] if i < top else spec.rest
        if param is not None and not _matches(value, param):
            raise CallFailed(
                BAD_ARGUMENT,
                f"{spec.name}(): argument '{param.name}' must be "
                f"{param.text}, got {_json_type(value)}",
            )


def _matches(value: Any, param: ParamSpec) -> bool:
    try:
        return is_instance_of(value, param.hint)
    except TypeError:
        raise CallFailed(
            BAD_ARGUMENT, f"parameter '{param.name}' has an unsupported annotation {param.text!r}"
        ) from None


def is_instance_of(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits an annotation; TypeError for unsupported annotations.

    Supported: ``Any``, ``str``, ``int`` (not bool), ``bool``, ``list``, ``dict`` (and
    their parametrised forms, elements not checked), ``None`` and unions of those.
    """
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool, list, dict):
        return isinstance(value, hint)
    origin = typing.get_origin(hint)
    if origin in _UNION_ORIGINS:
        return any(is_instance_of(value, arg) for arg in typing.get_args(hint))
    if origin in (list, dict):
        return isinstance(value, origin)
    raise TypeError(f"unsupported annotation {hint!r}")


def _json_type(value: Any) -> str:
    return {
        bool: "bool",
        int: "int",
        str: "str",
        list: "list",
        dict: "dict",
        type(None): "None",
    }.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------ context


class RemoteContext:
    """The Context contract code sees: every operation is an op to the node, sent
    through the call's :class:`Batch`; those that need an answer pause the call."""

    def __init__(self, batch: Batch, index: int, info: Mapping[str, Any]) -> None:
        self._batch = batch
        self._index = index
        self._owner = greenlet.getcurrent()
        self.host_error: tuple[str, str] | None = None
        self.finished = False
        self.tx_id: str = info["tx_id"]
        self.timestamp_ms: int = info["timestamp_ms"]
        self.caller = CallerIdentity.from_dict(info["caller"])
        self.app: str = info["app"]
        self.contract: str = info["contract"]

    def get_state(self, key: str) -> Any:
        return self._request({"i": self._index, "op": "get", "key": key})

    def put_state(self, key: str, value: Any) -> None:
        self._send({"i": self._index, "op": "put", "key": key, "value": value})

    def delete_state(self, key: str) -> None:
        self._send({"i": self._index, "op": "delete", "key": key})

    def add(self, key: str, delta: int) -> None:
        self._send({"i": self._index, "op": "add", "key": key, "delta": delta})

    def get_range(self, start: str, end: str, limit: int = 1000) -> list[tuple[str, Any]]:
        op = {"i": self._index, "op": "range", "start": start, "end": end, "limit": limit}
        return [(k, v) for k, v in self._request(op)]

    def query(self, selector: Mapping[str, Any], limit: int = 1000) -> list[tuple[str, Any]]:
        op = {"i": self._index, "op": "query", "selector": selector, "limit": limit}
        return [(k, v) for k, v in self._request(op)]

    def get_history(self, key: str, limit: int = 100) -> list[HistoryEntry]:
        rows = self._request({"i": self._index, "op": "history", "key": key, "limit": limit})
        return [HistoryEntry(**row) for row in rows]

    def emit(self, name: str, payload: Any = None) -> None:
        self._send({"i": self._index, "op": "emit", "name": name, "payload": payload})

    def invoke(self, contract: str, function: str, *args: Any) -> Any:
        return self._request(
            {
                "i": self._index,
                "op": "invoke",
                "contract": contract,
                "function": function,
                "args": list(args),
            }
        )

    def _send(self, op: dict[str, Any]) -> None:
        self._batch.post(self._encode(op))

    def _request(self, op: dict[str, Any]) -> Any:
        reply = self._batch.wait_for(self._encode(op))
        if reply.get("op") == "value":
            return reply.get("value")
        self._fail(str(reply.get("code")), str(reply.get("message")))

    def _encode(self, op: dict[str, Any]) -> bytes:
        if self.finished:
            raise ContractError("this Context belongs to a call that has finished")
        if greenlet.getcurrent() is not self._owner:
            raise ContractError("this Context belongs to another call")
        if self.host_error is not None:
            raise HostError(*self.host_error)
        try:
            return encode_op(op)
        except InvalidInput as exc:
            self._fail(LIMIT, f"{op['op']}: {exc.message}")
        except TypeError as exc:
            self._fail(BAD_VALUE, f"{op['op']}: value is not a JSON value ({exc})")

    def _fail(self, code: str, message: str) -> NoReturn:
        self.host_error = (code, message)
        raise HostError(code, message)


# -------------------------------------------------------------------------------- batch


@dataclass(slots=True, eq=False)
class _Running:
    """A call of a batch, in its greenlet: what to resume it with, and its time so far
    (its turns and its waits for the parent's answers; not the other calls' turns, nor
    the time the parent held its answers back for the other calls')."""

    index: int
    greenlet: greenlet.greenlet
    resume: tuple[Any, ...] = ()
    spent_s: float = 0.0


_WAITS, _ENDED, _STOPS = "waits", "ended", "stops"  # what a call's turn came to
_OPS_HEAD = b'{"op":"ops","wait":false,"ops":['
_OPS_HEAD_WAIT = b'{"op":"ops","wait":true,"ops":['

# Greenlets of calls the worker gave up on (over their time, switched away by
# themselves, or in a stopped batch). Kept so that they are never collected: collecting
# a suspended greenlet would run its code again (GreenletExit is raised in it). The
# parent retires such a worker after the batch: the final op of a call given up on
# alive says "retire": true, and a stopped batch retires its worker anyway.
_ABANDONED: list[greenlet.greenlet] = []


class Batch:
    """Runs a batch's calls concurrently, one greenlet each, and trades their ops with
    the parent in waves (see the module docstring).

    The scheduler is the worker's main greenlet. It gives every ready call a turn, in
    batch order; a turn ends when the call ends or asks for an answer. Each call's ops
    keep their order; calls see nothing of each other's (each has its own
    SimulationContext in the parent).
    """

    def __init__(
        self, channel: Channel, loaded: LoadedContract, guard: AuditGuard, timeout_s: float
    ) -> None:
        self._channel = channel
        self._loaded = loaded
        self._guard = guard
        self._timeout_s = timeout_s
        self._heartbeat_s = timeout_s * HEARTBEAT_FRACTION
        self._hub = greenlet.getcurrent()
        self._outbox: list[bytes] = []
        self._last_sent = time.monotonic()
        self._calls: list[_Running] = []

    def run(self, calls: Sequence[Any]) -> None:
        """Run every call to its end, or the batch to a stop."""
        self._calls = [self._start(index, call) for index, call in enumerate(calls)]
        ready = deque(self._calls)
        waiting: dict[int, _Running] = {}
        while ready:
            while ready:
                running = ready.popleft()
                outcome = self._take_turn(running)
                if outcome is _STOPS:
                    _ABANDONED.extend(r.greenlet for r in (*ready, *waiting.values()))
                    self._flush(wait=False)
                    return
                if outcome is _WAITS:
                    waiting[running.index] = running
            if waiting:
                self._flush(wait=True)
                replies = self._read_replies(waiting)
                waited_s = time.monotonic() - self._last_sent
                for index in sorted(replies):
                    running = waiting.pop(index)
                    held_s = replies[index]["held_ms"] / 1000  # ready, held for others
                    running.spent_s += max(0.0, waited_s - held_s)  # its own wait counts
                    running.resume = (replies[index],)
                    ready.append(running)
        self._flush(wait=False)

    # ---------------------------------------------------------- called by the calls

    def post(self, op: bytes) -> None:
        """Queue a one-way op (the call goes on)."""
        self._outbox.append(op)

    def wait_for(self, op: bytes) -> Any:
        """Pause the calling call until the parent answers ``op``; the reply."""
        return self._hub.switch(op)

    # ------------------------------------------------------------------ scheduling

    def _start(self, index: int, call: Any) -> _Running:
        run = functools.partial(handle_call, call, self._loaded, self._guard, self, index)
        return _Running(index, greenlet.greenlet(run))

    def _take_turn(self, running: _Running) -> str:
        """Run one call until it pauses or ends; charge it with what it did meanwhile.

        What cannot be charged to one call stops the worker at once, unblamed: a
        sandbox violation that appeared while no call's turn ran (say in a ``__del__``),
        and a MemoryError while other calls of the batch, which hold memory too, are
        alive (unfinished, or given up on)."""
        if self._guard.violation is not None:
            _exit_unblamed(b"a sandbox violation outside any call's turn")
        started = time.monotonic()
        try:
            out = running.greenlet.switch(*running.resume)
        except MemoryError:
            out = CallFailed(RESOURCE_LIMIT, "the contract ran out of memory")
        except Exception as exc:  # raised outside the method (it catches its own)
            out = CallFailed(ERROR, describe_exception(exc))
        running.spent_s += time.monotonic() - started
        running.resume = ()
        if self._guard.violation is not None:
            out = CallFailed(FORBIDDEN, f"the contract attempted {self._guard.violation}")
        elif _is_out_of_memory(out, running) and self._is_any_other_alive(running):
            _exit_unblamed(b"out of memory with several calls alive")
        elif running.spent_s > self._timeout_s:
            out = CallFailed(TIMEOUT, f"the call ran for longer than {self._timeout_s} s")
        elif not running.greenlet.dead:
            if not isinstance(out, bytes):
                out = CallFailed(ERROR, "the call switched greenlets by itself")
            else:
                self._outbox.append(out)  # what it waits for
                self._keep_in_touch()
                return _WAITS
        elif isinstance(out, tuple):  # handle_call's (code, final op)
            code, op = out
            self._outbox.append(op)
            if code in STOPPING_CODES:
                return _STOPS
            self._keep_in_touch()
            return _ENDED
        if not isinstance(out, CallFailed):
            out = CallFailed(ERROR, "the call ended without an answer")
        return self._end(running, out)

    def _is_any_other_alive(self, running: _Running) -> bool:
        return any(not r.greenlet.dead for r in self._calls if r is not running)

    def _end(self, running: _Running, failure: CallFailed) -> str:
        """End a call the scheduler gave up on with ``failure``."""
        abandoned = not running.greenlet.dead
        if abandoned:
            _ABANDONED.append(running.greenlet)
        self._outbox.append(failure.to_op(running.index, retire=abandoned))
        if failure.code in STOPPING_CODES:
            return _STOPS
        self._keep_in_touch()
        return _ENDED

    def _keep_in_touch(self) -> None:
        """Send what waits if the parent has heard nothing for a while."""
        if time.monotonic() - self._last_sent >= self._heartbeat_s:
            self._flush(wait=False)

    def _flush(self, *, wait: bool) -> None:
        if not self._outbox and not wait:
            return
        bodies = compute_frame_bodies(_OPS_HEAD, self._outbox, b"]}")
        if wait:
            bodies[-1] = _OPS_HEAD_WAIT + bodies[-1][len(_OPS_HEAD) :]
        self._channel.write_bodies(bodies)
        self._outbox = []
        self._last_sent = time.monotonic()

    def _read_replies(self, waiting: Mapping[int, _Running]) -> dict[int, Any]:
        """The parent's answers, one for each waiting call."""
        replies: dict[int, Any] = {}
        while len(replies) < len(waiting):
            message = self._channel.read()
            if message is None:
                os._exit(0)  # the node went away mid-batch
            items = message.get("replies") if message.get("op") == "replies" else None
            if not isinstance(items, list):
                os._exit(3)  # the parent broke the protocol
            for reply in items:
                index = reply.get("i") if isinstance(reply, dict) else None
                if not isinstance(index, int) or index not in waiting or index in replies:
                    os._exit(3)
                if type(reply.get("held_ms")) is not int:
                    os._exit(3)
                replies[index] = reply
        return replies


def _is_out_of_memory(out: Any, running: _Running) -> bool:
    """Whether a turn's outcome is the call's MemoryError (raised in or around it)."""
    if isinstance(out, CallFailed):
        return out.code == RESOURCE_LIMIT
    return running.greenlet.dead and isinstance(out, tuple) and out[0] == RESOURCE_LIMIT


def _exit_unblamed(why: bytes) -> NoReturn:
    """Stop at once, blaming no call: the parent runs each call it has not seen end
    again, alone, in another worker (what is still in the outbox is dropped)."""
    os.write(2, b"meridian worker: stopping unblamed: " + why + b"\n")
    os._exit(UNBLAMED_EXIT)


# --------------------------------------------------------------------------------- calls


@dataclass(slots=True)
class LoadedContract:
    """The contract class and its functions, or why loading failed."""

    cls: type[Contract] | None
    specs: dict[str, FunctionSpec]
    failure: CallFailed | None = None


def load_contract(package_dir: str, entry: str, guard: AuditGuard) -> LoadedContract:
    """Import ``module:Class`` from the package; failures are kept, not raised."""
    try:
        cls = _import_entry(package_dir, entry)
        cls()  # constructible without arguments, as every call does
        return LoadedContract(cls, compute_function_specs(cls))
    except CallFailed as exc:
        failure = exc
    except MemoryError:
        failure = CallFailed(RESOURCE_LIMIT, "out of memory while loading the contract")
    except BaseException as exc:
        failure = CallFailed(LOAD_FAILED, f"cannot load {entry}: {describe_exception(exc)}")
    if guard.violation is not None:
        failure = CallFailed(FORBIDDEN, f"loading the contract attempted {guard.violation}")
    return LoadedContract(None, {}, failure)


def _import_entry(package_dir: str, entry: str) -> type[Contract]:
    module_name, _, class_name = entry.partition(":")
    if not module_name or not class_name:
        raise CallFailed(LOAD_FAILED, f"entry {entry!r} must look like 'module:ClassName'")
    sys.path.insert(0, package_dir)
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Contract)):
        raise CallFailed(LOAD_FAILED, f"{entry} is not a Contract subclass")
    return cls


def handle_describe(loaded: LoadedContract) -> dict[str, Any]:
    if loaded.failure is not None:
        return loaded.failure.to_frame()
    functions = {name: spec.to_dict() for name, spec in loaded.specs.items()}
    return {"op": "value", "value": {"functions": functions}}


def handle_call(
    message: Any, loaded: LoadedContract, guard: AuditGuard, batch: Batch, index: int
) -> tuple[str | None, bytes]:
    """Run call ``index`` of ``batch`` to the end (in its greenlet): its final op, and
    its error code (None if it returned).

    Precedence: a sandbox violation, then the first Context error, then what the method
    raised, then a return value that is not a JSON value.
    """
    try:
        cls, spec, args = _prepare_call(message, loaded)
    except CallFailed as exc:
        return exc.code, exc.to_op(index)
    ctx = RemoteContext(batch, index, message["ctx"])
    value, failure = _run_method(cls, spec, ctx, args)
    ctx.finished = True
    failure = _get_host_failure(guard, ctx) or failure
    if failure is None:
        try:
            return None, _encode_return(index, value)
        except CallFailed as exc:
            failure = exc
    return failure.code, failure.to_op(index)


def _prepare_call(
    message: Any, loaded: LoadedContract
) -> tuple[type[Contract], FunctionSpec, list[Any]]:
    if loaded.failure is not None or loaded.cls is None:
        raise loaded.failure or CallFailed(LOAD_FAILED, "contract not loaded")
    if not isinstance(message, dict):
        raise CallFailed(ERROR, "malformed call")
    function, args = message.get("function"), message.get("args")
    spec = loaded.specs.get(function) if isinstance(function, str) else None
    if spec is None:
        available = ", ".join(sorted(loaded.specs)) or "none"
        raise CallFailed(UNKNOWN_FUNCTION, f"unknown function {function!r}; available: {available}")
    if not isinstance(args, list):
        raise CallFailed(BAD_ARGUMENT, "arguments must be a list")
    validate_args(spec, args)
    return loaded.cls, spec, args


def _run_method(
    cls: type[Contract], spec: FunctionSpec, ctx: RemoteContext, args: list[Any]
) -> tuple[Any, CallFailed | None]:
    """The method's return value, or how it failed (its frames already freed)."""
    try:
        return getattr(cls(), spec.name)(ctx, *args), None
    except MemoryError:
        return None, CallFailed(RESOURCE_LIMIT, "the contract ran out of memory")
    except ContractError as exc:
        return None, CallFailed(REJECTED, str(exc))
    except BaseException as exc:
        traceback.print_exc()
        return None, CallFailed(ERROR, describe_exception(exc))


def _get_host_failure(guard: AuditGuard, ctx: RemoteContext) -> CallFailed | None:
    if guard.violation is not None:
        return CallFailed(FORBIDDEN, f"the contract attempted {guard.violation}")
    if ctx.host_error is not None:
        return CallFailed(*ctx.host_error)
    return None


def _encode_return(index: int, value: Any) -> bytes:
    """The final op of a call that returned ``value``; CallFailed if it is no JSON value."""
    try:
        codec.validate_value(value, what="contract return value")
        return encode_op({"i": index, "op": "return", "value": value})
    except InvalidInput as exc:
        raise CallFailed(BAD_VALUE, exc.message) from None
    except TypeError as exc:
        raise CallFailed(BAD_VALUE, f"contract return value: {exc}") from None


def serve(channel: Channel, loaded: LoadedContract, guard: AuditGuard, timeout_s: float) -> None:
    """Answer requests until the parent closes the channel."""
    while (message := channel.read()) is not None:
        op, calls = message.get("op"), message.get("calls")
        if op == "describe":
            final = {"i": 0, **handle_describe(loaded)}
            channel.write({"op": "ops", "wait": False, "ops": [final]})
        elif op == "calls" and isinstance(calls, list) and calls:
            Batch(channel, loaded, guard, timeout_s).run(calls)
        else:
            os._exit(3)  # the parent broke the protocol


def main(argv: list[str]) -> None:
    """Worker entry point: ``PACKAGE_DIR ENTRY LIMITS_JSON``."""
    package_dir, entry, limits_json = argv
    limits = orjson.loads(limits_json)
    apply_rlimits(limits)
    channel = Channel.from_stdio()
    guard = AuditGuard(compute_readable_roots(package_dir))
    guard.install()
    loaded = load_contract(package_dir, entry, guard)
    channel.write({"op": "ready"})
    serve(channel, loaded, guard, float(limits["call_timeout_s"]))


if __name__ == "__main__":
    main(sys.argv[1:])
