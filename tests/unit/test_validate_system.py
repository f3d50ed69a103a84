"""Validation of system-contract transactions (step 11) and of certificate scope.

A transaction of ``_governance`` or ``_lifecycle`` is re-run by every validator: one
endorser (one operator node) cannot write a configuration or a definition that the
contract would not have written. App users' certificates are scoped to their app, and
certificates revoked through governance are refused by the rules of the height.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from meridian.contracts.api import CallerIdentity
from meridian.contracts.lifecycle import LIFECYCLE, ContractDefinition, definition_key
from meridian.contracts.simulation import Simulation
from meridian.crypto.certs import CertificateAuthority, Membership, Role, load_cert_der, load_signer
from meridian.crypto.hashing import compute_signing_digest
from meridian.crypto.suites import Signer
from meridian.ledger.merkle import compute_root
from meridian.network.config import GOVERNANCE_APP, NetworkConfig, NetworkLayout
from meridian.network.contract import Governance
from meridian.network.governance import GOVERNANCE, VERSION_KEY, compute_config_writes
from meridian.network.init import InitOptions, init_network
from meridian.node.policy import parse_policy
from meridian.node.rules import compute_rules
from meridian.node.validate import AppRules, validate_block
from meridian.types import (
    DOMAIN_ENDORSEMENT,
    ZERO_DIGEST,
    Block,
    BlockHeader,
    Endorsement,
    KVWrite,
    NsRWSet,
    Proposal,
    SignedProposal,
    Transaction,
    TxCode,
    TxResult,
    Version,
    compute_endorsement_payload,
    compute_tx_hash,
)

_nonces = itertools.count(1)


class DictState:
    """Committed state for both the endorsing simulation and validation."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[Any, Version]] = {}

    def get(self, ns: str, key: str) -> tuple[Any, Version] | None:
        return self.rows.get((ns, key))

    def get_range(self, ns: str, start: str, end: str, limit: int) -> list[Any]:
        keys = sorted(k for n, k in self.rows if n == ns and start <= k and (not end or k < end))
        return [(k, *self.rows[(ns, k)]) for k in keys[:limit]]

    def query(self, *args: Any) -> list[Any]:
        return []

    def get_history(self, *args: Any) -> list[Any]:
        return []

    def committed_among(self, tx_ids: Any) -> set[str]:
        return set()

    def stored_bytes(self) -> int:
        return 0


class Net:
    def __init__(self, root: Path) -> None:
        self.config = init_network(root, InitOptions(orgs=4, nodes=4))
        self.layout = NetworkLayout(root)
        self.membership = Membership({o.id: o.ca_pem for o in self.config.orgs})

    def identity(self, org: str, name: str) -> tuple[bytes, Signer]:
        folder = self.layout.user_dir(org, name)
        return (
            load_cert_der((folder / "cert.pem").read_bytes()),
            load_signer((folder / "key.pem").read_bytes()),
        )

    def node(self, node_id: str) -> tuple[bytes, Signer]:
        folder = self.layout.node_dir(node_id)
        return (
            load_cert_der((folder / "cert.pem").read_bytes()),
            load_signer((folder / "key.pem").read_bytes()),
        )


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    return Net(tmp_path_factory.mktemp("sys") / "network")


def _proposal(
    app: str, contract: str, function: str, args: tuple[Any, ...], creator: bytes
) -> Proposal:
    return Proposal(
        "meridian",
        app,
        contract,
        function,
        args,
        next(_nonces).to_bytes(16, "big"),
        int(time.time() * 1000),
        creator,
    )


def _simulate(net: Net, state: DictState, proposal: Proposal, contract: Any) -> TxResult:
    """What an honest endorser computes."""
    caller = net.membership.validate(proposal.creator)
    sim = Simulation(
        state,
        app=proposal.app,
        tx_id=proposal.tx_id,
        timestamp_ms=proposal.timestamp_ms,
        caller=CallerIdentity.of(caller),
    )
    response = getattr(contract, proposal.function)(sim.context(proposal.contract), *proposal.args)
    return sim.result(response, f"{proposal.contract}@0")


