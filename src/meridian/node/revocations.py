"""A node's record of certificate revocations and when each took effect.

Revocation lists reach a node out of band (``POST /v1/orgs/{org}/crl``, or CRL files
in the network directory at start-up). A revocation takes effect on this node at
the later of its date and the moment the node received it; the node keeps those
times in ``<data dir>/revocations.json`` so that ``meridian ledger verify`` can
re-validate every block against exactly what the node knew when it committed it.
(When revocation moves into the app's configuration transactions, this file goes.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from ..crypto.certs import Membership
from ..network.config import write_file

REVOCATIONS_FILE = "revocations.json"


def load_revocations(data_dir: Path, membership: Membership) -> set[str]:
    """Adopt the revocations saved in ``data_dir`` (if any) into ``membership``; the
    orgs skipped because ``membership`` does not know them yet (an org added by
    governance, before the node has loaded its configuration history)."""
    path = data_dir / REVOCATIONS_FILE
    if not path.is_file():
        return set()
    saved = orjson.loads(path.read_bytes())
    skipped = {org for org in saved if org not in membership.orgs}
    membership.restore_revocations(
        {
            org: {
                int(serial): datetime.fromtimestamp(ms / 1000, UTC)
                for serial, ms in serials.items()
            }
            for org, serials in saved.items()
            if org not in skipped
        }
    )
    return skipped


def save_revocations(data_dir: Path, membership: Membership) -> None:
    data = {
        org: {str(serial): int(when.timestamp() * 1000) for serial, when in serials.items()}
        for org, serials in membership.revocations().items()
    }
    write_file(data_dir / REVOCATIONS_FILE, orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
