"""Livestreams: records, the state machine, stream keys, attached products and chat history.

States: scheduled -> live <-> paused, live|paused -> ended. The seller moves a stream
with start/end; the SFU moves it between live and paused when the publisher drops or
resumes (`set_state`). Transitions are conditional UPDATEs, so two racing callers
cannot both move the same stream.

A stream key (`sk_...`) lets OBS/ffmpeg publish without a user token; rotating it
makes the old key useless at once (`check_publish_grant` compares against the row).
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from commerce.catalog import PRODUCT_COLUMNS, get_product, products_json
from commerce.errors import Conflict, Forbidden, Invalid, InvalidState, NotFound
from commerce.pagination import decode_cursor, page
from commerce.values import iso, parse_moment

# How far ahead a drop may be announced: a countdown longer than a day is a schedule.
MAX_DROP_AHEAD = timedelta(hours=24)

# state -> the states it may move to
TRANSITIONS: dict[str, frozenset[str]] = {
    "scheduled": frozenset({"live"}),
    "live": frozenset({"paused", "ended"}),
    "paused": frozenset({"live", "ended"}),
    "ended": frozenset(),
}
STATUS_FILTERS = {"live": ("live", "paused"), "upcoming": ("scheduled",), "ended": ("ended",)}

LIVESTREAM_COLUMNS = """
l.id, l.seller_id, l.title, l.description, l.status, l.scheduled_at, l.started_at,
l.ended_at, l.stream_key, l.room, l.thumbnail_url, l.chat_settings, l.peak_viewers,
l.total_viewers, l.watch_seconds, l.created_at, s.display_name AS seller_name, s.user_id AS seller_user_id,
(SELECT lp.product_id FROM live_products lp
 WHERE lp.livestream_id = l.id AND lp.highlighted_at IS NOT NULL
 ORDER BY lp.highlighted_at DESC LIMIT 1) AS highlighted_product_id
"""
SELECT_LIVESTREAM = f"""
SELECT {LIVESTREAM_COLUMNS} FROM livestreams l JOIN sellers s ON s.id = l.seller_id WHERE l.id = $1
"""
INSERT_LIVESTREAM = """
INSERT INTO livestreams (seller_id, title, description, scheduled_at, stream_key, room)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
"""
# Each listing sorts by one timestamp expression; the cursor carries (that value, id).
LIST_ORDER = {
    None: ("l.created_at", "DESC"),
    "live": ("coalesce(l.started_at, l.created_at)", "DESC"),
    "upcoming": ("coalesce(l.scheduled_at, l.created_at)", "ASC"),
    "ended": ("coalesce(l.ended_at, l.created_at)", "DESC"),
}
SET_STATE = """
UPDATE livestreams SET status = $2,
       started_at = CASE WHEN $2 = 'live' THEN coalesce(started_at, now()) ELSE started_at END,
       ended_at = CASE WHEN $2 = 'ended' THEN now() ELSE ended_at END
WHERE id = $1 AND status = ANY($3::text[])
RETURNING id
"""
SET_MEDIA_NODE = "UPDATE livestreams SET media_node = $2 WHERE id = $1 AND status <> 'ended'"
# Shows recorded on air that this node hosted (or that no node claimed: started through
# the API, never published) and for which it has no SFU room: they lost their room.
PAUSE_ORPHANS = """
UPDATE livestreams SET status = 'paused'
WHERE status IN ('live', 'paused') AND (media_node = $1 OR media_node IS NULL)
  AND NOT (id::text = ANY($2::text[]))
RETURNING id
"""
RECORD_VIEWER_STATS = """
UPDATE livestreams SET peak_viewers = greatest(peak_viewers, $2),
       total_viewers = total_viewers + $3, watch_seconds = watch_seconds + $4
