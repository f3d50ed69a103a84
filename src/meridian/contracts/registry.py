"""Finding and running the contract a proposal names.

System contracts (``_lifecycle`` on every app, ``_governance`` on the governance
channel) run in process as trusted code. User contracts
are looked up in the app's committed definitions (``_lifecycle`` state), their
package must be installed on this node, and they run in a sandboxed
:class:`~meridian.contracts.pool.ContractPool` (one per app and package, so apps
never share a worker). A proposal's call that the pool aborts (``contract_aborted``:
it shared a worker's batch with a call that got the worker stopped) runs once more,
alone, on a fresh Simulation (:class:`RestartableCall`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContractArgumentError, ContractFailure, InvalidInput, NotFound
from ..node.policy import Policy
from .api import ContractError, get_kind
from .lifecycle import LIFECYCLE, ContractDefinition, Lifecycle
from .package import PackageStore
from .pool import ABORTED, ContractPool
from .sandbox import SandboxLimits
from .simulation import Simulation

DefinitionReader = Callable[[str], ContractDefinition | None]
CallStarter = Callable[[Simulation, bool], "asyncio.Future[Any]"]  # (simulation, solo)


class RestartableCall:
    """A proposal's contract call that runs once more from scratch if it is aborted.

    ``contract_aborted`` means that the call shared a worker's batch with a call that
    got the worker stopped (stuck, dead, or over a sandbox or memory limit), or that
    the worker stopped without blaming any call, and that nobody knows which call was
    to blame. The call then runs again through ``start``, alone (``solo``) on
    ``sim.fresh()``: the aborted Simulation is never reused (a nested call of the
    aborted run may still be writing to it). A second abort reaches the caller.
    :attr:`sim` is the Simulation of the latest run: read it once :attr:`future` is
    done. No task: the runs are chained with done-callbacks.
    """

    __slots__ = ("_running", "_start", "future", "restarted", "sim")

    def __init__(self, sim: Simulation, start: CallStarter) -> None:
        running = start(sim, False)  # errors found before the call runs are raised here
        self.sim = sim
        self.restarted = False
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(self._on_settled)
        self._start = start
        self._running = running
        running.add_done_callback(self._on_run_done)

    def _on_run_done(self, run: asyncio.Future[Any]) -> None:
        if self.future.done() or run is not self._running:
            return
        if run.cancelled():
            self.future.cancel()
            return
        error = run.exception()
        if error is None:
            self.future.set_result(run.result())
        elif not (isinstance(error, ContractFailure) and error.code == ABORTED):
            self.future.set_exception(error)
        elif self.restarted:
            self.future.set_exception(
                ContractFailure(
                    "the call was aborted twice with a worker stopped by another call",
                    code=ABORTED,
                    hint="submit it again",
                )
            )
        else:
            self._restart()

    def _restart(self) -> None:
        self.restarted = True
        self.sim = self.sim.fresh()
        try:
            self._running = self._start(self.sim, True)
        except Exception as exc:  # e.g. the contract was upgraded away meanwhile
            self.future.set_exception(exc)
            return
        self._running.add_done_callback(self._on_run_done)

    def _on_settled(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._running.cancel()  # a call still queued is then never run


@dataclass(frozen=True, slots=True)
class AppContracts:
    """What the registry needs to know about one app."""

    app: str
    members: tuple[str, ...]
    lifecycle_policy: Policy
    definition: DefinitionReader  # committed definition of a contract, by name
    nodes: Mapping[str, str] = field(default_factory=dict)  # node id -> org (network.json)
    # the app's system contracts by namespace (default: _lifecycle over the fields above)
    system: Mapping[str, Callable[[], Any]] | None = None

    def system_contract(self, name: str) -> Any:
        """A fresh instance of system contract ``name``, or None if the app has none."""
        if self.system is not None:
            factory = self.system.get(name)
            return None if factory is None else factory()
        if name == LIFECYCLE:
            return Lifecycle(self.members, self.lifecycle_policy, self.nodes)
        return None


class ContractRegistry:
    """Resolves ``(app, contract)`` to running code and calls it within a simulation."""

    def __init__(self, packages: PackageStore, *, limits: SandboxLimits, workers: int = 2) -> None:
        self.packages = packages
        self.limits = limits
        self.workers = workers
        self._apps: dict[str, AppContracts] = {}
        self._pools: dict[tuple[str, str], tuple[str, ContractPool]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def add_app(self, app: AppContracts) -> None:
        self._apps[app.app] = app

    def remove_app(self, app: str) -> None:
        """Forget an app this node no longer hosts; its workers stop in the background
        (calls still running finish first)."""
        self._apps.pop(app, None)
        for key in [k for k in self._pools if k[0] == app]:
            _, pool = self._pools.pop(key)
            task = asyncio.get_running_loop().create_task(
                pool.close(drain_s=self.limits.call_timeout_s)
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def definition(self, app: str, contract: str) -> ContractDefinition:
        found = self._apps[app].definition(contract)
        if found is None:
            raise NotFound(
                f"app {app} has no contract {contract!r}",
                code="unknown_contract",
                hint="list contracts with 'meridian contract list'",
            )
        return found

    def pool_for(self, app: str, definition: ContractDefinition) -> ContractPool:
        """The workers of the committed package; an upgrade retires the previous ones."""
        key = (app, definition.name)
        current = self._pools.get(key)
        if current is not None and current[0] == definition.package_id:
            return current[1]
        package = self.packages.get(definition.package_id)
        pool = ContractPool(
            package.path, package.manifest.entry, workers=self.workers, limits=self.limits
        )
        self._pools[key] = (definition.package_id, pool)
        if current is not None:
            # calls already running on the old version finish (and will fail validation
            # as CONTRACT_VERSION_MISMATCH) rather than being cut off
            old = current[1].close(drain_s=self.limits.call_timeout_s)
            task = asyncio.get_running_loop().create_task(old)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return pool

    async def call(
        self, sim: Simulation, contract: str, function: str, args: list[Any], *, submit: bool
    ) -> Any:
        """Run ``contract.function(*args)`` and return its response."""
        return await self.start_call(sim, contract, function, args, submit=submit)

    def start_proposal_call(
        self, sim: Simulation, contract: str, function: str, args: list[Any], *, submit: bool
    ) -> RestartableCall:
        """Start the call a proposal names (see :meth:`start_call`), to be run once
        more, alone, on a fresh Simulation if it is aborted."""

        def start(run_sim: Simulation, solo: bool) -> asyncio.Future[Any]:
            return self.start_call(run_sim, contract, function, args, submit=submit, solo=solo)

        return RestartableCall(sim, start)

    def start_call(
        self,
        sim: Simulation,
        contract: str,
        function: str,
        args: list[Any],
        *,
        submit: bool,
        solo: bool = False,
    ) -> asyncio.Future[Any]:
        """Start ``contract.function(*args)``; the future of its response.

        Errors found before the call runs (unknown contract or function, a query
        submitted) are raised here. Every contract version that runs is recorded in
        the simulation (see :meth:`Simulation.record_version`), nested calls included.
        ``solo``: the pool runs it in a batch of its own.
        """
        loop = asyncio.get_running_loop()
        if contract.startswith("_"):
            done: asyncio.Future[Any] = loop.create_future()
            done.set_result(self._call_system(sim, contract, function, args, submit=submit))
            return done
        definition = self.definition(sim.app, contract)
        pool = self.pool_for(sim.app, definition)
        if pool.info is None:  # first call: learn the functions, then start it again
            return loop.create_task(
                self._describe_then_call(
                    pool, sim, contract, function, args, submit=submit, solo=solo
                )
            )
        return self._start_on(pool, definition, sim, function, args, submit=submit, solo=solo)

    async def _describe_then_call(
        self,
        pool: ContractPool,
        sim: Simulation,
        contract: str,
        function: str,
        args: list[Any],
        *,
        submit: bool,
        solo: bool,
    ) -> Any:
        await pool.describe()
        return await self.start_call(sim, contract, function, args, submit=submit, solo=solo)

    def _start_on(
        self,
        pool: ContractPool,
        definition: ContractDefinition,
        sim: Simulation,
        function: str,
        args: list[Any],
        *,
        submit: bool,
        solo: bool,
    ) -> asyncio.Future[Any]:
        contract = definition.name
        info = pool.info
        if info is None:  # callers describe() first; a pool that forgot is broken
            raise ContractFailure("the contract's functions are unknown", code="contract_crashed")
        fn = info.functions.get(function)
        if fn is None:
            raise NotFound(
                f"contract {contract} has no function {function!r}",
                code="unknown_function",
                hint=f"functions: {', '.join(sorted(info.functions))}",
            )
        if submit and fn.kind != "transaction":
            raise InvalidInput(
                f"{contract}.{function} is a query: evaluate it instead", code="not_a_transaction"
            )
        sim.record_version(definition.label)
        return pool.start_call(function, args, sim.context(contract), solo=solo)

    async def invoke(self, sim: Simulation, contract: str, function: str, args: list[Any]) -> Any:
        """A contract calling another contract of the same app (in the same simulation)."""
        if contract.startswith("_"):
            raise ContractFailure(
                "contracts cannot call system contracts", code="contract_invoke_unavailable"
            )
        return await self.call(sim, contract, function, args, submit=False)

    def _call_system(
        self, sim: Simulation, name: str, function: str, args: list[Any], *, submit: bool
    ) -> Any:
        contract = self._apps[sim.app].system_contract(name)
        if contract is None:
            raise NotFound(f"no system contract {name!r} in {sim.app}", code="unknown_contract")
        sim.record_version(f"{name}@0")
        method = getattr(contract, function, None) if not function.startswith("_") else None
        kind = get_kind(method)
        if method is None or kind is None:
            raise NotFound(
                f"{name} has no function {function!r}",
                code="unknown_function",
                hint=f"functions: {', '.join(sorted(contract.functions()))}",
            )
        if submit and kind != "transaction":
            raise InvalidInput(f"{name}.{function} is a query", code="not_a_transaction")
        _check_system_args(method, args)
        try:
            return method(sim.context(name), *args)
        except ContractError as exc:
            raise ContractFailure(str(exc), code="contract_rejected") from exc

    async def close(self) -> None:
        for _, pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)


def _check_system_args(method: Callable[..., Any], args: list[Any]) -> None:
    params = list(inspect.signature(method).parameters.values())[1:]
    required = [p for p in params if p.default is inspect.Parameter.empty]
    if not len(required) <= len(args) <= len(params):
        raise ContractArgumentError(
            f"{method.__name__} takes {len(required)}..{len(params)} arguments "
            f"({', '.join(p.name for p in params)}), got {len(args)}"
        )
    for param, arg in zip(params, args, strict=False):
        expected = {"str": str, "int": int, "list[Any]": list, "dict[str, Any]": dict}.get(
            str(param.annotation)
        )
        if expected and (not isinstance(arg, expected) or isinstance(arg, bool)):
            raise ContractArgumentError(
                f"argument {param.name} must be {param.annotation}, got {type(arg).__name__}"
            )
