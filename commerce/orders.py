"""Orders: the lifecycle, the order JSON and cursor-paged lists.

    created -> paid -> shipped -> delivered
    created -> canceled            (buyer; its stock holds are released)
    paid    -> refunded            (seller; full or partial through the provider,
                                    optionally putting the units back in stock)

Every transition is a conditional UPDATE `WHERE status = ANY(allowed_from)`, so two
racing transitions cannot both win and a state never moves backward.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from commerce import holds
from commerce.errors import Invalid, InvalidState, NotFound
from commerce.fulfilment import Outcome
from commerce.inventory import adjust_stock
from commerce.pagination import decode_cursor, page

ORDER_COLUMNS = """
o.id, o.user_id, o.seller_id, o.payment_id, o.livestream_id, o.coupon_id, o.shipping_address,
o.subtotal, o.discount, o.total, o.currency, o.status, o.refunded_amount, o.created_at,
o.updated_at, p.provider_intent_id,
coalesce((SELECT json_agg(json_build_object(
    'id', i.id, 'productId', i.product_id, 'variantId', i.variant_id, 'qty', i.qty,
    'price', i.price, 'title', pr.title) ORDER BY i.id)
  FROM order_items i JOIN products pr ON pr.id = i.product_id WHERE i.order_id = o.id), '[]') AS items
"""
SELECT_ORDER = f"SELECT {ORDER_COLUMNS} FROM orders o LEFT JOIN payments p ON p.id = o.payment_id WHERE o.id = $1"
# $1 is the buyer or seller id, $2/$3 the cursor (created_at, id) or NULL, $4 the limit.
LIST_BUYER_ORDERS = f"""
SELECT {ORDER_COLUMNS} FROM orders o LEFT JOIN payments p ON p.id = o.payment_id
WHERE o.user_id = $1 AND ($2::timestamptz IS NULL OR (o.created_at, o.id) < ($2, $3::uuid))
ORDER BY o.created_at DESC, o.id DESC LIMIT $4
"""
LIST_SELLER_ORDERS = LIST_BUYER_ORDERS.replace("o.user_id = $1", "o.seller_id = $1")
TRANSITION = """
UPDATE orders SET status = $3, updated_at = now()
WHERE id = $1 AND seller_id = $2 AND status = ANY($4::text[]) RETURNING id
"""
ORDER_STATUS = "SELECT status FROM orders WHERE id = $1 AND seller_id = $2"
LOCK_PAYMENT_OF_BUYER_ORDER = """
SELECT p.id, p.status, p.provider_intent_id FROM payments p JOIN orders o ON o.payment_id = p.id
WHERE o.id = $1 AND o.user_id = $2 FOR UPDATE OF p
"""
CANCEL_ORDER = """
UPDATE orders SET status = 'canceled', updated_at = now()
WHERE id = $1 AND user_id = $2 AND status = 'created' RETURNING payment_id
"""
OPEN_ORDERS_OF_PAYMENT = "SELECT count(*) FROM orders WHERE payment_id = $1 AND status = 'created'"
CLOSE_PAYMENT = "UPDATE payments SET status = 'canceled', updated_at = now() WHERE id = $1 AND status = 'requires_payment'"
LOCK_PAYMENT_OF_SELLER_ORDER = """
SELECT p.id, p.provider_intent_id, p.amount, p.refunded_amount FROM payments p
JOIN orders o ON o.payment_id = p.id WHERE o.id = $1 AND o.seller_id = $2 FOR UPDATE OF p
"""
LOCK_ORDER = "SELECT status, total, refunded_amount FROM orders WHERE id = $1 FOR UPDATE"
RECORD_ORDER_REFUND = """
UPDATE orders SET refunded_amount = refunded_amount + $2,
       status = CASE WHEN refunded_amount + $2 >= total THEN 'refunded' ELSE status END,
       updated_at = now()
WHERE id = $1 AND status = 'paid' RETURNING status
"""
RECORD_PAYMENT_REFUND = """
UPDATE payments SET refunded_amount = refunded_amount + $2,
       status = CASE WHEN refunded_amount + $2 >= amount THEN 'refunded' ELSE status END,
       updated_at = now()