WHERE id = $1 RETURNING id
"""
SELECT_STREAM_PRODUCTS = f"""
SELECT {PRODUCT_COLUMNS}, lp.position, lp.highlighted_at
FROM live_products lp
JOIN products p ON p.id = lp.product_id JOIN sellers s ON s.id = p.seller_id
WHERE lp.livestream_id = $1 AND ($2 OR p.status = 'active')
ORDER BY lp.position, lp.id
"""
SELECT_PRODUCT_ON_STREAM = """
SELECT p.seller_id, p.status, lp.id AS live_product_id
FROM products p LEFT JOIN live_products lp ON lp.product_id = p.id AND lp.livestream_id = $1
WHERE p.id = $2
"""
SELECT_CHAT_PAGE = """
SELECT m.id, m.user_id, m.message, m.created_at, pr.name
FROM chat_messages m JOIN profiles pr ON pr.id = m.user_id
WHERE m.livestream_id = $1 AND m.deleted_at IS NULL
  AND ($2::timestamptz IS NULL OR (m.created_at, m.id) > ($2, $3::uuid))
ORDER BY m.created_at, m.id LIMIT $4
"""


def _new_stream_key() -> str:
    return "sk_" + secrets.token_urlsafe(24)


def livestream_json(row: asyncpg.Record, *, with_key: bool = False) -> dict[str, Any]:
    """Return a livestream as the API shows it; the stream key only for its seller."""
    data: dict[str, Any] = {
        "id": str(row["id"]), "title": row["title"], "description": row["description"],
        "status": row["status"], "isLive": row["status"] in ("live", "paused"),
        "scheduledAt": iso(row["scheduled_at"]), "startedAt": iso(row["started_at"]),
        "endedAt": iso(row["ended_at"]), "room": row["room"],
        "thumbnailUrl": row["thumbnail_url"],
        "seller": {"id": str(row["seller_id"]), "displayName": row["seller_name"]},
        "highlightedProductId": _str(row["highlighted_product_id"]),
        "chatSettings": _json(row["chat_settings"]),
        "viewers": {
            "peak": row["peak_viewers"], "total": row["total_viewers"],
            "watchSeconds": row["watch_seconds"],
        },
        "createdAt": row["created_at"].isoformat(),
    }
    if with_key:
        data["streamKey"] = row["stream_key"]
    return data


async def get_livestream(conn: asyncpg.Connection, livestream_id: str) -> dict[str, Any]:
    """Return the public view of a livestream (never the stream key); NotFound if unknown."""
    return livestream_json(await _row(conn, livestream_id))


async def _row(conn: asyncpg.Connection, livestream_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(SELECT_LIVESTREAM, livestream_id)
    if row is None:
        raise NotFound("livestream not found")
    return row


async def _own_row(conn: asyncpg.Connection, seller_id: str, livestream_id: str) -> asyncpg.Record:
    """Return the seller's own livestream row; another seller's is NotFound, not Forbidden."""
    row = await conn.fetchrow(SELECT_LIVESTREAM, livestream_id)
    if row is None or str(row["seller_id"]) != seller_id:
        raise NotFound("livestream not found")
    return row


async def get_own_livestream(conn: asyncpg.Connection, seller_id: str, livestream_id: str) -> dict[str, Any]:
    return livestream_json(await _own_row(conn, seller_id, livestream_id), with_key=True)


async def create_livestream(conn: asyncpg.Connection, seller_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Create a scheduled livestream with a fresh stream key and room name."""
    livestream_id = await conn.fetchval(
        INSERT_LIVESTREAM, seller_id, data["title"], data.get("description", ""),
        parse_moment(data.get("scheduledAt"), "scheduledAt"), _new_stream_key(), "room_" + secrets.token_hex(8),
    )
    return await get_own_livestream(conn, seller_id, str(livestream_id))


