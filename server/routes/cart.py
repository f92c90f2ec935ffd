"""The caller's cart: lines, quantities and a coupon; totals always computed here."""

from __future__ import annotations

from aiohttp import web

from commerce import cart
from server.api import Api, json_response, path_id
from server.keys import BODY, DB, IDENTITY

api = Api()

UUID = {"type": "string", "pattern": "^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"}
QTY = {"type": "integer", "minimum": 1, "maximum": cart.MAX_QTY}
NULLABLE_STR = {"type": ["string", "null"]}
CART_ITEM = {
    "type": "object",
    "required": ["id", "productId", "variantId", "qty", "priceAtAdd", "title", "sku", "color",
                 "size", "stock"],
    "properties": {
        "id": {"type": "string"}, "productId": {"type": "string"},
        "variantId": {"type": "string"}, "qty": {"type": "integer"},
        "priceAtAdd": {"type": "integer"}, "title": {"type": "string"}, "sku": {"type": "string"},
        "color": NULLABLE_STR, "size": NULLABLE_STR, "stock": {"type": "integer"},
    },
}
CART_COUPON = {
    "type": "object",
    "required": ["code", "discountType", "value", "valid", "reason"],
    "properties": {
        "code": {"type": "string"}, "discountType": {"enum": ["amount", "percent"]},
        "value": {"type": "integer"}, "currency": NULLABLE_STR,
        "minSubtotal": {"type": "integer"}, "endsAt": NULLABLE_STR,
        "valid": {"type": "boolean"}, "reason": NULLABLE_STR,
    },
}
CART = {
    "type": "object",
    "required": ["id", "items", "subtotal", "discount", "total", "currency", "coupon"],
    "properties": {
        "id": {"type": "string"}, "items": {"type": "array", "items": CART_ITEM},
        "subtotal": {"type": "integer"}, "discount": {"type": "integer"},
        "total": {"type": "integer"}, "currency": NULLABLE_STR,
        "coupon": {"oneOf": [CART_COUPON, {"type": "null"}]},
    },
}
ADD_ITEM = {
    "type": "object", "additionalProperties": False,
    "required": ["productId", "variantId", "qty"],
    "properties": {"productId": UUID, "variantId": UUID, "qty": QTY},
}
SET_QTY = {
    "type": "object", "additionalProperties": False, "required": ["qty"],
    "properties": {"qty": QTY},
}
APPLY_COUPON = {
    "type": "object", "additionalProperties": False, "required": ["code"],
    "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 60}},
}


@api.route("GET", "/api/v1/me/cart", summary="Read my cart", auth="user", tags=("cart",), response=CART)
async def get_cart(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await cart.get_cart(conn, user_id))


@api.route(
    "POST", "/api/v1/me/cart/items", summary="Add a variant to my cart (merges quantities)",
    auth="user", tags=("cart",), body=ADD_ITEM, response=CART, errors=(409,),
)
async def add_item(request: web.Request) -> web.Response:
    user_id, data = request[IDENTITY].user_id, request[BODY]
    async with request.app[DB].transaction(user_id) as conn:
        result = await cart.add_item(conn, user_id, data["productId"], data["variantId"], data["qty"])
    return json_response(result)


@api.route(
    "PATCH", "/api/v1/me/cart/items/{itemId}", summary="Change a cart line's quantity",
    auth="user", tags=("cart",), body=SET_QTY, response=CART, errors=(409,),
)
async def set_item_qty(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    item_id = path_id(request, "itemId")
    async with request.app[DB].transaction(user_id) as conn:
        result = await cart.set_item_qty(conn, user_id, item_id, request[BODY]["qty"])
    return json_response(result)


@api.route(
    "DELETE", "/api/v1/me/cart/items/{itemId}", summary="Remove a line from my cart",
    auth="user", tags=("cart",), response=CART,
)
async def remove_item(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    item_id = path_id(request, "itemId")
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await cart.remove_item(conn, user_id, item_id))


@api.route(
    "POST", "/api/v1/me/cart/apply-coupon", summary="Apply a coupon code to my cart",
    auth="user", tags=("cart",), body=APPLY_COUPON, response=CART, errors=(409,),
)
async def apply_coupon(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await cart.apply_coupon(conn, user_id, request[BODY]["code"]))


@api.route(
    "DELETE", "/api/v1/me/cart/coupon", summary="Remove the coupon from my cart",
    auth="user", tags=("cart",), response=CART,
)
async def remove_coupon(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await cart.remove_coupon(conn, user_id))
