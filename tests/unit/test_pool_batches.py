"""The batched worker protocol: frame limits, per-call deadlines, nested invokes, retiring,
and a batch's calls running concurrently in the worker with their reads in waves."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from meridian.contracts import pool as pool_module
from meridian.contracts.pool import ContractPool
from meridian.contracts.registry import RestartableCall
from meridian.contracts.simulation import Simulation
from meridian.errors import ContractArgumentError, ContractFailure
from meridian.types import KVDelta, KVRead, KVWrite, Version

from .test_contract_pool import (
    NS,
    DictState,
    both_modes,
    call,
    expect_failure,
    new_sim,
    open_pool,
    rwset,
)


@pytest.fixture()
def frames(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every frame the node sends to a worker, decoded, in order."""
    sent: list[dict[str, Any]] = []
    send_raw = pool_module._Worker.send_raw

    def recording(worker: pool_module._Worker, *bodies: bytes) -> None:
        sent.extend(orjson.loads(body) for body in bodies)
        send_raw(worker, *bodies)

    monkeypatch.setattr(pool_module._Worker, "send_raw", recording)
    return sent


def restartable(pool: ContractPool, function: str, args: list[Any], sim: Simulation) -> Any:
    """Start a call as the node does: run again alone on a fresh Simulation if aborted."""

    def start(run_sim: Simulation, solo: bool) -> asyncio.Future[Any]:
        return pool.start_call(function, args, run_sim.context(NS), solo=solo)

    return RestartableCall(sim, start)


def start_in_one_batch(
    pool: ContractPool, calls: list[tuple[str, list[Any], Simulation]]
) -> list[RestartableCall]:
    """Start ``calls`` so that they reach the pool's one worker as one batch.

    The worker must be warm and idle: a first call goes to it at once and keeps it
    busy while the others queue up; it then takes them all (at most MAX_BATCH).
    """
    pool.start_call("token", [], new_sim().context(NS))
    return [restartable(pool, function, args, sim) for function, args, sim in calls]


