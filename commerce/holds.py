"""Stock holds: release (stock back, with an inventory event), confirm, expiry sweep.

A hold took its stock when checkout created it (`commerce/checkout.py`), so
confirming one changes no stock; releasing one gives the units back with an
inventory event 'hold released' in the same transaction.

Lock order, everywhere a transaction takes more than one of these rows (checkout,
release, cancel, refund), so two transactions never wait on each other in a circle:
payment row -> order rows -> coupon row -> variant rows in id order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from commerce.errors import PaymentProviderError
from commerce.inventory import adjust_stock

log = logging.getLogger("shopstream.holds")

RELEASE_HOLDS = """
UPDATE stock_holds SET status = 'released'
WHERE id = ANY($1::uuid[]) AND status = 'held'
RETURNING id, variant_id, qty, order_id
"""
OPEN_HOLDS_OF_PAYMENT = "SELECT id FROM stock_holds WHERE payment_id = $1 AND status = 'held'"
OPEN_HOLDS_OF_ORDER = "SELECT id FROM stock_holds WHERE order_id = $1 AND status = 'held'"
CONFIRM_HOLDS = "UPDATE stock_holds SET status = 'confirmed' WHERE payment_id = $1 AND status = 'held'"
RELEASE_REDEMPTION = """
UPDATE coupon_redemptions SET status = 'released'
WHERE payment_id = $1 AND status = 'held' RETURNING coupon_id
"""
GIVE_BACK_COUPON_USE = "UPDATE coupons SET used_count = used_count - 1 WHERE id = $1 AND used_count > 0"
CANCEL_OPEN_ORDERS = """
UPDATE orders SET status = 'canceled', updated_at = now()
WHERE payment_id = $1 AND status = 'created' RETURNING id
"""
CLOSE_PAYMENT = """
UPDATE payments SET status = $2, last_error = coalesce($3, last_error), updated_at = now()
WHERE id = $1 AND status = 'requires_payment' RETURNING id
"""
DUE_PAYMENTS = """
SELECT id, provider_intent_id FROM payments
WHERE status = 'requires_payment' AND expires_at <= now()
ORDER BY expires_at LIMIT $1
"""
LOCK_PAYMENT = "SELECT * FROM payments WHERE id = $1 FOR UPDATE"

HOLD_RELEASED = "hold released"


async def release_coupon(conn: asyncpg.Connection, payment_id: str) -> None:
    """Give a payment's held coupon redemption back (the coupon row is locked here)."""
    coupon_id = await conn.fetchval(RELEASE_REDEMPTION, payment_id)
    if coupon_id is not None:
        await conn.execute(GIVE_BACK_COUPON_USE, coupon_id)


async def release_holds(conn: asyncpg.Connection, hold_ids: list[Any]) -> list[str]:
    """Release open holds: stock back in variant-id order, one inventory event per hold.

    Holds already released or confirmed are skipped (the UPDATE is conditional),
    so releasing twice gives nothing back twice. Return the variant ids changed.
    """
    if not hold_ids:
        return []
    released = await conn.fetch(RELEASE_HOLDS, hold_ids)
    for row in sorted(released, key=lambda r: (str(r["variant_id"]), str(r["id"]))):
        await adjust_stock(
            conn, variant_id=str(row["variant_id"]), delta=row["qty"], reason=HOLD_RELEASED,
            order_id=str(row["order_id"]), hold_id=str(row["id"]),
        )
    return sorted({str(r["variant_id"]) for r in released})


async def release_payment(
    conn: asyncpg.Connection, payment_id: str, status: str, error: str | None = None
) -> list[str] | None:
    """Close an open payment as `status` (failed/canceled) and release everything it held.

    Return the variant ids whose stock came back, or None when the payment was no
    longer open (someone else settled it first; nothing was changed).
    """
    if await conn.fetchval(CLOSE_PAYMENT, payment_id, status, error) is None:
        return None
    await conn.execute(CANCEL_OPEN_ORDERS, payment_id)
    await release_coupon(conn, payment_id)
    holds = [r["id"] for r in await conn.fetch(OPEN_HOLDS_OF_PAYMENT, payment_id)]
    return await release_holds(conn, holds)


async def release_order_holds(conn: asyncpg.Connection, order_id: str) -> list[str]:
    holds = [r["id"] for r in await conn.fetch(OPEN_HOLDS_OF_ORDER, order_id)]
    return await release_holds(conn, holds)


async def confirm_holds(conn: asyncpg.Connection, payment_id: str) -> None:
    await conn.execute(CONFIRM_HOLDS, payment_id)


Transaction = Callable[..., AbstractAsyncContextManager[asyncpg.Connection]]


async def expire_due(transaction: Transaction, provider: Any, *, limit: int = 100) -> list[Any]:
    """Release the holds of payments past their expiry; return the fulfilment outcomes.

    The intent is canceled at the provider first, so it cannot succeed afterwards;
    if it already had succeeded, the payment is fulfilled instead of expired.
    """
    from commerce import fulfilment  # fulfilment imports this module

    async with transaction(system=True) as conn:
        due = await conn.fetch(DUE_PAYMENTS, limit)
    outcomes = []
    for row in due:
        intent = None
        if row["provider_intent_id"]:
            try:
                intent = await provider.cancel_intent(row["provider_intent_id"])
            except PaymentProviderError as exc:
                log.warning("could not cancel intent %s: %s; retrying later", row["provider_intent_id"], exc)
                continue
        async with transaction(system=True) as conn:
            payment = await conn.fetchrow(LOCK_PAYMENT, row["id"])
            if payment is None or payment["status"] != "requires_payment":
                continue
            if intent is not None and intent.status == "succeeded":
                outcomes.append(await fulfilment.apply_intent(conn, payment, intent))
                continue
            variants = await release_payment(conn, str(row["id"]), "canceled", "hold expired")
            outcomes.append(fulfilment.Outcome(str(row["id"]), released_variant_ids=variants or []))
    return outcomes
