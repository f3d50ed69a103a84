"""Calls the asset-transfer contract of the same app (cross-contract invocation)."""

from typing import Any

from meridian.contracts import Context, Contract, ContractError, query, transaction


class Caller(Contract):
    @transaction
    def transfer_and_log(self, ctx: Context, asset_id: str, new_owner: str) -> dict[str, Any]:
        asset = ctx.invoke("asset-transfer", "transfer", asset_id, new_owner)
        ctx.put_state(f"log/{ctx.tx_id}", {"asset": asset_id, "to": new_owner})
        return asset

    @query
    def owner_of(self, ctx: Context, asset_id: str) -> str:
        asset = ctx.invoke("asset-transfer", "read", asset_id)
        if asset is None:
            raise ContractError(f"no asset {asset_id}")
        return asset["owner"]