def sent_ops(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(op, calls or replies it holds) of each frame sent."""
    return [(f["op"], len(f.get("calls", f.get("replies", [])))) for f in frames]


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


def test_worker_is_retired_after_a_call_it_gave_up_on_alive() -> None:
    """A call that switches greenlets by itself fails with contract_error and its worker,
    which keeps the call's greenlet alive, is not used again."""

    async def scenario() -> None:
        async with open_pool(workers=1) as pool:
            first = await call(pool, "token")
            error = await expect_failure(pool, "switch_away", [], "contract_error")
            assert "switched greenlets" in error.message
            assert await call(pool, "token") != first

    asyncio.run(scenario())


def test_invalid_call_larger_than_a_frame_is_refused_up_front() -> None:
    async def scenario() -> None:
        async with open_pool(workers=1) as pool:
            big = ["y" * (4 * 2**20)]
            await expect_failure(pool, "echo", big, "bad_argument", kind=ContractArgumentError)
            assert await call(pool, "echo", "ok") == "ok"

    asyncio.run(scenario())


# ----------------------------------------------------------------- concurrent batches


def test_a_wave_of_reads_is_answered_in_one_frame(frames: list[dict[str, Any]]) -> None:
    """Forty calls each read then write: the node answers all forty reads in one frame
    (one round trip for the batch, not one per read), each recorded in its own call."""
    n = 40
    state = DictState({(NS, f"k{i}"): (i, Version(1, i)) for i in range(n)})

    async def scenario() -> list[RestartableCall]:
        async with open_pool(workers=1) as pool:
            await call(pool, "token")
            frames.clear()
            calls = [("get_then_put", [f"k{i}", -i], new_sim(state)) for i in range(n)]
            runs = start_in_one_batch(pool, calls)
            assert await asyncio.gather(*(r.future for r in runs)) == list(range(n))
            return runs

    runs = asyncio.run(scenario())
    assert sent_ops(frames) == [("calls", 1), ("calls", n), ("replies", n)]
    for i, run in enumerate(runs):
        assert rwset(run.sim).reads == (KVRead(f"k{i}", Version(1, i)),)
        assert rwset(run.sim).writes == (KVWrite(f"k{i}", -i),)


def test_concurrent_calls_read_their_own_writes_and_not_each_others(
    frames: list[dict[str, Any]],
) -> None:
    state = DictState({(NS, "shared"): ("committed", Version(4, 0))})

    async def scenario() -> list[RestartableCall]:
        async with open_pool(workers=1) as pool:
            await call(pool, "token")
            frames.clear()
            runs = start_in_one_batch(
                pool,
                [
                    ("put_then_get", ["shared", "a"], new_sim(state)),
                    ("get", ["shared"], new_sim(state)),
                    ("put_then_get", ["shared", "b"], new_sim(state)),
                    ("get_then_put", ["shared", "c"], new_sim(state)),
                ],
            )
            results = await asyncio.gather(*(r.future for r in runs))
            assert results == ["a", "committed", "b", "committed"]
            return runs

    runs = asyncio.run(scenario())
    assert sent_ops(frames) == [("calls", 1), ("calls", 4), ("replies", 4)]  # side by side
    committed = (KVRead("shared", Version(4, 0)),)
    expected = [
        ((), (KVWrite("shared", "a"),)),  # its own write: not a read of committed state
        (committed, ()),
        ((), (KVWrite("shared", "b"),)),
        (committed, (KVWrite("shared", "c"),)),
    ]
    assert [(rwset(r.sim).reads, rwset(r.sim).writes) for r in runs] == expected


@pytest.mark.parametrize(
    ("culprit", "code"),
    [
        ("spin", "contract_timeout"),  # stuck before any read: nothing reached the node
        ("get_then_spin", "contract_timeout"),  # stuck after a wave the node applied
        ("get_then_die", "contract_crashed"),
        ("get_then_hog", "contract_resource_limit"),
        ("dial_then_get", "contract_forbidden"),  # a violation the contract swallowed
    ],
)
def test_a_call_that_fails_its_worker_is_the_only_call_that_fails(culprit: str, code: str) -> None:
    """Its co-runners are not blamed: those the failure cut short run again, alone, on a
    fresh Simulation, so nothing of the aborted run is left in their results."""
    state = DictState({(NS, "k"): ("v", Version(1, 0))})

    async def scenario() -> tuple[list[RestartableCall], list[Simulation], list[Any]]:
        async with open_pool(workers=1, call_timeout_s=1.0, memory_bytes=256 * 2**20) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(
                pool,
                [
                    ("bump_then_get", ["n0", 1, "k"], new_sim(state)),
                    (culprit, [] if culprit == "spin" else ["k"], new_sim(state)),
                    ("bump_then_get", ["n2", 2, "k"], new_sim(state)),
                    ("get_then_put", ["k", "w"], new_sim(state)),
                ],
            )
            first = [r.sim for r in runs]
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            await assert_serves_restartable(pool)
            return runs, first, outcomes

    runs, first, outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[1], ContractFailure), outcomes[1]
    assert outcomes[1].code == code
    assert [outcomes[0], outcomes[2], outcomes[3]] == ["v", "v", "v"]
    for i, key, by in ((0, "n0", 1), (2, "n2", 2)):
        assert rwset(runs[i].sim).deltas == (KVDelta(key, by),)  # once, not once per run
        assert rwset(runs[i].sim).reads == (KVRead("k", Version(1, 0)),)
    assert runs[2].restarted and runs[2].sim is not first[2]
    if culprit.startswith("get_then"):  # the aborted run had reached the node: its leftovers
        assert rwset(first[2]).deltas == (KVDelta("n2", 2),)  # stayed in the old Simulation
    assert rwset(runs[3].sim).writes == (KVWrite("k", "w"),)


async def assert_serves_restartable(pool: ContractPool) -> None:
    run = restartable(pool, "echo", ["still here"], new_sim())
    assert await run.future == "still here"


