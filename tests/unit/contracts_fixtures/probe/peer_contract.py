"""A second contract, invoked from Probe through the test's invoker."""

from __future__ import annotations

from meridian.contracts import Context, Contract, transaction


class Peer(Contract):
    @transaction
    def double(self, ctx: Context, key: str, n: int) -> int:
        ctx.put_state(key, n * 2)
        return n * 2
