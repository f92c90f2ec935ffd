"""Seller coupons: create and list codes that discount the seller's own items."""

from __future__ import annotations

from aiohttp import web

from commerce import coupons
from server.api import PAGE_QUERY, Api, json_response, page_of, path_id, seller_transaction
from server.keys import BODY, QUERY

api = Api()

NULLABLE_STR = {"type": ["string", "null"]}
NULLABLE_INT = {"type": ["integer", "null"]}
DATE_TIME = {"type": ["string", "null"], "format": "date-time", "maxLength": 40}
COUPON = {
    "type": "object",
    "required": ["id", "code", "discountType", "value", "currency", "minSubtotal", "startsAt",
                 "endsAt", "usageLimit", "perUserLimit", "usedCount", "createdAt"],
    "properties": {
        "id": {"type": "string"}, "code": {"type": "string"},
        "discountType": {"enum": ["amount", "percent"]}, "value": {"type": "integer"},
        "currency": NULLABLE_STR, "minSubtotal": {"type": "integer"}, "startsAt": NULLABLE_STR,
        "endsAt": NULLABLE_STR, "usageLimit": NULLABLE_INT, "perUserLimit": NULLABLE_INT,
        "usedCount": {"type": "integer"}, "createdAt": {"type": "string"},
    },
}
COUPON_IN = {
    "type": "object", "additionalProperties": False,
    "required": ["code", "discountType", "value"],
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Za-z0-9_-]{3,40}$"},
        "discountType": {"enum": ["amount", "percent"]},
        "value": {"type": "integer", "minimum": 1, "maximum": 10**12},
        "currency": {"type": ["string", "null"], "pattern": "^[A-Z]{3}$"},
        "minSubtotal": {"type": "integer", "minimum": 0, "maximum": 10**12},
        "startsAt": DATE_TIME, "endsAt": DATE_TIME,
        "usageLimit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10**9},
        "perUserLimit": {"type": ["integer", "null"], "minimum": 1, "maximum": 10**9},
    },
}


@api.route(
    "GET", "/api/v1/seller/coupons", summary="List my coupons", auth="seller",
    tags=("seller",), query=PAGE_QUERY, response=page_of(COUPON),
)
async def list_coupons(request: web.Request) -> web.Response:
    query = request[QUERY]
    async with seller_transaction(request) as (conn, seller_id):
        result = await coupons.list_coupons(
            conn, seller_id, limit=query["limit"], cursor=query.get("cursor")
        )
    return json_response(result)


@api.route(
    "POST", "/api/v1/seller/coupons", summary="Create a coupon for my items", auth="seller",
    tags=("seller",), body=COUPON_IN, response=COUPON, status=201, errors=(409,),
)
async def create_coupon(request: web.Request) -> web.Response:
    async with seller_transaction(request) as (conn, seller_id):
        result = await coupons.create_coupon(conn, seller_id, request[BODY])
    return json_response(result, status=201)


@api.route(
    "GET", "/api/v1/seller/coupons/{id}", summary="Read one of my coupons", auth="seller",
    tags=("seller",), response=COUPON,
)
async def get_coupon(request: web.Request) -> web.Response:
    coupon_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        return json_response(await coupons.get_coupon(conn, seller_id, coupon_id))
