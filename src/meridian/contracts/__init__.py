"""Contracts: the API contract authors use, packaging, lifecycle and the sandbox.

A contract author only needs::

    from meridian.contracts import Contract, Context, ContractError, query, transaction
"""

from .api import (
    CallerIdentity,
    Context,
    Contract,
    ContractError,
    HistoryEntry,
    query,
    transaction,
)

__all__ = [
    "CallerIdentity",
    "Context",
    "Contract",
    "ContractError",
    "HistoryEntry",
    "query",
    "transaction",
]