@both_modes
@pytest.mark.parametrize(
    ("culprit", "code"),
    [("dial_then_get", "contract_forbidden"), ("get_then_hog", "contract_resource_limit")],
)
def test_a_sandbox_failure_in_a_batch_is_charged_to_its_call(
    mode: str, culprit: str, code: str
) -> None:
    """The audit flag is process-wide: it is charged to the call that was running when it
    was raised (here after other calls' reads), and greenlets work under bubblewrap."""

    async def scenario() -> None:
        async with open_pool(mode, workers=1, memory_bytes=256 * 2**20) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(
                pool,
                [
                    ("get_then_put", ["a", 1], new_sim()),
                    ("get_then_put", ["b", 2], new_sim()),
                    (culprit, ["k"], new_sim()),
                    ("get_then_put", ["c", 3], new_sim()),
                ],
            )
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            assert outcomes[:2] == [None, None] and outcomes[3] is None, outcomes
            assert isinstance(outcomes[2], ContractFailure) and outcomes[2].code == code
            if code == "contract_forbidden":
                assert "socket" in outcomes[2].message
            await assert_serves_restartable(pool)

    asyncio.run(scenario())


@both_modes
def test_running_out_of_memory_beside_other_calls_blames_none(mode: str) -> None:
    """All calls of a batch hold memory at once: the one that crosses the limit beside
    another's 64 MiB is not blamed. The worker stops, both run again alone and succeed."""

    async def scenario() -> None:
        async with open_pool(mode, workers=1, memory_bytes=128 * 2**20) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(
                pool, [("hold_then_get", [64, "k"], new_sim()), ("allocate", [64], new_sim())]
            )
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            assert outcomes == [64, 64]
            assert runs[0].restarted and runs[1].restarted
            await expect_failure(pool, "hog", [], "contract_resource_limit")  # alone: blamed

    asyncio.run(scenario())


def test_running_out_of_memory_beside_a_call_given_up_on_blames_none() -> None:
    """A call the worker gave up on (timed out) keeps its greenlet, and its memory: the
    batch's last unfinished call, running out of memory beside it, is not blamed."""

    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=1.0, memory_bytes=128 * 2**20) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(
                pool,
                [
                    ("hold_then_nap_forever", [64, "k"], new_sim()),
                    ("read_then_allocate", ["k", 20, 64], new_sim()),
                ],
            )
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            assert isinstance(outcomes[0], ContractFailure), outcomes
            assert outcomes[0].code == "contract_timeout" and not runs[0].restarted
            assert outcomes[1] == 64 and runs[1].restarted

    asyncio.run(scenario())


@both_modes
def test_a_violation_outside_any_call_blames_none(mode: str) -> None:
    """A violation while no call's turn runs (here in the worker's own sending, which a
    call hooked) is no one call's: not the call that happens to run next. Every call
    runs again alone; the hooking call, stopped again alone, is reported aborted."""

    async def scenario() -> None:
        async with open_pool(mode, workers=1) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(
                pool,
                [
                    ("get_then_put", ["a", 1], new_sim()),
                    ("dial_between_turns", ["k"], new_sim()),
                    ("get_then_put", ["b", 2], new_sim()),
                ],
            )
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            assert outcomes[0] is None and outcomes[2] is None, outcomes
            assert isinstance(outcomes[1], ContractFailure), outcomes
            assert outcomes[1].code == "contract_aborted"
            assert all(r.restarted for r in runs)
            await assert_serves_restartable(pool)

    asyncio.run(scenario())


def test_a_call_that_reads_forever_ends_at_its_own_budget() -> None:
    """It keeps its worker talking, so only its own time budget can end it: the worker
    does, and the call beside it finishes on the same worker (nothing is aborted). Its
    waits for the node's answers count, so it ends near its 0.5 s, not many times that."""

    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=0.5) as pool:
            await call(pool, "token")
            started = time.monotonic()
            runs = start_in_one_batch(
                pool, [("read_forever", ["k"], new_sim()), ("get_then_put", ["k", 1], new_sim())]
            )
            async with asyncio.timeout(3):
                with pytest.raises(ContractFailure) as info:
                    await runs[0].future
                assert await runs[1].future is None
            assert info.value.code == "contract_timeout"
            assert not runs[0].restarted and not runs[1].restarted
            assert time.monotonic() - started < 3

    asyncio.run(scenario())