WHERE id = $1
"""
ORDER_LINES = "SELECT i.variant_id, i.qty FROM order_items i WHERE i.order_id = $1 ORDER BY i.variant_id"

SHIP_FROM = ["paid"]
DELIVER_FROM = ["shipped"]


def order_json(row: asyncpg.Record) -> dict[str, Any]:
    items = row["items"]
    return {
        "id": str(row["id"]), "status": row["status"], "userId": str(row["user_id"]),
        "sellerId": str(row["seller_id"]),
        "paymentId": str(row["payment_id"]) if row["payment_id"] else None,
        "paymentIntentId": row["provider_intent_id"],
        "livestreamId": str(row["livestream_id"]) if row["livestream_id"] else None,
        "couponId": str(row["coupon_id"]) if row["coupon_id"] else None,
        "shippingAddress": _json(row["shipping_address"]),
        "subtotal": row["subtotal"], "discount": row["discount"], "total": row["total"],
        "currency": row["currency"], "refundedAmount": row["refunded_amount"],
        "items": [{**i, "id": str(i["id"])} for i in _json(items)],
        "createdAt": _iso(row["created_at"]), "updatedAt": _iso(row["updated_at"]),
    }


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def buyer_orders(conn: asyncpg.Connection, user_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    created, last_id = decode_cursor(cursor, "orders") or (None, None)
    rows = await conn.fetch(LIST_BUYER_ORDERS, user_id, created, last_id, limit + 1)
    return page(rows, limit, "orders", order_json)


async def seller_orders(conn: asyncpg.Connection, seller_id: str, limit: int, cursor: str | None) -> dict[str, Any]:
    created, last_id = decode_cursor(cursor, "seller-orders") or (None, None)
    rows = await conn.fetch(LIST_SELLER_ORDERS, seller_id, created, last_id, limit + 1)
    return page(rows, limit, "seller-orders", order_json)


async def buyer_order(conn: asyncpg.Connection, user_id: str, order_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(SELECT_ORDER, order_id)
    if row is None or str(row["user_id"]) != user_id:
        raise NotFound("order not found")
    return order_json(row)


async def order_by_id(conn: asyncpg.Connection, order_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(SELECT_ORDER, order_id)
    if row is None:
        raise NotFound("order not found")
    return order_json(row)


async def _transition(conn: asyncpg.Connection, seller_id: str, order_id: str, to: str, allowed: list[str]) -> dict[str, Any]:
    if await conn.fetchval(TRANSITION, order_id, seller_id, to, allowed) is None:
        status = await conn.fetchval(ORDER_STATUS, order_id, seller_id)
        if status is None:
            raise NotFound("order not found")
        raise InvalidState(f"a {status} order cannot become {to}", status=status, allowedFrom=allowed)
    return await order_by_id(conn, order_id)


async def ship(conn: asyncpg.Connection, seller_id: str, order_id: str) -> dict[str, Any]:
    return await _transition(conn, seller_id, order_id, "shipped", SHIP_FROM)


async def deliver(conn: asyncpg.Connection, seller_id: str, order_id: str) -> dict[str, Any]:
    return await _transition(conn, seller_id, order_id, "delivered", DELIVER_FROM)


async def cancel(conn: asyncpg.Connection, user_id: str, order_id: str) -> Outcome:
    """Cancel the buyer's created order and release its holds.

    When it was the last open order of its payment, the payment is closed, its coupon
    redemption given back, and the outcome names the intent to cancel at the provider.
    """
    payment = await conn.fetchrow(LOCK_PAYMENT_OF_BUYER_ORDER, order_id, user_id)
    if payment is None:
        raise NotFound("order not found")
    if await conn.fetchval(CANCEL_ORDER, order_id, user_id) is None:
        status = await conn.fetchval("SELECT status FROM orders WHERE id = $1", order_id)
        raise InvalidState(f"a {status} order cannot be canceled", status=status, allowedFrom=["created"])
    payment_id = str(payment["id"])
    outcome = Outcome(payment_id)
    if await conn.fetchval(OPEN_ORDERS_OF_PAYMENT, payment_id) == 0:
        await conn.execute(CLOSE_PAYMENT, payment_id)
        await holds.release_coupon(conn, payment_id)
        outcome.cancel_intent_id = payment["provider_intent_id"]
    outcome.released_variant_ids = await holds.release_order_holds(conn, order_id)
    return outcome


async def refund(
    conn: asyncpg.Connection, provider: Any, seller_id: str, order_id: str,
    amount: int | None, restock: bool,
) -> tuple[dict[str, Any], list[str]]:
    """Refund a paid order (all of what is left, or `amount`) through the provider.

    `restock` puts every unit of the order back (with 'refund restock' inventory
    events) and needs the refund to be the whole remainder. The provider is called
    with the rows locked and an idempotency key of (order, amount refunded so far),
    so a retry after a lost answer refunds once. Return (order, restocked variant ids).
    """
    payment = await conn.fetchrow(LOCK_PAYMENT_OF_SELLER_ORDER, order_id, seller_id)
    if payment is None:
        raise NotFound("order not found")
    order = await conn.fetchrow(LOCK_ORDER, order_id)
    if order["status"] != "paid":
        raise InvalidState(f"a {order['status']} order cannot be refunded", status=order["status"],
                           allowedFrom=["paid"])
    remaining = order["total"] - order["refunded_amount"]
    amount = remaining if amount is None else amount
    if not 0 < amount <= remaining:
        raise Invalid(f"the refund must be between 1 and {remaining}", fields={"amount": "out of range"})
    if restock and amount != remaining:
        raise Invalid("restock needs a full refund", fields={"restock": "needs a full refund"})
    key = f"refund-{order_id}-{order['refunded_amount']}-{amount}"
    await provider.refund(payment["provider_intent_id"], amount, key)
    await conn.fetchval(RECORD_ORDER_REFUND, order_id, amount)
    await conn.execute(RECORD_PAYMENT_REFUND, payment["id"], amount)
    restocked: list[str] = []
    if restock:
        for line in await conn.fetch(ORDER_LINES, order_id):
            await adjust_stock(
                conn, variant_id=str(line["variant_id"]), delta=line["qty"], reason="refund restock",
                order_id=order_id,
            )
            restocked.append(str(line["variant_id"]))
    return await order_by_id(conn, order_id), restocked
