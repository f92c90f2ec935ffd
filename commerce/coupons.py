"""Coupons: whether a coupon applies to a subtotal, and the discount it gives.

The cart shows the discount (no usage is taken); checkout takes a redemption under a
row lock (`commerce/checkout.py`), so usage limits hold exactly under concurrency.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from commerce.errors import CouponInvalid

COUPON_COLUMNS = """
id, code, seller_id, discount_type, value, currency, min_subtotal, starts_at, ends_at,
usage_limit, per_user_limit, used_count
"""
SELECT_COUPON_BY_CODE = f"SELECT {COUPON_COLUMNS} FROM coupons WHERE code = $1"
SELECT_COUPON_BY_ID = f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1"


def normalize_code(code: str) -> str:
    return code.strip().upper()


async def find_coupon(conn: asyncpg.Connection, code: str) -> asyncpg.Record:
    """Return the coupon with this code, or raise CouponInvalid (unknown code)."""
    row = await conn.fetchrow(SELECT_COUPON_BY_CODE, normalize_code(code))
    if row is None:
        raise CouponInvalid("no coupon has this code", reason="unknown")
    return row


def discount_for(
    coupon: asyncpg.Record | dict[str, Any],
    *,
    subtotal: int,
    currency: str,
    seller_ids: set[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Return the discount in minor units, or raise CouponInvalid with the reason.

    Checks the validity window, the usage limit as currently counted, the minimum
    subtotal, the currency of amount coupons and, for a seller's coupon, that the
    items are that seller's. The discount never exceeds the subtotal.
    """
    now = now or datetime.now(UTC)
    if coupon["starts_at"] is not None and now < coupon["starts_at"]:
        raise CouponInvalid("this coupon is not valid yet", reason="not_started")
    if coupon["ends_at"] is not None and now >= coupon["ends_at"]:
        raise CouponInvalid("this coupon has expired", reason="expired")
    limit = coupon["usage_limit"]
    if limit is not None and coupon["used_count"] >= limit:
        raise CouponInvalid("this coupon has been used up", reason="exhausted")
    if coupon["seller_id"] is not None and seller_ids is not None:
        if seller_ids != {str(coupon["seller_id"])}:
            raise CouponInvalid("this coupon only applies to one seller's items", reason="wrong_seller")
    if subtotal < coupon["min_subtotal"]:
        raise CouponInvalid(
            "the subtotal is below this coupon's minimum", reason="min_subtotal",
            minSubtotal=coupon["min_subtotal"],
        )
    if coupon["discount_type"] == "percent":
        return subtotal * int(coupon["value"]) // 100
    if coupon["currency"] != currency:
        raise CouponInvalid("this coupon is for another currency", reason="currency")
    return min(int(coupon["value"]), subtotal)
