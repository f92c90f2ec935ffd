"""The inventory invariant, checked from the ledger.

For every variant: its stock equals the sum of its inventory events, and what is
held plus what is sold never exceeds what was stocked. "Stocked" is every event that
is not a hold or a hold's release (initial stock, seller adjustments, refund
restocks); "held" and "sold" are the open and confirmed stock holds. Since a hold
takes its units with a 'hold' event and a release gives them back with a 'hold
released' one, `stock + held + sold = stocked` exactly; the check reports any variant
where that or `stock = sum(events)` fails.
"""

from __future__ import annotations

from typing import Any

import asyncpg

HOLD_REASONS = ["hold", "hold released"]
CHECK = """
SELECT v.id, v.stock,
       coalesce(e.ledger, 0) AS ledger, coalesce(e.stocked, 0) AS stocked,
       coalesce(h.held, 0) AS held, coalesce(h.sold, 0) AS sold
FROM product_variants v
LEFT JOIN (
    SELECT variant_id, sum(delta) AS ledger,
           sum(delta) FILTER (WHERE reason <> ALL($1::text[])) AS stocked
    FROM inventory_events GROUP BY variant_id
) e ON e.variant_id = v.id
LEFT JOIN (
    SELECT variant_id, sum(qty) FILTER (WHERE status = 'held') AS held,
           sum(qty) FILTER (WHERE status = 'confirmed') AS sold
    FROM stock_holds GROUP BY variant_id
) h ON h.variant_id = v.id
"""


async def check_inventory(conn: asyncpg.Connection) -> dict[str, Any]:
    """Return `{ok, variants, violations: [...]}` for every variant in the database.

    Run it in a REPEATABLE READ (or serializable) transaction for a consistent view
    while checkouts are running.
    """
    rows = await conn.fetch(CHECK, HOLD_REASONS)
    violations = []
    for r in rows:
        problems = []
        if r["stock"] != r["ledger"]:
            problems.append("stock differs from the sum of its inventory events")
        if r["held"] + r["sold"] > r["stocked"]:
            problems.append("held + sold exceeds what was stocked")
        if r["stock"] + r["held"] + r["sold"] != r["stocked"]:
            problems.append("stock + held + sold differs from what was stocked")
        if problems:
            violations.append({
                "variantId": str(r["id"]), "stock": r["stock"], "ledger": int(r["ledger"]),
                "stocked": int(r["stocked"]), "held": int(r["held"]), "sold": int(r["sold"]),
                "problems": problems,
            })
    return {"ok": not violations, "variants": len(rows), "violations": violations}
