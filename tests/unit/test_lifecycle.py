"""The _lifecycle contract (approve, commit) and the simulation that records what calls do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from meridian.contracts.api import CallerIdentity, ContractError, HistoryEntry
from meridian.contracts.lifecycle import (
    LIFECYCLE,
    ContractDefinition,
    Lifecycle,
    approval_key,
    definition_key,
    get_consenters_config,
    get_definition,
)
from meridian.contracts.simulation import Simulation, SimulationContext
from meridian.errors import ContractFailure
from meridian.node.policy import parse_policy
from meridian.types import (
    MAX_EVENTS,
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

MEMBERS = ("org1", "org2", "org3")
PKG_A = "asset:" + "aa" * 32
PKG_B = "asset:" + "bb" * 32
LABEL = f"{LIFECYCLE}@0"


def _admin(org: str) -> CallerIdentity:
    return CallerIdentity(org, f"admin-{org}", "admin")


class DictState:
    """A StateView over a dict; ``apply`` commits a result's writes as the next block."""

    def __init__(self, rows: dict[tuple[str, str], tuple[Any, Version]] | None = None) -> None:
        self.rows = dict(rows or {})
        self.height = 1

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None:
        return self.rows.get((ns, key))

    def get_range(
        self, ns: str, start: str, end: str, limit: int
    ) -> list[tuple[str, Any, Version]]:
        keys = sorted(k for n, k in self.rows if n == ns and k >= start and (not end or k < end))
        return [(k, *self.rows[(ns, k)]) for k in keys[:limit]]

    def query(
        self, ns: str, selector: Mapping[str, Any], limit: int
    ) -> list[tuple[str, Any, Version]]:
        rows = self.get_range(ns, "", "", 10_000)
        return [r for r in rows if all(r[1].get(f) == v for f, v in selector.items())][:limit]

    def get_history(self, ns: str, key: str, limit: int) -> list[HistoryEntry]:
        return []

    def apply(self, result: TxResult) -> None:
        for rw in result.rwsets:
            for w in rw.writes:
                if w.delete:
                    self.rows.pop((rw.namespace, w.key), None)
                else:
                    self.rows[(rw.namespace, w.key)] = (w.value, Version(self.height, 0))
        self.height += 1


def _sim(state: DictState, caller: CallerIdentity | None = None) -> Simulation:
    return Simulation(
        state,
        app="trade",
        tx_id="ab" * 32,
        timestamp_ms=1_900_000_000_000,
        caller=caller or CallerIdentity("org1", "alice", "client"),
    )


@pytest.fixture
def state() -> DictState:
    return DictState()


@pytest.fixture
def lifecycle() -> Lifecycle:
    return Lifecycle(MEMBERS, parse_policy("MAJORITY"))


def _call(
    lifecycle: Lifecycle,
    state: DictState,
    org: str,
    method: str,
    *args: Any,
    caller: CallerIdentity | None = None,
) -> tuple[Any, TxResult]:
    """Run one lifecycle transaction and commit its writes."""
    sim = _sim(state, caller or _admin(org))
    response = getattr(lifecycle, method)(sim.context(LIFECYCLE), *args)
    result = sim.result(response, LABEL)
    state.apply(result)
    return response, result


def _approve(
    lifecycle: Lifecycle,
    state: DictState,
    org: str,
    sequence: int = 1,
    package_id: str = PKG_A,
    policy: str = "MAJORITY",
) -> Any:
    return _call(lifecycle, state, org, "approve", "asset", "1.0", sequence, package_id, policy)[0]


def _commit(
    lifecycle: Lifecycle,
    state: DictState,
    org: str,
    sequence: int = 1,
    package_id: str = PKG_A,
    policy: str = "MAJORITY",
) -> tuple[Any, TxResult]:
    return _call(lifecycle, state, org, "commit", "asset", "1.0", sequence, package_id, policy)


# --------------------------------------------------------------------------- lifecycle


