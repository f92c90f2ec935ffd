"""Tell live rooms about changes made through HTTP (highlights, stock, orders, state).

Route handlers call these after their transaction commits. Until the realtime hub is
running (`app[HUB]`), they do nothing: commerce works the same with or without rooms.
The hub's side of the contract:

    await hub.emit(livestream_id, event_type, payload, audience="all" | "seller")
    hub.stock_changed(variant_ids)         # hub looks up which live rooms show them, later

A livestream that ends (`stream:state` ended) also closes its media room, so every
publisher and viewer session ends with it, however the end came about.

Every change here also drops the cached public reads that show it, in every process
(`server/read_cache.py`): stock, product edits, highlights and livestream state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from server import read_cache
from server.keys import GATEWAY, HUB

# Room events that change what the public livestream reads show.
LIVESTREAM_EVENTS = frozenset({"stream:state", "product:highlighted"})


async def room_event(
    app: web.Application, livestream_id: str, event_type: str, payload: dict[str, Any],
    *, audience: str = "all",
) -> None:
    if event_type in LIVESTREAM_EVENTS:
        livestream_changed(app, livestream_id)
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
    cached_stock_changed(app, ids)
    if hub is not None and ids:
        hub.stock_changed(ids)


def cached_stock_changed(app: web.Application, variant_ids: Iterable[str]) -> None:
    """Drop the cached reads showing these variants' stock (the rooms hear it elsewhere)."""
    read_cache.changed(app, {f"variant:{v}" for v in variant_ids})


def products_changed(app: web.Application, product_ids: Iterable[str]) -> None:
    """Drop the cached reads of these products and every product list (membership may change)."""
    read_cache.changed(app, {read_cache.PRODUCTS, *(f"product:{p}" for p in product_ids)})


def livestream_changed(app: web.Application, livestream_id: str) -> None:
    """Drop the cached reads of this livestream (detail, products) and every livestream list."""
    read_cache.changed(app, {read_cache.LIVESTREAMS, f"livestream:{livestream_id}"})
