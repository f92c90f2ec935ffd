"""Fulfilment: apply a payment intent's state (as the provider reports it) to our rows.

Shared by the Stripe webhook handlers, the offline provider's confirm endpoint and the
expiry sweep, so paying works the same whichever way the news arrives. The caller
holds the payment row locked (`SELECT ... FOR UPDATE`); every change is a conditional
UPDATE on the current status, so states only move forward and applying the same
intent twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg

from commerce import holds
from commerce.payments.base import CANCELED, SUCCEEDED, Intent

MARK_PAYMENT_PAID = """
UPDATE payments SET status = 'succeeded', last_error = NULL, updated_at = now()
WHERE id = $1 AND status = 'requires_payment' RETURNING id
"""
MARK_ORDERS_PAID = """
UPDATE orders SET status = 'paid', updated_at = now()
WHERE payment_id = $1 AND status = 'created'
RETURNING id, user_id, seller_id, livestream_id, total, currency
"""
# What the seller's live order feed shows: who bought what.
PAID_ORDER_DETAILS = """
SELECT oi.order_id, pr.name AS buyer, p.title, v.color, v.size, oi.qty
FROM order_items oi
JOIN orders o ON o.id = oi.order_id
JOIN profiles pr ON pr.id = o.user_id
JOIN products p ON p.id = oi.product_id
JOIN product_variants v ON v.id = oi.variant_id
WHERE oi.order_id = ANY($1::uuid[])
ORDER BY oi.order_id, oi.id
"""
REDEEM_COUPON = "UPDATE coupon_redemptions SET status = 'redeemed' WHERE payment_id = $1 AND status = 'held'"
CONVERT_CART = "UPDATE carts SET status = 'converted', updated_at = now() WHERE id = $1 AND status = 'active'"
CANCELED_ORDERS_TOTAL = "SELECT coalesce(sum(total), 0) FROM orders WHERE payment_id = $1 AND status = 'canceled'"
RECORD_PROVIDER_REFUND = """
UPDATE payments SET refunded_amount = $2,
       status = CASE WHEN $2 >= amount THEN 'refunded' ELSE status END, updated_at = now()
WHERE id = $1 AND status IN ('succeeded', 'refunded') AND refunded_amount < $2
RETURNING status
"""
REFUND_ALL_PAID_ORDERS = """
UPDATE orders SET status = 'refunded', refunded_amount = total, updated_at = now()
WHERE payment_id = $1 AND status = 'paid'
"""


@dataclass
class Outcome:
    """What a fulfilment step changed, for the effects that run after commit."""

    payment_id: str
    paid_orders: list[dict[str, Any]] = field(default_factory=list)
    released_variant_ids: list[str] = field(default_factory=list)
    # An intent to cancel at the provider (a failed payment must not succeed later).
    cancel_intent_id: str | None = None
    # Money to give back: a payment that succeeded for orders already canceled.
    refund_amount: int = 0
    refund_intent_id: str | None = None
    failed: bool = False


async def mark_paid(conn: asyncpg.Connection, payment: asyncpg.Record) -> Outcome:
    """Mark an open payment succeeded: confirm holds, orders paid, coupon redeemed."""
    payment_id = str(payment["id"])
    outcome = Outcome(payment_id)
    if await conn.fetchval(MARK_PAYMENT_PAID, payment_id) is None:
        return outcome
    await holds.confirm_holds(conn, payment_id)
    rows = await conn.fetch(MARK_ORDERS_PAID, payment_id)
    outcome.paid_orders = [
        {"id": str(r["id"]), "userId": str(r["user_id"]), "sellerId": str(r["seller_id"]),
         "livestreamId": str(r["livestream_id"]) if r["livestream_id"] else None,
         "total": r["total"], "currency": r["currency"], "status": "paid", "items": []}
        for r in rows
    ]
    live = {o["id"]: o for o in outcome.paid_orders if o["livestreamId"]}
    if live:  # only orders shown in a live room's feed need the details
        for d in await conn.fetch(PAID_ORDER_DETAILS, list(live)):
            order = live[str(d["order_id"])]
            order["buyer"] = {"name": d["buyer"]}
            variant = " / ".join(x for x in (d["color"], d["size"]) if x)
            order["items"].append({"title": d["title"], "variant": variant, "qty": d["qty"]})
    await conn.execute(REDEEM_COUPON, payment_id)
    if payment["cart_id"] is not None:
        await conn.execute(CONVERT_CART, payment["cart_id"])
    # The buyer canceled some of this checkout's orders before paying for all of them.
    outcome.refund_amount = int(await conn.fetchval(CANCELED_ORDERS_TOTAL, payment_id))
    outcome.refund_intent_id = payment["provider_intent_id"] if outcome.refund_amount else None
    return outcome


async def apply_intent(conn: asyncpg.Connection, payment: asyncpg.Record, intent: Intent) -> Outcome:
    """Move our rows forward to match the intent; never backward."""
    payment_id = str(payment["id"])
    status = payment["status"]
    if intent.status == SUCCEEDED:
        if status == "requires_payment":
            outcome = await mark_paid(conn, payment)
        elif status in ("failed", "canceled"):
            # Paid after we gave the stock back: the money goes back too.
            outcome = Outcome(payment_id, refund_amount=intent.amount - intent.amount_refunded,
                              refund_intent_id=intent.id)
        else:
            outcome = Outcome(payment_id)
        if intent.amount_refunded > payment["refunded_amount"]:
            new_status = await conn.fetchval(RECORD_PROVIDER_REFUND, payment_id, intent.amount_refunded)
            if new_status == "refunded":
                await conn.execute(REFUND_ALL_PAID_ORDERS, payment_id)
        return outcome
    if intent.failed or intent.status == CANCELED:
        closed = "canceled" if intent.status == CANCELED else "failed"
        released = await holds.release_payment(conn, payment_id, closed, intent.last_error)
        if released is None:
            return Outcome(payment_id)
        return Outcome(
            payment_id, released_variant_ids=released, failed=True,
            cancel_intent_id=intent.id if intent.status != CANCELED else None,
        )
    return Outcome(payment_id)
