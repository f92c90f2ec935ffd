"""The caller's seller record: seller endpoints act on the seller a user account owns."""

from __future__ import annotations

import asyncpg

from commerce.errors import Forbidden

SELECT_SELLER_OF_USER = "SELECT id FROM sellers WHERE user_id = $1"


async def seller_of(conn: asyncpg.Connection, user_id: str) -> str:
    """Return the id of the seller this user owns, or raise Forbidden.

    The token's role says "seller" (or "admin"), but only the sellers row decides which
    shop's rows the caller may touch; an admin without a shop has none.
    """
    seller_id = await conn.fetchval(SELECT_SELLER_OF_USER, user_id)
    if seller_id is None:
        raise Forbidden("this account has no seller profile")
    return str(seller_id)
