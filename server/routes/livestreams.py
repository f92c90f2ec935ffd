"""Livestreams: public listings, details, products and chat history; the seller's controls.

The public listing, detail and product reads come from the read cache
(`server/read_cache.py`); the seller's changes announce themselves through
`server/notify.py` once committed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from commerce import livestreams
from server import notify
from server.api import PAGE_QUERY, Api, json_response, page_of, path_id, seller_transaction
from server.keys import BODY, DB, QUERY
from server.read_cache import LIVESTREAMS, product_tags, respond
from server.routes.catalog import PRODUCT, read_cache

api = Api()

UUID = {"type": "string", "pattern": "^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"}
NULLABLE_STR = {"type": ["string", "null"]}
STATUS = {"enum": ["scheduled", "live", "paused", "ended"]}
LIVESTREAM_PROPS = {
    "id": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
    "status": STATUS, "isLive": {"type": "boolean"}, "scheduledAt": NULLABLE_STR,
    "startedAt": NULLABLE_STR, "endedAt": NULLABLE_STR, "room": {"type": "string"},
    "thumbnailUrl": NULLABLE_STR,
    "seller": {
        "type": "object", "required": ["id", "displayName"],
        "properties": {"id": {"type": "string"}, "displayName": {"type": "string"}},
    },
    "highlightedProductId": NULLABLE_STR, "chatSettings": {"type": "object"},
    "viewers": {
        "type": "object", "required": ["peak", "total", "watchSeconds"],
        "properties": {
            "peak": {"type": "integer"}, "total": {"type": "integer"},
            "watchSeconds": {"type": "integer"},
        },
    },
    "createdAt": {"type": "string"},
}
LIVESTREAM_REQUIRED = ["id", "title", "description", "status", "isLive", "scheduledAt",
                       "seller", "highlightedProductId", "viewers", "chatSettings"]
# The public view must never carry the stream key.
PUBLIC_LIVESTREAM = {
    "type": "object", "required": LIVESTREAM_REQUIRED, "properties": LIVESTREAM_PROPS,
    "not": {"required": ["streamKey"]},
}
SELLER_LIVESTREAM = {
    "type": "object", "required": [*LIVESTREAM_REQUIRED, "streamKey"],
    "properties": {**LIVESTREAM_PROPS, "streamKey": {"type": "string"}},
}
# A product on a stream is the catalog's product JSON plus its place in the stream.
STREAM_PRODUCT = {
    "type": "object", "required": [*PRODUCT["required"], "position", "highlightedAt"],
    "properties": {
        **PRODUCT["properties"], "position": {"type": "integer"}, "highlightedAt": NULLABLE_STR,
    },
}
CHAT_MESSAGE = {
    "type": "object", "required": ["id", "user", "message", "ts"],
    "properties": {
        "id": {"type": "string"},
        "user": {
            "type": "object", "required": ["id", "name"],
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
        },
        "message": {"type": "string"}, "ts": {"type": "integer"}, "createdAt": {"type": "string"},
    },
}
DATE_TIME = {"type": ["string", "null"], "format": "date-time", "maxLength": 40}
# NUL in any string is refused for every body by server/api.py.
TITLE = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"}
DESCRIPTION = {"type": "string", "maxLength": 5000}
LIVESTREAM_IN = {
    "type": "object", "additionalProperties": False, "required": ["title"],
    "properties": {"title": TITLE, "description": DESCRIPTION, "scheduledAt": DATE_TIME},
}
CHAT_SETTINGS = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "slowModeSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "blockedWords": {
            "type": "array", "maxItems": 200, "uniqueItems": True,
            "items": {**TITLE, "maxLength": 50},
        },
        "blockLinks": {"type": "boolean"},
    },
}
LIVESTREAM_PATCH = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "title": TITLE, "description": DESCRIPTION, "scheduledAt": DATE_TIME,
        "chatSettings": CHAT_SETTINGS,
    },
}
PRODUCT_REF = {
    "type": "object", "additionalProperties": False, "required": ["productId"],
    "properties": {"productId": UUID},
}
PRODUCT_LIST = page_of(STREAM_PRODUCT)
# Exactly one of `at` / `inSeconds` (checked by commerce.livestreams.announce_drop).
DROP_IN = {
    "type": "object", "additionalProperties": False, "required": ["productId"],
    "properties": {
        "productId": UUID,
        "at": {"type": "string", "format": "date-time", "maxLength": 40},
        "inSeconds": {"type": "integer", "minimum": 1, "maximum": 24 * 3600},
    },
}
DROP = {
    "type": "object", "required": ["productId", "product", "at"],
    "properties": {"productId": {"type": "string"}, "product": PRODUCT, "at": {"type": "string"}},
}


# ---- public -------------------------------------------------------------------------

@api.route(
    "GET", "/api/v1/livestreams", summary="List livestreams: live, upcoming or ended",
    tags=("livestreams",), response=page_of(PUBLIC_LIVESTREAM),
    query={"status": {"enum": ["live", "upcoming", "ended"]}, **PAGE_QUERY},
)
async def list_livestreams(request: web.Request) -> web.Response:
    query = request[QUERY]

    async def load() -> tuple[dict[str, Any], set[str]]:
        async with request.app[DB].transaction() as conn:
            result = await livestreams.list_livestreams(
                conn, status=query.get("status"), limit=query["limit"], cursor=query.get("cursor")
            )
        return result, {LIVESTREAMS, *(f"livestream:{item['id']}" for item in result["items"])}

    cache = read_cache(request)
    if cache is None:
        return json_response((await load())[0])
    return respond(request, await cache.get("livestreams?" + request.query_string, load), shared=True)


@api.route(
    "GET", "/api/v1/livestreams/{id}", summary="Read a livestream", tags=("livestreams",),
    response=PUBLIC_LIVESTREAM,
)
async def get_livestream(request: web.Request) -> web.Response:
    livestream_id = path_id(request)

    async def load() -> tuple[dict[str, Any], set[str]]:
        async with request.app[DB].transaction() as conn:
            return await livestreams.get_livestream(conn, livestream_id), {f"livestream:{livestream_id}"}

    cache = read_cache(request)
    if cache is None:
        return json_response((await load())[0])
    return respond(request, await cache.get(f"livestream:{livestream_id}", load), shared=True)


@api.route(
    "GET", "/api/v1/livestreams/{id}/products", summary="Products shown in a livestream",
    tags=("livestreams",), response=PRODUCT_LIST,
)
async def livestream_products(request: web.Request) -> web.Response:
    livestream_id = path_id(request)

    async def load() -> tuple[dict[str, Any], set[str]]:
        async with request.app[DB].transaction() as conn:
            items = await livestreams.public_stream_products(conn, livestream_id)
        return {"items": items, "nextCursor": None}, {f"livestream:{livestream_id}", *product_tags(items)}

    cache = read_cache(request)
    if cache is None:
        return json_response((await load())[0])
    return respond(request, await cache.get(f"livestream-products:{livestream_id}", load), shared=True)


@api.route(
    "GET", "/api/v1/livestreams/{id}/chat", summary="Chat history, oldest first",
    tags=("livestreams",), query=PAGE_QUERY, response=page_of(CHAT_MESSAGE),
)
async def chat_history(request: web.Request) -> web.Response:
    livestream_id, query = path_id(request), request[QUERY]
    async with request.app[DB].transaction() as conn:
        result = await livestreams.chat_history(
            conn, livestream_id, limit=query["limit"], cursor=query.get("cursor")
        )
    return json_response(result)


# ---- seller -------------------------------------------------------------------------

@api.route(
    "GET", "/api/v1/seller/livestreams", summary="List my livestreams (with stream keys)",
    auth="seller", tags=("seller",), query=PAGE_QUERY, response=page_of(SELLER_LIVESTREAM),
)
async def list_own(request: web.Request) -> web.Response:
    query = request[QUERY]
    async with seller_transaction(request) as (conn, seller_id):
        result = await livestreams.list_own_livestreams(
            conn, seller_id, limit=query["limit"], cursor=query.get("cursor")
        )
    return json_response(result)


@api.route(
    "POST", "/api/v1/seller/livestreams", summary="Schedule a livestream", auth="seller",
    tags=("seller",), body=LIVESTREAM_IN, response=SELLER_LIVESTREAM, status=201,
)
async def create(request: web.Request) -> web.Response:
    async with seller_transaction(request) as (conn, seller_id):
        result = await livestreams.create_livestream(conn, seller_id, request[BODY])
    notify.livestream_changed(request.app, result["id"])
    return json_response(result, status=201)


@api.route(
    "PATCH", "/api/v1/seller/livestreams/{id}", summary="Change my livestream or its chat settings",
    auth="seller", tags=("seller",), body=LIVESTREAM_PATCH, response=SELLER_LIVESTREAM,
    errors=(409,),
)
async def update(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        result = await livestreams.update_livestream(conn, seller_id, livestream_id, request[BODY])
    notify.livestream_changed(request.app, livestream_id)
    return json_response(result)


async def _move(request: web.Request, new_state: str) -> web.Response:
    livestream_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        result = await livestreams.set_own_state(conn, seller_id, livestream_id, new_state)
    await notify.room_event(request.app, livestream_id, "stream:state", {"state": new_state})
    return json_response(result)


@api.route(
    "POST", "/api/v1/seller/livestreams/{id}/start", summary="Go live", auth="seller",
    tags=("seller",), response=SELLER_LIVESTREAM, errors=(409,),
)
async def start(request: web.Request) -> web.Response:
    return await _move(request, "live")


@api.route(
    "POST", "/api/v1/seller/livestreams/{id}/end", summary="End the livestream", auth="seller",
    tags=("seller",), response=SELLER_LIVESTREAM, errors=(409,),
)
async def end(request: web.Request) -> web.Response:
    return await _move(request, "ended")


@api.route(
    "POST", "/api/v1/seller/livestreams/{id}/stream-key",
    summary="Rotate the stream key (the old one stops working)", auth="seller",
    tags=("seller",), response=SELLER_LIVESTREAM,
)
async def rotate_key(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        result = await livestreams.rotate_stream_key(conn, seller_id, livestream_id)
    return json_response(result)


@api.route(
    "POST", "/api/v1/seller/livestreams/{id}/products", summary="Attach one of my products",
    auth="seller", tags=("seller",), body=PRODUCT_REF, response=PRODUCT_LIST, status=201,
)
async def attach(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        result = await livestreams.attach_product(
            conn, seller_id, livestream_id, request[BODY]["productId"]
        )
    notify.livestream_changed(request.app, livestream_id)
    return json_response(result, status=201)


@api.route(
    "DELETE", "/api/v1/seller/livestreams/{id}/products/{productId}",
    summary="Detach a product from my livestream", auth="seller", tags=("seller",), status=204,
)
async def detach(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    product_id = path_id(request, "productId")
    async with seller_transaction(request) as (conn, seller_id):
        await livestreams.detach_product(conn, seller_id, livestream_id, product_id)
    notify.livestream_changed(request.app, livestream_id)
    return web.Response(status=204)


@api.route(
    "POST", "/api/v1/seller/livestreams/{id}/highlight",
    summary="Highlight an attached product to the room", auth="seller", tags=("seller",),
    body=PRODUCT_REF, response=PRODUCT, errors=(409,),
)
async def highlight(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        product = await livestreams.highlight_product(
            conn, seller_id, livestream_id, request[BODY]["productId"]
        )
    # After the commit: the room must never hear about a highlight that rolled back.
    await notify.room_event(request.app, livestream_id, "product:highlighted", product)
    return json_response(product)


@api.route(
    "POST", "/api/v1/seller/livestreams/{id}/drop",
    summary="Announce a drop: the room counts down to an attached product going on sale",
    auth="seller", tags=("seller",), body=DROP_IN, response=DROP, errors=(409,),
)
async def announce_drop(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    body = request[BODY]
    async with seller_transaction(request) as (conn, seller_id):
        drop = await livestreams.announce_drop(
            conn, seller_id, livestream_id, body["productId"],
            at=body.get("at"), in_seconds=body.get("inSeconds"),
        )
    # After the commit, like highlight: a late joiner's welcome must agree with the event.
    await notify.room_event(request.app, livestream_id, "drop:announced", drop)
    return json_response(drop)
