"""Public catalog routes: categories, product search and detail, uploaded images.

`GET /api/v1/categories` answers a flat list of every category with `parentId` and
`depth`, each parent before its children (a client builds the tree in one pass).

Product reads are served from the read cache (`server/read_cache.py`): the public view
of a product is the same for every caller, so it is cached once; only the owning
seller's view of a draft or archived product (not public) is read from the database
for them alone, and answers with an Authorization header are private to the browser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from commerce import catalog
from commerce.errors import NotFound
from commerce.sellers import seller_id_of
from server.api import PAGE_QUERY, Api, json_response, page_of, path_id
from server.errors import not_found
from server.keys import DB, IDENTITY, QUERY, SETTINGS
from server.read_cache import PRIVATE, PRODUCTS, READ_CACHE, ReadCache, product_tags, respond
from server.uploads import CONTENT_TYPES, upload_path

api = Api()

NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
VARIANT: dict[str, Any] = {
    "type": "object",
    "required": ["id", "productId", "sku", "color", "size", "stock", "price", "priceOverride"],
    "properties": {
        "id": {"type": "string"}, "productId": {"type": "string"}, "sku": {"type": "string"},
        "color": NULLABLE_STR, "size": NULLABLE_STR, "stock": {"type": "integer", "minimum": 0},
        "price": {"type": "integer", "minimum": 0},
        "priceOverride": {"type": ["integer", "null"], "minimum": 0},
    },
}
PRODUCT: dict[str, Any] = {
    "type": "object",
    "required": [
        "id", "title", "description", "price", "currency", "images", "status", "categoryId",
        "sellerId", "seller", "variants", "createdAt",
    ],
    "properties": {
        "id": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
        "price": {"type": "integer", "minimum": 0}, "currency": {"type": "string"},
        "images": {"type": "array", "items": {"type": "string"}},
        "status": {"enum": ["draft", "active", "archived"]},
        "categoryId": NULLABLE_STR, "sellerId": {"type": "string"},
        "seller": {
            "type": "object", "required": ["id", "displayName"],
            "properties": {"id": {"type": "string"}, "displayName": {"type": "string"}},
        },
        "variants": {"type": "array", "items": VARIANT},
        "createdAt": {"type": "string"},
    },
}
CATEGORY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "slug", "parentId", "depth"],
    "properties": {
        "id": {"type": "string"}, "name": {"type": "string"}, "slug": {"type": "string"},
        "parentId": NULLABLE_STR, "depth": {"type": "integer", "minimum": 0},
    },
}
PRODUCT_QUERY: dict[str, dict[str, Any]] = {
    "q": {
        "type": "string", "maxLength": 200,
        "description": "search text: words match by prefix (sneak finds sneakers), plain words"
                       " also with typos; websearch syntax (\"phrase\", -word, or) is understood",
    },
    "search": {"type": "string", "maxLength": 200, "description": "the older name of q", "deprecated": True},
    "category": {"type": "string", "maxLength": 100, "description": "category slug or id; includes sub-categories"},
    "seller": {"type": "string", "maxLength": 100, "description": "seller id"},
    **PAGE_QUERY,
}


async def viewer_seller(request: web.Request, conn: Any) -> str | None:
    """Return the caller's seller id when they are a seller (to show their own drafts)."""
    identity = request.get(IDENTITY)
    if identity is None or identity.role not in ("seller", "admin"):
        return None
    return await seller_id_of(conn, identity.user_id)


def read_cache(request: web.Request) -> ReadCache | None:
    """Return the app's read cache, or None when it is turned off."""
    cache = request.app.get(READ_CACHE)
    return cache if cache is not None and cache.enabled else None


@api.route(
    "GET", "/api/v1/categories", summary="List every category (flat, parents first)",
    tags=("catalog",), response=page_of(CATEGORY),
)
async def list_categories(request: web.Request) -> web.Response:
    async with request.app[DB].transaction() as conn:
        items = await catalog.list_categories(conn)
    return json_response({"items": items, "nextCursor": None})


