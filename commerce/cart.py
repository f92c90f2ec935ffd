"""The server-side cart: one active cart per user, variant lines, totals and a coupon.

Every write first upserts-and-locks the user's active cart row (`LOCK_CART`), so
concurrent adds from several devices or from the live room (`cart:add`) serialise on
that row: merged quantities, the line limit and the cart's currency stay exact.
Stock is checked when a line is added or changed but not held; checkout holds it.
Callers pass a connection inside a transaction opened as the user (RLS on carts).
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from commerce import coupons
from commerce.errors import Conflict, CouponInvalid, Invalid, NotFound, OutOfStock

MAX_QTY = 99
MAX_LINES = 50

# Lazily create the active cart; DO UPDATE (not DO NOTHING) so that the statement
# returns the row and holds its lock even when another transaction created it first.
LOCK_CART = """
INSERT INTO carts (user_id) VALUES ($1)
ON CONFLICT (user_id) WHERE status = 'active' DO UPDATE SET updated_at = now()
RETURNING id, currency, coupon_id
"""
ENSURE_CART = """
INSERT INTO carts (user_id) VALUES ($1)
ON CONFLICT (user_id) WHERE status = 'active' DO NOTHING
"""
SELECT_CART = "SELECT id, currency, coupon_id FROM carts WHERE user_id = $1 AND status = 'active'"
SELECT_VARIANT_FOR_CART = """
SELECT v.id, v.product_id, v.stock, coalesce(v.price_override, p.price) AS price,
       p.currency, p.seller_id
FROM product_variants v JOIN products p ON p.id = v.product_id
WHERE v.id = $1 AND v.product_id = $2 AND p.status = 'active'
"""
SELECT_LINE_STATS = """
SELECT count(*) AS lines,
       coalesce(sum(qty) FILTER (WHERE variant_id = $2), 0) AS existing
FROM cart_items WHERE cart_id = $1
"""
UPSERT_LINE = """
INSERT INTO cart_items (cart_id, product_id, variant_id, qty, price_at_add)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (cart_id, variant_id) DO UPDATE SET qty = cart_items.qty + EXCLUDED.qty
"""
SELECT_LINE_FOR_UPDATE = """
SELECT ci.id, ci.variant_id, v.stock
FROM cart_items ci JOIN product_variants v ON v.id = ci.variant_id
WHERE ci.id = $1 AND ci.cart_id = $2
"""
SELECT_ITEMS = """
SELECT ci.id, ci.product_id, ci.variant_id, ci.qty, ci.price_at_add,
       p.title, p.seller_id, v.sku, v.color, v.size, v.stock
FROM cart_items ci
JOIN products p ON p.id = ci.product_id
JOIN product_variants v ON v.id = ci.variant_id
WHERE ci.cart_id = $1
ORDER BY ci.created_at, ci.id
"""
# The cart's currency follows its lines: set by the first, cleared with the last.
SYNC_CURRENCY = """
UPDATE carts SET currency = CASE WHEN EXISTS (SELECT 1 FROM cart_items WHERE cart_id = $1)
                                 THEN currency END,
                 updated_at = now()
WHERE id = $1
"""


def check_qty(qty: Any) -> int:
    """Return qty when it is a whole number in 1..99; else raise Invalid naming the field."""
    # JSON Schema's "integer" admits 3.0; treat it as the whole number it is.
    if isinstance(qty, float) and qty.is_integer():
        qty = int(qty)
    if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
        raise Invalid(f"qty must be a whole number from 1 to {MAX_QTY}", fields={"qty": "1..99"})
    return qty


async def get_cart(conn: asyncpg.Connection, user_id: str) -> dict[str, Any]:
    """Return the user's active cart (creating it on first use) with server totals."""
    cart = await conn.fetchrow(SELECT_CART, user_id)
    if cart is None:
        # A racing first request may insert first: DO NOTHING waits for it, and the
        # next statement's snapshot sees its row.
        await conn.execute(ENSURE_CART, user_id)
        cart = await conn.fetchrow(SELECT_CART, user_id)
    return await _cart_json(conn, user_id, cart)


async def add_item(
    conn: asyncpg.Connection, user_id: str, product_id: str, variant_id: str, qty: int
) -> dict[str, Any]:
    """Add qty of a variant to the user's cart (merging with its line); return the cart.

    Raises NotFound (unknown variant, variant of another product, inactive product),
    OutOfStock, Conflict `currency_mismatch`, `qty_limit` or `cart_full`.
    Usable from the realtime layer (`cart:add`) as well as from HTTP.
    """
    qty = check_qty(qty)
    try:
        # Realtime callers pass strings straight from a client message.
        product_id, variant_id = str(uuid.UUID(product_id)), str(uuid.UUID(variant_id))
    except (ValueError, TypeError, AttributeError):
        raise NotFound("product or variant not found") from None
    cart = await conn.fetchrow(LOCK_CART, user_id)
    variant = await conn.fetchrow(SELECT_VARIANT_FOR_CART, variant_id, product_id)
    if variant is None:
        raise NotFound("product or variant not found")
    stats = await conn.fetchrow(SELECT_LINE_STATS, cart["id"], variant_id)
    existing = int(stats["existing"])
    if existing == 0 and stats["lines"] >= MAX_LINES:
        raise Conflict(f"a cart holds at most {MAX_LINES} lines", code="cart_full", maxLines=MAX_LINES)
    if stats["lines"] and cart["currency"] not in (None, variant["currency"]):
        raise Conflict(
            "a cart holds one currency; this product is priced in another",
            code="currency_mismatch", cartCurrency=cart["currency"], currency=variant["currency"],
        )
    wanted = existing + qty
    if wanted > MAX_QTY:
        raise Conflict(
            f"a cart line holds at most {MAX_QTY} units", code="qty_limit",
            maxQty=MAX_QTY, inCart=existing,
        )
    _check_stock(variant_id, variant["stock"], wanted)
    # Merging keeps the line's first price_at_add: the price the shopper saw when adding.
    await conn.execute(UPSERT_LINE, cart["id"], product_id, variant_id, qty, variant["price"])
    await conn.execute(
        "UPDATE carts SET currency = $2, updated_at = now() WHERE id = $1",
        cart["id"], variant["currency"],
    )
    return await get_cart(conn, user_id)


