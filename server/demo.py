"""Demo data: a seller, a shopper, an admin, a category tree, products with stock and a
scheduled livestream with those products attached. Idempotent: running it again
changes nothing and prints the same details."""

from __future__ import annotations

import json
import secrets
from typing import Any

import asyncpg

from commerce.inventory import adjust_stock
from server.auth import Passwords
from server.config import Settings

# Demo accounts only exist in demo data; these are not secrets of any real deployment.
ACCOUNTS = [
    ("seller@demo.shopstream.test", "demo-seller-pass", "Maya (Demo Seller)", "seller"),
    ("shopper@demo.shopstream.test", "demo-shopper-pass", "Sam (Demo Shopper)", "user"),
    ("admin@demo.shopstream.test", "demo-admin-pass", "Ada (Demo Admin)", "admin"),
]
CATEGORIES = [
    ("Fashion", "fashion", None),
    ("Tops", "tops", "fashion"),
    ("Shoes", "shoes", "fashion"),
    ("Home", "home", None),
    ("Kitchen", "kitchen", "home"),
]
PRODUCTS = [
    ("Women solid top", "Soft cotton top for every day.", 2499, "tops",
     [("TOP-RED-M", "Red", "M", 12), ("TOP-RED-L", "Red", "L", 8), ("TOP-BLU-M", "Blue", "M", 10)]),
    ("Canvas sneakers", "Light canvas sneakers with a rubber sole.", 5900, "shoes",
     [("SNK-WHT-40", "White", "40", 6), ("SNK-WHT-42", "White", "42", 6)]),
    ("Ceramic pour-over set", "Hand-glazed dripper with two cups.", 3900, "kitchen",
     [("POUR-SET", "Sand", None, 25)]),
    ("Limited drop hoodie", "Only 20 made. Live-stream exclusive.", 7900, "tops",
     [("HOOD-BLK-M", "Black", "M", 10), ("HOOD-BLK-L", "Black", "L", 10)]),
]
LIVESTREAM_TITLE = "Friday Night Drop"


async def seed_demo(dsn: str, settings: Settings) -> dict[str, Any]:
    """Load the demo data (as the owner role, outside RLS) and return its login details."""
    passwords = Passwords()
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            users = {}
            for email, password, name, role in ACCOUNTS:
                user_id = await conn.fetchval("SELECT id FROM users WHERE email = $1", email)
                if user_id is None:
                    user_id = await conn.fetchval(
                        "INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id",
                        email, await passwords.hash(password),
                    )
                    await conn.execute(
                        "INSERT INTO profiles (id, name, role) VALUES ($1, $2, $3)", user_id, name, role
                    )
                users[role] = user_id
            seller_id = await conn.fetchval(
                "SELECT id FROM sellers WHERE user_id = $1", users["seller"]
            ) or await conn.fetchval(
                """INSERT INTO sellers (user_id, display_name, bio, kyc_status, socials)
                   VALUES ($1, 'Maya''s Studio', 'Small-batch clothes and homeware.', 'verified', $2)
                   RETURNING id""",
                users["seller"], json.dumps({"instagram": "@mayas.studio"}),
            )
            categories: dict[str, Any] = {}
            for name, slug, parent in CATEGORIES:
                categories[slug] = await conn.fetchval(
                    """INSERT INTO categories (name, slug, parent_id) VALUES ($1, $2, $3)
                       ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
                    name, slug, categories.get(parent) if parent else None,
                )
            product_ids = []
            for title, description, price, category, variants in PRODUCTS:
                product_id = await conn.fetchval(
                    "SELECT id FROM products WHERE seller_id = $1 AND title = $2", seller_id, title
                )
                if product_id is None:
                    product_id = await conn.fetchval(
                        """INSERT INTO products (seller_id, category_id, title, description, price,
                                                 currency, status)
                           VALUES ($1, $2, $3, $4, $5, 'USD', 'active') RETURNING id""",
                        seller_id, categories[category], title, description, price,
                    )
                    for sku, color, size, stock in variants:
                        variant_id = await conn.fetchval(
                            """INSERT INTO product_variants (product_id, seller_id, sku, color, size)
                               VALUES ($1, $2, $3, $4, $5) RETURNING id""",
                            product_id, seller_id, sku, color, size,
                        )
                        await adjust_stock(
                            conn, variant_id=str(variant_id), delta=stock, reason="initial stock (demo)"
                        )
                product_ids.append(product_id)
            stream = await conn.fetchrow(
                "SELECT id, stream_key FROM livestreams WHERE seller_id = $1 AND title = $2",
                seller_id, LIVESTREAM_TITLE,
            )
            if stream is None:
                stream = await conn.fetchrow(
                    """INSERT INTO livestreams (seller_id, title, description, scheduled_at,
                                                stream_key, room)
                       VALUES ($1, $2, 'New arrivals and a 20-piece hoodie drop.',
                               now() + interval '1 hour', $3, $4)
                       RETURNING id, stream_key""",
                    seller_id, LIVESTREAM_TITLE, "sk_" + secrets.token_urlsafe(24),
                    "room_" + secrets.token_hex(8),
                )
                for position, product_id in enumerate(product_ids):
                    await conn.execute(
                        """INSERT INTO live_products (livestream_id, product_id, position)
                           VALUES ($1, $2, $3)""",
                        stream["id"], product_id, position,
                    )
    finally:
        await conn.close()
    return {
        "accounts": [
            {"email": e, "password": p, "role": r} for e, p, _, r in ACCOUNTS
        ],
        "livestream": {"id": str(stream["id"]), "title": LIVESTREAM_TITLE, "streamKey": stream["stream_key"]},
    }
