"""A seller's own products: create, edit, variants and images.

Every function takes the caller's seller id and matches rows by it, so another
seller's product or variant is simply not found (404), never forbidden: ids of other
sellers' drafts are not revealed. Stock changes go through `commerce.inventory`.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from commerce.catalog import PRODUCT_COLUMNS, get_product, products_json, variant_json
from commerce.errors import Conflict, Invalid, NotFound
from commerce.inventory import adjust_stock
from commerce.pagination import decode_cursor, split_page

MAX_IMAGES = 20

# camelCase API field -> column: the only product fields a seller may write.
PRODUCT_FIELDS = {
    "title": "title", "description": "description", "price": "price", "currency": "currency",
    "status": "status", "categoryId": "category_id",
}
VARIANT_FIELDS = {"color": "color", "size": "size", "priceOverride": "price_override"}

SELLER_PRODUCTS = f"""
SELECT {PRODUCT_COLUMNS} FROM products p JOIN sellers s ON s.id = p.seller_id
WHERE p.seller_id = $1
  AND ($2::text IS NULL OR p.status = $2)
  AND ($3::timestamptz IS NULL OR (p.created_at, p.id) < ($3, $4::uuid))
ORDER BY p.created_at DESC, p.id DESC LIMIT $5
"""
OWNED_PRODUCT = "SELECT id FROM products WHERE id = $1 AND seller_id = $2"
INSERT_VARIANT = """
INSERT INTO product_variants (product_id, seller_id, sku, color, size, price_override)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
"""
SELECT_VARIANT = """
SELECT v.id, v.product_id, v.sku, v.color, v.size, v.stock, v.price_override, p.price
FROM product_variants v JOIN products p ON p.id = v.product_id
WHERE v.id = $1 AND v.product_id = $2 AND v.seller_id = $3
"""
APPEND_IMAGE = """
UPDATE products SET updated_at = now(),
       images = CASE WHEN images @> jsonb_build_array($3::text) THEN images
                     ELSE images || jsonb_build_array($3::text) END
WHERE id = $1 AND seller_id = $2 AND jsonb_array_length(images) < $4
RETURNING id
"""


async def list_products(
    conn: asyncpg.Connection, seller_id: str, *, status: str | None = None,
    cursor: str | None = None, limit: int = 20,
) -> dict[str, Any]:
    """Return one page of the seller's products in every status, newest first."""
    created, last_id = decode_cursor(cursor, "seller-newest") or (None, None)
    rows = await conn.fetch(SELLER_PRODUCTS, seller_id, status, created, last_id, limit + 1)
    page, next_cursor = split_page(rows, limit, "seller-newest")
    return {"items": await products_json(conn, page), "nextCursor": next_cursor}


async def create_product(conn: asyncpg.Connection, seller_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """Create a product (a draft unless `status` says otherwise) and return it."""
    columns = [PRODUCT_FIELDS[k] for k in PRODUCT_FIELDS if k in data]
    values = [data[k] for k in PRODUCT_FIELDS if k in data]
    placeholders = ", ".join(f"${i + 2}" for i in range(len(values)))
    sql = (
        f"INSERT INTO products (seller_id, {', '.join(columns)}) VALUES ($1, {placeholders}) "
        "RETURNING id"
    )
    product_id = await _write_product(conn, sql, seller_id, *values)
    return await get_product(conn, str(product_id), viewer_seller_id=seller_id)


async def update_product(
    conn: asyncpg.Connection, seller_id: str, product_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    """Change the whitelisted fields of one of the seller's products."""
    parts, args = [], []
    for key, column in PRODUCT_FIELDS.items():
        if key in changes:
            args.append(changes[key])
            parts.append(f"{column} = ${len(args) + 2}")
    if parts:
        sql = (
            f"UPDATE products SET {', '.join(parts)}, updated_at = now() "
            "WHERE id = $1 AND seller_id = $2 RETURNING id"
        )
        found = await _write_product(conn, sql, product_id, seller_id, *args)
    else:
        found = await conn.fetchval(OWNED_PRODUCT, product_id, seller_id)
    if found is None:
        raise NotFound("product not found")
    return await get_product(conn, product_id, viewer_seller_id=seller_id)


async def _write_product(conn: asyncpg.Connection, sql: str, *args: Any) -> Any:
    try:
        return await conn.fetchval(sql, *args)
    except asyncpg.ForeignKeyViolationError:
        raise Invalid("category not found", fields={"categoryId": "unknown category"}) from None


async def _require_product(conn: asyncpg.Connection, seller_id: str, product_id: str) -> None:
    if await conn.fetchval(OWNED_PRODUCT, product_id, seller_id) is None:
        raise NotFound("product not found")


async def add_variant(
    conn: asyncpg.Connection, seller_id: str, product_id: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Add a variant; its initial stock, if any, is recorded as an inventory event."""
    await _require_product(conn, seller_id, product_id)
    try:
        async with conn.transaction():
            variant_id = await conn.fetchval(
                INSERT_VARIANT, product_id, seller_id, data["sku"], data.get("color"),
                data.get("size"), data.get("priceOverride"),
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(
            f"SKU {data['sku']!r} is already used by one of your variants", code="sku_taken",
            sku=data["sku"],
        ) from None
    if data.get("initialStock"):
        await adjust_stock(conn, variant_id=str(variant_id), delta=data["initialStock"], reason="initial stock")
    return await get_variant(conn, seller_id, product_id, str(variant_id))


async def get_variant(
    conn: asyncpg.Connection, seller_id: str, product_id: str, variant_id: str
) -> dict[str, Any]:
    row = await conn.fetchrow(SELECT_VARIANT, variant_id, product_id, seller_id)
    if row is None:
        raise NotFound("variant not found")
    return variant_json(row)


async def update_variant(
    conn: asyncpg.Connection, seller_id: str, product_id: str, variant_id: str,
    changes: dict[str, Any],
) -> dict[str, Any]:
    """Change a variant's attributes; a stock change is `stockDelta` + `reason` only."""
    await get_variant(conn, seller_id, product_id, variant_id)  # 404 before any write
    parts, args = [], []
    for key, column in VARIANT_FIELDS.items():
        if key in changes:
            args.append(changes[key])
            parts.append(f"{column} = ${len(args) + 1}")
    if parts:
        await conn.execute(
            f"UPDATE product_variants SET {', '.join(parts)} WHERE id = $1", variant_id, *args
        )
    if "stockDelta" in changes:
        await adjust_stock(
            conn, variant_id=variant_id, delta=changes["stockDelta"], reason=changes["reason"]
        )
    return await get_variant(conn, seller_id, product_id, variant_id)


async def add_image(
    conn: asyncpg.Connection, seller_id: str, product_id: str, url: str
) -> dict[str, Any]:
    """Append an image URL to the product (once) and return the product."""
    if await conn.fetchval(APPEND_IMAGE, product_id, seller_id, url, MAX_IMAGES) is None:
        await _require_product(conn, seller_id, product_id)
        raise Conflict(f"a product may have at most {MAX_IMAGES} images", code="limit_reached")
    return await get_product(conn, product_id, viewer_seller_id=seller_id)


async def owns_product(conn: asyncpg.Connection, seller_id: str, product_id: str) -> bool:
    return await conn.fetchval(OWNED_PRODUCT, product_id, seller_id) is not None