async def set_item_qty(conn: asyncpg.Connection, user_id: str, item_id: str, qty: int) -> dict[str, Any]:
    """Set a line's quantity (stock checked); NotFound for a line not in the user's cart."""
    qty = check_qty(qty)
    cart = await conn.fetchrow(LOCK_CART, user_id)
    line = await conn.fetchrow(SELECT_LINE_FOR_UPDATE, item_id, cart["id"])
    if line is None:
        raise NotFound("cart item not found")
    _check_stock(str(line["variant_id"]), line["stock"], qty)
    await conn.execute("UPDATE cart_items SET qty = $2 WHERE id = $1", item_id, qty)
    return await get_cart(conn, user_id)


async def remove_item(conn: asyncpg.Connection, user_id: str, item_id: str) -> dict[str, Any]:
    """Delete a line from the user's cart; NotFound when it is not there."""
    cart = await conn.fetchrow(LOCK_CART, user_id)
    deleted = await conn.fetchval(
        "DELETE FROM cart_items WHERE id = $1 AND cart_id = $2 RETURNING id", item_id, cart["id"]
    )
    if deleted is None:
        raise NotFound("cart item not found")
    await conn.execute(SYNC_CURRENCY, cart["id"])
    return await get_cart(conn, user_id)


async def apply_coupon(conn: asyncpg.Connection, user_id: str, code: str) -> dict[str, Any]:
    """Attach a coupon after checking it against the cart as it is now; return the cart.

    Raises CouponInvalid with details.reason (unknown, expired, not_started, exhausted,
    min_subtotal, currency, wrong_seller) or Conflict `cart_empty`.
    """
    cart = await conn.fetchrow(LOCK_CART, user_id)
    coupon = await coupons.find_coupon(conn, code)
    items = await conn.fetch(SELECT_ITEMS, cart["id"])
    if not items:
        raise Conflict("add items to the cart before applying a coupon", code="cart_empty")
    await coupons.check_user_limit(conn, coupon, user_id)
    coupons.discount_for(
        coupon, subtotal=_subtotal(items), currency=cart["currency"],
        seller_ids={str(r["seller_id"]) for r in items},
    )
    await conn.execute(
        "UPDATE carts SET coupon_id = $2, updated_at = now() WHERE id = $1", cart["id"], coupon["id"]
    )
    return await get_cart(conn, user_id)


async def remove_coupon(conn: asyncpg.Connection, user_id: str) -> dict[str, Any]:
    """Detach the cart's coupon (a no-op when there is none); return the cart."""
    cart = await conn.fetchrow(LOCK_CART, user_id)
    await conn.execute("UPDATE carts SET coupon_id = NULL WHERE id = $1", cart["id"])
    return await get_cart(conn, user_id)


def _check_stock(variant_id: str, stock: int, wanted: int) -> None:
    if wanted > stock:
        raise OutOfStock(
            "not enough stock for this variant", variantId=variant_id,
            available=stock, requested=wanted,
        )


def _subtotal(items: list[asyncpg.Record]) -> int:
    return sum(int(r["qty"]) * int(r["price_at_add"]) for r in items)


async def _cart_json(conn: asyncpg.Connection, user_id: str, cart: asyncpg.Record) -> dict[str, Any]:
    """Build the cart contract; totals are always recomputed here, never stored."""
    items = await conn.fetch(SELECT_ITEMS, cart["id"])
    subtotal = _subtotal(items)
    discount = 0
    coupon_json = None
    if cart["coupon_id"] is not None:
        coupon = await conn.fetchrow(coupons.SELECT_COUPON_BY_ID, cart["coupon_id"])
        if coupon is not None:
            # A coupon stays attached when the cart changes under it; it shows why it
            # no longer applies instead of silently disappearing.
            reason = None
            try:
                await coupons.check_user_limit(conn, coupon, user_id)
                discount = coupons.discount_for(
                    coupon, subtotal=subtotal, currency=cart["currency"] or "",
                    seller_ids={str(r["seller_id"]) for r in items},
                )
            except CouponInvalid as exc:
                reason = exc.details.get("reason")
            coupon_json = {**coupons.coupon_summary(coupon), "valid": reason is None, "reason": reason}
    return {
        "id": str(cart["id"]),
        "items": [
            {
                "id": str(r["id"]), "productId": str(r["product_id"]),
                "variantId": str(r["variant_id"]), "qty": r["qty"],
                "priceAtAdd": r["price_at_add"], "title": r["title"], "sku": r["sku"],
                "color": r["color"], "size": r["size"], "stock": r["stock"],
            }
            for r in items
        ],
        "subtotal": subtotal,
        "discount": discount,
        "total": subtotal - discount,
        "currency": cart["currency"].strip() if cart["currency"] else None,
        "coupon": coupon_json,
    }
