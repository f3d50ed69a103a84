"""Asset transfer: the example contract of Meridian's tutorial (docs/contracts.md).

Each asset is one JSON document under its own key, so transfers of different
assets never conflict. ``by_owner`` is a JSON query; ``history`` shows every
committed change of an asset.
"""

from __future__ import annotations

from typing import Any

from meridian.contracts import Context, Contract, ContractError, query, transaction


class AssetTransfer(Contract):
    @transaction
    def create(self, ctx: Context, asset_id: str, owner: str, value: int) -> dict[str, Any]:
        """Create an asset owned by ``owner``; fails if ``asset_id`` exists."""
        if ctx.get_state(asset_id) is not None:
            raise ContractError(f"asset {asset_id} already exists")
        if value < 0:
            raise ContractError("value must not be negative")
        asset = {
            "id": asset_id,
            "owner": owner,
            "value": value,
            "created_by": f"{ctx.caller.name}@{ctx.caller.org}",
        }
        ctx.put_state(asset_id, asset)
        ctx.add("stats/assets", 1)
        ctx.emit("created", {"id": asset_id, "owner": owner})
        return asset

    @transaction
    def transfer(self, ctx: Context, asset_id: str, new_owner: str) -> dict[str, Any]:
        """Give ``asset_id`` to ``new_owner``; returns the updated asset."""
        asset = ctx.get_state(asset_id)
        if asset is None:
            raise ContractError(f"asset {asset_id} does not exist")
        previous = asset["owner"]
        asset["owner"] = new_owner
        ctx.put_state(asset_id, asset)
        ctx.emit("transferred", {"id": asset_id, "from": previous, "to": new_owner})
        return asset

    @transaction
    def delete(self, ctx: Context, asset_id: str) -> None:
        if ctx.get_state(asset_id) is None:
            raise ContractError(f"asset {asset_id} does not exist")
        ctx.delete_state(asset_id)
        ctx.add("stats/assets", -1)

    @query
    def read(self, ctx: Context, asset_id: str) -> dict[str, Any] | None:
        return ctx.get_state(asset_id)

    @query
    def by_owner(self, ctx: Context, owner: str) -> list[dict[str, Any]]:
        """Every asset of ``owner`` (a JSON query on the stored documents)."""
        return [asset for _, asset in ctx.query({"owner": owner})]

    @query
    def history(self, ctx: Context, asset_id: str) -> list[dict[str, Any]]:
        return [entry.to_dict() for entry in ctx.get_history(asset_id)]

    @query
    def count(self, ctx: Context) -> int:
        return ctx.get_state("stats/assets") or 0
