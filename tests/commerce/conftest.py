"""Rows the commerce tests need that other branches' endpoints write (orders, chat).

Written with SQL as the owner role, like the catalog rows in tests/factories.py.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

import pytest

from tests.factories import Factory, User


class CommerceRows:
    def __init__(self, factory: Factory) -> None:
        self.factory = factory

    async def livestream(self, seller: User, **overrides: Any) -> str:
        """Insert a livestream (scheduled unless overridden) and return its id."""
        conn = await self.factory.conn()
        values: dict[str, Any] = {"title": "A stream", "status": "scheduled", "chat_settings": {}}
        values.update(overrides)
        return str(await conn.fetchval(
            """INSERT INTO livestreams (seller_id, title, status, stream_key, room, chat_settings)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            seller.seller_id, values["title"], values["status"], "sk_" + secrets.token_hex(12),
            "room_" + secrets.token_hex(6), json.dumps(values["chat_settings"]),
        ))

    async def order(
        self, seller: User, buyer: User, product: dict[str, Any], *, qty: int = 1,
        status: str = "paid", price: int | None = None, currency: str | None = None,
        livestream_id: str | None = None, refunded: int = 0, created_at: datetime | None = None,
    ) -> str:
        """Insert an order with one order item, as checkout would leave it."""
        conn = await self.factory.conn()
        unit = product["price"] if price is None else price
        total = unit * qty
        order_id = await conn.fetchval(
            """INSERT INTO orders (user_id, seller_id, livestream_id, subtotal, total, currency,
                                   status, refunded_amount, created_at)
               VALUES ($1, $2, $3, $4, $4, $5, $6, $7, coalesce($8, now())) RETURNING id""",
            buyer.id, seller.seller_id, livestream_id, total, currency or product["currency"],
            status, refunded, created_at,
        )
        await conn.execute(
            "INSERT INTO order_items (order_id, product_id, variant_id, qty, price) VALUES ($1, $2, $3, $4, $5)",
            order_id, product["id"], product["variantIds"][0], qty, unit,
        )
        return str(order_id)

    async def chat(self, livestream_id: str, user: User, message: str, *, deleted: bool = False) -> str:
        conn = await self.factory.conn()
        return str(await conn.fetchval(
            """INSERT INTO chat_messages (livestream_id, user_id, message, created_at, deleted_at)
               VALUES ($1, $2, $3, clock_timestamp(), CASE WHEN $4 THEN now() END) RETURNING id""",
            livestream_id, user.id, message, deleted,
        ))

    async def coupon(self, seller: User | None = None, **overrides: Any) -> str:
        """Insert a coupon (10 percent, no limits) and return its code."""
        conn = await self.factory.conn()
        values: dict[str, Any] = {
            "code": "C" + secrets.token_hex(4).upper(), "discount_type": "percent", "value": 10,
            "currency": None, "min_subtotal": 0, "starts_at": None, "ends_at": None,
            "usage_limit": None, "per_user_limit": None, "used_count": 0,
        }
        values.update(overrides)
        await conn.execute(
            """INSERT INTO coupons (code, seller_id, discount_type, value, currency, min_subtotal,
                   starts_at, ends_at, usage_limit, per_user_limit, used_count)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
            values["code"], seller.seller_id if seller else None, values["discount_type"],
            values["value"], values["currency"], values["min_subtotal"], values["starts_at"],
            values["ends_at"], values["usage_limit"], values["per_user_limit"], values["used_count"],
        )
        return values["code"]


@pytest.fixture
def rows(factory: Factory) -> CommerceRows:
    return CommerceRows(factory)
