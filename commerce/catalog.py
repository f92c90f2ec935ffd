"""The public catalog: categories, product search and listing, product detail.

Only `active` products are public. The owning seller also sees their own drafts and
archived products through `get_product(..., viewer_seller_id=...)`; everyone else gets
NotFound for them, exactly as for an unknown id.

Product JSON (the seed's contract, shared with `product:highlighted` events):

    {id, title, description, price, currency, images: [url], status, categoryId,
     sellerId, seller: {id, displayName},
     variants: [{id, productId, sku, color, size, stock, price, priceOverride}], createdAt}

where a variant's `price` is its override or else the product's price.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from commerce.errors import Conflict, Invalid, NotFound
from commerce.pagination import decode_cursor, split_page

PLAIN_WORDS = re.compile(r"[\w\s]+")
PRODUCT_COLUMNS = """
p.id, p.title, p.description, p.price, p.currency, p.images, p.status, p.category_id,
p.seller_id, s.display_name AS seller_name, p.created_at
"""
SELECT_PRODUCT = f"""
SELECT {PRODUCT_COLUMNS} FROM products p JOIN sellers s ON s.id = p.seller_id WHERE p.id = $1
"""
SELECT_VARIANTS = """
SELECT v.id, v.product_id, v.sku, v.color, v.size, v.stock, v.price_override, p.price
FROM product_variants v JOIN products p ON p.id = v.product_id
WHERE v.product_id = ANY($1::uuid[])
ORDER BY v.created_at, v.sku
"""
# A title this similar to a plain-words query matches it even without a full-text hit
# (typo tolerance: "snekers" finds "Canvas sneakers"); typo_similarity is migration 0090.
TYPO_THRESHOLD = 0.45
# Relevance: full-text rank (title weighs more than description) plus title similarity.
RANK = "(ts_rank(p.search, q.query) + CASE WHEN $7::text IS NULL THEN 0 ELSE typo_similarity($7, p.title) END)::float8"
# Public listing. $1 search text or NULL, $2 category slug/id or NULL, $3 seller id or
# NULL, $7 the search text when it is plain words (the only kind typos are forgiven in)
# or NULL; the category filter covers the whole subtree below the named category.
PUBLIC_PRODUCTS = f"""
WITH RECURSIVE subtree AS (
    SELECT id FROM categories WHERE $2::text IS NOT NULL AND (slug = $2 OR id::text = $2)
    UNION
    SELECT c.id FROM categories c JOIN subtree t ON c.parent_id = t.id
), q AS (
    -- Every lexeme of the websearch query becomes a prefix ('sneak' finds 'sneakers');
    -- quotes, OR and exclusions keep their meaning.
    SELECT regexp_replace(
        websearch_to_tsquery('english', coalesce($1::text, ''))::text, '''((?:[^'']|'''')+)''', '''\\1'':*', 'g'
    )::tsquery AS query
)
SELECT {PRODUCT_COLUMNS}, {RANK} AS rank
FROM products p JOIN sellers s ON s.id = p.seller_id CROSS JOIN q
WHERE p.status = 'active'
  AND ($1::text IS NULL OR p.search @@ q.query
       OR ($7::text IS NOT NULL AND typo_similarity($7, p.title) >= {TYPO_THRESHOLD}))
  AND ($2::text IS NULL OR p.category_id IN (SELECT id FROM subtree))
  AND ($3::uuid IS NULL OR p.seller_id = $3)
"""
# Keyset pages: newest first, or best rank first when searching; id breaks ties.
NEWEST_PAGE = """
  AND ($4::timestamptz IS NULL OR (p.created_at, p.id) < ($4, $5::uuid))
ORDER BY p.created_at DESC, p.id DESC LIMIT $6
"""
RANKED_PAGE = f"""
  AND ($4::float8 IS NULL OR ({RANK}, p.id) < ($4, $5::uuid))
ORDER BY rank DESC, p.id DESC LIMIT $6
"""
SELECT_CATEGORIES = """
WITH RECURSIVE tree AS (
    SELECT id, name, slug, parent_id, 0 AS depth, ARRAY[name, slug] AS path
    FROM categories WHERE parent_id IS NULL
    UNION ALL
    SELECT c.id, c.name, c.slug, c.parent_id, t.depth + 1, t.path || ARRAY[c.name, c.slug]
    FROM categories c JOIN tree t ON c.parent_id = t.id
)
SELECT id, name, slug, parent_id, depth FROM tree ORDER BY path
"""
INSERT_CATEGORY = """
INSERT INTO categories (name, slug, parent_id) VALUES ($1, $2, $3)
RETURNING id, name, slug, parent_id,
          (WITH RECURSIVE up AS (
               SELECT parent_id FROM categories WHERE id = $3
               UNION ALL
               SELECT c.parent_id FROM categories c JOIN up ON c.id = up.parent_id)
           SELECT count(*) FROM up)::int AS depth
"""

NEWEST = "newest"
RANKED = "ranked"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def variant_json(row: asyncpg.Record) -> dict[str, Any]:
    override = row["price_override"]
    return {
        "id": str(row["id"]), "productId": str(row["product_id"]), "sku": row["sku"],
        "color": row["color"], "size": row["size"], "stock": row["stock"],
        "price": override if override is not None else row["price"], "priceOverride": override,
    }


def product_json(row: asyncpg.Record, variants: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "title": row["title"], "description": row["description"],
        "price": row["price"], "currency": row["currency"], "images": _json(row["images"]),
        "status": row["status"],
        "categoryId": str(row["category_id"]) if row["category_id"] else None,
        "sellerId": str(row["seller_id"]),
        "seller": {"id": str(row["seller_id"]), "displayName": row["seller_name"]},
        "variants": variants, "createdAt": row["created_at"].isoformat(),
    }


async def products_json(conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    """Turn product rows into product JSON, loading every variant in one query."""
    variants: dict[str, list[dict[str, Any]]] = {str(r["id"]): [] for r in rows}
    if rows:
        for v in await conn.fetch(SELECT_VARIANTS, [r["id"] for r in rows]):
            variants[str(v["product_id"])].append(variant_json(v))
    return [product_json(r, variants[str(r["id"])]) for r in rows]


async def get_product(
    conn: asyncpg.Connection, product_id: str, *, viewer_seller_id: str | None = None
) -> dict[str, Any]:
    """Return one product with its variants and current stock, as its viewer may see it."""
    row = await conn.fetchrow(SELECT_PRODUCT, product_id)
    if row is None or not (
        row["status"] == "active"
        or (viewer_seller_id is not None and str(row["seller_id"]) == str(viewer_seller_id))
    ):
        raise NotFound("product not found")
    return (await products_json(conn, [row]))[0]


async def list_variants(
    conn: asyncpg.Connection, product_id: str, *, viewer_seller_id: str | None = None
) -> list[dict[str, Any]]:
    """Return a visible product's variants with their current stock."""
    return list((await get_product(conn, product_id, viewer_seller_id=viewer_seller_id))["variants"])


async def list_products(
    conn: asyncpg.Connection, *, search: str | None = None, category: str | None = None,
    seller_id: str | None = None, cursor: str | None = None, limit: int = 20,
) -> dict[str, Any]:
    """Return one page of public products: ranked by relevance when searching, else newest."""
    search = search.strip() if search else None
    if seller_id is not None:
        try:
            seller_id = str(uuid.UUID(seller_id))
        except ValueError:
            raise Invalid("seller must be a seller id", fields={"seller": "not an id"}) from None
    kind = RANKED if search else NEWEST
    types = (float if search else datetime, uuid.UUID)
    key, last_id = decode_cursor(cursor, kind, types) or (None, None)
    query = PUBLIC_PRODUCTS + (RANKED_PAGE if search else NEWEST_PAGE)
    # Websearch syntax ("quoted phrase", -exclusion, or) asks for exact words: no typos.
    plain = search if search and PLAIN_WORDS.fullmatch(search) else None
    rows = await conn.fetch(query, search, category or None, seller_id, key, last_id, limit + 1, plain)
    sort_columns = ("rank", "id") if search else ("created_at", "id")
    page, next_cursor = split_page(rows, limit, kind, sort_columns)
    return {"items": await products_json(conn, page), "nextCursor": next_cursor}


def category_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "name": row["name"], "slug": row["slug"],
        "parentId": str(row["parent_id"]) if row["parent_id"] else None, "depth": row["depth"],
    }


async def list_categories(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Return every category as a flat list, each parent before its children."""
    return [category_json(r) for r in await conn.fetch(SELECT_CATEGORIES)]


async def create_category(
    conn: asyncpg.Connection, *, name: str, slug: str, parent_id: str | None = None
) -> dict[str, Any]:
    """Add a category under `parent_id` (or at the top); slugs are unique."""
    try:
        async with conn.transaction():
            row = await conn.fetchrow(INSERT_CATEGORY, name.strip(), slug, parent_id)
    except asyncpg.UniqueViolationError:
        raise Conflict(f"slug {slug!r} is taken", code="slug_taken", slug=slug) from None
    except asyncpg.ForeignKeyViolationError:
        raise Invalid("parent category not found", fields={"parentId": "unknown category"}) from None
    return category_json(row)