def _transaction(
    proposal: Proposal, signer: Signer, result: TxResult, endorser: tuple[bytes, Signer]
) -> Transaction:
    signature = signer.sign(bytes(proposal.signing_digest()))
    payload = compute_endorsement_payload(proposal.tx_id, result)
    digest = compute_signing_digest(DOMAIN_ENDORSEMENT, "meridian", payload)
    endorsement = Endorsement(endorser[0], endorser[1].sign(bytes(digest)))
    return Transaction(SignedProposal(proposal, signature), result, (endorsement,))


def _validate(net: Net, app: str, tx: Transaction, state: DictState, rules: AppRules) -> TxCode:
    header = BlockHeader(
        "meridian",
        app,
        0,
        ZERO_DIGEST,
        compute_root([compute_tx_hash(tx)]),
        ZERO_DIGEST,
        tx.proposal.timestamp_ms + 10,
        1,
        "node1",
    )
    batch = validate_block(Block(header, (tx,)), state, net.membership, rules)
    return batch.codes[0]


def _governance_rules(config: NetworkConfig) -> AppRules:
    return compute_rules(config, config.governance)


ZONE = {"kind": "add_zone", "id": "chengdu", "name": "Chengdu"}


def test_honest_governance_transaction_is_valid(net: Net) -> None:
    cert, signer = net.identity("org1", "admin")
    state = DictState()
    # MAJORITY of 4 operators is 3: set a policy the proposer alone meets, via a
    # governance state that already allows it
    proposal = _proposal(GOVERNANCE_APP, GOVERNANCE, "propose", (ZONE, 3600), cert)
    result = _simulate(net, state, proposal, Governance(net.config))
    tx = _transaction(proposal, signer, result, net.node("node1"))
    assert _validate(net, GOVERNANCE_APP, tx, state, _governance_rules(net.config)) is TxCode.VALID


def test_invalid_forged_configuration_by_one_endorser(net: Net) -> None:
    """A proposal (one approval of four) plus a config write the contract never made."""
    cert, signer = net.identity("org1", "admin")
    state = DictState()
    proposal = _proposal(GOVERNANCE_APP, GOVERNANCE, "propose", (ZONE, 3600), cert)
    honest = _simulate(net, state, proposal, Governance(net.config))
    forged_config = replace(net.config, policies=(("add_node", ("ANY operators",)),))
    entries = compute_config_writes(net.config, forged_config)
    assert entries  # the policy entry (config/meta) changes
    [rwset] = honest.rwsets
    writes = (*(KVWrite(k, v) for k, v in entries.items()), KVWrite(VERSION_KEY, 1))
    forged = replace(honest, rwsets=(replace(rwset, writes=(*rwset.writes, *writes)),))
    tx = _transaction(proposal, signer, forged, net.node("node1"))
    code = _validate(net, GOVERNANCE_APP, tx, state, _governance_rules(net.config))
    assert code is TxCode.SYSTEM_CONTRACT_MISMATCH


def test_invalid_forged_response(net: Net) -> None:
    cert, signer = net.identity("org1", "admin")
    state = DictState()
    proposal = _proposal(GOVERNANCE_APP, GOVERNANCE, "propose", (ZONE, 3600), cert)
    honest = _simulate(net, state, proposal, Governance(net.config))
    tx = _transaction(
        proposal, signer, replace(honest, response={"status": "executed"}), net.node("node2")
    )
    code = _validate(net, GOVERNANCE_APP, tx, state, _governance_rules(net.config))
    assert code is TxCode.SYSTEM_CONTRACT_MISMATCH


def test_invalid_system_call_the_contract_refuses(net: Net) -> None:
    """A client (not an admin) cannot propose: the re-run fails, so the tx is invalid."""
    cert, signer = net.identity("org1", "user1")
    state = DictState()
    proposal = _proposal(GOVERNANCE_APP, GOVERNANCE, "propose", (ZONE, 3600), cert)
    result = TxResult(
        {"status": "executed"},
        (NsRWSet(GOVERNANCE, writes=(KVWrite(VERSION_KEY, 1),)),),
        (),
        f"{GOVERNANCE}@0",
    )
    tx = _transaction(proposal, signer, result, net.node("node1"))
    code = _validate(net, GOVERNANCE_APP, tx, state, _governance_rules(net.config))
    assert code is TxCode.SYSTEM_CONTRACT_MISMATCH


