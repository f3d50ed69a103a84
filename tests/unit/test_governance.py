"""Governance without processes: the change rules (``meridian.network.governance``),
the ``_governance`` contract driven through a simulation over a dict of state, and the
SDK's change builders and retry (``meridian.client.governance``) over a fake gateway."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meridian import codec
from meridian.client.core import Identity as ClientIdentity
from meridian.client.core import SeenBlocks
from meridian.client.governance import Governance as SdkGovernance
from meridian.client.governance import get_org
from meridian.contracts.api import CallerIdentity
from meridian.contracts.simulation import Simulation
from meridian.crypto.certs import CertificateAuthority, Role, load_cert_der, load_signer
from meridian.errors import Conflict, Forbidden, InvalidInput, MeridianError, NotFound
from meridian.ledger.merkle import compute_root
from meridian.ledger.store import CommitBatch, SqliteLedger, StateWrite
from meridian.network.config import (
    GOVERNANCE_APP,
    AppConfig,
    NetworkConfig,
    NodeEntry,
    OrgConfig,
    Zone,
)
from meridian.network.contract import Governance, proposal_key
from meridian.network.governance import (
    CHANGE_KINDS,
    DEFAULT_POLICIES,
    GOVERNANCE,
    MAX_TTL_S,
    VERSION_KEY,
    apply_change,
    compute_config_entries,
    compute_config_writes,
    compute_subject,
    compute_view_after,
    get_approvers,
    get_group,
    get_policy,
    is_approved,
    is_still_possible,
    parse_requirement,
)
from meridian.network.history import ConfigHistory
from meridian.network.plans import DEFAULT_PLANS
from meridian.types import ZERO_DIGEST, Block, BlockHeader, TxResult, Version

from .test_lifecycle import DictState

OPERATORS = ("op1", "op2", "op3", "op4")
T0 = 1_900_000_000_000  # ms
LABEL = f"{GOVERNANCE}@0"
OTHER_ORGS = ("dev", "ent", "newdev", "bank1", "csrc")  # only dev and ent are in the genesis


@dataclasses.dataclass(frozen=True)
class Cas:
    """One CA per org of the genesis network, and of orgs that join it in the tests."""

    by_org: dict[str, CertificateAuthority]

    def __getitem__(self, org: str) -> CertificateAuthority:
        return self.by_org[org]

    def pem(self, org: str) -> str:
        return self.by_org[org].cert_pem.decode()

    def node_cert(self, org: str, node_id: str, role: Role = Role.NODE) -> str:
        return self.by_org[org].issue(node_id, role).cert_pem.decode()


CAS = Cas({org: CertificateAuthority.create(org) for org in (*OPERATORS, *OTHER_ORGS)})


@pytest.fixture(scope="module")
def cas() -> Cas:
    return CAS


@pytest.fixture(scope="module")
def genesis(cas: Cas) -> NetworkConfig:
    return make_genesis(cas)


def make_genesis(cas: Cas) -> NetworkConfig:
    """Operators op1..op4 with one node each (n1, n2 in z1; n3, n4 in z2), a developer
    ``dev`` owning app ``shop`` on n1 and n2, an enterprise ``ent`` in no app, an empty
    zone ``z3``, the default plans and the consortium app ``demo`` (no owner)."""
    zones = {"n1": "z1", "n2": "z1", "n3": "z2", "n4": "z2"}
    nodes = tuple(
        NodeEntry(
            f"n{i}",
            f"op{i}",
            "127.0.0.1",
            7000 + 2 * i,
            7001 + 2 * i,
            cas.node_cert(f"op{i}", f"n{i}").encode(),
            zones[f"n{i}"],
        )
        for i in range(1, 5)
    )
    config = NetworkConfig(
        network="unit",
        orgs=(
            *(OrgConfig(org, cas[org].cert_pem) for org in OPERATORS),
            OrgConfig("dev", cas["dev"].cert_pem, "developer", "Dev Ltd"),
            OrgConfig("ent", cas["ent"].cert_pem, "enterprise", "Ent Co"),
        ),
        nodes=nodes,
        apps=(
            AppConfig("demo", OPERATORS),
            AppConfig("shop", ("dev",), nodes=("n1", "n2"), owner="dev", plan="basic"),
        ),
        zones=(Zone("z1", "Zone one"), Zone("z2", "Zone two", "region"), Zone("z3", "Empty")),
        plans=DEFAULT_PLANS,
    )
    config.validate()
    return config


def admin(org: str) -> CallerIdentity:
    return CallerIdentity(org, "admin", "admin")


class Chain:
    """The governance contract over committed state: each call is one transaction
    (its own id and time) whose writes commit only if it returns."""

    def __init__(self, genesis: NetworkConfig) -> None:
        self.view = genesis
        self.contract = Governance(genesis)
        self.state = DictState()
        self.now_ms = T0
        self._ids: Iterator[int] = itertools.count(1)
        self.last: TxResult | None = None

    def call(
        self, who: str | CallerIdentity, function: str, *args: Any, at_ms: int | None = None
    ) -> Any:
        caller = admin(who) if isinstance(who, str) else who
        sim = Simulation(
            self.state,
            app=GOVERNANCE_APP,
            tx_id=f"{next(self._ids):064x}",
            timestamp_ms=self.now_ms if at_ms is None else at_ms,
            caller=caller,
        )
        response = getattr(self.contract, function)(sim.context(GOVERNANCE), *args)
        self.last = sim.result(response, LABEL)
        self.state.apply(self.last)
        writes = [
            (w.key, None if w.delete else w.value)
            for rw in self.last.rwsets
            if rw.namespace == GOVERNANCE
            for w in rw.writes
        ]
        view = compute_view_after(self.view, writes)  # as a node does once it commits
        if view is not None:
            self.view = view
            self.contract = Governance(view)
        return response

    def propose(self, who: str, change: dict[str, Any], ttl_s: int = 3600) -> dict[str, Any]:
        result: dict[str, Any] = self.call(who, "propose", change, ttl_s)
        return result

    def config(self) -> NetworkConfig:
        return NetworkConfig.from_dict(self.call("op1", "config"))

    def events(self) -> list[str]:
        assert self.last is not None
        return [e.name for e in self.last.events]

    def refused(
        self,
        error: type[MeridianError],
        code: str,
        who: str | CallerIdentity,
        function: str,
        *args: Any,
        at_ms: int | None = None,
    ) -> MeridianError:
        """Call, expect ``error`` with ``code``, and check that nothing was written."""
        before = dict(self.state.rows)
        with pytest.raises(error) as exc:
            self.call(who, function, *args, at_ms=at_ms)
        assert exc.value.code == code, exc.value
        assert self.state.rows == before
        return exc.value


@pytest.fixture
def chain(genesis: NetworkConfig) -> Chain:
    return Chain(genesis)


def zone(zone_id: str = "z9", name: str = "Zone nine") -> dict[str, Any]:
    return {"kind": "add_zone", "id": zone_id, "name": name}


# ------------------------------------------------------------ every change applies


def _changes(cas: Cas) -> list[tuple[dict[str, Any], Callable[[NetworkConfig], bool]]]:
    crl = cas["op2"].revoke([12345]).decode()
    return [
        (
            {"kind": "add_zone", "id": "sz", "name": "Shenzhen", "zone_kind": "country"},
            lambda c: c.zone("sz").kind == "country",
        ),
        ({"kind": "remove_zone", "id": "z3"}, lambda c: "z3" not in {z.id for z in c.zones}),
        (
            {
                "kind": "add_org",
                "id": "bank1",
                "ca": cas.pem("bank1"),
                "type": "bank",
                "name": "Bank One",
                "details": {"licence": "B-1"},
            },
            lambda c: (
                c.org("bank1").type == "bank" and dict(c.org("bank1").details) == {"licence": "B-1"}
            ),
        ),
        (
            {"kind": "register_org", "id": "newdev", "ca": cas.pem("newdev"), "type": "developer"},
            lambda c: c.org("newdev").type == "developer",
        ),
        ({"kind": "remove_org", "id": "ent"}, lambda c: "ent" not in {o.id for o in c.orgs}),
        (
            {
                "kind": "add_node",
                "id": "n5",
                "org": "op1",
                "host": "127.0.0.1",
                "port": 7100,
                "p2p_port": 7101,
                "cert": cas.node_cert("op1", "n5"),
                "zone": "z3",
            },
            lambda c: (
                c.node("n5").zone == "z3"
                and c.node("n5").org == "op1"
                and c.node("n5").status == "joining"  # it orders once activated
                and "n5" not in c.consenting_nodes(c.governance)
            ),
        ),
        (
            {"kind": "activate_node", "id": "n4"},  # on a config where n4 is joining (below)
            lambda c: c.node("n4").status == "active" and "n4" in c.consenting_nodes(c.governance),
        ),
        ({"kind": "remove_node", "id": "n4"}, lambda c: "n4" not in {n.id for n in c.nodes}),
        ({"kind": "revoke", "org": "op2", "crl": crl}, lambda c: c.org("op2").id == "op2"),
        (
            {"kind": "set_plan", "plan": {**DEFAULT_PLANS[1].to_dict(), "price_fen": 12_300}},
            lambda c: c.plan("basic").price_fen == 12_300 and len(c.plans) == len(DEFAULT_PLANS),
        ),
        (
            {"kind": "set_policy", "policy_kind": "add_zone", "requirements": ["ALL operators"]},
            lambda c: dict(c.policies)["add_zone"] == ("ALL operators",),
        ),
        (
            {
                "kind": "create_app",
                "name": "mall",
                "owner": "ent",
                "nodes": ["n3", "n4"],
                "plan": "standard",
                "key_mode": "custody",
            },
            lambda c: (
                c.app("mall")
                == AppConfig(
                    "mall",
                    ("ent",),
                    nodes=("n3", "n4"),
                    owner="ent",
                    plan="standard",
                    key_mode="custody",
                )
            ),
        ),
        (
            {"kind": "set_app_status", "app": "shop", "status": "suspended"},
            lambda c: c.app("shop").status == "suspended",
        ),
        (
            {"kind": "add_member", "app": "shop", "org": "ent"},
            lambda c: c.app("shop").members == ("dev", "ent"),
        ),
        (
            {"kind": "remove_member", "app": "demo", "org": "op4"},
            lambda c: c.app("demo").members == ("op1", "op2", "op3"),
        ),
        (
            {"kind": "set_app_nodes", "app": "shop", "nodes": ["n1", "n2", "n3"]},
            lambda c: c.hosting_nodes(c.app("shop")) == ("n1", "n2", "n3"),
        ),
        (
            {"kind": "set_app_plan", "app": "shop", "plan": "enterprise"},
            lambda c: c.app("shop").plan == "enterprise",
        ),
    ]


def test_every_change_kind_applies_and_validates(genesis: NetworkConfig, cas: Cas) -> None:
    changes = _changes(cas)
    assert sorted({c["kind"] for c, _ in changes}) == sorted(CHANGE_KINDS)
    for change, check in changes:
        base = genesis
        if change["kind"] == "activate_node":  # needs a joining node
            joining = dataclasses.replace(genesis.node("n4"), status="joining")
            base = dataclasses.replace(
                genesis, nodes=tuple(joining if n.id == "n4" else n for n in genesis.nodes)
            )
            with pytest.raises(Conflict) as info:
                apply_change(genesis, change)  # an active node cannot be activated again
            assert info.value.code == "already_active"
        updated = apply_change(base, change)
        updated.validate()
        assert check(updated), change
        assert NetworkConfig.from_dict(updated.to_dict()) == updated, change
    assert genesis == Chain(genesis).config()  # applying never touched the genesis


def test_a_change_writes_only_the_entries_it_changes(genesis: NetworkConfig, cas: Cas) -> None:
    """Each kind's writes, applied to the view before, give the view after (as nodes
    build it), and name only what changed."""
    touched = {
        "add_zone": {"config/zone/sz"},
        "register_org": {"config/org/newdev"},
        "create_app": {"config/app/mall"},
        "revoke": {"config/revoked/op2"},
        "set_policy": {"config/meta"},
        "set_app_plan": {"config/app/shop"},
    }
    for change, _ in _changes(cas):
        base = genesis
        if change["kind"] == "activate_node":
            joining = dataclasses.replace(genesis.node("n4"), status="joining")
            base = dataclasses.replace(
                genesis, nodes=tuple(joining if n.id == "n4" else n for n in genesis.nodes)
            )
        updated = apply_change(base, change)
        writes = compute_config_writes(base, updated)
        assert writes and all(k.startswith("config/") for k in writes), change
        if change["kind"] in touched:
            assert set(writes) == touched[change["kind"]], (change["kind"], set(writes))
        view = compute_view_after(base, [*writes.items(), (VERSION_KEY, 1)])
        assert view is not None and view.version == 1
        assert view.to_dict() == updated.to_dict(), change
        assert compute_entries_of(view) == compute_entries_of(updated)


def compute_entries_of(config: NetworkConfig) -> dict[str, Any]:
    return compute_config_entries(config)


def test_a_removed_entry_is_deleted_and_the_rest_keep_their_place(genesis: NetworkConfig) -> None:
    smaller = apply_change(genesis, {"kind": "remove_zone", "id": "z3"})
    writes = compute_config_writes(genesis, smaller)
    assert writes == {"config/zone/z3": None}
    view = compute_view_after(genesis, [*writes.items(), (VERSION_KEY, 1)])
    assert view is not None
    assert [z.id for z in view.zones] == ["z1", "z2"]
    assert [o.id for o in view.orgs] == [o.id for o in genesis.orgs]  # order kept


@pytest.mark.parametrize(
    ("writes", "message"),
    [
        ([("config/zone/z9", {"id": "z9", "name": "Nine", "kind": "city"})], "config/version"),
        ([(VERSION_KEY, 0)], "config/version"),  # not newer than the view
        ([(VERSION_KEY, True)], "config/version"),
        ([("config/zone/z9", {"id": "z8", "name": "x", "kind": "city"}), (VERSION_KEY, 1)], "z9"),
        ([("config/widget/w", {"id": "w"}), (VERSION_KEY, 1)], "unknown"),
        ([("config/meta", {"network": "unit"}), (VERSION_KEY, 1)], "config/meta"),
        ([("config/revoked/op1", "12"), (VERSION_KEY, 1)], "serials"),
    ],
)
def test_configuration_writes_that_do_not_fit_are_refused(
    genesis: NetworkConfig, writes: list[tuple[str, Any]], message: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        compute_view_after(genesis, writes)
    assert err.value.code == "bad_config" and message in err.value.message


def test_a_registration_writes_one_org_however_many_there_are(genesis: NetworkConfig) -> None:
    """300 developers sign up (each register_org executes at once): the 300th
    transaction writes what the first did — one org entry and the version."""
    chain = Chain(genesis)
    sizes = []
    for i in range(150):
        details = {"registration_no": f"9131{i:014d}", "contact": f"dev{i}@example.com"}
        change = {
            "kind": "register_org",
            "id": f"dev-{i:03d}",
            "ca": CertificateAuthority.create(f"dev-{i:03d}").cert_pem.decode(),
            "type": "developer",
            "details": details,
        }
        assert chain.propose("op1", change)["status"] == "executed"
        assert chain.last is not None
        [rw] = [rw for rw in chain.last.rwsets if rw.namespace == GOVERNANCE]
        config_keys = {w.key for w in rw.writes if w.key.startswith("config/")}
        assert config_keys == {f"config/org/dev-{i:03d}", VERSION_KEY}
        sizes.append(len(codec.encode([w.value for w in rw.writes])))
    assert len(chain.view.orgs) == len(genesis.orgs) + 150 and chain.view.version == 150
    assert max(sizes) - min(sizes) < 64  # flat: ids and numbers grow by a few digits


def test_blocks_without_configuration_writes_change_nothing(genesis: NetworkConfig) -> None:
    assert compute_view_after(genesis, []) is None
    assert compute_view_after(genesis, [("proposal/ab", {"status": "open"})]) is None


def test_the_history_reloads_every_view_from_the_ledger(
    genesis: NetworkConfig, cas: Cas, tmp_path: Path
) -> None:
    """Views a node built block by block come back the same from the ledger's history
    (what a restarted node and `ledger verify` do)."""
    chain = Chain(genesis)
    ledger = SqliteLedger(tmp_path / "governance.sqlite")
    live = ConfigHistory(genesis)
    try:
        steps = [zone("z7"), zone("z8"), {"kind": "remove_zone", "id": "z7"}]
        for number, change in enumerate(steps):
            proposal = chain.propose("op1", change)
            for org in ("op2", "op3"):
                if proposal["status"] == "open":
                    proposal = chain.call(org, "approve", proposal["id"])
            assert proposal["status"] == "executed" and chain.last is not None
            writes = tuple(
                StateWrite(GOVERNANCE, w.key, w.value, w.delete, Version(number, 0), "t")
                for rw in chain.last.rwsets
                for w in rw.writes
            )
            ledger.commit_block(_block_of(genesis, number, writes))
            pairs = [(w.key, None if w.delete else w.value) for w in writes]
            live.process_block(number, compute_view_after(live.latest, pairs))
        assert live.latest == chain.view and live.latest.version == 3
        reloaded = ConfigHistory(genesis)
        reloaded.load(ledger)
        assert reloaded.views() == live.views() and reloaded.height == 3
        assert [z.id for z in reloaded.latest.zones] == ["z1", "z2", "z3", "z8"]
    finally:
        ledger.close()


def _block_of(genesis: NetworkConfig, number: int, writes: tuple[StateWrite, ...]) -> CommitBatch:
    header = BlockHeader(
        genesis.network,
        GOVERNANCE_APP,
        number,
        ZERO_DIGEST,
        compute_root([]),
        ZERO_DIGEST,
        T0 + number,
        0,
        "n1",
    )
    return CommitBatch(Block(header, ()), (), writes, (), ZERO_DIGEST, 0)


def test_every_change_kind_executes_through_the_contract(genesis: NetworkConfig, cas: Cas) -> None:
    """Each change, proposed and approved by whom its default policy names."""
    for change, check in _changes(cas):
        base = genesis
        if change["kind"] == "activate_node":  # needs a joining node: n4, as in the above
            joining = dataclasses.replace(genesis.node("n4"), status="joining")
            base = dataclasses.replace(
                genesis, nodes=tuple(joining if n.id == "n4" else n for n in genesis.nodes)
            )
        chain = Chain(base)
        proposal = chain.propose("op1", change)
        deciders = sorted(get_approvers(base, change) - set(proposal["approvals"]))
        while proposal["status"] == "open":
            proposal = chain.call(deciders.pop(0), "approve", proposal["id"])
        assert proposal["status"] == "executed", change
        assert "executed" in chain.events()
        assert check(chain.config()), change


# ------------------------------------------------------------------------- policies


def test_network_change_needs_a_majority_of_operators(chain: Chain) -> None:
    proposal = chain.propose("op1", zone())
    assert (proposal["status"], proposal["approvals"]) == ("open", ["op1"])
    assert proposal["policy"] == ["MAJORITY operators"]
    assert proposal["expires_ms"] == T0 + 3600 * 1000
    assert chain.events() == ["proposed"]
    assert chain.state.get(GOVERNANCE, VERSION_KEY) is None  # still the genesis
    proposal = chain.call("op2", "approve", proposal["id"])
    assert (proposal["status"], proposal["approvals"]) == ("open", ["op1", "op2"])
    assert "z9" not in {z.id for z in chain.config().zones}
    proposal = chain.call("op3", "approve", proposal["id"])
    assert proposal["status"] == "executed" and proposal["executed_ms"] == T0
    assert chain.events() == ["approved", "executed"]
    assert chain.config().zone("z9").name == "Zone nine"
    stored = chain.call("op4", "proposal", proposal["id"])
    assert stored["status"] == "executed"
    assert [p["id"] for p in chain.call("op4", "proposals", "executed")] == [proposal["id"]]
    assert chain.call("op4", "proposals") == []  # none open


def test_register_org_needs_any_operator(chain: Chain, cas: Cas) -> None:
    change = {"kind": "register_org", "id": "newdev", "ca": cas.pem("newdev"), "type": "developer"}
    assert chain.propose("op3", change)["status"] == "executed"
    assert chain.config().org("newdev").type == "developer"


def test_register_org_proposed_by_a_developer_waits_for_an_operator(chain: Chain, cas: Cas) -> None:
    change = {"kind": "register_org", "id": "newdev", "ca": cas.pem("newdev"), "type": "developer"}
    proposal = chain.propose("dev", change)
    assert (proposal["status"], proposal["approvals"]) == ("open", [])
    chain.refused(Forbidden, "not_an_approver", "ent", "approve", proposal["id"])
    assert chain.call("op2", "approve", proposal["id"])["status"] == "executed"


def test_real_name_details_are_read_by_operators_the_regulator_and_the_org(
    chain: Chain, cas: Cas
) -> None:
    details = {"registration_no": "91310000MA1FL0001X", "contact": "ops@newdev.example"}
    change = {
        "kind": "register_org",
        "id": "newdev",
        "ca": cas.pem("newdev"),
        "type": "developer",
        "details": details,
    }
    proposal = chain.propose("op3", change)
    assert proposal["change"]["details"] == details  # the proposer's own answer
    regulator = {"kind": "add_org", "id": "csrc", "ca": cas.pem("csrc"), "type": "regulator"}
    for org in ("op1", "op2", "op3"):
        decided = chain.propose(org, regulator) if org == "op1" else None
        if decided is None:
            open_ = [p for p in chain.call("op1", "proposals") if p["change"]["id"] == "csrc"]
            decided = chain.call(org, "approve", open_[0]["id"])
    assert decided["status"] == "executed"

    def seen_by(org: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        config = chain.call(org, "config")
        [row] = [o for o in config["orgs"] if o["id"] == "newdev"]
        return (
            row["details"],
            chain.call(org, "proposal", proposal["id"])["change"]["details"],
            next(
                p["change"]["details"]
                for p in chain.call(org, "proposals", "all")
                if p["id"] == proposal["id"]
            ),
        )

    for org in ("op2", "csrc", "newdev"):  # an operator, the regulator, the org itself
        assert seen_by(org) == (details, details, details), org
    assert seen_by("dev") == ({}, {}, {})  # another developer sees no one's details
    stored = chain.state.rows[("_governance", f"proposal/{proposal['id']}")][0]
    assert stored["change"]["details"] == details  # left out of answers, not of state


def decide_by_operators(chain: Chain, change: dict[str, Any], proposer: str = "op1") -> Any:
    """Propose ``change`` and approve it by operators until it is decided."""
    proposal = chain.propose(proposer, change)
    for org in ("op1", "op2", "op3"):
        if proposal["status"] != "open":
            break
        if org not in proposal["approvals"]:
            proposal = chain.call(org, "approve", proposal["id"])
    return proposal


def observer_change(cas: Cas, node_id: str = "obs1") -> dict[str, Any]:
    return {
        "kind": "add_node",
        "id": node_id,
        "org": "csrc",
        "host": "127.0.0.1",
        "port": 7200,
        "p2p_port": 7201,
        "cert": cas.node_cert("csrc", node_id),
        "zone": "z3",
    }


def test_a_regulator_node_is_added_as_an_observer(chain: Chain, cas: Cas) -> None:
    """The operators' majority admits the regulator, then its node (proposed by the
    regulator's admin): an observer, which holds every open app, hosts none, and is
    never activated; it is removed like any node."""
    regulator = {"kind": "add_org", "id": "csrc", "ca": cas.pem("csrc"), "type": "regulator"}
    assert decide_by_operators(chain, regulator)["status"] == "executed"
    proposal = chain.propose("csrc", observer_change(cas))
    assert (proposal["status"], proposal["approvals"]) == ("open", [])  # operators decide
    assert proposal["policy"] == ["MAJORITY operators"]
    for org in ("op1", "op2"):
        proposal = chain.call(org, "approve", proposal["id"])
    assert proposal["status"] == "open"
    assert chain.call("op3", "approve", proposal["id"])["status"] == "executed"
    config = chain.config()
    assert config.node("obs1").status == "observer" and config.observers == ("obs1",)
    assert [a.name for a in config.hosted_by("obs1")] == [GOVERNANCE_APP, "demo", "shop"]
    for app in (config.governance, *config.apps):
        assert "obs1" not in config.consenting_nodes(app)
        assert "obs1" not in config.hosting_nodes(app)
    assert config.consenting_nodes(config.governance) == ("n1", "n2", "n3", "n4")

    refused = chain.refused(
        Conflict, "observer_node", "op1", "propose", {"kind": "activate_node", "id": "obs1"}
    )
    assert "never orders" in refused.message
    moved = {"kind": "set_app_nodes", "app": "shop", "nodes": ["n1", "obs1"]}
    chain.refused(InvalidInput, "observer_node", "dev", "propose", moved)
    created = {"kind": "create_app", "name": "mall", "owner": "dev", "nodes": ["obs1"]}
    chain.refused(InvalidInput, "observer_node", "dev", "propose", {**created, "plan": "basic"})

    removed = decide_by_operators(chain, {"kind": "remove_node", "id": "obs1"})
    assert removed["status"] == "executed"
    assert chain.config().observers == () and chain.config().hosted_by("obs1") == ()


def test_invalid_node_of_an_org_that_runs_none(chain: Chain, cas: Cas) -> None:
    """Only operators and the regulator run nodes: a bank's node is refused, with
    nothing written, even when the operators would approve it."""
    bank = {"kind": "add_org", "id": "bank1", "ca": cas.pem("bank1"), "type": "bank"}
    assert decide_by_operators(chain, bank)["status"] == "executed"
    change = {**observer_change(cas, "b1"), "org": "bank1", "cert": cas.node_cert("bank1", "b1")}
    error = chain.refused(InvalidInput, "bad_change", "op1", "propose", change)
    assert "only operator and regulator orgs run nodes" in error.message


def test_create_app_needs_its_owner(chain: Chain) -> None:
    change = {
        "kind": "create_app",
        "name": "mall",
        "owner": "ent",
        "nodes": ["n3"],
        "plan": "basic",
    }
    proposal = chain.propose("op1", change)  # an operator may propose it for ent...
    assert (proposal["status"], proposal["approvals"]) == ("open", [])
    chain.refused(Forbidden, "not_an_approver", "op2", "approve", proposal["id"])
    assert chain.call("ent", "approve", proposal["id"])["status"] == "executed"  # ...ent decides
    assert chain.config().app("mall").owner == "ent"
    own = chain.propose("dev", {**change, "name": "kiosk", "owner": "dev"})
    assert own["status"] == "executed"  # the owner proposing is enough


def test_invite_needs_the_members_and_the_invitee(chain: Chain) -> None:
    proposal = chain.propose("dev", {"kind": "add_member", "app": "shop", "org": "ent"})
    assert (proposal["status"], proposal["approvals"]) == ("open", ["dev"])
    assert proposal["policy"] == ["MAJORITY members", "ANY subject"]
    chain.refused(Forbidden, "not_an_approver", "op1", "approve", proposal["id"])
    assert chain.config().app("shop").members == ("dev",)
    assert chain.call("ent", "approve", proposal["id"])["status"] == "executed"
    assert chain.config().app("shop").members == ("dev", "ent")


def test_removing_a_member_needs_a_majority_of_the_members(chain: Chain) -> None:
    invite = chain.propose("dev", {"kind": "add_member", "app": "shop", "org": "ent"})
    chain.call("ent", "approve", invite["id"])
    removal = chain.propose("dev", {"kind": "remove_member", "app": "shop", "org": "ent"})
    assert removal["status"] == "open"  # 1 of 2 members is no majority
    assert chain.call("ent", "approve", removal["id"])["status"] == "executed"
    assert chain.config().app("shop").members == ("dev",)


def test_the_invitee_accepts_choosing_its_role(chain: Chain) -> None:
    invite = chain.propose("dev", {"kind": "add_member", "app": "shop", "org": "ent"})
    accepted = chain.call("ent", "accept", invite["id"], "auditor")
    assert accepted["status"] == "executed" and accepted["change"]["role"] == "auditor"
    assert chain.events() == ["accepted", "executed"]
    shop = chain.config().app("shop")
    assert (shop.members, shop.roles, shop.writers) == (
        ("dev", "ent"),
        (("ent", "auditor"),),
        ("dev",),
    )
    # an auditor does not decide on the app: its owner alone removes it
    removal = chain.propose("dev", {"kind": "remove_member", "app": "shop", "org": "ent"})
    assert removal["status"] == "executed"
    shop = chain.config().app("shop")
    assert (shop.members, shop.roles) == (("dev",), ())


def test_invalid_accept(chain: Chain) -> None:
    invite = chain.propose("dev", {"kind": "add_member", "app": "shop", "org": "ent"})
    chain.refused(Forbidden, "not_the_invitee", "dev", "accept", invite["id"], "participant")
    chain.refused(Forbidden, "not_the_invitee", "op1", "accept", invite["id"], "participant")
    chain.refused(InvalidInput, "bad_change", "ent", "accept", invite["id"], "owner")
    network_change = chain.propose("op1", zone())
    chain.refused(Forbidden, "not_the_invitee", "op1", "accept", network_change["id"], "auditor")
    chain.call("ent", "accept", invite["id"], "participant")
    chain.refused(Conflict, "proposal_closed", "ent", "accept", invite["id"], "participant")
    assert chain.config().app("shop").writers == ("dev", "ent")


def test_a_changed_policy_governs_later_decisions(chain: Chain) -> None:
    open_before = chain.propose("op1", zone("z8"))
    policy = {"kind": "set_policy", "policy_kind": "add_zone", "requirements": ["ANY operators"]}
    proposal = chain.propose("op1", policy)
    for org in ("op2", "op3"):
        proposal = chain.call(org, "approve", proposal["id"])
    assert proposal["status"] == "executed"
    assert [str(r) for r in get_policy(chain.config(), "add_zone")] == ["ANY operators"]
    assert chain.propose("op4", zone("z9"))["status"] == "executed"  # one operator now
    # a proposal made under the old policy is judged by the current one when decided
    assert chain.call("op2", "approve", open_before["id"])["status"] == "executed"
    assert {"z8", "z9"} <= {z.id for z in chain.config().zones}


def test_a_k_of_policy_names_the_deciding_orgs(chain: Chain) -> None:
    policy = {
        "kind": "set_policy",
        "policy_kind": "add_zone",
        "requirements": ["2-of(op3,op4) operators"],
    }
    proposal = chain.propose("op1", policy)
    chain.call("op2", "approve", proposal["id"])
    chain.call("op3", "approve", proposal["id"])
    proposal = chain.propose("op1", zone())
    assert proposal["approvals"] == []  # op1 is not among the deciders
    chain.refused(Forbidden, "not_an_approver", "op2", "approve", proposal["id"])
    assert chain.call("op3", "approve", proposal["id"])["status"] == "open"
    assert chain.call("op4", "approve", proposal["id"])["status"] == "executed"


def test_an_app_without_owner_cannot_pass_an_owner_only_change(chain: Chain) -> None:
    """``demo`` (a consortium app from network init) has no owner: nobody can decide
    ``set_app_plan`` on it, so the proposal is rejected as soon as it is made."""
    proposal = chain.propose("op1", {"kind": "set_app_plan", "app": "demo", "plan": "basic"})
    assert proposal["status"] == "rejected"
    assert chain.config().app("demo").plan == ""


# ------------------------------------------------------------- reject, withdraw, expire


def test_rejection_once_the_policy_cannot_be_met(chain: Chain) -> None:
    proposal = chain.propose("op1", zone())
    proposal = chain.call("op2", "reject", proposal["id"])
    assert (proposal["status"], proposal["rejections"]) == ("open", ["op2"])
    assert chain.events() == ["rejected_by"]
    proposal = chain.call("op3", "reject", proposal["id"])  # op1 + op4 < 3 of 4
    assert proposal["status"] == "rejected"
    assert chain.events() == ["rejected_by", "rejected"]
    chain.refused(Conflict, "proposal_closed", "op4", "reject", proposal["id"])
    chain.refused(Conflict, "proposal_closed", "op4", "approve", proposal["id"])
    assert chain.state.get(GOVERNANCE, VERSION_KEY) is None
    assert [p["id"] for p in chain.call("op1", "proposals", "rejected")] == [proposal["id"]]


def test_the_invitee_saying_no_rejects_an_invitation(chain: Chain) -> None:
    proposal = chain.propose("dev", {"kind": "add_member", "app": "shop", "org": "ent"})
    assert chain.call("ent", "reject", proposal["id"])["status"] == "rejected"


def test_withdraw(chain: Chain) -> None:
    proposal = chain.propose("op1", zone())
    chain.call("op2", "approve", proposal["id"])
    chain.refused(Forbidden, "not_the_proposer", "op2", "withdraw", proposal["id"])
    withdrawn = chain.call("op1", "withdraw", proposal["id"])
    assert withdrawn["status"] == "withdrawn"
    assert chain.events() == ["withdrawn"]
    chain.refused(Conflict, "proposal_closed", "op3", "approve", proposal["id"])
    chain.refused(Conflict, "proposal_closed", "op1", "withdraw", proposal["id"])
    assert chain.state.get(GOVERNANCE, VERSION_KEY) is None
    assert chain.call("op1", "proposals", "withdrawn")[0]["id"] == proposal["id"]


def test_expired_proposal_cannot_be_approved(chain: Chain) -> None:
    proposal = chain.propose("op1", zone(), ttl_s=60)
    expires = T0 + 60_000
    assert proposal["expires_ms"] == expires
    chain.call("op2", "approve", proposal["id"], at_ms=expires)  # the last moment still counts
    chain.refused(Conflict, "proposal_expired", "op3", "approve", proposal["id"], at_ms=expires + 1)
    chain.refused(Conflict, "proposal_expired", "op3", "reject", proposal["id"], at_ms=expires + 1)
    chain.refused(
        Conflict, "proposal_expired", "op1", "withdraw", proposal["id"], at_ms=expires + 1
    )
    chain.now_ms = expires + 1
    assert chain.call("op1", "proposal", proposal["id"])["status"] == "expired"
    assert [p["id"] for p in chain.call("op1", "proposals", "expired")] == [proposal["id"]]
    assert chain.call("op1", "proposals", "open") == []
    assert "z9" not in {z.id for z in chain.config().zones}


def test_a_change_that_no_longer_fits_is_refused_when_executed(chain: Chain) -> None:
    """Checked again at execution: the second of two proposals of one zone id fails."""
    first, second = chain.propose("op1", zone()), chain.propose("op2", zone(name="Other"))
    for org in ("op2", "op3"):
        chain.call(org, "approve", first["id"])
    chain.call("op1", "approve", second["id"])
    chain.refused(Conflict, "duplicate_name", "op3", "approve", second["id"])
    assert chain.call("op1", "proposal", second["id"])["approvals"] == ["op1", "op2"]
    assert chain.config().zone("z9").name == "Zone nine"


# ------------------------------------------------------------------ refused changes


def _invalid_changes(cas: Cas) -> list[tuple[str, Any, type[MeridianError], str]]:
    node = {
        "kind": "add_node",
        "id": "n5",
        "org": "op1",
        "host": "127.0.0.1",
        "port": 7100,
        "p2p_port": 7101,
        "cert": cas.node_cert("op1", "n5"),
        "zone": "z1",
    }
    app = {"kind": "create_app", "name": "mall", "owner": "ent", "nodes": ["n3"], "plan": "basic"}
    return [
        ("not_a_mapping", ["add_zone"], InvalidInput, "bad_change"),
        ("unknown_kind", {"kind": "add_galaxy", "id": "g"}, InvalidInput, "bad_change"),
        ("missing_kind", {"id": "z9", "name": "x"}, InvalidInput, "bad_change"),
        ("zone_without_name", {"kind": "add_zone", "id": "z9"}, InvalidInput, "bad_change"),
        ("zone_bad_kind", {**zone(), "zone_kind": "planet"}, InvalidInput, "bad_change"),
        ("zone_bad_id", zone("Zone 9!"), InvalidInput, "bad_change"),
        ("duplicate_zone", zone("z1"), Conflict, "duplicate_name"),
        ("remove_unknown_zone", {"kind": "remove_zone", "id": "z7"}, NotFound, "unknown_zone"),
        ("remove_zone_in_use", {"kind": "remove_zone", "id": "z1"}, Conflict, "in_use"),
        (
            "garbage_ca",
            {
                "kind": "add_org",
                "id": "bank1",
                "ca": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "type": "bank",
            },
            InvalidInput,
            "bad_change",
        ),
        (
            "ca_of_another_org",
            {"kind": "add_org", "id": "bank2", "ca": cas.pem("bank1"), "type": "bank"},
            InvalidInput,
            "bad_change",
        ),
        (
            "unknown_org_type",
            {"kind": "add_org", "id": "bank1", "ca": cas.pem("bank1"), "type": "alien"},
            InvalidInput,
            "bad_change",
        ),
        (
            "register_institution",
            {"kind": "register_org", "id": "bank1", "ca": cas.pem("bank1"), "type": "bank"},
            Forbidden,
            "bad_change",
        ),
        (
            "register_operator",
            {"kind": "register_org", "id": "newdev", "ca": cas.pem("newdev"), "type": "operator"},
            Forbidden,
            "bad_change",
        ),
        (
            "duplicate_org",
            {"kind": "register_org", "id": "dev", "ca": cas.pem("dev"), "type": "developer"},
            Conflict,
            "duplicate_name",
        ),
        (
            "org_name_not_text",
            {
                "kind": "register_org",
                "id": "newdev",
                "ca": cas.pem("newdev"),
                "type": "developer",
                "name": 5,
            },
            InvalidInput,
            "bad_change",
        ),
        (
            "org_name_too_long",
            {
                "kind": "register_org",
                "id": "newdev",
                "ca": cas.pem("newdev"),
                "type": "developer",
                "name": "x" * 10_000,
            },
            InvalidInput,
            "bad_change",
        ),
        (
            "org_details_not_text",
            {
                "kind": "register_org",
                "id": "newdev",
                "ca": cas.pem("newdev"),
                "type": "developer",
                "details": {"employees": 12},
            },
            InvalidInput,
            "bad_change",
        ),
        ("remove_org_with_nodes", {"kind": "remove_org", "id": "op1"}, Conflict, "in_use"),
        ("remove_org_with_app", {"kind": "remove_org", "id": "dev"}, Conflict, "in_use"),
        ("remove_unknown_org", {"kind": "remove_org", "id": "ghost"}, NotFound, "unknown_org"),
        (
            "node_cert_of_another_node",
            {**node, "cert": cas.node_cert("op1", "n6")},
            InvalidInput,
            "bad_change",
        ),
        (
            "node_cert_of_another_org",
            {**node, "cert": cas.node_cert("op2", "n5")},
            InvalidInput,
            "bad_change",
        ),
        (
            "node_cert_of_a_client",
            {**node, "cert": cas.node_cert("op1", "n5", Role.CLIENT)},
            InvalidInput,
            "bad_change",
        ),
        ("node_cert_garbage", {**node, "cert": "not a certificate"}, InvalidInput, "bad_change"),
        (
            "node_of_a_developer",
            {**node, "org": "dev", "cert": cas.node_cert("dev", "n5")},
            InvalidInput,
            "bad_change",
        ),
        ("node_port_in_use", {**node, "port": 7002}, InvalidInput, "bad_change"),
        ("node_port_text", {**node, "port": "7100"}, InvalidInput, "bad_change"),
        ("node_port_bool", {**node, "p2p_port": True}, InvalidInput, "bad_change"),
        ("node_port_zero", {**node, "port": 0}, InvalidInput, "bad_change"),
        ("node_port_out_of_range", {**node, "p2p_port": 70_000}, InvalidInput, "bad_change"),
        ("node_unknown_zone", {**node, "zone": "z7"}, InvalidInput, "bad_change"),
        ("node_unknown_org", {**node, "org": "ghost"}, InvalidInput, "bad_change"),
        (
            "duplicate_node",
            {**node, "id": "n1", "cert": cas.node_cert("op1", "n1")},
            Conflict,
            "duplicate_name",
        ),
        ("remove_node_hosting_an_app", {"kind": "remove_node", "id": "n1"}, Conflict, "in_use"),
        ("remove_unknown_node", {"kind": "remove_node", "id": "n9"}, NotFound, "unknown_node"),
        (
            "revoke_unknown_org",
            {"kind": "revoke", "org": "ghost", "crl": "x"},
            NotFound,
            "unknown_org",
        ),
        ("revoke_without_crl", {"kind": "revoke", "org": "op1"}, InvalidInput, "bad_change"),
        (
            "revoke_with_garbage_crl",
            {"kind": "revoke", "org": "op1", "crl": "x"},
            InvalidInput,
            "bad_change",
        ),
        (
            "revoke_with_another_orgs_crl",
            {"kind": "revoke", "org": "op2", "crl": cas["op3"].revoke([777]).decode()},
            InvalidInput,
            "bad_change",
        ),
        (
            "plan_missing_fields",
            {"kind": "set_plan", "plan": {"id": "p"}},
            InvalidInput,
            "bad_plan",
        ),
        (
            "plan_float_price",
            {"kind": "set_plan", "plan": {**DEFAULT_PLANS[0].to_dict(), "price_fen": 9.9}},
            InvalidInput,
            "bad_plan",
        ),
        (
            "policy_unknown_kind",
            {"kind": "set_policy", "policy_kind": "rule_world", "requirements": ["ANY operators"]},
            InvalidInput,
            "bad_change",
        ),
        (
            "policy_unknown_rule",
            {"kind": "set_policy", "policy_kind": "add_zone", "requirements": ["MOST operators"]},
            InvalidInput,
            "bad_policy",
        ),
        (
            "policy_unknown_group",
            {"kind": "set_policy", "policy_kind": "add_zone", "requirements": ["ANY everyone"]},
            InvalidInput,
            "bad_policy",
        ),
        (
            "policy_no_requirements",
            {"kind": "set_policy", "policy_kind": "add_zone", "requirements": []},
            InvalidInput,
            "bad_change",
        ),
        ("duplicate_app", {**app, "name": "shop"}, Conflict, "duplicate_name"),
        ("app_named_governance", {**app, "name": GOVERNANCE_APP}, Conflict, "duplicate_name"),
        ("app_bad_name", {**app, "name": "My App"}, InvalidInput, "bad_change"),
        ("app_unknown_plan", {**app, "plan": "platinum"}, NotFound, "unknown_plan"),
        ("app_unknown_node", {**app, "nodes": ["n9"]}, NotFound, "unknown_node"),
        ("app_no_nodes", {**app, "nodes": []}, InvalidInput, "bad_change"),
        ("app_nodes_repeated", {**app, "nodes": ["n3", "n3"]}, InvalidInput, "bad_change"),
        ("app_unknown_owner", {**app, "owner": "ghost"}, NotFound, "unknown_org"),
        ("app_bad_key_mode", {**app, "key_mode": "paper"}, InvalidInput, "bad_change"),
        (
            "app_without_plan",
            {k: v for k, v in app.items() if k != "plan"},
            InvalidInput,
            "bad_change",
        ),
        (
            "status_unknown",
            {"kind": "set_app_status", "app": "shop", "status": "paused"},
            InvalidInput,
            "bad_change",
        ),
        (
            "status_of_governance",
            {"kind": "set_app_status", "app": GOVERNANCE_APP, "status": "suspended"},
            Forbidden,
            "bad_change",
        ),
        (
            "status_unknown_app",
            {"kind": "set_app_status", "app": "nope", "status": "active"},
            NotFound,
            "unknown_app",
        ),
        (
            "invite_member",
            {"kind": "add_member", "app": "shop", "org": "dev"},
            Conflict,
            "already_member",
        ),
        (
            "invite_unknown_org",
            {"kind": "add_member", "app": "shop", "org": "ghost"},
            NotFound,
            "unknown_org",
        ),
        (
            "remove_the_owner",
            {"kind": "remove_member", "app": "shop", "org": "dev"},
            Conflict,
            "in_use",
        ),
        (
            "remove_a_non_member",
            {"kind": "remove_member", "app": "shop", "org": "ent"},
            NotFound,
            "not_a_member",
        ),
        (
            "app_nodes_unknown",
            {"kind": "set_app_nodes", "app": "shop", "nodes": ["n1", "n9"]},
            NotFound,
            "unknown_node",
        ),
        (
            "app_nodes_not_a_list",
            {"kind": "set_app_nodes", "app": "shop", "nodes": "n1"},
            InvalidInput,
            "bad_change",
        ),
        (
            "app_plan_unknown",
            {"kind": "set_app_plan", "app": "shop", "plan": "platinum"},
            NotFound,
            "unknown_plan",
        ),
    ]


@pytest.mark.parametrize(
    ("change", "error", "code"),
    [case[1:] for case in _invalid_changes(CAS)],
    ids=[case[0] for case in _invalid_changes(CAS)],
)
def test_invalid_change(
    genesis: NetworkConfig, change: Any, error: type[MeridianError], code: str
) -> None:
    """Refused by apply_change, and by propose with nothing written."""
    with pytest.raises(error) as exc:
        apply_change(genesis, change)
    assert exc.value.code == code, exc.value
    Chain(genesis).refused(error, code, "op1", "propose", change, 3600)


def test_first_zone_of_a_network_without_zones(genesis: NetworkConfig) -> None:
    """A network from ``network init`` has no zones and nodes in none: it gets zones
    (its nodes stay outside them)."""
    zoneless = dataclasses.replace(
        genesis, zones=(), nodes=tuple(dataclasses.replace(n, zone="") for n in genesis.nodes)
    )
    zoneless.validate()
    updated = apply_change(zoneless, zone())
    assert [z.id for z in updated.zones] == ["z9"]
    assert {n.zone for n in updated.nodes} == {""}


def test_invalid_oversized_change(chain: Chain) -> None:
    """Over MAX_CHANGE_BYTES, even in fields no change kind reads."""
    chain.refused(
        InvalidInput, "bad_change", "op1", "propose", {**zone(), "note": "x" * 100_000}, 3600
    )


def test_an_executed_change_always_loads_again(chain: Chain, cas: Cas) -> None:
    """What a change stores is read back by every later governance call (and by every
    node): a change it could not read back is refused when proposed."""
    for port in (0, 70_000):
        change = {
            "kind": "add_node",
            "id": "n5",
            "org": "op1",
            "host": "127.0.0.1",
            "port": port,
            "p2p_port": 7101,
            "cert": cas.node_cert("op1", "n5"),
        }
        chain.refused(InvalidInput, "bad_change", "op1", "propose", change, 3600)
    assert chain.propose("op1", zone())["status"] == "open"  # governance still works


# ---------------------------------------------------------------- refused actions


def test_invalid_proposer_that_is_not_an_admin(chain: Chain) -> None:
    client = CallerIdentity("op1", "user1", "client")
    chain.refused(Forbidden, "not_an_admin", client, "propose", zone(), 3600)
    stranger = CallerIdentity("ghost", "admin", "admin")  # an org not in the network
    chain.refused(Forbidden, "not_an_admin", stranger, "propose", zone(), 3600)
    node = CallerIdentity("op1", "n1", "node")
    chain.refused(Forbidden, "not_an_admin", node, "propose", zone(), 3600)


def test_invalid_approver_that_is_not_an_admin(chain: Chain) -> None:
    proposal = chain.propose("op1", zone())
    chain.refused(
        Forbidden,
        "not_an_admin",
        CallerIdentity("op2", "user1", "client"),
        "approve",
        proposal["id"],
    )


@pytest.mark.parametrize("ttl_s", [0, 59, MAX_TTL_S + 1])
def test_invalid_ttl(chain: Chain, ttl_s: int) -> None:
    chain.refused(InvalidInput, "bad_change", "op1", "propose", zone(), ttl_s)


def test_invalid_decisions(chain: Chain) -> None:
    proposal = chain.propose("op1", zone())
    chain.refused(Conflict, "already_decided", "op1", "approve", proposal["id"])
    chain.refused(Conflict, "already_decided", "op1", "reject", proposal["id"])
    chain.call("op2", "reject", proposal["id"])
    chain.refused(Conflict, "already_decided", "op2", "approve", proposal["id"])
    chain.refused(Forbidden, "not_an_approver", "dev", "approve", proposal["id"])
    chain.refused(Forbidden, "not_an_approver", "ent", "reject", proposal["id"])


@pytest.mark.parametrize("function", ["approve", "reject", "withdraw"])
def test_invalid_proposal_ids(chain: Chain, function: str) -> None:
    chain.refused(NotFound, "unknown_proposal", "op1", function, "ab" * 32)
    chain.refused(InvalidInput, "bad_change", "op1", function, "x" * 129)
    chain.refused(InvalidInput, "bad_change", "op1", function, 42)


def test_invalid_proposal_query(chain: Chain) -> None:
    with pytest.raises(NotFound) as exc:
        chain.call("op1", "proposal", "cd" * 32)
    assert exc.value.code == "unknown_proposal"


def test_proposals_are_stored_under_their_tx_id(chain: Chain) -> None:
    proposal = chain.propose("op1", zone())
    stored = chain.state.get(GOVERNANCE, proposal_key(proposal["id"]))
    assert stored is not None and stored[0] == proposal
    assert proposal["proposer"] == {"org": "op1", "name": "admin"}
    assert chain.call("op2", "proposals", "all") == [proposal]


# --------------------------------------------------------- approvers and approval


def test_get_approvers(genesis: NetworkConfig) -> None:
    assert get_approvers(genesis, zone()) == set(OPERATORS)
    invite = {"kind": "add_member", "app": "shop", "org": "ent"}
    assert get_approvers(genesis, invite) == {"dev", "ent"}
    assert get_approvers(genesis, {"kind": "set_app_plan", "app": "shop", "plan": "free"}) == {
        "dev"
    }
    assert get_approvers(genesis, {"kind": "set_app_plan", "app": "demo", "plan": "free"}) == set()
    create = {"kind": "create_app", "name": "x", "owner": "ent", "nodes": ["n1"], "plan": "free"}
    assert get_approvers(genesis, create) == {"ent"}


def test_get_group(genesis: NetworkConfig) -> None:
    invite = {"kind": "add_member", "app": "demo", "org": "dev"}
    assert get_group(genesis, invite, "operators") == OPERATORS
    assert get_group(genesis, invite, "members") == OPERATORS
    assert get_group(genesis, invite, "subject") == ("dev",)
    assert get_group(genesis, invite, "owner") == ()
    assert get_group(genesis, zone(), "members") == ()  # not about an app
    assert get_group(genesis, zone(), "subject") == ()
    assert compute_subject(genesis, {"kind": "revoke", "org": "op2"}) == "op2"
    assert compute_subject(genesis, {"kind": "add_member", "org": 7}) is None


def test_is_approved(genesis: NetworkConfig) -> None:
    assert not is_approved(genesis, zone(), [])
    assert not is_approved(genesis, zone(), ["op1", "op2"])
    assert not is_approved(genesis, zone(), ["op1", "op1", "op2"])  # an org counts once
    assert not is_approved(genesis, zone(), ["op1", "op2", "dev"])  # dev is no operator
    assert is_approved(genesis, zone(), ["op1", "op2", "op3"])
    assert is_approved(genesis, zone(), set(OPERATORS))
    invite = {"kind": "add_member", "app": "shop", "org": "ent"}
    assert not is_approved(genesis, invite, ["dev"])  # the invitee too
    assert not is_approved(genesis, invite, ["ent"])  # and the members
    assert is_approved(genesis, invite, ["dev", "ent"])


def test_is_still_possible(genesis: NetworkConfig) -> None:
    assert is_still_possible(genesis, zone(), ["op1"])
    assert not is_still_possible(genesis, zone(), ["op1", "op2"])
    invite = {"kind": "add_member", "app": "shop", "org": "ent"}
    assert not is_still_possible(genesis, invite, ["ent"])
    unowned = {"kind": "set_app_plan", "app": "demo", "plan": "free"}
    assert not is_still_possible(genesis, unowned, [])


def test_default_policies_parse_and_are_configurable(genesis: NetworkConfig) -> None:
    for kind in CHANGE_KINDS:
        assert [str(r) for r in get_policy(genesis, kind)] == [
            str(parse_requirement(r)) for r in DEFAULT_POLICIES[kind]
        ]
    changed = dataclasses.replace(genesis, policies=(("add_zone", ("ALL operators",)),))
    assert not is_approved(changed, zone(), ["op1", "op2", "op3"])
    assert is_approved(changed, zone(), list(OPERATORS))


@pytest.mark.parametrize("text", ["MAJORITY", "ANY operators extra", "ALL orgs", 7, None, ""])
def test_invalid_requirement(text: Any) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_requirement(text)
    assert exc.value.code == "bad_policy"


# ------------------------------------------------------------------- the SDK side


class _FakeContract:
    """Answers ``submit`` from a script of results and errors."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def submit(self, function: str, *args: Any) -> Any:
        self.calls.append((function, args))
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def evaluate(self, function: str, *args: Any) -> Any:
        return self.submit(function, *args)