def test_a_call_that_keeps_its_worker_talking_still_has_a_deadline() -> None:
    """The worker's frames do not move the node's own deadline: a call alone that never
    ends but keeps sending frames times out within 2 * call_timeout_s."""

    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=0.5) as pool:
            await call(pool, "token")
            started = time.monotonic()
            async with asyncio.timeout(5):  # it would talk for 20 s
                error = await expect_failure(pool, "keep_talking", [20], "contract_timeout")
            assert time.monotonic() - started < 4.0  # the deadline is 1 s; slack for CI load
            assert "deadline" in error.message

    asyncio.run(scenario())


def test_a_batch_the_node_owes_an_answer_forever_still_has_a_deadline() -> None:
    """A nested call that never ends holds the wave's answers (the worker waits, silent,
    as it should); the batch's deadline still ends it: both calls run again alone, the
    invoking one times out and the other succeeds."""

    async def never(sim: Simulation, contract: str, fn: str, args: list[Any]) -> Any:
        await asyncio.Event().wait()

    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=0.5) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(
                pool,
                [
                    ("relay", ["peer", "double", "t", 1], new_sim(invoker=never)),
                    ("get_then_put", ["k", 1], new_sim()),
                ],
            )
            async with asyncio.timeout(5):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            assert isinstance(outcomes[0], ContractFailure), outcomes
            assert outcomes[0].code == "contract_timeout"
            assert outcomes[1] is None
            assert runs[0].restarted and runs[1].restarted

    asyncio.run(scenario())


def test_invalid_a_call_that_does_not_wait_for_its_invoke_stops_its_worker() -> None:
    """An invoke its call never waits for (the call ends meanwhile) broke the protocol:
    the worker is killed at once (the wave it held is never left hanging), the call
    fails, and its co-runner runs again alone and succeeds."""

    async def peer(sim: Simulation, contract: str, fn: str, args: list[Any]) -> Any:
        return 1

    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=1.0) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(
                pool,
                [
                    ("invoke_unawaited", ["peer", "double", "t", 1], new_sim(invoker=peer)),
                    ("get_then_put", ["k", 1], new_sim()),
                ],
            )
            async with asyncio.timeout(10):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            assert isinstance(outcomes[0], ContractFailure), outcomes
            assert outcomes[0].code == "contract_crashed"
            assert outcomes[1] is None and runs[1].restarted  # crashed, not held to a timeout
            await assert_serves_restartable(pool)

    asyncio.run(scenario())


def test_invalid_reads_a_call_does_not_wait_for_stop_its_worker() -> None:
    """Reads sent without waiting would pile their answers up in the node: the second
    one a call sends before it has the first one's answer gets its worker killed."""

    async def scenario() -> None:
        async with open_pool(workers=1) as pool:
            first = await call(pool, "token")
            error = await expect_failure(pool, "reads_unawaited", ["k", 1000], "contract_crashed")
            assert "before its answer" in error.message
            assert await call(pool, "token") != first

    asyncio.run(scenario())


def test_invalid_a_worker_that_does_not_read_its_input_is_stopped() -> None:
    """The node does not buffer without bound what a worker leaves unread: past
    MAX_UNREAD_BYTES the worker is killed (here long before the call's deadline)."""
    state = DictState({(NS, "big"): ("x" * 2**20, Version(1, 0))})

    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=5.0) as pool:
            first = await call(pool, "token")
            started = time.monotonic()
            with pytest.raises(ContractFailure) as info:
                await pool.call("ask_without_reading", ["big", 40], new_sim(state).context(NS))
            assert info.value.code == "contract_crashed"
            assert "unread" in info.value.message
            assert time.monotonic() - started < 5.0
            assert await call(pool, "token") != first

    asyncio.run(scenario())


