"""Seller routes: a seller's own products, variants, stock changes and images.

Another seller's product or variant id is answered 404, like an unknown id.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from commerce import seller_products
from commerce.errors import NotFound
from server import notify
from server.api import PAGE_QUERY, Api, json_response, page_of, path_id, seller_transaction
from server.keys import BODY, DB, IDENTITY, QUERY, SETTINGS
from server.routes.catalog import PRODUCT, VARIANT
from server.uploads import read_image_part, store_image

api = Api()

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
MAX_PRICE = 10**12  # minor units; far above any real price, well inside bigint
MAX_STOCK_DELTA = 1_000_000
STATUS = {"enum": ["draft", "active", "archived"]}
PRODUCT_PROPS: dict[str, Any] = {
    "title": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"},
    "description": {"type": "string", "maxLength": 5000},
    "price": {"type": "integer", "minimum": 0, "maximum": MAX_PRICE},
    "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
    "status": STATUS,
    "categoryId": {"type": ["string", "null"], "pattern": UUID_PATTERN},
}
PRODUCT_IN = {
    "type": "object", "additionalProperties": False, "required": ["title", "price", "currency"],
    "properties": PRODUCT_PROPS,
}
PRODUCT_PATCH = {
    "type": "object", "additionalProperties": False, "minProperties": 1, "properties": PRODUCT_PROPS,
}
_ATTR = {"type": ["string", "null"], "maxLength": 50}
PRICE_OVERRIDE = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_PRICE}
VARIANT_IN = {
    "type": "object", "additionalProperties": False, "required": ["sku"],
    "properties": {
        "sku": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        "color": _ATTR, "size": _ATTR, "priceOverride": PRICE_OVERRIDE,
        "initialStock": {"type": "integer", "minimum": 0, "maximum": MAX_STOCK_DELTA},
    },
}
VARIANT_PATCH = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "color": _ATTR, "size": _ATTR, "priceOverride": PRICE_OVERRIDE,
        "stockDelta": {
            "type": "integer", "minimum": -MAX_STOCK_DELTA, "maximum": MAX_STOCK_DELTA,
            "not": {"const": 0},
        },
        "reason": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"},
    },
    # A stock change is always explained; a reason alone changes nothing.
    "dependentRequired": {"stockDelta": ["reason"], "reason": ["stockDelta"]},
}
IMAGE_UPLOAD = {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"}},
}


@api.route(
    "GET", "/api/v1/seller/products", summary="List my products in every status",
    auth="seller", tags=("seller",), query={"status": STATUS, **PAGE_QUERY},
    response=page_of(PRODUCT),
)
async def list_products(request: web.Request) -> web.Response:
    q = request[QUERY]
    async with seller_transaction(request) as (conn, seller_id):
        page = await seller_products.list_products(
            conn, seller_id, status=q.get("status"), cursor=q.get("cursor"), limit=q["limit"]
        )
    return json_response(page)


@api.route(
    "POST", "/api/v1/seller/products", summary="Create a product (a draft by default)",
    auth="seller", tags=("seller",), body=PRODUCT_IN, response=PRODUCT, status=201,
)
async def create_product(request: web.Request) -> web.Response:
    async with seller_transaction(request) as (conn, seller_id):
        product = await seller_products.create_product(conn, seller_id, request[BODY])
    notify.products_changed(request.app, [product["id"]])
    return json_response(product, status=201)


@api.route(
    "PATCH", "/api/v1/seller/products/{id}", summary="Change one of my products",
    auth="seller", tags=("seller",), body=PRODUCT_PATCH, response=PRODUCT,
)
async def update_product(request: web.Request) -> web.Response:
    product_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        product = await seller_products.update_product(conn, seller_id, product_id, request[BODY])
    notify.products_changed(request.app, [product_id])
    return json_response(product)


@api.route(
    "POST", "/api/v1/seller/products/{id}/variants", summary="Add a variant to my product",
    auth="seller", tags=("seller",), body=VARIANT_IN, response=VARIANT, status=201, errors=(409,),
)
async def add_variant(request: web.Request) -> web.Response:
    product_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        variant = await seller_products.add_variant(conn, seller_id, product_id, request[BODY])
    notify.products_changed(request.app, [product_id])
    if variant["stock"]:
        notify.stock_changed(request.app, [variant["id"]])
    return json_response(variant, status=201)


@api.route(
    "PATCH", "/api/v1/seller/products/{id}/variants/{variantId}",
    summary="Change a variant; stock only as {stockDelta, reason}", auth="seller",
    tags=("seller",), body=VARIANT_PATCH, response=VARIANT, errors=(409,),
)
async def update_variant(request: web.Request) -> web.Response:
    product_id, variant_id = path_id(request), path_id(request, "variantId")
    async with seller_transaction(request) as (conn, seller_id):
        variant = await seller_products.update_variant(
            conn, seller_id, product_id, variant_id, request[BODY]
        )
    if set(request[BODY]) - {"stockDelta", "reason"}:
        notify.products_changed(request.app, [product_id])  # sku, price, color, size
    if "stockDelta" in request[BODY]:
        notify.stock_changed(request.app, [variant_id])
    return json_response(variant)


@api.route(
    "POST", "/api/v1/seller/products/{id}/images",
    summary="Upload a PNG, JPEG or WebP image (multipart field `file`)", auth="seller",
    tags=("seller",), body=IMAGE_UPLOAD, request_content_type="multipart/form-data",
    response=PRODUCT, status=201, errors=(409,),
)
async def upload_image(request: web.Request) -> web.Response:
    product_id = path_id(request)
    user_id = request[IDENTITY].user_id
    settings = request.app[SETTINGS]
    # Ownership first: a foreign product is 404 before its body is even read.
    async with seller_transaction(request) as (conn, seller_id):
        if not await seller_products.owns_product(conn, seller_id, product_id):
            raise NotFound("product not found")
    data = await read_image_part(request, settings.max_upload_bytes)
    name = await asyncio.to_thread(store_image, settings.data_dir, data)
    url = f"{settings.public_url.rstrip('/')}/uploads/{name}"
    async with request.app[DB].transaction(user_id) as conn:
        product = await seller_products.add_image(conn, seller_id, product_id, url)
    notify.products_changed(request.app, [product_id])
    return json_response(product, status=201)