class _FakeGateway:
    """Just what :class:`meridian.client.governance.Governance` uses of a Gateway."""

    def __init__(self, contract: _FakeContract, identity: Any = None) -> None:
        self._contract = contract
        self.seen = SeenBlocks()
        self.identity = identity

    def app(self, name: str) -> _FakeGateway:
        assert name == GOVERNANCE_APP
        return self

    def contract(self, name: str) -> _FakeContract:
        assert name == GOVERNANCE
        return self._contract


def _sdk(script: list[Any], identity: Any = None) -> tuple[SdkGovernance, _FakeContract]:
    contract = _FakeContract(script)
    return SdkGovernance(_FakeGateway(contract, identity)), contract  # type: ignore[arg-type]


def _mvcc(block: int) -> Conflict:
    return Conflict(
        "lost a race",
        code="mvcc_read_conflict",
        details={"receipt": {"block": block, "code": "MVCC_READ_CONFLICT"}},
    )


def test_sdk_decision_that_lost_a_race_is_tried_again_after_that_block() -> None:
    gov, contract = _sdk([_mvcc(7), _mvcc(9), {"status": "executed"}])
    assert gov.approve("p1") == {"status": "executed"}
    assert contract.calls == [("approve", ("p1",))] * 3
    assert gov.gateway.seen.body(GOVERNANCE_APP, {}) == {"after_block": 9}


