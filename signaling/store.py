"""What the hub reads and writes in PostgreSQL: room snapshots, stock, viewer figures.

Functions take an asyncpg connection and plain values, like the commerce modules;
chat storage and moderation live in `signaling/chat.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from commerce import catalog
from commerce.errors import NotFound

LIVE_STATES = ("live", "paused")

ROOM_INFO = """
SELECT l.id, l.status, l.chat_settings, s.user_id AS owner_user_id
FROM livestreams l JOIN sellers s ON s.id = l.seller_id
WHERE l.id = $1
"""

HIGHLIGHTED_PRODUCT = """
SELECT lp.product_id FROM live_products lp
WHERE lp.livestream_id = $1 AND lp.highlighted_at IS NOT NULL
ORDER BY lp.highlighted_at DESC LIMIT 1
"""

# The show's pending drop (announce_drop keeps at most one), once its time has not passed.
PENDING_DROP = """
SELECT lp.product_id, lp.drop_at FROM live_products lp
WHERE lp.livestream_id = $1 AND lp.drop_at > clock_timestamp()
ORDER BY lp.drop_at LIMIT 1
"""

RECENT_CHAT = """
SELECT m.id, m.user_id, pr.name, m.message, m.created_at
FROM chat_messages m JOIN profiles pr ON pr.id = m.user_id
WHERE m.livestream_id = $1 AND m.deleted_at IS NULL
ORDER BY m.created_at DESC, m.id DESC LIMIT $2
"""

USER_NAME = "SELECT name FROM profiles WHERE id = $1"

# Which live rooms show these variants, and the variants' stock now.
LIVE_STOCK = """
SELECT DISTINCT lp.livestream_id, v.product_id, v.id AS variant_id, v.stock
FROM product_variants v
JOIN live_products lp ON lp.product_id = v.product_id
JOIN livestreams l ON l.id = lp.livestream_id AND l.status = ANY($2::text[])
WHERE v.id = ANY($1::uuid[])
"""

ADD_VIEWER_FIGURES = """
UPDATE livestreams
SET peak_viewers = GREATEST(peak_viewers, $2),
    total_viewers = total_viewers + $3,
    watch_seconds = watch_seconds + $4
WHERE id = $1
"""


@dataclass
class RoomInfo:
    livestream_id: str
    state: str
    owner_user_id: str
    chat_settings: dict[str, Any]
    highlighted_product: dict[str, Any] | None
    drop: dict[str, Any] | None = None  # the `drop:announced` payload of the pending drop


async def room_info(conn: asyncpg.Connection, livestream_id: str) -> RoomInfo | None:
    """Return what a room needs to open, or None for an unknown livestream."""
    row = await conn.fetchrow(ROOM_INFO, livestream_id)
    if row is None:
        return None
    product_id = await conn.fetchval(HIGHLIGHTED_PRODUCT, livestream_id)
    drop = await conn.fetchrow(PENDING_DROP, livestream_id)
    drop_product = await product_contract(conn, str(drop["product_id"])) if drop else None
    return RoomInfo(
        livestream_id=str(row["id"]),
        state=row["status"],
        owner_user_id=str(row["owner_user_id"]),
        chat_settings=_jsonb(row["chat_settings"]),
        highlighted_product=await product_contract(conn, str(product_id)) if product_id else None,
        drop={
            "productId": str(drop["product_id"]), "product": drop_product,
            "at": drop["drop_at"].isoformat(),
        } if drop and drop_product else None,
    )


async def product_contract(conn: asyncpg.Connection, product_id: str) -> dict[str, Any] | None:
    """Return the full product contract (the catalog's, with variants and stock), or None."""
    try:
        return await catalog.get_product(conn, product_id)
    except NotFound:
        return None  # the highlighted product was archived since


def chat_message(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """Return a chat row as the `chat:new` payload `{id, user:{id,name}, message, ts}`."""
    return {
        "id": str(row["id"]),
        "user": {"id": str(row["user_id"]), "name": row["name"]},
        "message": row["message"],
        "ts": row["created_at"].timestamp(),
    }


async def recent_chat(conn: asyncpg.Connection, livestream_id: str, limit: int) -> list[dict[str, Any]]:
    """Return the last `limit` visible chat messages, oldest first."""
    rows = await conn.fetch(RECENT_CHAT, livestream_id, limit)
    return [chat_message(r) for r in reversed(rows)]


async def user_name(conn: asyncpg.Connection, user_id: str) -> str | None:
    """Return the name others see for a user; None when the user no longer exists."""
    row = await conn.fetchrow(USER_NAME, user_id)
    return None if row is None else row["name"] or "Someone"


async def live_stock(conn: asyncpg.Connection, variant_ids: list[str]) -> list[asyncpg.Record]:
    """Return (livestream_id, product_id, variant_id, stock) for variants shown live."""
    return await conn.fetch(LIVE_STOCK, variant_ids, list(LIVE_STATES))


async def add_viewer_figures(
    conn: asyncpg.Connection, livestream_id: str, *, peak: int, joined: int, watch_seconds: int
) -> None:
    await conn.execute(ADD_VIEWER_FIGURES, livestream_id, peak, joined, watch_seconds)


def _jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
