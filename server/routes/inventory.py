"""The inventory invariant, for operators (the same check as `shopstream check-inventory`)."""

from __future__ import annotations

from aiohttp import web

from commerce.inventory_check import check_inventory
from server.api import Api, json_response
from server.keys import DB

api = Api()

REPORT = {
    "type": "object", "required": ["ok", "variants", "violations"],
    "properties": {
        "ok": {"type": "boolean"}, "variants": {"type": "integer"},
        "violations": {"type": "array", "items": {"type": "object"}},
    },
}


@api.route("GET", "/api/v1/admin/inventory/check", auth="admin", tags=("admin",), response=REPORT,
           summary="Check that every variant's stock equals its ledger and held + sold <= stocked")
async def inventory_check(request: web.Request) -> web.Response:
    async with request.app[DB].transaction(system=True, isolation="repeatable_read") as conn:
        return json_response(await check_inventory(conn))
