"""An app's usage across its hosting nodes, gathered from their gateways.

Each gateway meters only the requests it serves (:mod:`meridian.gateway.quotas`), but
an app is billed as a whole, whichever gateways its back-end used. So a gateway asked
for an app's usage or invoice asks every other hosting node's gateway for *its* share
(``GET /v1/apps/{app}/usage?scope=local``, signed with this node's own identity, at
most :data:`PEER_USAGE_TIMEOUT_S`, all in parallel) and merges the answers with
:func:`meridian.network.plans.compute_network_usage`; a node that does not answer in
time is reported as missing rather than waited for.

:class:`PeerRequests` keeps the other gateways' request counts of the month for the
network-wide requests quota: refreshed in the background every
:data:`PEER_REFRESH_EVERY_S`, and only for apps that had traffic here within
:data:`PEER_ACTIVE_WINDOW_S`, so an idle network makes no calls at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpx

from ..client.core import raise_for_error
from ..crypto.suites import Signer
from ..errors import InvalidInput, MeridianError
from ..network.config import NodeEntry
from ..network.plans import Usage
from .auth import sign_request

log = logging.getLogger("meridian.gateway")

PEER_USAGE_TIMEOUT_S = 2.0  # one peer's answer, connection included
PEER_REFRESH_EVERY_S = 10.0  # peers' request counts of busy apps, for the quota
PEER_ACTIVE_WINDOW_S = 60.0  # an app is busy while it had traffic here this recently
SCOPE_NETWORK = "network"
SCOPE_LOCAL = "local"
SCOPES = (SCOPE_NETWORK, SCOPE_LOCAL)


def parse_scope(value: Any) -> str:
    """``network`` (the default, every hosting node) or ``local`` (this gateway only);
    ``InvalidInput(code="bad_scope")`` for anything else."""
    if value is None:
        return SCOPE_NETWORK
    if value not in SCOPES:
        raise InvalidInput(
            f"scope {value!r} is not one of {', '.join(SCOPES)}",
            code="bad_scope",
            hint="scope=network sums every hosting node's gateway (the default); "
            "scope=local is this gateway's share only",
        )
    return str(value)


class PeerUsageClient:
    """Asks other nodes' gateways for their local usage of an app, signed as this node.

    ``transport`` is for tests (an ``httpx.MockTransport``); environment proxies are
    ignored, since the peers are the network's own nodes.
    """

    def __init__(
        self,
        signer: Signer,
        cert_der: bytes,
        network: str,
        *,
        timeout_s: float = PEER_USAGE_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._signer = signer
        self._cert_der = cert_der
        self._network = network
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport, trust_env=False)

    async def get_usage(self, entry: NodeEntry, app: str, month: str) -> Usage:
        """Node ``entry``'s own usage of ``app`` in ``month``: the typed error of its
        answer, ``InvalidInput(code="bad_usage")`` for a malformed one, or the
        transport's error (``httpx.HTTPError``, ``TimeoutError``)."""
        url = httpx.URL(
            f"{entry.url}/v1/apps/{app}/usage", params={"month": month, "scope": SCOPE_LOCAL}
        )
        headers = sign_request(
            self._signer, self._cert_der, self._network, "GET", url.path, url.query.decode(), b""
        )
        async with asyncio.timeout(self._timeout_s):
            response = await self._http.get(url, headers=headers)
        usage = Usage.from_dict(raise_for_error(response))
        if usage.app != app or usage.month != month:
            raise InvalidInput(
                f"{entry.id} answered with usage of {usage.app} in {usage.month}",
                code="bad_usage",
            )
        return usage

    async def gather(
        self, entries: Sequence[NodeEntry], app: str, month: str
    ) -> tuple[dict[str, Usage], list[str]]:
        """Ask every node of ``entries`` at once: ``(usage by node, nodes that failed)``.
        Never raises for a peer's failure; each is logged."""
        answers = await asyncio.gather(*(self._get_or_none(e, app, month) for e in entries))
        found = {e.id: u for e, u in zip(entries, answers, strict=True) if u is not None}
        missing = [e.id for e, u in zip(entries, answers, strict=True) if u is None]
        return found, missing

    async def _get_or_none(self, entry: NodeEntry, app: str, month: str) -> Usage | None:
        try:
            return await self.get_usage(entry, app, month)
        except (MeridianError, httpx.HTTPError, TimeoutError) as exc:
            log.warning("%s: no usage from %s (%s)", app, entry.id, exc or type(exc).__name__)
            return None

    async def aclose(self) -> None:
        await self._http.aclose()


class PeerRequests:
    """The month's request counts the other hosting nodes' gateways last reported, per
    app, and which apps are busy here (worth refreshing).

    Counts are kept per node, so a peer that misses one refresh keeps its last count
    instead of dropping to zero; a count of another month counts nothing.
    """

    def __init__(
        self,
        *,
        active_window_s: float = PEER_ACTIVE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._active_window_s = active_window_s
        self._clock = clock
        self._last_traffic: dict[str, float] = {}
        self._counts: dict[str, dict[str, tuple[str, int]]] = {}  # app -> node -> (month, n)

    def note_traffic(self, app: str) -> bool:
        """Record a request to ``app`` here; true if the app was idle until now (so its
        peers' counts are stale and worth refreshing at once)."""
        now = self._clock()
        last = self._last_traffic.get(app)
        self._last_traffic[app] = now
        return last is None or now - last > self._active_window_s

    def active_apps(self) -> list[str]:
        """Apps with traffic here within the window (idle ones are forgotten)."""
        now = self._clock()
        for app in [a for a, t in self._last_traffic.items() if now - t > self._active_window_s]:
            del self._last_traffic[app]
        return sorted(self._last_traffic)

    def update(self, app: str, node: str, month: str, requests: int) -> None:
        self._counts.setdefault(app, {})[node] = (month, requests)

    def get(self, app: str, month: str, nodes: Iterable[str]) -> int:
        """The requests ``nodes`` reported for ``app`` in ``month`` (0 for unknown ones)."""
        counts = self._counts.get(app, {})
        return sum(n for node in set(nodes) for m, n in [counts.get(node, ("", 0))] if m == month)


__all__ = [
    "PEER_ACTIVE_WINDOW_S",
    "PEER_REFRESH_EVERY_S",
    "PEER_USAGE_TIMEOUT_S",
    "SCOPES",
    "SCOPE_LOCAL",
    "SCOPE_NETWORK",
    "PeerRequests",
    "PeerUsageClient",
    "parse_scope",
]