def test_invalid_user_contract_writing_a_system_namespace(net: Net) -> None:
    """A call of user contract 'asset' whose endorsed result also writes ``_lifecycle``
    state (a definition nobody approved)."""
    cert, signer = net.identity("org1", "user1")
    state = DictState()
    asset = ContractDefinition("asset", "1.0", 1, "asset:" + "ab" * 32, parse_policy("ANY"))
    state.rows[(LIFECYCLE, definition_key("asset"))] = (asset.to_dict(), Version(0, 0))
    app = net.config.apps[0]
    proposal = _proposal(app.name, "asset", "create", ("a1",), cert)
    evil = replace(asset, name="evil", package_id="evil:" + "cd" * 32).to_dict()
    result = TxResult(
        None,
        (
            NsRWSet(LIFECYCLE, writes=(KVWrite(definition_key("evil"), evil),)),
            NsRWSet("asset", writes=(KVWrite("a1", 1),)),
        ),
        (),
        f"{LIFECYCLE}@0,asset@1",
    )
    tx = _transaction(proposal, signer, result, net.node("node1"))
    code = _validate(net, app.name, tx, state, compute_rules(net.config, app))
    assert code is TxCode.SYSTEM_CONTRACT_MISMATCH
    honest = replace(result, rwsets=result.rwsets[1:], contract_version="asset@1")
    tx = _transaction(proposal, signer, honest, net.node("node1"))
    assert _validate(net, app.name, tx, state, compute_rules(net.config, app)) is TxCode.VALID


def test_honest_lifecycle_approval_is_valid(net: Net) -> None:
    cert, signer = net.identity("org2", "admin")
    state = DictState()
    app = net.config.apps[0]
    rules = compute_rules(net.config, app)
    assert rules.system is not None
    args = ("asset", "1.0", 1, "asset:" + "cd" * 32, "ANY")
    proposal = _proposal(app.name, LIFECYCLE, "approve", args, cert)
    result = _simulate(net, state, proposal, rules.system[LIFECYCLE]())
    tx = _transaction(proposal, signer, result, net.node("node2"))
    assert _validate(net, app.name, tx, state, rules) is TxCode.VALID


def _asset_result() -> TxResult:
    return TxResult(None, (), (), f"{LIFECYCLE}@0")


def test_invalid_app_user_certificate_on_another_app(net: Net) -> None:
    """org1's CA issues 'alice' for app 'shop': it is refused on app 'demo'."""
    ca = CertificateAuthority.load(
        (net.layout.ca_dir("org1") / "ca.pem").read_bytes(),
        (net.layout.ca_dir("org1") / "ca.key").read_bytes(),
    )
    issued = ca.issue("alice", Role.CLIENT, attrs={"app": "shop"})
    assert issued.key_pem is not None
    cert, signer = load_cert_der(issued.cert_pem), load_signer(issued.key_pem)
    app = net.config.apps[0]
    proposal = _proposal(app.name, LIFECYCLE, "approve", ("a", "1", 1, "a:" + "ab" * 32), cert)
    tx = _transaction(proposal, signer, _asset_result(), net.node("node1"))
    code = _validate(net, app.name, tx, DictState(), compute_rules(net.config, app))
    assert code is TxCode.BAD_CREATOR_CERTIFICATE


def test_invalid_certificate_revoked_through_governance(net: Net) -> None:
    cert, signer = net.identity("org1", "admin")
    serial = net.membership.validate(cert).serial
    app = net.config.apps[0]
    view = replace(net.config, revoked=(("org1", serial),))
    proposal = _proposal(app.name, LIFECYCLE, "approve", ("a", "1", 1, "a:" + "ab" * 32), cert)
    tx = _transaction(proposal, signer, _asset_result(), net.node("node1"))
    code = _validate(net, app.name, tx, DictState(), compute_rules(view, app))
    assert code is TxCode.BAD_CREATOR_CERTIFICATE