def test_approve_records_the_orgs_approval(lifecycle: Lifecycle, state: DictState) -> None:
    sim = _sim(state, _admin("org1"))
    response = lifecycle.approve(sim.context(LIFECYCLE), "asset", "1.0", 1, PKG_A, "ANY")
    expected = {
        "name": "asset",
        "version": "1.0",
        "sequence": 1,
        "package_id": PKG_A,
        "policy": "ANY",
    }
    assert response == {"org": "org1", **expected}
    result = sim.result(response, LABEL)
    [rw] = result.rwsets
    assert rw.namespace == LIFECYCLE
    assert rw.writes == (KVWrite(approval_key("asset", 1, "org1"), expected),)
    assert [(e.contract, e.name) for e in result.events] == [(LIFECYCLE, "approved")]


def test_two_of_three_approvals_then_commit(lifecycle: Lifecycle, state: DictState) -> None:
    _approve(lifecycle, state, "org1", policy="2-of(org1,org2)")
    _approve(lifecycle, state, "org2", policy="2-of(org2,org1)")
    definition, result = _commit(lifecycle, state, "org3", policy="2-of(org1,org2)")
    committed = get_definition(state.get, "asset")
    assert committed == ContractDefinition(
        "asset", "1.0", 1, PKG_A, parse_policy("2-of(org1,org2)")
    )
    assert committed is not None and committed.label == "asset@1"
    assert definition == committed.to_dict()
    [rw] = result.rwsets
    reads = {r.key: r.version for r in rw.reads}
    assert reads[approval_key("asset", 1, "org1")] == Version(1, 0)
    assert reads[approval_key("asset", 1, "org2")] == Version(2, 0)
    assert reads[definition_key("asset")] is None
    assert [e.name for e in result.events] == ["committed"]


def test_invalid_commit_with_one_of_three_approvals(lifecycle: Lifecycle, state: DictState) -> None:
    _approve(lifecycle, state, "org1")
    with pytest.raises(ContractError, match="approved by"):
        _commit(lifecycle, state, "org1")
    assert get_definition(state.get, "asset") is None


def test_invalid_commit_with_no_approvals(lifecycle: Lifecycle, state: DictState) -> None:
    with pytest.raises(ContractError):
        _commit(lifecycle, state, "org1")


@pytest.mark.parametrize(
    "caller",
    [
        CallerIdentity("org1", "alice", "client"),
        CallerIdentity("org1", "peer1", "node"),
        CallerIdentity("org9", "admin-org9", "admin"),
    ],
)
def test_invalid_caller_is_not_a_member_admin(
    lifecycle: Lifecycle, state: DictState, caller: CallerIdentity
) -> None:
    with pytest.raises(ContractError, match="only an admin"):
        _call(lifecycle, state, "", "approve", "asset", "1.0", 1, PKG_A, "MAJORITY", caller=caller)
    _approve(lifecycle, state, "org1")
    _approve(lifecycle, state, "org2")
    with pytest.raises(ContractError, match="only an admin"):
        _call(lifecycle, state, "", "commit", "asset", "1.0", 1, PKG_A, "MAJORITY", caller=caller)
    assert get_definition(state.get, "asset") is None


def test_invalid_sequence_must_be_the_next_one(lifecycle: Lifecycle, state: DictState) -> None:
    for seq in (0, 2):
        with pytest.raises(ContractError):
            _approve(lifecycle, state, "org1", sequence=seq)
    _approve(lifecycle, state, "org1")
    _approve(lifecycle, state, "org2")
    _commit(lifecycle, state, "org1")
    with pytest.raises(ContractError, match="next sequence is 2"):
        _approve(lifecycle, state, "org1", sequence=1)
    with pytest.raises(ContractError, match="next sequence is 2"):
        _commit(lifecycle, state, "org1", sequence=1)


