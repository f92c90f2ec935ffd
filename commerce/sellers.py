"""Sellers: who the caller sells as, and the admin's KYC decision."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from commerce.errors import Forbidden, NotFound

SELECT_SELLER_OF_USER = "SELECT id FROM sellers WHERE user_id = $1"
UPDATE_KYC = """
UPDATE sellers SET kyc_status = $2 WHERE id = $1
RETURNING id, user_id, display_name, bio, socials, kyc_status, created_at
"""


async def seller_id_of(conn: asyncpg.Connection, user_id: str) -> str | None:
    """Return the seller id of a user, or None when they do not sell."""
    seller_id = await conn.fetchval(SELECT_SELLER_OF_USER, user_id)
    return str(seller_id) if seller_id is not None else None


async def require_seller(conn: asyncpg.Connection, user_id: str) -> str:
    """Return the caller's seller id; raise Forbidden when they have no seller account.

    The token's role says "seller" (or "admin"), but only the sellers row decides which
    shop's rows the caller may touch; an admin without a shop has none.
    """
    seller_id = await seller_id_of(conn, user_id)
    if seller_id is None:
        raise Forbidden("a seller account is required")
    return seller_id


def seller_json(row: asyncpg.Record) -> dict[str, Any]:
    socials = row["socials"]
    return {
        "id": str(row["id"]), "userId": str(row["user_id"]), "displayName": row["display_name"],
        "bio": row["bio"], "socials": json.loads(socials) if isinstance(socials, str) else socials,
        "kycStatus": row["kyc_status"], "createdAt": row["created_at"].isoformat(),
    }


async def set_kyc_status(conn: asyncpg.Connection, seller_id: str, status: str) -> dict[str, Any]:
    """Record the admin's KYC decision for a seller and return the seller."""
    row = await conn.fetchrow(UPDATE_KYC, seller_id, status)
    if row is None:
        raise NotFound("seller not found")
    return seller_json(row)
