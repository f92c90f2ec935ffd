"""Coupons: whether a coupon applies to a subtotal, and the discount it gives.

The cart shows the discount (no usage is taken); checkout takes a redemption under a
row lock (`commerce/checkout.py`), so usage limits hold exactly under concurrency.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from commerce.errors import Conflict, CouponInvalid, Invalid, NotFound
from commerce.pagination import decode_cursor, page
from commerce.values import iso, parse_moment

COUPON_COLUMNS = """
id, code, seller_id, discount_type, value, currency, min_subtotal, starts_at, ends_at,
usage_limit, per_user_limit, used_count
"""
SELECT_COUPON_BY_CODE = f"SELECT {COUPON_COLUMNS} FROM coupons WHERE code = $1"
SELECT_COUPON_BY_ID = f"SELECT {COUPON_COLUMNS} FROM coupons WHERE id = $1"
# Redemptions still held by an unfinished checkout count against the per-user limit too.
COUNT_USER_REDEMPTIONS = """
SELECT count(*) FROM coupon_redemptions
WHERE coupon_id = $1 AND user_id = $2 AND status IN ('held', 'redeemed')
"""


def normalize_code(code: str) -> str:
    return code.strip().upper()


async def find_coupon(conn: asyncpg.Connection, code: str) -> asyncpg.Record:
    """Return the coupon with this code, or raise CouponInvalid (unknown code)."""
    code = normalize_code(code)
    # No stored code is longer or holds NUL (which PostgreSQL text refuses outright).
    if len(code) > 40 or "\x00" in code:
        raise CouponInvalid("no coupon has this code", reason="unknown")
    row = await conn.fetchrow(SELECT_COUPON_BY_CODE, code)
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


async def check_user_limit(conn: asyncpg.Connection, coupon: asyncpg.Record, user_id: str) -> None:
    """Raise CouponInvalid (exhausted) when this user has used up their share of the coupon."""
    limit = coupon["per_user_limit"]
    if limit is None:
        return
    used = await conn.fetchval(COUNT_USER_REDEMPTIONS, coupon["id"], user_id)
    if used >= limit:
        raise CouponInvalid(
            "you have already used this coupon", reason="exhausted", scope="user", perUserLimit=limit,
        )


def coupon_summary(coupon: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """Return what a shopper may see of a coupon (the cart's `coupon` object)."""
    return {
        "code": coupon["code"], "discountType": coupon["discount_type"], "value": coupon["value"],
        "currency": coupon["currency"], "minSubtotal": coupon["min_subtotal"],
        "endsAt": iso(coupon["ends_at"]),
    }


# ---- seller management ---------------------------------------------------------

SELLER_COUPON_COLUMNS = COUPON_COLUMNS + ", created_at"
INSERT_COUPON = f"""
INSERT INTO coupons (code, seller_id, discount_type, value, currency, min_subtotal,
                     starts_at, ends_at, usage_limit, per_user_limit)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING {SELLER_COUPON_COLUMNS}
"""
SELECT_SELLER_COUPONS = f"""
SELECT {SELLER_COUPON_COLUMNS} FROM coupons
WHERE seller_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC LIMIT $4
"""
SELECT_SELLER_COUPON = f"SELECT {SELLER_COUPON_COLUMNS} FROM coupons WHERE id = $1 AND seller_id = $2"


def coupon_json(row: asyncpg.Record) -> dict[str, Any]:
    """Return the seller's full view of one of their coupons."""
    return {
        "id": str(row["id"]), "code": row["code"], "discountType": row["discount_type"],
        "value": row["value"], "currency": row["currency"], "minSubtotal": row["min_subtotal"],
        "startsAt": iso(row["starts_at"]), "endsAt": iso(row["ends_at"]),
        "usageLimit": row["usage_limit"], "perUserLimit": row["per_user_limit"],
        "usedCount": row["used_count"], "createdAt": row["created_at"].isoformat(),
    }


async def create_coupon(conn: asyncpg.Connection, seller_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Create a coupon for the seller's items; Conflict `code_taken` when the code exists.

    `data` uses the API's camelCase names and has passed the route's schema; the
    rules that span fields (percent <= 100, amount needs a currency, end after start)
    are checked here.
    """
    kind = data["discountType"]
    currency = data.get("currency")
    starts_at = parse_moment(data.get("startsAt"), "startsAt")
    ends_at = parse_moment(data.get("endsAt"), "endsAt")
    fields: dict[str, str] = {}
    if kind == "percent" and data["value"] > 100:
        fields["value"] = "a percent coupon is at most 100"
    if kind == "amount" and not currency:
        fields["currency"] = "an amount coupon needs a currency"
    if starts_at and ends_at and ends_at <= starts_at:
        fields["endsAt"] = "must be after startsAt"
    if fields:
        raise Invalid(f"invalid coupon: {next(iter(fields.values()))}", fields=fields)
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                INSERT_COUPON, normalize_code(data["code"]), seller_id, kind, data["value"],
                currency if kind == "amount" else None, data.get("minSubtotal", 0), starts_at,
                ends_at, data.get("usageLimit"), data.get("perUserLimit"),
            )
    except asyncpg.UniqueViolationError:
        raise Conflict("a coupon with this code already exists", code="code_taken") from None
    return coupon_json(row)


async def list_coupons(
    conn: asyncpg.Connection, seller_id: str, *, limit: int, cursor: str | None
) -> dict[str, Any]:
    """Return one page of the seller's coupons, newest first."""
    created, last_id = decode_cursor(cursor, "coupons") or (None, None)
    rows = await conn.fetch(SELECT_SELLER_COUPONS, seller_id, created, last_id, limit + 1)
    return page(rows, limit, "coupons", coupon_json)


async def get_coupon(conn: asyncpg.Connection, seller_id: str, coupon_id: str) -> dict[str, Any]:
    """Return one of the seller's coupons; another seller's is NotFound."""
    row = await conn.fetchrow(SELECT_SELLER_COUPON, coupon_id, seller_id)
    if row is None:
        raise NotFound("coupon not found")
    return coupon_json(row)
