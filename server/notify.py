"""Tell live rooms about changes made through HTTP (highlights, stock, orders, state).

Route handlers call these after their transaction commits. Until the realtime hub is
running (`app[HUB]`), they do nothing: commerce works the same with or without rooms.
The hub's side of the contract:

    await hub.emit(livestream_id, event_type, payload, audience="all" | "seller")
    hub.stock_changed(variant_ids)         # hub looks up which live rooms show them, later

A livestream that ends (`stream:state` ended) also closes its media room, so every
publisher and viewer session ends with it, however the end came about.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from server.keys import GATEWAY, HUB


async def room_event(
    app: web.Application, livestream_id: str, event_type: str, payload: dict[str, Any],
    *, audience: str = "all",
) -> None:
    hub = app.get(HUB)
    if hub is not None:
        await hub.emit(livestream_id, event_type, payload, audience=audience)
    gateway = app.get(GATEWAY)
    if event_type == "stream:state" and payload.get("state") == "ended" and gateway is not None:
        await gateway.end(livestream_id)


def stock_changed(app: web.Application, variant_ids: Iterable[str]) -> None:
    """Have the hub announce these variants' stock to the live rooms showing them (not awaited)."""
    hub = app.get(HUB)
    ids = sorted({str(v) for v in variant_ids})
    if hub is not None and ids:
        hub.stock_changed(ids)