async def update_livestream(
    conn: asyncpg.Connection, seller_id: str, livestream_id: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Change title, description, schedule or chat settings of the seller's livestream."""
    row = await _own_row(conn, seller_id, livestream_id)
    if "scheduledAt" in data and row["status"] != "scheduled":
        raise InvalidState(
            "only a scheduled livestream can be rescheduled", status=row["status"]
        )
    chat = data.get("chatSettings")
    await conn.execute(
        """UPDATE livestreams SET
               title = CASE WHEN $2 THEN $3 ELSE title END,
               description = CASE WHEN $4 THEN $5 ELSE description END,
               scheduled_at = CASE WHEN $6 THEN $7 ELSE scheduled_at END,
               chat_settings = chat_settings || $8::jsonb
           WHERE id = $1""",
        livestream_id, "title" in data, data.get("title"), "description" in data,
        data.get("description"), "scheduledAt" in data, parse_moment(data.get("scheduledAt"), "scheduledAt"),
        json.dumps(chat or {}),
    )
    return await get_own_livestream(conn, seller_id, livestream_id)


async def list_own_livestreams(
    conn: asyncpg.Connection, seller_id: str, *, limit: int, cursor: str | None
) -> dict[str, Any]:
    """Return one page of the seller's livestreams (with stream keys), newest first."""
    created, last_id = decode_cursor(cursor, "own-livestreams") or (None, None)
    rows = await conn.fetch(
        f"""SELECT {LIVESTREAM_COLUMNS}
            FROM livestreams l JOIN sellers s ON s.id = l.seller_id
            WHERE l.seller_id = $1
              AND ($2::timestamptz IS NULL OR (l.created_at, l.id) < ($2, $3::uuid))
            ORDER BY l.created_at DESC, l.id DESC LIMIT $4""",
        seller_id, created, last_id, limit + 1,
    )
    return page(rows, limit, "own-livestreams", lambda r: livestream_json(r, with_key=True))


async def list_livestreams(
    conn: asyncpg.Connection, *, status: str | None, limit: int, cursor: str | None
) -> dict[str, Any]:
    """Return one page of livestreams: live (incl. paused), upcoming (scheduled) or ended."""
    expr, direction = LIST_ORDER[status]
    compare = "<" if direction == "DESC" else ">"
    kind = f"livestreams-{status or 'all'}"
    sort_key, last_id = decode_cursor(cursor, kind) or (None, None)
    statuses = list(STATUS_FILTERS[status]) if status else list(TRANSITIONS)
    rows = await conn.fetch(
        f"""SELECT {LIVESTREAM_COLUMNS}, {expr} AS sort_key
            FROM livestreams l JOIN sellers s ON s.id = l.seller_id
            WHERE l.status = ANY($1::text[])
              AND ($2::timestamptz IS NULL OR ({expr}, l.id) {compare} ($2, $3::uuid))
            ORDER BY {expr} {direction}, l.id {direction} LIMIT $4""",
        statuses, sort_key, last_id, limit + 1,
    )
    return page(rows, limit, kind, livestream_json, key=("sort_key", "id"))


async def set_state(conn: asyncpg.Connection, livestream_id: str, new_state: str) -> dict[str, Any]:
    """Move a livestream to new_state if the state machine allows it; return the stream.

    Raises NotFound for an unknown stream and InvalidState (409 `invalid_state`) for an
    illegal transition, including a move to the state it is already in.
    """
    sources = [s for s, targets in TRANSITIONS.items() if new_state in targets]
    if new_state not in TRANSITIONS:
        raise Invalid(f"unknown livestream state {new_state!r}", fields={"state": "unknown"})
    moved = await conn.fetchval(SET_STATE, livestream_id, new_state, sources)
    if moved is None:
        row = await _row(conn, livestream_id)
        raise InvalidState(
            f"a {row['status']} livestream cannot become {new_state}",
            status=row["status"], target=new_state,
        )
    return await get_livestream(conn, livestream_id)


async def set_media_node(conn: asyncpg.Connection, livestream_id: str, node: str) -> None:
    """Record that ``node`` hosts the SFU room of this livestream (its publisher is there)."""
    await conn.execute(SET_MEDIA_NODE, livestream_id, node)


async def pause_orphans(conn: asyncpg.Connection, node: str, hosted: list[str]) -> list[str]:
    """Pause the live or paused livestreams of ``node`` that are not in ``hosted``; return them.

    A server calls this on start, with the rooms it has (none after a crash): a show whose
    room died with the process cannot be watched, so it is paused until its seller
    publishes again, and the caller ends it after the usual grace period otherwise.
    Livestreams with no node recorded count as this node's.
    """
    rows = await conn.fetch(PAUSE_ORPHANS, node, hosted)
    return [str(r["id"]) for r in rows]


async def set_own_state(
    conn: asyncpg.Connection, seller_id: str, livestream_id: str, new_state: str
) -> dict[str, Any]:
    """Move the seller's own livestream (start/end); another seller's is NotFound."""
    await _own_row(conn, seller_id, livestream_id)
    await set_state(conn, livestream_id, new_state)
    return await get_own_livestream(conn, seller_id, livestream_id)


async def rotate_stream_key(conn: asyncpg.Connection, seller_id: str, livestream_id: str) -> dict[str, Any]:
    """Give the seller's livestream a new stream key; the old one stops working at once."""
    await _own_row(conn, seller_id, livestream_id)
    await conn.execute(
        "UPDATE livestreams SET stream_key = $2 WHERE id = $1", livestream_id, _new_stream_key()
    )
    return await get_own_livestream(conn, seller_id, livestream_id)


async def check_publish_grant(
    conn: asyncpg.Connection, livestream_id: str, *,
    user_id: str | None = None, stream_key: str | None = None,
) -> dict[str, Any]:
    """Return who may publish to this livestream, or raise NotFound/Forbidden/InvalidState.

    Either the owning seller's user id or the livestream's current stream key grants
    publishing; an ended livestream accepts no publisher.
    """
    row = await _row(conn, livestream_id)
    if stream_key is not None:
        allowed = secrets.compare_digest(stream_key.encode(), row["stream_key"].encode())
        via = "stream_key"
    elif user_id is not None:
        allowed = str(row["seller_user_id"]) == str(user_id)
        via = "user"
    else:
        allowed, via = False, "none"
    if not allowed:
        raise Forbidden("not allowed to publish to this livestream")
    if row["status"] == "ended":
        raise InvalidState("this livestream has ended", status="ended")
    return {
        "livestreamId": str(row["id"]), "sellerId": str(row["seller_id"]),
        "userId": str(row["seller_user_id"]), "room": row["room"], "status": row["status"],
        "via": via,
    }


async def record_viewer_stats(
    conn: asyncpg.Connection, livestream_id: str, *,
    peak: int = 0, joined_delta: int = 0, watch_seconds_delta: int = 0,
) -> None:
    """Fold viewer figures from the SFU/hub into the livestream (peak is a maximum)."""
    if min(peak, joined_delta, watch_seconds_delta) < 0:
        raise Invalid("viewer figures cannot be negative")
    updated = await conn.fetchval(
        RECORD_VIEWER_STATS, livestream_id, peak, joined_delta, watch_seconds_delta
    )
    if updated is None:
        raise NotFound("livestream not found")


# ---- products on a livestream ----------------------------------------------------

async def attach_product(
    conn: asyncpg.Connection, seller_id: str, livestream_id: str, product_id: str
) -> dict[str, Any]:
    """Attach one of the seller's products (idempotent); return the stream's product list."""
    await _own_row(conn, seller_id, livestream_id)
    owner = await conn.fetchval("SELECT seller_id FROM products WHERE id = $1", product_id)
    if owner is None or str(owner) != seller_id:
        raise NotFound("product not found")
    await conn.execute(
        """INSERT INTO live_products (livestream_id, product_id, position)
           SELECT $1, $2, coalesce(max(position) + 1, 0) FROM live_products WHERE livestream_id = $1
           ON CONFLICT (livestream_id, product_id) DO NOTHING""",
        livestream_id, product_id,
    )
    return {"items": await stream_products(conn, livestream_id, include_inactive=True), "nextCursor": None}


async def detach_product(
    conn: asyncpg.Connection, seller_id: str, livestream_id: str, product_id: str
) -> None:
    """Detach a product from the seller's livestream; NotFound when it is not attached."""
    await _own_row(conn, seller_id, livestream_id)
    deleted = await conn.fetchval(
        "DELETE FROM live_products WHERE livestream_id = $1 AND product_id = $2 RETURNING id",
        livestream_id, product_id,
    )
    if deleted is None:
        raise NotFound("product is not attached to this livestream")


async def highlight_product(
    conn: asyncpg.Connection, seller_id: str, livestream_id: str, product_id: str
) -> dict[str, Any]:
    """Mark an attached product as highlighted now; return its product JSON for the room.

    NotFound for a product that is not the seller's; Conflict `not_attached` for the
    seller's own product that is not on this stream, `product_inactive` for a draft or
    archived one (viewers could not buy it); InvalidState once the stream ended.
    """
    live_product_id = await _showable_product(conn, seller_id, livestream_id, product_id)
    await conn.execute(
        "UPDATE live_products SET highlighted_at = clock_timestamp() WHERE id = $1", live_product_id,
    )
    return await get_product(conn, product_id, viewer_seller_id=seller_id)


async def announce_drop(
    conn: asyncpg.Connection, seller_id: str, livestream_id: str, product_id: str,
    *, at: str | None = None, in_seconds: int | None = None,
) -> dict[str, Any]:
    """Set when an attached product drops; return the `drop:announced` payload for the room.

    `at` (ISO 8601 with an offset) or `in_seconds`, exactly one, within the next 24 h;
    Invalid otherwise. A show has one pending drop: this one replaces any other. The
    refusals are highlight_product's: the viewers must be able to buy what drops.
    """
    if (at is None) == (in_seconds is None):
        raise Invalid("give either at or inSeconds", fields={"at": "give either at or inSeconds"})
    now = await conn.fetchval("SELECT clock_timestamp()")
    when: datetime = parse_moment(at, "at") or now + timedelta(seconds=in_seconds or 0)
    if when <= now:
        raise Invalid("the drop must be in the future", fields={"at": "in the past"})
    if when > now + MAX_DROP_AHEAD:
        raise Invalid("a drop is announced at most 24 h ahead", fields={"at": "more than 24 h ahead"})
    live_product_id = await _showable_product(conn, seller_id, livestream_id, product_id)
    # One pending drop per show: clear the others in the same statement.
    await conn.execute(
        "UPDATE live_products SET drop_at = CASE WHEN id = $2 THEN $3::timestamptz END "
        "WHERE livestream_id = $1 AND (drop_at IS NOT NULL OR id = $2)",
        livestream_id, live_product_id, when,
    )
    product = await get_product(conn, product_id, viewer_seller_id=seller_id)
    return {"productId": product_id, "product": product, "at": iso(when)}


async def _showable_product(
    conn: asyncpg.Connection, seller_id: str, livestream_id: str, product_id: str
) -> Any:
    """Return the live_products id of the seller's active product attached to this stream.

    NotFound for a product that is not the seller's; Conflict `not_attached` or
    `product_inactive`; InvalidState once the stream ended.
    """
    row = await _own_row(conn, seller_id, livestream_id)
    if row["status"] == "ended":
        raise InvalidState("this livestream has ended", status="ended")
    product = await conn.fetchrow(SELECT_PRODUCT_ON_STREAM, livestream_id, product_id)
    if product is None or str(product["seller_id"]) != seller_id:
        raise NotFound("product not found")
    if product["live_product_id"] is None:
        raise Conflict("attach the product to the livestream first", code="not_attached")
    if product["status"] != "active":
        raise Conflict("only an active product can be shown to the room", code="product_inactive")
    return product["live_product_id"]


async def stream_products(
    conn: asyncpg.Connection, livestream_id: str, *, include_inactive: bool = False
) -> list[dict[str, Any]]:
    """Return the products attached to a livestream in their order: product JSON + position."""
    rows = await conn.fetch(SELECT_STREAM_PRODUCTS, livestream_id, include_inactive)
    return [
        {**product, "position": r["position"], "highlightedAt": iso(r["highlighted_at"])}
        for r, product in zip(rows, await products_json(conn, rows), strict=True)
    ]


async def public_stream_products(conn: asyncpg.Connection, livestream_id: str) -> list[dict[str, Any]]:
    """Return the active products of a livestream; NotFound for an unknown stream."""
    await _row(conn, livestream_id)
    return await stream_products(conn, livestream_id)


# ---- chat history -----------------------------------------------------------------

async def chat_history(
    conn: asyncpg.Connection, livestream_id: str, *, limit: int, cursor: str | None
) -> dict[str, Any]:
    """Return one page of a livestream's persisted chat, oldest first; deleted ones left out."""
    await _row(conn, livestream_id)
    created, last_id = decode_cursor(cursor, "chat") or (None, None)
    rows = await conn.fetch(SELECT_CHAT_PAGE, livestream_id, created, last_id, limit + 1)
    return page(rows, limit, "chat", _chat_json)


def _chat_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "user": {"id": str(row["user_id"]), "name": row["name"]},
        "message": row["message"], "ts": int(row["created_at"].timestamp()),
        "createdAt": row["created_at"].isoformat(),
    }


def _str(value: Any) -> str | None:
    return str(value) if value is not None else None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
