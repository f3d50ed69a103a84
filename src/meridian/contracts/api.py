"""The API a contract author writes against.

A contract is a class deriving from :class:`Contract`. Methods marked with
:func:`transaction` may change state (their writes are ordered and committed);
methods marked with :func:`query` only read (evaluated on one node, never ordered).
Every marked method receives a :class:`Context` first, then the caller's arguments,
which are checked against the method's annotations (``str``, ``int``, ``bool``,
``list``, ``dict``, ``None`` and unions of those)::

    class Counter(Contract):
        @transaction
        def bump(self, ctx: Context, key: str, by: int) -> None:
            ctx.add(key, by)

        @query
        def read(self, ctx: Context, key: str) -> int:
            return ctx.get_state(key) or 0

Values are JSON values (dict, list, str, int, bool, None — never floats). Raise
:class:`ContractError` to reject a call with a message the caller sees; any other
exception is reported as a contract failure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

Kind = Literal["transaction", "query"]
F = TypeVar("F", bound=Callable[..., Any])

_KIND_ATTR = "__meridian_kind__"


def transaction(fn: F) -> F:
    """Mark a method as a transaction: simulated by endorsers, ordered, committed."""
    setattr(fn, _KIND_ATTR, "transaction")
    return fn


def query(fn: F) -> F:
    """Mark a method as a query: evaluated on one node, never ordered."""
    setattr(fn, _KIND_ATTR, "query")
    return fn


def get_kind(fn: Any) -> Kind | None:
    """``"transaction"``, ``"query"`` or None for an unmarked attribute."""
    return getattr(fn, _KIND_ATTR, None)


class ContractError(Exception):
    """Raised by contract code to reject a call; the message reaches the caller."""


class Contract:
    """Base class of every contract; subclasses add marked methods."""

    def functions(self) -> dict[str, Kind]:
        """The marked methods of this contract, by name."""
        found: dict[str, Kind] = {}
        for name in dir(type(self)):
            if name.startswith("_"):
                continue
            kind = get_kind(getattr(type(self), name, None))
            if kind is not None:
                found[name] = kind
        return found


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """Who signed the proposal, as the validated certificate says."""

    org: str
    name: str
    role: str
    attrs: Mapping[str, str] = field(default_factory=dict)
    fingerprint: str = ""

    def attr(self, name: str, default: str | None = None) -> str | None:
        return self.attrs.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "name": self.name,
            "role": self.role,
            "attrs": dict(self.attrs),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def of(cls, identity: Any) -> CallerIdentity:
        """What contracts see of a validated certificate (``crypto.certs.Identity``)."""
        return cls(
            identity.org,
            identity.name,
            str(identity.role),
            dict(identity.attrs),
            identity.fingerprint,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CallerIdentity:
        return cls(
            d["org"], d["name"], d["role"], dict(d.get("attrs") or {}), d.get("fingerprint", "")
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One committed change of a key."""

    tx_id: str
    block: int
    timestamp_ms: int
    value: Any
    deleted: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "tx_id": self.tx_id,
            "block": self.block,
            "timestamp_ms": self.timestamp_ms,
            "value": self.value,
            "deleted": self.deleted,
        }


class Context(Protocol):
    """What a contract method can do. Keys are non-empty strings without NUL."""

    tx_id: str
    timestamp_ms: int  # the proposal's time, chosen by the client, checked by the node
    caller: CallerIdentity
    app: str
    contract: str

    def get_state(self, key: str) -> Any:
        """The value of ``key`` (this transaction's own writes included), or None."""

    def put_state(self, key: str, value: Any) -> None:
        """Write ``value`` (a JSON value) under ``key``."""

    def delete_state(self, key: str) -> None:
        """Delete ``key``."""

    def add(self, key: str, delta: int) -> None:
        """Add ``delta`` to the integer at ``key`` (0 if absent) without reading it.

        Increments from concurrent transactions commute and never conflict; the value
        is not visible to this transaction.
        """

    def get_range(self, start: str, end: str, limit: int = 1000) -> list[tuple[str, Any]]:
        """Committed keys in ``[start, end)`` in order, with their values.

        The range is re-checked at validation: a key added or removed in it by an
        earlier transaction makes this one invalid (phantom protection).
        """

    def query(self, selector: Mapping[str, Any], limit: int = 1000) -> list[tuple[str, Any]]:
        """Committed JSON documents matching ``selector`` (see docs/contracts.md)."""

    def get_history(self, key: str, limit: int = 100) -> list[HistoryEntry]:
        """Committed changes of ``key``, oldest first."""

    def emit(self, name: str, payload: Any = None) -> None:
        """Emit an event, delivered to subscribers once the transaction commits."""

    def invoke(self, contract: str, function: str, *args: Any) -> Any:
        """Call another contract of the same app within this transaction."""
