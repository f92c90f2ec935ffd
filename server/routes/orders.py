"""Orders: the buyer's list, detail and cancel; the seller's list, ship, deliver, refund."""

from __future__ import annotations

from aiohttp import web

from commerce import orders
from server import notify
from server.api import PAGE_QUERY, Api, json_response, page_of, path_id, seller_transaction
from server.keys import BODY, DB, IDENTITY, PAYMENTS, QUERY
from server.payments import after_commit

api = Api()

_NULLABLE = {"type": ["string", "null"]}
ORDER = {
    "type": "object",
    "required": ["id", "status", "userId", "sellerId", "subtotal", "discount", "total", "currency",
                 "refundedAmount", "items", "createdAt"],
    "properties": {
        "id": {"type": "string"},
        "status": {"enum": ["created", "paid", "shipped", "delivered", "canceled", "refunded"]},
        "userId": {"type": "string"}, "sellerId": {"type": "string"},
        "paymentId": _NULLABLE, "paymentIntentId": _NULLABLE, "livestreamId": _NULLABLE,
        "couponId": _NULLABLE, "shippingAddress": {"type": "object"},
        "subtotal": {"type": "integer"}, "discount": {"type": "integer"},
        "total": {"type": "integer"}, "currency": {"type": "string"},
        "refundedAmount": {"type": "integer"},
        "items": {"type": "array", "items": {
            "type": "object", "required": ["id", "productId", "variantId", "qty", "price"],
            "properties": {
                "id": {"type": "string"}, "productId": {"type": "string"},
                "variantId": {"type": "string"}, "qty": {"type": "integer"},
                "price": {"type": "integer"}, "title": {"type": "string"},
            },
        }},
        "createdAt": {"type": "string"}, "updatedAt": {"type": "string"},
    },
}
REFUND_IN = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "amount": {"type": "integer", "minimum": 1},
        "restock": {"type": "boolean"},
    },
}


@api.route("GET", "/api/v1/me/orders", summary="List my orders (newest first)", auth="user",
           tags=("orders",), query=PAGE_QUERY, response=page_of(ORDER))
async def my_orders(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    q = request[QUERY]
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await orders.buyer_orders(conn, user_id, q["limit"], q.get("cursor")))


@api.route("GET", "/api/v1/me/orders/{id}", summary="Read one of my orders", auth="user",
           tags=("orders",), response=ORDER)
async def my_order(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await orders.buyer_order(conn, user_id, path_id(request)))


@api.route("POST", "/api/v1/me/orders/{id}/cancel", auth="user", tags=("orders",),
           response=ORDER, errors=(409,),
           summary="Cancel my unpaid order: its stock holds are released")
async def cancel_order(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    order_id = path_id(request)
    async with request.app[DB].transaction(user_id) as conn:
        outcome = await orders.cancel(conn, user_id, order_id)
        order = await orders.buyer_order(conn, user_id, order_id)
    await after_commit(request.app, outcome)
    return json_response(order)


@api.route("GET", "/api/v1/seller/orders", summary="List my shop's orders (newest first)",
           auth="seller", tags=("seller",), query=PAGE_QUERY, response=page_of(ORDER))
async def seller_orders(request: web.Request) -> web.Response:
    q = request[QUERY]
    # Authorized here (the seller id of the caller), so the query runs as system work.
    async with seller_transaction(request, system=True) as (conn, seller_id):
        return json_response(await orders.seller_orders(conn, seller_id, q["limit"], q.get("cursor")))


@api.route("POST", "/api/v1/seller/orders/{id}/ship", summary="Mark a paid order shipped",
           auth="seller", tags=("seller",), response=ORDER, errors=(409,))
async def ship_order(request: web.Request) -> web.Response:
    async with seller_transaction(request, system=True) as (conn, seller_id):
        return json_response(await orders.ship(conn, seller_id, path_id(request)))


@api.route("POST", "/api/v1/seller/orders/{id}/deliver", summary="Mark a shipped order delivered",
           auth="seller", tags=("seller",), response=ORDER, errors=(409,))
async def deliver_order(request: web.Request) -> web.Response:
    async with seller_transaction(request, system=True) as (conn, seller_id):
        return json_response(await orders.deliver(conn, seller_id, path_id(request)))


@api.route("POST", "/api/v1/seller/orders/{id}/refund", auth="seller", tags=("seller",),
           body=REFUND_IN, response=ORDER, errors=(409, 502),
           summary="Refund a paid order, fully (default) or `amount`; `restock` puts its units "
                   "back (full refunds only)")
async def refund_order(request: web.Request) -> web.Response:
    body = request[BODY]
    async with seller_transaction(request, system=True) as (conn, seller_id):
        order, restocked = await orders.refund(
            conn, request.app[PAYMENTS], seller_id, path_id(request), body.get("amount"),
            bool(body.get("restock", False)),
        )
    notify.stock_changed(request.app, restocked)
    return json_response(order)
