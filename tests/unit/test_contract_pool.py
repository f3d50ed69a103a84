"""ContractPool: calls round-trip through sandboxed workers; every failure has its code.

The fixture contracts live in ``contracts_fixtures/``. Tests that depend on the OS
sandbox run in both modes ("bwrap" is skipped where bubblewrap is not usable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from meridian.contracts import pool as pool_module
from meridian.contracts import sandbox
from meridian.contracts.api import CallerIdentity, HistoryEntry
from meridian.contracts.pool import ContractPool, SandboxLimits
from meridian.contracts.simulation import Invoker, Simulation
from meridian.errors import (
    ContractArgumentError,
    ContractFailure,
    InvalidInput,
    MeridianError,
    NotFound,
    Unavailable,
)
from meridian.types import Event, KVDelta, KVRead, KVWrite, NsRWSet, RangeRead, Version

FIXTURES = Path(__file__).parent / "contracts_fixtures"
PROBE = FIXTURES / "probe"
ENTRY = "probe_contract:Probe"
NS = "probe"

BWRAP_USABLE = sandbox.probe_bwrap() is None
IS_ROOT = os.geteuid() == 0
needs_bwrap = pytest.mark.skipif(not BWRAP_USABLE, reason="bubblewrap is not usable here")
both_modes = pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=needs_bwrap), "none"])


class DictState:
    """A StateView over dicts of committed rows and history."""

    def __init__(
        self,
        rows: dict[tuple[str, str], tuple[Any, Version]] | None = None,
        history: dict[tuple[str, str], list[HistoryEntry]] | None = None,
    ) -> None:
        self.rows = rows or {}
        self.history = history or {}

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None:
        return self.rows.get((ns, key))

    def get_range(
        self, ns: str, start: str, end: str, limit: int
    ) -> list[tuple[str, Any, Version]]:
        keys = sorted(k for n, k in self.rows if n == ns and start <= k < end)
        return [(k, *self.rows[(ns, k)]) for k in keys[:limit]]

    def query(
        self, ns: str, selector: Mapping[str, Any], limit: int
    ) -> list[tuple[str, Any, Version]]:
        found = [
            (k, value, version)
            for (n, k), (value, version) in sorted(self.rows.items())
            if n == ns
            and isinstance(value, dict)
            and all(value.get(f) == want for f, want in selector.items())
        ]
        return found[:limit]

    def get_history(self, ns: str, key: str, limit: int) -> list[HistoryEntry]:
        return self.history.get((ns, key), [])[:limit]


CALLER = CallerIdentity("org1", "alice", "client", {"team": "blue"}, "ab" * 16)


def new_sim(state: DictState | None = None, invoker: Invoker | None = None) -> Simulation:
    return Simulation(
        state or DictState(),
        app="shop",
        tx_id="tx-1",
        timestamp_ms=1_700_000_000_000,
        caller=CALLER,
        invoker=invoker,
    )


def rwset(sim: Simulation, ns: str = NS) -> NsRWSet:
    return next(r for r in sim.result(None, "probe@1").rwsets if r.namespace == ns)


@contextlib.asynccontextmanager
async def open_pool(
    mode: str = "none",
    package: Path = PROBE,
    entry: str = ENTRY,
    workers: int = 2,
    **limits: Any,
) -> AsyncIterator[ContractPool]:
    pool = ContractPool(package, entry, workers=workers, limits=SandboxLimits(mode=mode, **limits))
    try:
        yield pool
    finally:
        await pool.close()


async def call(pool: ContractPool, function: str, *args: Any) -> Any:
    return await pool.call(function, list(args), new_sim().context(NS))


async def expect_failure(
    pool: ContractPool,
    function: str,
    args: list[Any],
    code: str,
    kind: type[MeridianError] = ContractFailure,
) -> MeridianError:
    with pytest.raises(kind) as info:
        await pool.call(function, args, new_sim().context(NS))
    assert info.value.code == code, info.value
    return info.value


async def assert_serves(pool: ContractPool) -> None:
    assert await call(pool, "echo", {"still": "here"}) == {"still": "here"}


# ------------------------------------------------------------------------ round trips


def test_describe_lists_marked_functions_with_annotations() -> None:
    async def scenario() -> None:
        async with open_pool() as pool:
            info = await pool.describe()
            assert await pool.describe() is info
        fns = info.functions
        assert "helper" not in fns and "__init__" not in fns
        assert fns["put"].kind == "transaction" and fns["get"].kind == "query"
        assert fns["typed"].params == (
            ("s", "str"),
            ("n", "int"),
            ("b", "bool"),
            ("items", "list"),
            ("obj", "dict"),
            ("maybe", "int | None"),
        )
        assert fns["relay"].params[-1] == ("*args", "Any")

    asyncio.run(scenario())


@both_modes
def test_state_operations_are_recorded_in_the_simulation(mode: str) -> None:
    state = DictState({(NS, "committed"): ("old", Version(3, 1))})

    async def scenario() -> None:
        sim = new_sim(state)
        ctx = sim.context(NS)
        async with open_pool(mode) as pool:
            assert await pool.call("put", ["a", {"n": 1}], ctx) is None
            assert await pool.call("put_then_get", ["b", [1, 2]], ctx) == [1, 2]
            assert await pool.call("get", ["committed"], ctx) == "old"
            assert await pool.call("get", ["missing"], ctx) is None
            await pool.call("delete", ["gone"], ctx)
            await pool.call("bump", ["n", 5], ctx)
            await pool.call("bump", ["n", -2], ctx)
            await pool.call("announce", ["made", {"x": 1}], ctx)
        ns = rwset(sim)
        assert ns.reads == (KVRead("committed", Version(3, 1)), KVRead("missing", None))
        assert ns.writes == (
            KVWrite("a", {"n": 1}),
            KVWrite("b", [1, 2]),
            KVWrite("gone", None, delete=True),
        )
        assert ns.deltas == (KVDelta("n", 3),)
        assert sim.result(None, "probe@1").events == (Event(NS, "made", {"x": 1}),)

    asyncio.run(scenario())


def test_range_query_and_history_round_trip() -> None:
    state = DictState(
        {
            (NS, "item:1"): ({"color": "red"}, Version(1, 0)),
            (NS, "item:2"): ({"color": "blue"}, Version(2, 0)),
            (NS, "item:3"): ({"color": "red"}, Version(2, 1)),
            (NS, "other"): (7, Version(2, 2)),
        },
        {(NS, "item:1"): [HistoryEntry("tx-0", 1, 5, {"color": "red"}, False)]},
    )

    async def scenario() -> None:
        sim = new_sim(state)
        ctx = sim.context(NS)
        async with open_pool() as pool:
            rows = await pool.call("scan", ["item:", "item;", 2], ctx)
            assert rows == [["item:1", {"color": "red"}], ["item:2", {"color": "blue"}]]
            found = await pool.call("find", [{"color": "red"}], ctx)
            assert [k for k, _ in found] == ["item:1", "item:3"]
            assert await pool.call("history", ["item:1"], ctx) == [
                ["tx-0", 1, {"color": "red"}, False]
            ]
        assert rwset(sim).range_reads == (
            RangeRead(
                "item:",
                "item;",
                (KVRead("item:1", Version(1, 0)), KVRead("item:2", Version(2, 0))),
                False,
            ),
        )

    asyncio.run(scenario())


def test_context_fields_reach_the_contract() -> None:
    async def scenario() -> None:
        async with open_pool() as pool:
            assert await call(pool, "whoami") == {
                "tx_id": "tx-1",
                "timestamp_ms": 1_700_000_000_000,
                "app": "shop",
                "contract": NS,
                "org": "org1",
                "name": "alice",
                "role": "client",
                "team": "blue",
            }

    asyncio.run(scenario())


@both_modes
def test_invoke_runs_the_other_contract_through_the_invoker(mode: str) -> None:
    async def scenario() -> None:
        async with (
            open_pool(mode) as pool,
            open_pool(mode, entry="peer_contract:Peer", workers=1) as peer,
        ):

            async def invoker(
                sim: Simulation, contract: str, function: str, args: list[Any]
            ) -> Any:
                return await peer.call(function, args, sim.context(contract))

            sim = new_sim(invoker=invoker)
            result = await pool.call("relay", ["peer", "double", "twice", 21], sim.context(NS))
            assert result == 42
            assert rwset(sim, "peer").writes == (KVWrite("twice", 42),)

    asyncio.run(scenario())


@both_modes
def test_print_in_a_contract_is_logged_not_mixed_into_the_protocol(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meridian.contracts")

    async def scenario() -> None:
        async with open_pool(mode) as pool:
            assert (
                await call(pool, "chatty", "hello from the contract") == "hello from the contract"
            )
            await assert_serves(pool)

    asyncio.run(scenario())
    assert "hello from the contract" in caplog.text


@both_modes
def test_concurrent_calls_use_both_workers(mode: str) -> None:
    async def scenario() -> None:
        async with open_pool(mode, workers=2) as pool:
            await asyncio.gather(call(pool, "token"), call(pool, "token"))  # warm both up
            started = time.monotonic()
            tokens = await asyncio.gather(*(call(pool, "nap", 300) for _ in range(6)))
            elapsed = time.monotonic() - started
        assert len(set(tokens)) == 2
        assert elapsed < 1.5  # 3 rounds of 0.3 s on 2 workers, not 6 in a row

    asyncio.run(scenario())


@both_modes
def test_large_values_cross_the_protocol(mode: str) -> None:
    big = "x" * (3 * 2**20)

    async def scenario() -> None:
        async with open_pool(mode) as pool:
            assert await call(pool, "echo", big) == big

    asyncio.run(scenario())


def test_workers_are_replaced_after_max_calls() -> None:
    async def scenario() -> None:
        async with open_pool(workers=1, max_calls_per_worker=2) as pool:
            tokens = [await call(pool, "token") for _ in range(4)]
        assert tokens[0] == tokens[1] != tokens[2] == tokens[3]

    asyncio.run(scenario())


# --------------------------------------------------------------------------- failures


def test_invalid_unknown_function() -> None:
    async def scenario() -> None:
        async with open_pool() as pool:
            err = await expect_failure(pool, "steal", [], "unknown_function", NotFound)
            assert "echo" in err.message and "put" in err.message
            await expect_failure(pool, "helper", [], "unknown_function", NotFound)
            await assert_serves(pool)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["s", True, True, [], {}, None], "'n'"),  # bool is not an int
        (["s", 1, 1, [], {}, None], "'b'"),
        ([1, 1, True, [], {}, None], "'s'"),
        (["s", 1, True, {}, {}, None], "'items'"),
        (["s", 1, True, [], [], None], "'obj'"),
        (["s", 1, True, [], {}, "x"], "'maybe'"),
        (["s", 1, True, [], {}], "takes 6"),
        (["s", 1, True, [], {}, None, 7], "takes 6"),
        (["s", 1.5, True, [], {}, None], "floating-point"),
    ],
)
def test_invalid_argument_types_and_count(args: list[Any], mentions: str) -> None:
    async def scenario() -> None:
        async with open_pool() as pool:
            err = await expect_failure(pool, "typed", args, "bad_argument", ContractArgumentError)
            assert mentions in err.message
            ok = await call(pool, "typed", "s", 1, True, [1], {"k": 2}, None)
            assert ok == ["s", 1, True, [1], {"k": 2}, None]

    asyncio.run(scenario())


def test_invalid_contract_error_is_rejected_with_its_message() -> None:
    async def scenario() -> None:
        async with open_pool() as pool:
            err = await expect_failure(pool, "reject", ["not enough stock"], "contract_rejected")
            assert err.message == "not enough stock"
            await assert_serves(pool)

    asyncio.run(scenario())


def test_invalid_other_exception_is_a_contract_error() -> None:
    async def scenario() -> None:
        async with open_pool() as pool:
            err = await expect_failure(pool, "explode", [], "contract_error")
            assert err.message == "ValueError: boom"
            await assert_serves(pool)

    asyncio.run(scenario())


@both_modes
def test_invalid_infinite_loop_times_out(mode: str) -> None:
    async def scenario() -> None:
        async with open_pool(mode, workers=1, call_timeout_s=1.0) as pool:
            started = time.monotonic()
            await expect_failure(pool, "spin", [], "contract_timeout")
            assert time.monotonic() - started < 3
            await assert_serves(pool)

    asyncio.run(scenario())


@both_modes
def test_invalid_unbounded_allocation_hits_the_memory_limit(mode: str) -> None:
    async def scenario() -> None:
        async with open_pool(mode, workers=1, memory_bytes=256 * 2**20) as pool:
            await expect_failure(pool, "hog", [], "contract_resource_limit")
            await assert_serves(pool)

    asyncio.run(scenario())


@both_modes
def test_invalid_cpu_limit_kills_the_worker(mode: str) -> None:
    async def scenario() -> None:
        async with open_pool(mode, workers=1, cpu_seconds=1, call_timeout_s=10.0) as pool:
            await expect_failure(pool, "spin", [], "contract_resource_limit")
            await assert_serves(pool)

    asyncio.run(scenario())


@both_modes
def test_invalid_socket_is_forbidden_even_if_caught(mode: str) -> None:
    async def scenario() -> None:
        async with open_pool(mode) as pool:
            err = await expect_failure(pool, "dial", [], "contract_forbidden")
            assert "socket" in err.message
            await assert_serves(pool)

    asyncio.run(scenario())


@both_modes
@pytest.mark.parametrize("where", ["tmp", "package"])
def test_invalid_file_write_is_forbidden(mode: str, where: str) -> None:
    name = f"meridian-sandbox-{uuid.uuid4().hex}"
    target = Path("/tmp", name) if where == "tmp" else PROBE / name
    in_mount = where == "package" and mode == "bwrap"
    inside = f"{sandbox.CONTRACT_MOUNT}/{name}" if in_mount else str(target)

    async def scenario() -> None:
        async with open_pool(mode) as pool:
            await expect_failure(pool, "scribble", [inside], "contract_forbidden")
            await assert_serves(pool)

    try:
        asyncio.run(scenario())
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


@both_modes
def test_invalid_read_outside_the_sandbox(mode: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "node-data"
    data_dir.mkdir()
    secret = data_dir / "node.key"
    secret.write_text("TOP-SECRET-KEY")

    async def scenario() -> None:
        async with open_pool(mode) as pool:
            err = await expect_failure(pool, "read", [str(secret)], "contract_error")
            assert "TOP-SECRET-KEY" not in err.message
            if mode == "bwrap":  # not merely refused by the audit hook: not there at all
                assert await call(pool, "exists", str(secret)) is False
                assert await call(pool, "exists", "/etc/passwd") is False
            await assert_serves(pool)

    asyncio.run(scenario())


@needs_bwrap
@pytest.mark.skipif(not IS_ROOT, reason="the uid drop only happens when the node is root")
def test_invalid_read_of_a_root_only_file_under_bwrap(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(PROBE, package)
    package.chmod(0o755)
    (package / "probe_contract.py").chmod(0o644)
    (package / "secret.txt").write_text("ROOT-ONLY")
    (package / "secret.txt").chmod(0o600)

    async def scenario() -> None:
        async with open_pool("bwrap", package=package) as pool:
            err = await expect_failure(pool, "read", ["secret.txt"], "contract_error")
            assert err.message.startswith("PermissionError")
            await assert_serves(pool)

    asyncio.run(scenario())


@needs_bwrap
@pytest.mark.skipif(not IS_ROOT, reason="the uid drop only happens when the node is root")
def test_invalid_package_dir_not_world_readable_under_bwrap(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(PROBE, package)
    package.chmod(0o700)

    async def scenario() -> None:
        async with open_pool("bwrap", package=package) as pool:
            err = await expect_failure(pool, "echo", [1], "contract_load_failed")
            assert err.hint and "0755" in err.hint

    asyncio.run(scenario())


@both_modes
def test_invalid_process_spawn_is_forbidden(mode: str) -> None:
    async def scenario() -> None:
        async with open_pool(mode) as pool:
            await expect_failure(pool, "spawn", [], "contract_forbidden")
            await assert_serves(pool)

    asyncio.run(scenario())


def test_invalid_return_value_is_rejected() -> None:
    async def scenario() -> None:
        async with open_pool() as pool:
            err = await expect_failure(pool, "bad_return", [], "contract_bad_value")
            assert "floating-point" in err.message
            await assert_serves(pool)

    asyncio.run(scenario())


def test_invalid_context_error_fails_the_call_even_if_caught() -> None:
    async def scenario() -> None:
        sim = new_sim()
        async with open_pool() as pool:
            with pytest.raises(ContractFailure) as info:
                await pool.call("swallow_bad_key", [], sim.context(NS))
            assert info.value.code == "contract_bad_key"
            await expect_failure(pool, "unencodable_put", [], "contract_bad_value")
            await assert_serves(pool)
        assert sim.result(None, "probe@1").rwsets == ()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("entry", "mentions"),
    [
        ("broken_contract:Broken", "ModuleNotFoundError"),
        ("plain:Plain", "not a Contract subclass"),
        ("plain:Missing", "not a Contract subclass"),
        ("no_such_module:X", "ModuleNotFoundError"),
        ("no-colon", "module:ClassName"),
    ],
)
def test_invalid_package_that_cannot_be_loaded(entry: str, mentions: str) -> None:
    async def scenario() -> None:
        async with open_pool(package=FIXTURES / "broken", entry=entry, workers=1) as pool:
            with pytest.raises(ContractFailure) as info:
                await pool.describe()
            assert info.value.code == "contract_load_failed"
            assert mentions in info.value.message
            await expect_failure(pool, "anything", [], "contract_load_failed")

    asyncio.run(scenario())


def test_invalid_contract_that_never_finishes_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "STARTUP_TIMEOUT_S", 1.0)

    async def scenario() -> None:
        async with open_pool(package=FIXTURES / "broken", entry="hang:Hang", workers=1) as pool:
            err = await expect_failure(pool, "anything", [], "contract_load_failed")
            assert "did not load" in err.message

    asyncio.run(scenario())


@pytest.mark.parametrize("function", ["die", "corrupt"])
def test_invalid_worker_death_is_a_crash_and_the_pool_recovers(function: str) -> None:
    async def scenario() -> None:
        async with open_pool(workers=1) as pool:
            await expect_failure(pool, function, [], "contract_crashed")
            await assert_serves(pool)

    asyncio.run(scenario())


def test_invalid_call_after_close() -> None:
    async def scenario() -> None:
        async with open_pool() as pool:
            await assert_serves(pool)
        with pytest.raises(Unavailable):
            await call(pool, "echo", 1)

    asyncio.run(scenario())


def test_invalid_sandbox_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInput):
        SandboxLimits(mode="docker")
    with pytest.raises(InvalidInput):
        SandboxLimits(call_timeout_s=0)
    monkeypatch.setattr(sandbox, "probe_bwrap", lambda: "no bubblewrap here")
    with pytest.raises(Unavailable) as info:
        ContractPool(PROBE, ENTRY, limits=SandboxLimits(mode="bwrap"))
    assert info.value.code == "sandbox_unavailable"
    assert ContractPool(PROBE, ENTRY, limits=SandboxLimits(mode="auto")).sandbox_mode == "none"
