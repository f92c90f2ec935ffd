"""Wishlist routes: the caller's saved public products."""

from __future__ import annotations

from aiohttp import web

from commerce import wishlist
from server.api import PAGE_QUERY, Api, json_response, page_of, path_id
from server.keys import DB, IDENTITY, QUERY
from server.routes.catalog import PRODUCT

api = Api()

WISHLIST_ITEM = {
    "type": "object", "required": ["productId", "addedAt", "product"],
    "properties": {"productId": {"type": "string"}, "addedAt": {"type": "string"}, "product": PRODUCT},
}


@api.route(
    "GET", "/api/v1/me/wishlist", summary="List my wishlist, latest first", auth="user",
    tags=("wishlist",), query=PAGE_QUERY, response=page_of(WISHLIST_ITEM),
)
async def list_wishlist(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    q = request[QUERY]
    async with request.app[DB].transaction(user_id) as conn:
        page = await wishlist.list_items(conn, user_id, cursor=q.get("cursor"), limit=q["limit"])
    return json_response(page)


@api.route(
    "POST", "/api/v1/me/wishlist/{productId}", summary="Save a product (idempotent)",
    auth="user", tags=("wishlist",), status=204,
)
async def add_to_wishlist(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        await wishlist.add_item(conn, user_id, path_id(request, "productId"))
    return web.Response(status=204)


@api.route(
    "DELETE", "/api/v1/me/wishlist/{productId}", summary="Remove a product (idempotent)",
    auth="user", tags=("wishlist",), status=204,
)
async def remove_from_wishlist(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        await wishlist.remove_item(conn, user_id, path_id(request, "productId"))
    return web.Response(status=204)
