"""Factories: make users, sellers and products with defaults and `**overrides`.

Users go through the HTTP API (so their tokens are real); catalog rows are written with
SQL as the owner role, which is faster and independent of the catalog endpoints.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

_seq = itertools.count(1)


@dataclass
class User:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str
    role: str = "user"
    seller_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


class Factory:
    def __init__(self, client: TestClient, dsn: str) -> None:
        self.client = client
        self.dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def conn(self) -> asyncpg.Connection:
        if self._conn is None:
            self._conn = await asyncpg.connect(self.dsn)
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def user(self, **overrides: Any) -> User:
        n = next(_seq)
        body = {
            "email": f"user{n}-{secrets.token_hex(3)}@example.test",
            "password": "correct horse battery",
            "name": f"User {n}",
        }
        body.update(overrides)
        resp = await self.client.post("/api/v1/auth/signup", json=body)
        assert resp.status == 201, await resp.text()
        data = await resp.json()
        return User(
            id=data["user"]["id"], email=body["email"], password=body["password"],
            access_token=data["accessToken"], refresh_token=data["refreshToken"],
        )

    async def seller(self, **overrides: Any) -> User:
        user = await self.user(**overrides)
        resp = await self.client.post(
            "/api/v1/me/seller", json={"displayName": f"Shop of {user.email}"}, headers=user.headers
        )
        assert resp.status == 201, await resp.text()
        data = await resp.json()
        user.access_token = data["accessToken"]
        user.role = "seller"
        user.seller_id = data["profile"]["seller"]["id"]
        return user

    async def admin(self, **overrides: Any) -> User:
        user = await self.user(**overrides)
        conn = await self.conn()
        await conn.execute("UPDATE profiles SET role = 'admin' WHERE id = $1", user.id)
        resp = await self.client.post("/api/v1/auth/login", json={"email": user.email, "password": user.password})
        assert resp.status == 200, await resp.text()
        user.access_token = (await resp.json())["accessToken"]
        user.role = "admin"
        return user

    async def product(self, seller: User, *, stock: int = 10, variants: int = 1, **overrides: Any) -> dict[str, Any]:
        """Insert an active product with `variants` variants of `stock` units each."""
        conn = await self.conn()
        values = {"title": f"Product {next(_seq)}", "description": "A thing.", "price": 1000,
                  "currency": "USD", "status": "active"}
        values.update(overrides)
        product_id = await conn.fetchval(
            """INSERT INTO products (seller_id, title, description, price, currency, status)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            seller.seller_id, values["title"], values["description"], values["price"],
            values["currency"], values["status"],
        )
        variant_ids = []
        for i in range(variants):
            variant_id = await conn.fetchval(
                """INSERT INTO product_variants (product_id, seller_id, sku, color, size, stock)
                   VALUES ($1, $2, $3, 'Black', $4, $5) RETURNING id""",
                product_id, seller.seller_id, f"SKU-{next(_seq)}-{i}", str(i), stock,
            )
            if stock:
                await conn.execute(
                    "INSERT INTO inventory_events (product_id, variant_id, delta, reason) VALUES ($1, $2, $3, 'initial')",
                    product_id, variant_id, stock,
                )
            variant_ids.append(str(variant_id))
        return {"id": str(product_id), "variantIds": variant_ids, **values}


async def make_livestream(
    factory: Factory, seller: User, *, status: str = "live", chat_settings: dict[str, Any] | None = None,
    products: tuple[str, ...] = (), highlighted: str | None = None,
) -> str:
    """Insert a livestream of `seller` showing `products` (ids); return its id."""
    import json

    conn = await factory.conn()
    livestream_id = await conn.fetchval(
        """INSERT INTO livestreams (seller_id, title, status, stream_key, room, chat_settings)
           VALUES ($1, 'Live', $2, $3, $4, $5::jsonb) RETURNING id""",
        seller.seller_id, status, secrets.token_urlsafe(16), secrets.token_hex(8),
        json.dumps(chat_settings or {}),
    )
    for position, product_id in enumerate(products):
        await conn.execute(
            """INSERT INTO live_products (livestream_id, product_id, position, highlighted_at)
               VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END)""",
            livestream_id, product_id, position, product_id == highlighted,
        )
    return str(livestream_id)