def test_invalid_sdk_decision_that_keeps_losing_races() -> None:
    gov, contract = _sdk([_mvcc(1), _mvcc(2), _mvcc(3), {"status": "executed"}])
    with pytest.raises(Conflict):
        gov.reject("p1")
    assert len(contract.calls) == 3
    other = Conflict("closed", code="proposal_closed")
    gov, contract = _sdk([other])
    with pytest.raises(Conflict) as exc:
        gov.approve("p1")
    assert exc.value is other and len(contract.calls) == 1


def test_sdk_change_builders(cas: Cas) -> None:
    issued = cas["ent"].issue("admin", Role.ADMIN)
    assert issued.key_pem is not None
    identity = ClientIdentity(load_cert_der(issued.cert_pem), load_signer(issued.key_pem))
    assert get_org(identity.cert_der) == "ent"
    genesis = make_genesis(cas)
    gov, _ = _sdk([genesis.to_dict()], identity)
    change = gov.create_app("mall", zones=["z2"], plan="basic")
    assert change == {
        "kind": "create_app",
        "name": "mall",
        "owner": "ent",
        "nodes": ["n3", "n4"],
        "plan": "basic",
        "key_mode": "own",
    }
    assert apply_change(genesis, change).app("mall").nodes == ("n3", "n4")
    for bad in ({}, {"nodes": ["n1"], "zones": ["z1"]}):
        with pytest.raises(InvalidInput):
            gov.create_app("mall", plan="basic", **bad)
    gov, _ = _sdk([genesis.to_dict()], identity)
    with pytest.raises(InvalidInput):
        gov.create_app("mall", zones=["z3"], plan="basic")  # a zone without nodes
    builders = [
        gov.add_zone("sz", "Shenzhen", "country"),
        gov.register_org("newdev", cas["newdev"].cert_pem),
        gov.add_node(
            "n5",
            org="op1",
            host="127.0.0.1",
            port=7100,
            p2p_port=7101,
            cert_pem=cas.node_cert("op1", "n5"),
            zone="z3",
        ),
        gov.invite("shop", "ent"),
        gov.set_app_nodes("shop", ["n1", "n3"]),
        gov.set_app_status("shop", "suspended"),
        gov.set_app_plan("shop", "standard"),
        gov.set_policy("add_zone", ["ANY operators"]),
        gov.set_plan(DEFAULT_PLANS[0]),
        gov.remove_member("demo", "op4"),
    ]
    for change in builders:
        apply_change(genesis, change)  # each is a well-formed change of its kind


def test_invalid_change_that_leaves_an_app_without_an_active_node(
    genesis: NetworkConfig,
) -> None:
    """Whatever the kind: here an app hosted by default on its member's nodes (op4's
    n4) loses its only node; the change is refused and nothing is written."""
    solo = AppConfig("solo", ("op4",))
    config = dataclasses.replace(genesis, apps=(*genesis.apps, solo))
    assert config.consenting_nodes(solo) == ("n4",)
    with pytest.raises(Conflict) as info:
        apply_change(config, {"kind": "remove_node", "id": "n4"})
    assert info.value.code == "no_active_node"
