"""Simulation: running a contract call against current state and recording what it did.

One :class:`Simulation` per proposal. Each contract namespace touched gets a
:class:`SimulationContext` (the :class:`~meridian.contracts.api.Context` contracts
see); all of them record into the same simulation, which becomes the transaction's
:class:`~meridian.types.TxResult`. Nothing here writes to the ledger: reads go to a
:class:`StateView` of committed state, writes are only recorded.

Rules recorded here and enforced at validation (:mod:`meridian.node.validate`):

* every ``get_state`` of committed data records the key's version (MVCC);
* ``get_state`` sees this transaction's own writes, which are not recorded as reads;
* ``get_range`` records the range and every key and version it returned (phantoms);
* ``add`` records a commutative delta, no read; a key cannot be both written and
  incremented in one transaction;
* JSON queries are *not* re-checked at validation (as in Fabric's rich queries): use
  them for queries, or re-read the keys you rely on with ``get_state``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from .. import codec
from ..errors import ContractFailure, InvalidInput
from ..types import (
    MAX_EVENTS,
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_NAMESPACES,
    MAX_RANGE_READS,
    MAX_RWSET_ENTRIES,
    Event,
    KVDelta,
    KVRead,
    KVWrite,
    NsRWSet,
    RangeRead,
    TxResult,
    Version,
)
from .api import CallerIdentity, HistoryEntry

MAX_VALUE_BYTES = 128 * 1024
MAX_RANGE_LIMIT = 10_000
MAX_INVOKE_DEPTH = 4


class StateView(Protocol):
    """Committed state of one app's ledger, as simulation reads it."""

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None: ...

    def get_range(
        self, ns: str, start: str, end: str, limit: int
    ) -> list[tuple[str, Any, Version]]: ...

    def query(
        self, ns: str, selector: Mapping[str, Any], limit: int
    ) -> list[tuple[str, Any, Version]]: ...

    def get_history(self, ns: str, key: str, limit: int) -> list[HistoryEntry]: ...


Invoker = Callable[["Simulation", str, str, list[Any]], Awaitable[Any]]


def _limit_error(message: str) -> ContractFailure:
    return ContractFailure(
        message, code="contract_limit", hint="write fewer or smaller values per transaction"
    )


def validate_key(key: Any) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or "\x00" in key:
        raise ContractFailure(
            f"state key must be a non-empty string of at most {MAX_KEY_CHARS} characters "
            "without NUL",
            code="contract_bad_key",
        )
    return key


def validate_state_value(value: Any, what: str = "state value") -> None:
    try:
        codec.validate_value(value, what=what)
    except InvalidInput as exc:
        raise ContractFailure(exc.message, code="contract_bad_value", hint=exc.hint) from exc
    if len(codec.encode(value)) > MAX_VALUE_BYTES:
        raise _limit_error(f"{what} is larger than {MAX_VALUE_BYTES} bytes")


class _Namespace:
    __slots__ = ("deltas", "name", "range_reads", "reads", "writes")

    def __init__(self, name: str) -> None:
        self.name = name
        self.reads: dict[str, Version | None] = {}
        self.range_reads: list[RangeRead] = []
        self.writes: dict[str, KVWrite] = {}
        self.deltas: dict[str, int] = {}

    def to_rwset(self) -> NsRWSet:
        return NsRWSet(
            namespace=self.name,
            reads=tuple(KVRead(k, v) for k, v in self.reads.items()),
            range_reads=tuple(self.range_reads),
            writes=tuple(self.writes.values()),
            deltas=tuple(KVDelta(k, d) for k, d in self.deltas.items()),
        )

    def is_empty(self) -> bool:
        return not (self.reads or self.range_reads or self.writes or self.deltas)


class Simulation:
    """Everything one proposal's simulation read and wrote, across namespaces."""

    def __init__(
        self,
        state: StateView,
        *,
        app: str,
        tx_id: str,
        timestamp_ms: int,
        caller: CallerIdentity,
        invoker: Invoker | None = None,
    ) -> None:
        self.state = state
        self.app = app
        self.tx_id = tx_id
        self.timestamp_ms = timestamp_ms
        self.caller = caller
        self._invoker = invoker
        self._namespaces: dict[str, _Namespace] = {}
        self._events: list[Event] = []
        self._versions: set[str] = set()
        self._entries = 0
        self.depth = 0

    def fresh(self) -> Simulation:
        """A new, empty Simulation of the same proposal (to run its call again from
        scratch; this one is left to whatever may still write to it)."""
        return Simulation(
            self.state,
            app=self.app,
            tx_id=self.tx_id,
            timestamp_ms=self.timestamp_ms,
            caller=self.caller,
            invoker=self._invoker,
        )

    def context(self, contract: str) -> SimulationContext:
        ns = self._namespaces.get(contract)
        if ns is None:
            if len(self._namespaces) >= MAX_NAMESPACES:
                raise _limit_error(f"a transaction may touch at most {MAX_NAMESPACES} contracts")
            ns = self._namespaces[contract] = _Namespace(contract)
        return SimulationContext(self, ns)

    def count_entry(self) -> None:
        self._entries += 1
        if self._entries > MAX_RWSET_ENTRIES:
            raise _limit_error(f"a transaction may touch at most {MAX_RWSET_ENTRIES} keys")

    def add_event(self, event: Event) -> None:
        if len(self._events) >= MAX_EVENTS:
            raise _limit_error(f"a transaction may emit at most {MAX_EVENTS} events")
        self._events.append(event)

    async def invoke(self, contract: str, function: str, args: list[Any]) -> Any:
        if self._invoker is None:
            raise ContractFailure(
                "calls to other contracts are not available here",
                code="contract_invoke_unavailable",
            )
        if self.depth >= MAX_INVOKE_DEPTH:
            raise ContractFailure(
                f"contract calls nest deeper than {MAX_INVOKE_DEPTH}", code="contract_limit"
            )
        self.depth += 1
        try:
            return await self._invoker(self, contract, function, args)
        finally:
            self.depth -= 1

    def record_version(self, label: str) -> None:
        """Note that contract version ``label`` (``name@sequence``) ran in this simulation."""
        self._versions.add(label)

    def result(self, response: Any, contract_version: str | None = None) -> TxResult:
        """The recorded read/write sets and events, with the contract's response.

        The result's ``contract_version`` lists every contract version that ran
        (sorted, comma-separated); ``contract_version`` adds one more.
        """
        if contract_version:
            self.record_version(contract_version)
        try:
            codec.validate_value(response, what="contract response")
        except InvalidInput as exc:
            raise ContractFailure(exc.message, code="contract_bad_value") from exc
        rwsets = tuple(
            ns.to_rwset() for name, ns in sorted(self._namespaces.items()) if not ns.is_empty()
        )
        versions = ",".join(sorted(self._versions))
        return TxResult(response, rwsets, tuple(self._events), versions)


