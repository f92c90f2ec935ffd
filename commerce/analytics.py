"""Seller analytics: orders, revenue and units, overall and per livestream.

Revenue counts orders that were paid (paid, shipped, delivered) minus what was refunded
on them; amounts in different currencies are never added together, so every figure is
also given per currency. Orders are written by checkout; this module only reads them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from commerce.errors import Invalid, NotFound
from commerce.values import iso

REVENUE_STATUSES = ["paid", "shipped", "delivered"]

# One row per currency; units come from the order items of the counted orders.
SELECT_TOTALS = """
SELECT o.currency,
       count(*) AS orders,
       sum(o.total - o.refunded_amount) AS revenue,
       sum((SELECT coalesce(sum(oi.qty), 0) FROM order_items oi WHERE oi.order_id = o.id)) AS units
FROM orders o
WHERE o.seller_id = $1 AND o.status = ANY($2::text[])
  AND ($3::timestamptz IS NULL OR o.created_at >= $3)
  AND ($4::timestamptz IS NULL OR o.created_at < $4)
  AND ($5::uuid IS NULL OR o.livestream_id = $5)
GROUP BY o.currency ORDER BY o.currency
"""
SELECT_STATUS_COUNTS = """
SELECT status, count(*) AS n FROM orders o
WHERE o.seller_id = $1
  AND ($2::timestamptz IS NULL OR o.created_at >= $2)
  AND ($3::timestamptz IS NULL OR o.created_at < $3)
  AND ($4::uuid IS NULL OR o.livestream_id = $4)
GROUP BY status
"""
SELECT_STREAM_FIGURES = """
SELECT l.peak_viewers, l.total_viewers, l.watch_seconds,
       (SELECT count(*) FROM chat_messages m
        WHERE m.livestream_id = l.id AND m.deleted_at IS NULL) AS chat_messages
FROM livestreams l WHERE l.id = $1 AND l.seller_id = $2
"""


async def seller_summary(
    conn: asyncpg.Connection, seller_id: str, *,
    since: datetime | None = None, until: datetime | None = None,
) -> dict[str, Any]:
    """Return the seller's orders, revenue and units in [since, until)."""
    if since and until and until <= since:
        raise Invalid("to must be after from", fields={"to": "must be after from"})
    figures = await _order_figures(conn, seller_id, since, until, None)
    return {"from": iso(since), "to": iso(until), **figures}


async def livestream_summary(conn: asyncpg.Connection, seller_id: str, livestream_id: str) -> dict[str, Any]:
    """Return a livestream's attributed orders and its audience figures (seller's own only)."""
    stream = await conn.fetchrow(SELECT_STREAM_FIGURES, livestream_id, seller_id)
    if stream is None:
        raise NotFound("livestream not found")
    figures = await _order_figures(conn, seller_id, None, None, livestream_id)
    return {
        "livestreamId": livestream_id, **figures,
        "chatMessages": stream["chat_messages"], "peakViewers": stream["peak_viewers"],
        "totalViewers": stream["total_viewers"], "watchSeconds": stream["watch_seconds"],
    }


async def _order_figures(
    conn: asyncpg.Connection, seller_id: str, since: datetime | None, until: datetime | None,
    livestream_id: str | None,
) -> dict[str, Any]:
    rows = await conn.fetch(SELECT_TOTALS, seller_id, REVENUE_STATUSES, since, until, livestream_id)
    statuses = await conn.fetch(SELECT_STATUS_COUNTS, seller_id, since, until, livestream_id)
    by_currency = [
        {
            "currency": r["currency"], "orders": r["orders"], "revenue": int(r["revenue"]),
            "units": int(r["units"]),
        }
        for r in rows
    ]
    single = by_currency[0] if len(by_currency) == 1 else None
    return {
        "orders": sum(c["orders"] for c in by_currency),
        "units": sum(c["units"] for c in by_currency),
        # A single revenue figure only makes sense in one currency.
        "revenue": single["revenue"] if single else (0 if not by_currency else None),
        "currency": single["currency"] if single else None,
        "byCurrency": by_currency,
        "ordersByStatus": {r["status"]: r["n"] for r in statuses},
    }