@api.route(
    "GET", "/api/v1/products", summary="Search and list public products", tags=("catalog",),
    query=PRODUCT_QUERY, response=page_of(PRODUCT),
)
async def list_products(request: web.Request) -> web.Response:
    q = request[QUERY]

    async def load() -> tuple[dict[str, Any], set[str]]:
        async with request.app[DB].transaction() as conn:
            page = await catalog.list_products(
                conn, search=q.get("q") or q.get("search"), category=q.get("category"),
                seller_id=q.get("seller"), cursor=q.get("cursor"), limit=q["limit"],
            )
        return page, {PRODUCTS, *product_tags(page["items"])}

    cache = read_cache(request)
    if cache is None:
        return json_response((await load())[0])
    # The same query string always means the same parameters: it is the key.
    entry = await cache.get("products?" + request.query_string, load)
    return respond(request, entry, shared=True)


@api.route(
    "GET", "/api/v1/products/{id}", summary="Read a product with its variants and stock",
    auth="optional", tags=("catalog",), response=PRODUCT,
)
async def get_product(request: web.Request) -> web.Response:
    product_id = path_id(request)
    cache = read_cache(request)
    if cache is None:
        return json_response(await _own_view(request, product_id))

    async def load() -> tuple[dict[str, Any], set[str]]:
        product = await _public_view(request, product_id)
        return product, product_tags([product])

    try:
        entry = await cache.get(f"product:{product_id}", load)
    except NotFound:
        return await _owner_only(request, product_id, lambda product: product)
    return respond(request, entry, shared="Authorization" not in request.headers, vary=True)


@api.route(
    "GET", "/api/v1/products/{id}/variants", summary="List a product's variants with stock",
    auth="optional", tags=("catalog",), response=page_of(VARIANT),
)
async def list_variants(request: web.Request) -> web.Response:
    product_id = path_id(request)

    def page(product: dict[str, Any]) -> dict[str, Any]:
        return {"items": product["variants"], "nextCursor": None}

    cache = read_cache(request)
    if cache is None:
        return json_response(page(await _own_view(request, product_id)))

    async def load() -> tuple[dict[str, Any], set[str]]:
        product = await _public_view(request, product_id)
        return page(product), product_tags([product])

    try:
        entry = await cache.get(f"variants:{product_id}", load)
    except NotFound:
        return await _owner_only(request, product_id, page)
    return respond(request, entry, shared="Authorization" not in request.headers, vary=True)


async def _public_view(request: web.Request, product_id: str) -> dict[str, Any]:
    async with request.app[DB].transaction() as conn:
        return await catalog.get_product(conn, product_id)


async def _own_view(request: web.Request, product_id: str) -> dict[str, Any]:
    """Read a product as the caller may see it (a seller also sees their own drafts)."""
    async with request.app[DB].transaction() as conn:
        seller_id = await viewer_seller(request, conn)
        return await catalog.get_product(conn, product_id, viewer_seller_id=seller_id)


async def _owner_only(
    request: web.Request, product_id: str, shape: Callable[[dict[str, Any]], dict[str, Any]]
) -> web.Response:
    """Answer a product that is not public: only to its seller, never cached by anyone."""
    identity = request.get(IDENTITY)
    if identity is None or identity.role not in ("seller", "admin"):
        raise NotFound("product not found")
    product = await _own_view(request, product_id)
    return json_response(shape(product), headers={"Cache-Control": PRIVATE, "Vary": "Authorization"})


@api.route(
    "GET", "/uploads/{name}", summary="An uploaded image (content-addressed, immutable)",
    tags=("catalog",), response={"type": "string", "format": "binary"},
    response_content_type="image/*",
)
async def get_upload(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = upload_path(request.app[SETTINGS].data_dir, name)
    if path is None:
        raise not_found("image not found")
    return web.FileResponse(path, headers={
        "Content-Type": CONTENT_TYPES[name.rsplit(".", 1)[1]],
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
    })