def test_upgrade_needs_new_approvals(lifecycle: Lifecycle, state: DictState) -> None:
    _approve(lifecycle, state, "org1")
    _approve(lifecycle, state, "org2")
    _commit(lifecycle, state, "org1")
    with pytest.raises(ContractError):
        _commit(lifecycle, state, "org1", sequence=2, package_id=PKG_B)
    _approve(lifecycle, state, "org2", sequence=2, package_id=PKG_B)
    _approve(lifecycle, state, "org3", sequence=2, package_id=PKG_B)
    _commit(lifecycle, state, "org2", sequence=2, package_id=PKG_B)
    upgraded = get_definition(state.get, "asset")
    assert upgraded is not None
    assert (upgraded.sequence, upgraded.package_id, upgraded.label) == (2, PKG_B, "asset@2")


def test_invalid_approvals_of_a_different_definition_do_not_count(
    lifecycle: Lifecycle, state: DictState
) -> None:
    _approve(lifecycle, state, "org1", package_id=PKG_A)
    _approve(lifecycle, state, "org2", package_id=PKG_B)
    _approve(lifecycle, state, "org3", package_id=PKG_A, policy="ALL")
    with pytest.raises(ContractError):
        _commit(lifecycle, state, "org1", package_id=PKG_A)
    with pytest.raises(ContractError):
        _commit(lifecycle, state, "org1", package_id=PKG_B)
    _approve(lifecycle, state, "org2", package_id=PKG_A)  # org2 changes its mind
    _commit(lifecycle, state, "org1", package_id=PKG_A)
    assert get_definition(state.get, "asset") is not None


@pytest.mark.parametrize(
    "args",
    [
        ("Asset", "1.0", 1, PKG_A, "MAJORITY"),
        ("asset", "", 1, PKG_A, "MAJORITY"),
        ("asset", "v" * 33, 1, PKG_A, "MAJORITY"),
        ("asset", "1.0", 1, "asset:" + "AA" * 32, "MAJORITY"),
        ("asset", "1.0", 1, "asset-no-digest", "MAJORITY"),
        ("asset", "1.0", 1, PKG_A, "SOME"),
        ("asset", "1.0", 1, PKG_A, "4-of(org1,org2)"),
    ],
)
def test_invalid_approve_arguments(
    lifecycle: Lifecycle, state: DictState, args: tuple[Any, ...]
) -> None:
    with pytest.raises(ContractError):
        _call(lifecycle, state, "org1", "approve", *args)
    assert state.rows == {}


def test_definitions_and_approvals_queries(lifecycle: Lifecycle, state: DictState) -> None:
    _approve(lifecycle, state, "org1")
    _approve(lifecycle, state, "org3")
    ctx = _sim(state).context(LIFECYCLE)
    assert set(lifecycle.approvals(ctx, "asset", 1)) == {"org1", "org3"}
    assert lifecycle.approvals(ctx, "asset", 2) == {}
    assert lifecycle.definitions(ctx) == []
    _commit(lifecycle, state, "org2")
    ctx = _sim(state).context(LIFECYCLE)
    assert [d["name"] for d in lifecycle.definitions(ctx)] == ["asset"]


def test_approvals_of_one_contract_do_not_leak_into_another(
    lifecycle: Lifecycle, state: DictState
) -> None:
    _call(lifecycle, state, "org1", "approve", "asset2", "1.0", 1, "asset2:" + "aa" * 32, "ANY")
    ctx = _sim(state).context(LIFECYCLE)
    assert lifecycle.approvals(ctx, "asset", 1) == {}
    assert set(lifecycle.approvals(ctx, "asset2", 1)) == {"org1"}


# -------------------------------------------------------------------------- simulation


@pytest.fixture
def committed() -> DictState:
    return DictState(
        {
            ("asset", "car-1"): ({"owner": "alice"}, Version(3, 2)),
            ("asset", "car-2"): ({"owner": "bob"}, Version(4, 0)),
            ("asset", "count"): (7, Version(1, 0)),
            ("token", "car-1"): ("other namespace", Version(2, 0)),
        }
    )


def _ctx(state: DictState, ns: str = "asset") -> tuple[Simulation, SimulationContext]:
    sim = _sim(state)
    return sim, sim.context(ns)


