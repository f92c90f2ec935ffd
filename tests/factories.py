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

    async def category(self, slug: str, *, parent: str | None = None, name: str | None = None) -> str:
        """Insert a category (under `parent`, a category id) and return its id."""
        conn = await self.conn()
        category_id = await conn.fetchval(
            "INSERT INTO categories (name, slug, parent_id) VALUES ($1, $2, $3) RETURNING id",
            name or slug.title(), slug, parent,
        )
        return str(category_id)

    async def ledger(self, variant_id: str) -> tuple[int, int]:
        """Return a variant's (stock column, sum of its inventory events)."""
        conn = await self.conn()
        row = await conn.fetchrow(
            """SELECT v.stock, coalesce((SELECT sum(delta) FROM inventory_events e
                                         WHERE e.variant_id = v.id), 0)::int AS ledger
               FROM product_variants v WHERE v.id = $1""",
            variant_id,
        )
        return int(row["stock"]), int(row["ledger"])

# --- checkout (branch checkout): addresses, carts, coupons and users in bulk -------------

ADDRESS_ROW = ("1 Main St", "Springfield", "12345", "US")


async def make_address(factory: Factory, user: User) -> str:
    """Insert an address for `user` and return its id."""
    conn = await factory.conn()
    return str(await conn.fetchval(
        "INSERT INTO addresses (user_id, line1, city, postal_code, country) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        user.id, *ADDRESS_ROW,
    ))


async def make_cart(factory: Factory, user: User, lines: list[tuple[dict[str, Any], int, int]],
                    coupon_id: str | None = None) -> str:
    """Fill the user's active cart with (product, variant index, qty) lines; return the cart id."""
    conn = await factory.conn()
    cart_id = await conn.fetchval(
        "INSERT INTO carts (user_id, coupon_id) VALUES ($1, $2) RETURNING id", user.id, coupon_id
    )
    for product, index, qty in lines:
        await conn.execute(
            "INSERT INTO cart_items (cart_id, product_id, variant_id, qty, price_at_add) VALUES ($1, $2, $3, $4, $5)",
            cart_id, product["id"], product["variantIds"][index], qty, product["price"],
        )
    return str(cart_id)


async def make_coupon(factory: Factory, **overrides: Any) -> dict[str, Any]:
    """Insert a coupon (10 % off, no limits unless given) and return its columns."""
    values: dict[str, Any] = {
        "code": f"SAVE{next(_seq)}{secrets.token_hex(2).upper()}", "discount_type": "percent",
        "value": 10, "currency": None, "usage_limit": None, "per_user_limit": None, "seller_id": None,
    }
    values.update(overrides)
    conn = await factory.conn()
    values["id"] = str(await conn.fetchval(
        """INSERT INTO coupons (code, discount_type, value, currency, usage_limit, per_user_limit, seller_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id""",
        values["code"], values["discount_type"], values["value"], values["currency"],
        values["usage_limit"], values["per_user_limit"], values["seller_id"],
    ))
    return values


async def make_buyers(factory: Factory, count: int) -> list[tuple[User, str]]:
    """Create `count` users with one address each directly in SQL (no argon2); mint tokens.

    Returns (user, address id) pairs; the tokens are real access tokens of the app.
    """
    from server.keys import TOKENS

    conn = await factory.conn()
    tag = secrets.token_hex(4)
    rows = await conn.fetch(
        """WITH u AS (
               INSERT INTO users (email, password_hash)
               SELECT 'bulk' || g || '-' || $2 || '@example.test', 'x' FROM generate_series(1, $1) g
               RETURNING id),
           p AS (INSERT INTO profiles (id, name) SELECT id, 'Buyer' FROM u)
           INSERT INTO addresses (user_id, line1, city, postal_code, country)
           SELECT id, '1 Main St', 'Springfield', '12345', 'US' FROM u RETURNING user_id, id""",
        count, tag,
    )
    tokens = factory.client.app[TOKENS]
    return [
        (User(id=str(r["user_id"]), email="", password="", refresh_token="",
              access_token=tokens.access_token(str(r["user_id"]), "user")), str(r["id"]))
        for r in rows
    ]

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
