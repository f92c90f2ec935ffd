"""Wishlist: a user's saved public products (RLS keeps each list to its owner)."""

from __future__ import annotations

from typing import Any

import asyncpg

from commerce.catalog import PRODUCT_COLUMNS, products_json
from commerce.errors import NotFound
from commerce.pagination import decode_cursor, split_page

# Products that stopped being public drop out of the list (they stay stored, and come
# back if the seller re-activates them).
SELECT_WISHLIST = f"""
SELECT w.id AS item_id, w.created_at AS added_at, {PRODUCT_COLUMNS}
FROM wishlist_items w
JOIN products p ON p.id = w.product_id JOIN sellers s ON s.id = p.seller_id
WHERE w.user_id = $1 AND p.status = 'active'
  AND ($2::timestamptz IS NULL OR (w.created_at, w.id) < ($2, $3::uuid))
ORDER BY w.created_at DESC, w.id DESC LIMIT $4
"""
ADD_ITEM = """
INSERT INTO wishlist_items (user_id, product_id)
SELECT $1, id FROM products WHERE id = $2 AND status = 'active'
ON CONFLICT (user_id, product_id) DO NOTHING
"""
PUBLIC_PRODUCT_EXISTS = "SELECT 1 FROM products WHERE id = $1 AND status = 'active'"
REMOVE_ITEM = "DELETE FROM wishlist_items WHERE user_id = $1 AND product_id = $2 RETURNING id"


async def list_items(
    conn: asyncpg.Connection, user_id: str, *, cursor: str | None = None, limit: int = 20
) -> dict[str, Any]:
    """Return one page of the user's wishlist, most recently added first."""
    added, last_id = decode_cursor(cursor, "wishlist") or (None, None)
    rows = await conn.fetch(SELECT_WISHLIST, user_id, added, last_id, limit + 1)
    page, next_cursor = split_page(rows, limit, "wishlist", ("added_at", "item_id"))
    products = await products_json(conn, page)
    items = [
        {"productId": product["id"], "addedAt": row["added_at"].isoformat(), "product": product}
        for row, product in zip(page, products, strict=True)
    ]
    return {"items": items, "nextCursor": next_cursor}


async def add_item(conn: asyncpg.Connection, user_id: str, product_id: str) -> None:
    """Save a public product to the wishlist; saving it twice changes nothing."""
    if await conn.fetchval(PUBLIC_PRODUCT_EXISTS, product_id) is None:
        raise NotFound("product not found")
    await conn.execute(ADD_ITEM, user_id, product_id)


async def remove_item(conn: asyncpg.Connection, user_id: str, product_id: str) -> None:
    """Remove a product from the wishlist; removing a public one that is not there is a no-op.

    A saved product that has since gone private can still be removed; any other
    non-public id is not found, so the answer reveals nothing about other sellers' drafts.
    """
    removed = await conn.fetchval(REMOVE_ITEM, user_id, product_id)
    if removed is None and await conn.fetchval(PUBLIC_PRODUCT_EXISTS, product_id) is None:
        raise NotFound("product not found")