def _rwset(sim: Simulation, ns: str = "asset") -> NsRWSet:
    [rw] = [r for r in sim.result(None, "asset@1").rwsets if r.namespace == ns]
    return rw


def test_reads_are_recorded_with_their_versions(committed: DictState) -> None:
    sim, ctx = _ctx(committed)
    assert ctx.get_state("car-1") == {"owner": "alice"}
    assert ctx.get_state("missing") is None
    assert ctx.get_state("car-1") == {"owner": "alice"}  # recorded once
    assert _rwset(sim).reads == (KVRead("car-1", Version(3, 2)), KVRead("missing", None))


def test_read_your_own_writes_without_recording_a_read(committed: DictState) -> None:
    sim, ctx = _ctx(committed)
    ctx.put_state("car-1", {"owner": "carol"})
    assert ctx.get_state("car-1") == {"owner": "carol"}
    ctx.delete_state("car-2")
    assert ctx.get_state("car-2") is None
    rw = _rwset(sim)
    assert rw.reads == ()
    assert rw.writes == (KVWrite("car-1", {"owner": "carol"}), KVWrite("car-2", None, True))
    assert committed.get("asset", "car-1") == ({"owner": "alice"}, Version(3, 2))


def test_read_then_write_records_the_read(committed: DictState) -> None:
    sim, ctx = _ctx(committed)
    assert ctx.get_state("car-1") == {"owner": "alice"}
    ctx.put_state("car-1", {"owner": "dan"})
    assert ctx.get_state("car-1") == {"owner": "dan"}
    rw = _rwset(sim)
    assert rw.reads == (KVRead("car-1", Version(3, 2)),)
    assert rw.writes == (KVWrite("car-1", {"owner": "dan"}),)


def test_last_write_to_a_key_wins(committed: DictState) -> None:
    sim, ctx = _ctx(committed)
    ctx.put_state("k", 1)
    ctx.put_state("k", 2)
    assert _rwset(sim).writes == (KVWrite("k", 2),)


def test_namespaces_are_separate(committed: DictState) -> None:
    sim = _sim(committed)
    assert sim.context("token").get_state("car-1") == "other namespace"
    sim.context("asset").put_state("x", 1)
    sim.context("empty")  # touched but unused: no rwset
    rwsets = sim.result(None, "asset@1").rwsets
    assert [r.namespace for r in rwsets] == ["asset", "token"]


def test_add_records_a_delta_without_a_read(committed: DictState) -> None:
    sim, ctx = _ctx(committed)
    ctx.add("count", 2)
    ctx.add("count", 3)
    ctx.add("other", -1)
    rw = _rwset(sim)
    assert rw.deltas == (KVDelta("count", 5), KVDelta("other", -1))
    assert rw.reads == ()
    assert ctx.get_state("count") == 7  # the increment is not visible to this transaction


def test_invalid_add_then_put_on_one_key(committed: DictState) -> None:
    _, ctx = _ctx(committed)
    ctx.add("count", 1)
    for write in (lambda: ctx.put_state("count", 10), lambda: ctx.delete_state("count")):
        with pytest.raises(ContractFailure) as exc:
            write()
        assert exc.value.code == "contract_bad_write"


def test_invalid_put_then_add_on_one_key(committed: DictState) -> None:
    _, ctx = _ctx(committed)
    ctx.put_state("count", 10)
    with pytest.raises(ContractFailure) as exc:
        ctx.add("count", 1)
    assert exc.value.code == "contract_bad_write"


@pytest.mark.parametrize("delta", [1.0, True, "1", 2**62 + 1])
def test_invalid_add_delta(committed: DictState, delta: Any) -> None:
    _, ctx = _ctx(committed)
    with pytest.raises(ContractFailure) as exc:
        ctx.add("count", delta)
    assert exc.value.code == "contract_bad_value"


