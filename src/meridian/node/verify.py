"""``meridian ledger verify``: re-check a ledger from its genesis block.

For every block: its number follows the previous one, ``previous_hash`` is the
previous header's hash, ``data_hash`` is the Merkle root of its transactions, the
stored hash is the header's hash, and ``last_result_root`` is the previous block's
result root, and its commit certificate carries a quorum of the consenters'
signatures over the header's hash (the consenters of that height: a committed
consenter change applies from the next block). Then the block is validated again,
under the rules of its configuration height, against a replay of the ledger in a
scratch database, and the verdicts and result root must equal the stored ones.
Finally the replayed state must equal the stored state, key by key.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ..consensus.core import Consenters, check_commit_certificate
from ..consensus.messages import QuorumCert
from ..crypto.certs import Membership
from ..crypto.hashing import Digest
from ..errors import InvalidInput
from ..ledger.merkle import compute_root
from ..ledger.store import SqliteLedger
from ..network.config import GOVERNANCE_APP, NetworkLayout
from ..network.history import ConfigHistory
from ..types import ZERO_DIGEST, Block, BlockHeader, Transaction, TxCode, compute_tx_hash
from .channel import WriterState
from .revocations import load_revocations
from .rules import compute_block_rules, compute_next_consenters, get_membership
from .validate import AppRules, validate_block


@dataclass
class VerifyReport:
    blocks: int = 0
    transactions: int = 0
    valid: int = 0
    state_keys: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


RulesFor = Callable[[BlockHeader], AppRules]
ConsentersAfter = Callable[[SqliteLedger], Consenters]


def verify_ledger(
    path: Path,
    membership: Membership,
    rules: RulesFor,
    consenters: ConsentersAfter,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify the ledger file at ``path``: ``rules(header)`` are the rules of a block,
    ``consenters(replay)`` the consenters of the block after the replay's last one."""
    report = VerifyReport()
    store = SqliteLedger(path)
    with tempfile.TemporaryDirectory(prefix="meridian-verify-") as tmp:
        replay = SqliteLedger(Path(tmp) / "replay.sqlite")
        try:
            store.reader().execute("BEGIN")  # one consistent snapshot, even while the node runs
            total = store.height()
            _verify_blocks(store, replay, membership, rules, consenters, report, total, progress)
            if report.ok:
                _compare_state(store, replay, report)
            if report.ok:  # the governance views are rebuilt from it at every start
                _compare_history(store, replay, report)
        finally:
            replay.close()
            store.close()
    return report


def _verify_blocks(
    store: SqliteLedger,
    replay: SqliteLedger,
    membership: Membership,
    rules_for: RulesFor,
    consenters_after: ConsentersAfter,
    report: VerifyReport,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    prev_hash, prev_root, prev_config = ZERO_DIGEST, ZERO_DIGEST, 0
    for row in store.iter_raw_blocks():
        number, stored_hash, header_raw, body_raw, codes_raw, root, cert, stored = row
        where = f"block {number}"
        header = BlockHeader.from_dict(orjson.loads(header_raw))
        txs = tuple(Transaction.from_dict(t) for t in orjson.loads(body_raw))
        checks = [
            (number == report.blocks and header.number == number, "is out of sequence"),
            (header.hash == stored_hash, "hash does not match its header"),
            (header.previous_hash == prev_hash, "previous_hash does not link to the chain"),
            (
                header.last_result_root == prev_root,
                "last_result_root differs from the previous block's result root",
            ),
            (
                header.data_hash == compute_root([compute_tx_hash(t) for t in txs]),
                "data_hash is not the Merkle root of its transactions",
            ),
            (
                header.config_height >= prev_config,
                "config_height goes back below the previous block's",
            ),
        ]
        report.problems.extend(f"{where}: {msg}" for ok, msg in checks if not ok)
        rules = rules_for(header)
        cert_problem = _check_certificate(rules.network, consenters_after(replay), header, cert)
        if cert_problem:
            report.problems.append(f"{where}: commit certificate: {cert_problem}")
        if report.problems:
            return
        batch = validate_block(Block(header, txs), WriterState(replay), membership, rules)
        stored_codes = [TxCode(c) for c in orjson.loads(codes_raw)]
        if list(batch.codes) != stored_codes:
            report.problems.append(f"{where}: re-validation gives different verdicts")
        if batch.result_root != root:
            report.problems.append(f"{where}: re-validation gives a different result root")
        if batch.stored_bytes != stored:
            report.problems.append(f"{where}: re-validation gives different stored bytes")
        if report.problems:
            return
        replay.commit_block(batch)
        report.blocks += 1
        report.transactions += len(txs)
        report.valid += sum(1 for c in stored_codes if c is TxCode.VALID)
        prev_hash, prev_root, prev_config = header.hash, Digest(root), header.config_height
        if progress:
            progress(report.blocks, total)


def _check_certificate(
    network: str, consenters: Consenters, header: BlockHeader, raw: bytes
) -> str | None:
    try:
        qc = QuorumCert.decode(raw)
    except InvalidInput as exc:
        return f"unreadable ({exc})"
    return check_commit_certificate(network, consenters, header, qc)


def _compare_history(store: SqliteLedger, replay: SqliteLedger, report: VerifyReport) -> None:
    stored, replayed = store.iter_history(), replay.iter_history()
    for a, b in zip(stored, replayed, strict=False):
        if a != b:
            report.problems.append(f"key history differs at {a[0]}/{a[1]} block {a[2]}")
            return
    if next(stored, None) is not None or next(replayed, None) is not None:
        report.problems.append("key history has a different number of rows than the replay")


def _compare_state(store: SqliteLedger, replay: SqliteLedger, report: VerifyReport) -> None:
    stored = store.iter_state()
    replayed = replay.iter_state()
    for a, b in zip(stored, replayed, strict=False):
        if a != b:
            report.problems.append(f"state differs at {a[0]}/{a[1]} (replay has {b[0]}/{b[1]})")
            return
        report.state_keys += 1
    if next(stored, None) is not None or next(replayed, None) is not None:
        report.problems.append("state has a different number of keys than the replay")


def verify_node(
    layout: NetworkLayout,
    node_id: str,
    *,
    progress: Callable[[str], Callable[[int, int], None] | None] | None = None,
) -> list[tuple[str, VerifyReport]]:
    """Verify every ledger in ``node_id``'s data directory, the governance ledger
    first (it says which configuration governs each block of the others)."""
    ledgers = layout.data_dir(node_id) / "ledgers"
    history = ConfigHistory(layout.load())
    governance_path = ledgers / f"{GOVERNANCE_APP}.sqlite"
    if governance_path.is_file():
        governance = SqliteLedger(governance_path)
        try:
            history.load(governance)
        finally:
            governance.close()
    membership = get_membership(history)
    load_revocations(layout.data_dir(node_id), membership)
    apps = sorted(
        (p.stem for p in ledgers.glob("*.sqlite") if "." not in p.stem),
        key=lambda name: (name != GOVERNANCE_APP, name),
    )
    results = []
    for app in apps:
        report = verify_ledger(
            ledgers / f"{app}.sqlite",
            membership,
            functools.partial(compute_block_rules, history, app),
            functools.partial(compute_next_consenters, history, membership, app),
            progress=progress(app) if progress else None,
        )
        results.append((app, report))
    return results
