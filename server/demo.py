"""Demo data: a seller, a shopper, an admin, a category tree, products with stock and
generated images, and a livestream with those products attached, one of them
highlighted, and a few chat lines. Idempotent: running it again changes nothing and
prints the same details (once the demo livestream has ended, a new one is scheduled).
`shopstream demo` then makes it live with the built-in publisher (server/demo_live.py)."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

import asyncpg

from commerce.inventory import adjust_stock
from server.auth import Passwords
from server.config import Settings
from server.demo_live import encode_png, product_image
from server.uploads import store_image

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
# (account role, message): what a newcomer sees already said in the demo room.
CHAT = [
    ("user", "Hi Maya! Is the hoodie true to size?"),
    ("seller", "Hi all! Yes, true to size. Only 20 made, the drop is on now."),
    ("user", "Love the pour-over set 😍"),
    ("admin", "Welcome to the demo show. Tap Buy on the product card to try checkout."),
]


def demo_image(settings: Settings, index: int) -> str:
    """Draw demo product `index`'s picture into the uploads and return its file name."""
    return store_image(settings.data_dir, encode_png(product_image(index)))


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
            for index, (title, description, price, category, variants) in enumerate(PRODUCTS):
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
                await conn.execute(
                    "UPDATE products SET images = $2 WHERE id = $1 AND images = '[]'::jsonb",
                    product_id, json.dumps([f"/uploads/{demo_image(settings, index)}"]),
                )
                product_ids.append(product_id)
            # An ended demo show accepts no publisher: the demo then schedules a new one.
            stream = await conn.fetchrow(
                """SELECT id, stream_key FROM livestreams
                   WHERE seller_id = $1 AND title = $2 AND status <> 'ended'
                   ORDER BY created_at DESC LIMIT 1""",
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
                    # The drop hoodie is on show from the start: the card is on the video.
                    await conn.execute(
                        """INSERT INTO live_products (livestream_id, product_id, position, highlighted_at)
                           VALUES ($1, $2, $3, $4)""",
                        stream["id"], product_id, position,
                        datetime.now(UTC) if position == len(product_ids) - 1 else None,
                    )
                for n, (role, message) in enumerate(CHAT):
                    await conn.execute(
                        """INSERT INTO chat_messages (livestream_id, user_id, message, created_at)
                           VALUES ($1, $2, $3, now() - make_interval(secs => $4))""",
                        stream["id"], users[role], message, float(len(CHAT) - n),
                    )
    finally:
        await conn.close()
    return {
        "accounts": [
            {"email": e, "password": p, "role": r} for e, p, _, r in ACCOUNTS
        ],
        "livestream": {"id": str(stream["id"]), "title": LIVESTREAM_TITLE, "streamKey": stream["stream_key"]},
    }