def test_range_reads_are_recorded(committed: DictState) -> None:
    sim, ctx = _ctx(committed)
    assert ctx.get_range("car-", "car.", 10) == [
        ("car-1", {"owner": "alice"}),
        ("car-2", {"owner": "bob"}),
    ]
    assert ctx.get_range("car-", "car.", 1) == [("car-1", {"owner": "alice"})]
    assert _rwset(sim).range_reads == (
        RangeRead(
            "car-", "car.", (KVRead("car-1", Version(3, 2)), KVRead("car-2", Version(4, 0))), True
        ),
        RangeRead("car-", "car.", (KVRead("car-1", Version(3, 2)),), False),
    )


def test_events_are_recorded_in_order(committed: DictState) -> None:
    sim, ctx = _ctx(committed)
    ctx.emit("a", {"n": 1})
    ctx.emit("b")
    assert sim.result(None, "asset@1").events == (
        Event("asset", "a", {"n": 1}),
        Event("asset", "b", None),
    )


def test_rwset_entry_limit(committed: DictState) -> None:
    _, ctx = _ctx(committed)
    for i in range(MAX_RWSET_ENTRIES):
        ctx.put_state(f"k{i}", i)
    ctx.put_state("k0", "rewrite of a recorded key is free")
    with pytest.raises(ContractFailure) as exc:
        ctx.put_state("one-too-many", 1)
    assert exc.value.code == "contract_limit"