def test_a_wave_of_answers_larger_than_the_unread_limit_is_served() -> None:
    """The limit is on what a worker leaves unread of earlier frames, not on one wave:
    twenty reads of 1 MiB answered at once (20 MiB, several frames) all succeed."""
    state = DictState({(NS, "big"): ("x" * 2**20, Version(1, 0))})

    async def scenario() -> None:
        async with open_pool(workers=1) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(pool, [("get", ["big"], new_sim(state)) for _ in range(20)])
            async with asyncio.timeout(30):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            assert all(o == "x" * 2**20 for o in outcomes), [type(o) for o in outcomes]
            assert not any(r.restarted for r in runs)

    asyncio.run(scenario())


def test_invokes_run_from_a_concurrent_batch(frames: list[dict[str, Any]]) -> None:
    """Nested calls made side by side are answered in the batch's wave."""

    async def scenario() -> list[RestartableCall]:
        async with (
            open_pool(workers=1) as pool,
            open_pool(entry="peer_contract:Peer", workers=1) as peer,
        ):

            async def invoker(sim: Simulation, contract: str, fn: str, args: list[Any]) -> Any:
                return await peer.call(fn, args, sim.context(contract))

            await call(pool, "token")
            frames.clear()
            calls = [
                ("relay", ["peer", "double", f"t{i}", i], new_sim(invoker=invoker))
                for i in range(4)
            ]
            runs = start_in_one_batch(pool, [*calls, ("get_then_put", ["k", 1], new_sim())])
            async with asyncio.timeout(30):
                assert await asyncio.gather(*(r.future for r in runs)) == [0, 2, 4, 6, None]
            return runs

    runs = asyncio.run(scenario())
    assert not any(r.restarted for r in runs)
    for i, run in enumerate(runs[:4]):
        assert rwset(run.sim, "peer").writes == (KVWrite(f"t{i}", 2 * i),)
    assert [f for f in sent_ops(frames) if f[0] == "replies"] == [("replies", 5)]


def test_a_call_is_not_charged_for_its_neighbours_nested_calls() -> None:
    """The node holds a wave's answers until its nested calls end, but tells how long it
    held each: a call that only reads, in waves that two other calls' 0.6 s invokes
    hold up, is not charged 1.2 s of a 1 s budget (nor is the second invoker)."""

    async def slow(sim: Simulation, contract: str, fn: str, args: list[Any]) -> Any:
        await asyncio.sleep(0.6)
        return fn

    state = DictState({(NS, "k"): ("v", Version(1, 0))})

    async def scenario() -> None:
        async with open_pool(workers=1, call_timeout_s=1.0) as pool:
            await call(pool, "token")
            runs = start_in_one_batch(
                pool,
                [
                    ("relay", ["peer", "first"], new_sim(state, invoker=slow)),
                    ("get_then_relay", ["k", "peer", "second"], new_sim(state, invoker=slow)),
                    ("read_times", ["k", 3], new_sim(state)),
                ],
            )
            async with asyncio.timeout(10):
                outcomes = await asyncio.gather(*(r.future for r in runs), return_exceptions=True)
            assert outcomes == ["first", "second", "v"]
            assert not any(r.restarted for r in runs)

    asyncio.run(scenario())


def test_a_call_aborted_twice_reports_it() -> None:
    """A restart is alone (``solo``) on a fresh Simulation, and happens once."""

    async def scenario() -> None:
        starts: list[tuple[Simulation, bool]] = []

        def start(sim: Simulation, solo: bool) -> asyncio.Future[Any]:
            starts.append((sim, solo))
            future = asyncio.get_running_loop().create_future()
            future.set_exception(ContractFailure("stopped", code=pool_module.ABORTED))
            return future

        run = RestartableCall(new_sim(), start)
        with pytest.raises(ContractFailure) as info:
            await run.future
        assert info.value.code == "contract_aborted"
        assert [solo for _, solo in starts] == [False, True]
        assert starts[1][0] is not starts[0][0] and run.sim is starts[1][0]

    asyncio.run(scenario())
