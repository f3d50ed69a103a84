"""The batched worker protocol: frame limits, per-call deadlines, nested invokes, retiring."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from meridian.contracts.simulation import Simulation
from meridian.errors import ContractArgumentError

from .test_contract_pool import NS, call, expect_failure, new_sim, open_pool


def test_batches_never_exceed_the_frame_limit() -> None:
    """Many calls with large arguments queue up; every one is served (none jams)."""
    big = "x" * (2 * 2**20)

    async def scenario() -> None:
        async with open_pool(workers=1) as pool:
            results = await asyncio.gather(*(call(pool, "echo", big + str(i)) for i in range(5)))
            assert [r[-1] for r in results] == ["0", "1", "2", "3", "4"]
            assert await call(pool, "echo", "small") == "small"

    asyncio.run(scenario())


def test_each_call_in_a_batch_has_its_own_deadline() -> None:
    """Eight 0.3 s calls on one worker with a 1 s limit: queued time does not count."""

    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=1.0) as pool:
            await call(pool, "token")
            started = time.monotonic()
            tokens = await asyncio.gather(*(call(pool, "nap", 300) for _ in range(8)))
            assert len(set(tokens)) == 1  # one worker, never replaced
            assert time.monotonic() - started >= 2.4

    asyncio.run(scenario())


def test_a_timeout_in_a_batch_fails_only_that_call() -> None:
    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=1.0) as pool:
            await call(pool, "token")
            spin = asyncio.ensure_future(expect_failure(pool, "spin", [], "contract_timeout"))
            others = [asyncio.ensure_future(call(pool, "nap", 50)) for _ in range(4)]
            await spin
            assert len(await asyncio.gather(*others)) == 4  # re-queued to a new worker

    asyncio.run(scenario())


def test_contracts_invoking_their_own_pool_do_not_deadlock() -> None:
    """As many self-invoking calls as workers: reserved nested slots keep them moving."""

    async def scenario() -> None:
        async with open_pool(workers=2, call_timeout_s=5.0) as pool:

            async def invoker(sim: Simulation, contract: str, fn: str, args: list[Any]) -> Any:
                return await pool.call(fn, args, sim.context(contract))

            async def relay() -> Any:
                sim = new_sim(invoker=invoker)
                return await pool.call("relay", [NS, "nap", 200], sim.context(NS))

            started = time.monotonic()
            tokens = await asyncio.gather(*(relay() for _ in range(4)))
            assert all(isinstance(t, str) for t in tokens)
            assert time.monotonic() - started < 4.0

    asyncio.run(scenario())


def test_worker_is_retired_after_a_violation_even_after_a_host_error() -> None:
    async def scenario() -> None:
        async with open_pool(mode="none", workers=1) as pool:
            first = await call(pool, "token")
            await expect_failure(pool, "bad_key_then_dial", [], "contract_bad_key")
            assert await call(pool, "echo", 1) == 1  # a fresh worker, not a tainted one
            assert await call(pool, "token") != first

    asyncio.run(scenario())


def test_invalid_call_larger_than_a_frame_is_refused_up_front() -> None:
    async def scenario() -> None:
        async with open_pool(workers=1) as pool:
            big = ["y" * (4 * 2**20)]
            await expect_failure(pool, "echo", big, "bad_argument", kind=ContractArgumentError)
            assert await call(pool, "echo", "ok") == "ok"

    asyncio.run(scenario())