def test_rwset_entry_limit_counts_reads_and_deltas(committed: DictState) -> None:
    _, ctx = _ctx(committed)
    for i in range(MAX_RWSET_ENTRIES // 2):
        ctx.get_state(f"r{i}")
        ctx.add(f"d{i}", 1)
    with pytest.raises(ContractFailure) as exc:
        ctx.get_state("one-too-many")
    assert exc.value.code == "contract_limit"


def test_event_limit(committed: DictState) -> None:
    _, ctx = _ctx(committed)
    for i in range(MAX_EVENTS):
        ctx.emit("e", i)
    with pytest.raises(ContractFailure) as exc:
        ctx.emit("e", "one too many")
    assert exc.value.code == "contract_limit"


@pytest.mark.parametrize("value", [1.5, {"price": 0.1}, [1, 2.0], {"a": {"b": [float("nan")]}}])
def test_invalid_float_values(committed: DictState, value: Any) -> None:
    sim, ctx = _ctx(committed)
    with pytest.raises(ContractFailure) as exc:
        ctx.put_state("k", value)
    assert exc.value.code == "contract_bad_value"
    with pytest.raises(ContractFailure) as exc:
        ctx.emit("e", value)
    assert exc.value.code == "contract_bad_value"
    with pytest.raises(ContractFailure) as exc:
        sim.result(value, "asset@1")
    assert exc.value.code == "contract_bad_value"


def test_invalid_value_too_large(committed: DictState) -> None:
    _, ctx = _ctx(committed)
    with pytest.raises(ContractFailure) as exc:
        ctx.put_state("k", "x" * (128 * 1024))
    assert exc.value.code == "contract_limit"


@pytest.mark.parametrize("key", ["", "a\x00b", "k" * 513, 5, None])
def test_invalid_state_key(committed: DictState, key: Any) -> None:
    _, ctx = _ctx(committed)
    for call in (
        lambda: ctx.get_state(key),
        lambda: ctx.put_state(key, 1),
        lambda: ctx.delete_state(key),
        lambda: ctx.add(key, 1),
    ):
        with pytest.raises(ContractFailure) as exc:
            call()
        assert exc.value.code == "contract_bad_key"


@pytest.mark.parametrize("limit", [0, -1, 10_001, True, "5"])
def test_invalid_range_limit(committed: DictState, limit: Any) -> None:
    _, ctx = _ctx(committed)
    with pytest.raises(ContractFailure) as exc:
        ctx.get_range("a", "b", limit)
    assert exc.value.code == "contract_bad_query"


@pytest.mark.parametrize("name", ["", "e" * 65, 5])
def test_invalid_event_name(committed: DictState, name: Any) -> None:
    _, ctx = _ctx(committed)
    with pytest.raises(ContractFailure) as exc:
        ctx.emit(name)
    assert exc.value.code == "contract_bad_event"


def test_result_round_trips_as_a_record(committed: DictState) -> None:
    sim, ctx = _ctx(committed)
    ctx.get_state("car-1")
    ctx.put_state("car-1", {"owner": "eve"})
    ctx.add("count", 1)
    ctx.get_range("car-", "car.")
    ctx.emit("moved", {"to": "eve"})
    result = sim.result({"ok": True}, "asset@1")
    assert TxResult.from_dict(result.to_dict()) == result


def test_range_read_limit_matches_the_record_bound(committed: DictState) -> None:
    """Simulation refuses what TxResult.from_dict would refuse after a restart."""
    sim = _sim(committed)
    ctx = sim.context("asset")
    for i in range(MAX_RANGE_READS):
        ctx.get_range(f"k{i}", f"k{i}z")
    with pytest.raises(ContractFailure) as exc:
        ctx.get_range("a", "b")
    assert exc.value.code == "contract_limit"
    TxResult.from_dict(sim.result(None, "x@1").to_dict())


def test_namespace_limit_matches_the_record_bound(committed: DictState) -> None:
    sim = _sim(committed)
    for i in range(MAX_NAMESPACES):
        sim.context(f"c{i}").put_state("k", i)
    with pytest.raises(ContractFailure) as exc:
        sim.context("one-too-many")
    assert exc.value.code == "contract_limit"
    TxResult.from_dict(sim.result(None, "x@1").to_dict())


# ------------------------------------------------------------------------- consenters

NODES = {"node1": "org1", "node2": "org2", "node3": "org3"}  # the hosting nodes


@pytest.fixture
def configured() -> Lifecycle:
    return Lifecycle(MEMBERS, parse_policy("MAJORITY"), NODES)


def test_consenters_change_needs_the_lifecycle_policy(
    configured: Lifecycle, state: DictState
) -> None:
    nodes = ["node2", "node1"]
    assert _call(configured, state, "org1", "consenters")[0] == {"nodes": None, "sequence": 0}
    _call(configured, state, "org1", "approve_consenters", nodes, 1)
    with pytest.raises(ContractError, match="needs 2 matching approvals"):
        _call(configured, state, "org1", "commit_consenters", nodes, 1)
    _call(configured, state, "org2", "approve_consenters", nodes, 1)
    committed, _ = _call(configured, state, "org3", "commit_consenters", nodes, 1)
    assert committed == {"nodes": ["node1", "node2"], "sequence": 1}
    assert get_consenters_config(state.get) == ["node1", "node2"]
    assert _call(configured, state, "org1", "consenters")[0]["sequence"] == 1


@pytest.mark.parametrize(
    ("nodes", "sequence", "why"),
    [
        (["node4"], 1, "not a node hosting this app"),
        (["ghost"], 1, "not a node hosting this app"),
        ([], 1, "list of 1.."),
        (["node1", "node1"], 1, "twice"),
        ("node1", 1, "list of 1.."),
        (["node1"], 2, "next sequence is 1"),
    ],
)
def test_invalid_consenters_proposal(
    configured: Lifecycle, state: DictState, nodes: Any, sequence: int, why: str
) -> None:
    with pytest.raises(ContractError, match=why):
        _call(configured, state, "org1", "approve_consenters", nodes, sequence)
    assert get_consenters_config(state.get) is None


def test_invalid_consenters_change_by_a_client(configured: Lifecycle, state: DictState) -> None:
    with pytest.raises(ContractError, match="only an admin"):
        _call(
            configured,
            state,
            "org1",
            "approve_consenters",
            ["node1"],
            1,
            caller=CallerIdentity("org1", "alice", "client"),
        )


def test_consenter_approvals_must_match(configured: Lifecycle, state: DictState) -> None:
    _call(configured, state, "org1", "approve_consenters", ["node1", "node2"], 1)
    _call(configured, state, "org2", "approve_consenters", ["node1", "node3"], 1)
    with pytest.raises(ContractError, match="approved by \\['org1'\\]"):
        _call(configured, state, "org1", "commit_consenters", ["node1", "node2"], 1)