class SimulationContext:
    """The :class:`~meridian.contracts.api.Context` of one namespace in a simulation."""

    def __init__(self, sim: Simulation, ns: _Namespace) -> None:
        self._sim = sim
        self._ns = ns
        self.tx_id = sim.tx_id
        self.timestamp_ms = sim.timestamp_ms
        self.caller = sim.caller
        self.app = sim.app
        self.contract = ns.name

    def get_state(self, key: str) -> Any:
        validate_key(key)
        pending = self._ns.writes.get(key)
        if pending is not None:
            return None if pending.delete else pending.value
        found = self._sim.state.get(self._ns.name, key)
        if key not in self._ns.reads:
            self._sim.count_entry()
            self._ns.reads[key] = found[1] if found else None
        return found[0] if found else None

    def put_state(self, key: str, value: Any) -> None:
        validate_key(key)
        validate_state_value(value)
        self._record_write(KVWrite(key, value))

    def delete_state(self, key: str) -> None:
        validate_key(key)
        self._record_write(KVWrite(key, None, delete=True))

    def _record_write(self, write: KVWrite) -> None:
        if write.key in self._ns.deltas:
            raise ContractFailure(
                f"key {write.key!r} is both incremented and written", code="contract_bad_write"
            )
        if write.key not in self._ns.writes:
            self._sim.count_entry()
        self._ns.writes[write.key] = write

    def add(self, key: str, delta: int) -> None:
        validate_key(key)
        if not isinstance(delta, int) or isinstance(delta, bool) or abs(delta) > 2**62:
            raise ContractFailure("add() takes an integer delta", code="contract_bad_value")
        if key in self._ns.writes:
            raise ContractFailure(
                f"key {key!r} is both written and incremented", code="contract_bad_write"
            )
        if key not in self._ns.deltas:
            self._sim.count_entry()
        self._ns.deltas[key] = self._ns.deltas.get(key, 0) + delta

    def get_range(self, start: str, end: str, limit: int = 1000) -> list[tuple[str, Any]]:
        if not isinstance(start, str) or not isinstance(end, str):
            raise ContractFailure("range bounds must be strings", code="contract_bad_key")
        limit = _check_limit(limit)
        if len(self._ns.range_reads) >= MAX_RANGE_READS:
            raise _limit_error(f"a transaction may scan at most {MAX_RANGE_READS} ranges")
        rows = self._sim.state.get_range(self._ns.name, start, end, limit + 1)
        exhausted = len(rows) <= limit
        rows = rows[:limit]
        self._sim.count_entry()
        self._ns.range_reads.append(
            RangeRead(start, end, tuple(KVRead(k, v) for k, _, v in rows), exhausted)
        )
        return [(k, value) for k, value, _ in rows]

    def query(self, selector: Mapping[str, Any], limit: int = 1000) -> list[tuple[str, Any]]:
        if not isinstance(selector, Mapping):
            raise ContractFailure(
                "a JSON query selector must be an object", code="contract_bad_query"
            )
        rows = self._sim.state.query(self._ns.name, selector, _check_limit(limit))
        return [(k, value) for k, value, _ in rows]

    def get_history(self, key: str, limit: int = 100) -> list[HistoryEntry]:
        validate_key(key)
        return self._sim.state.get_history(self._ns.name, key, _check_limit(limit))

    def emit(self, name: str, payload: Any = None) -> None:
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise ContractFailure("event name must be 1..64 characters", code="contract_bad_event")
        validate_state_value(payload, what="event payload")
        self._sim.add_event(Event(self._ns.name, name, payload))

    @property
    def depth(self) -> int:
        """0 for the proposal's own call; n for a call n invokes deep."""
        return self._sim.depth

    def invoke(self, contract: str, function: str, *args: Any) -> Any:
        raise ContractFailure(
            "invoke() from in-process code must use invoke_async",
            code="contract_invoke_unavailable",
        )

    async def invoke_async(self, contract: str, function: str, args: list[Any]) -> Any:
        return await self._sim.invoke(contract, function, args)


def _check_limit(limit: Any) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= MAX_RANGE_LIMIT:
        raise ContractFailure(
            f"limit must be an integer in 1..{MAX_RANGE_LIMIT}", code="contract_bad_query"
        )
    return limit
