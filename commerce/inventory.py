"""Inventory: variant stock changes only together with an inventory event.

The stock column is a cache of `sum(inventory_events.delta)` for the variant. Every
change is ONE statement that updates the stock conditionally (`stock + delta >= 0`) and
appends the event from the updated row, so concurrent adjustments serialise on the
variant's row lock and stock can never go negative or drift from the ledger. There is
no read-then-write anywhere.
"""

from __future__ import annotations

import asyncpg

from commerce.errors import Invalid, NotFound, OutOfStock

# The event is inserted only when the conditional UPDATE matched; otherwise nothing
# happens and the query returns no row.
ADJUST_STOCK = """
WITH changed AS (
    UPDATE product_variants SET stock = stock + $2
    WHERE id = $1 AND stock + $2 >= 0
    RETURNING id, product_id, stock
)
INSERT INTO inventory_events (product_id, variant_id, delta, reason, order_id, hold_id)
SELECT product_id, id, $2, $3, $4, $5 FROM changed
RETURNING (SELECT stock FROM changed)
"""
SELECT_STOCK = "SELECT stock FROM product_variants WHERE id = $1"

MAX_STOCK = 2**31 - 1


async def adjust_stock(
    conn: asyncpg.Connection, *, variant_id: str, delta: int, reason: str,
    order_id: str | None = None, hold_id: str | None = None,
) -> int:
    """Change a variant's stock by `delta` with an inventory event; return the new stock.

    Call inside the caller's transaction. Raises OutOfStock (code `insufficient_stock`)
    when the stock would go negative and NotFound for an unknown variant.
    """
    if delta == 0:
        raise Invalid("a stock change must not be zero", fields={"stockDelta": "must not be 0"})
    reason = reason.strip()
    if not reason:
        raise Invalid("a stock change needs a reason", fields={"reason": "must not be empty"})
    try:
        new_stock = await conn.fetchval(ADJUST_STOCK, variant_id, delta, reason, order_id, hold_id)
    except asyncpg.NumericValueOutOfRangeError:
        raise Invalid(
            f"stock may not exceed {MAX_STOCK}", fields={"stockDelta": "stock would overflow"}
        ) from None
    if new_stock is not None:
        return int(new_stock)
    current = await conn.fetchval(SELECT_STOCK, variant_id)
    if current is None:
        raise NotFound("variant not found")
    raise OutOfStock(
        f"only {current} in stock; cannot remove {-delta}", code="insufficient_stock",
        variantId=str(variant_id), stock=int(current), delta=delta,
    )
