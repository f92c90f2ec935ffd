"""Seller analytics: orders, revenue and units overall and per livestream."""

from __future__ import annotations

from aiohttp import web

from commerce import analytics
from commerce.values import parse_moment
from server.api import Api, json_response, path_id, seller_transaction
from server.keys import QUERY

api = Api()

DATE_TIME_QUERY = {"type": "string", "format": "date-time", "maxLength": 40}
CURRENCY_FIGURES = {
    "type": "object", "required": ["currency", "orders", "revenue", "units"],
    "properties": {
        "currency": {"type": "string"}, "orders": {"type": "integer"},
        "revenue": {"type": "integer"}, "units": {"type": "integer"},
    },
}
ORDER_FIGURES = {
    "orders": {"type": "integer"}, "units": {"type": "integer"},
    "revenue": {"type": ["integer", "null"]}, "currency": {"type": ["string", "null"]},
    "byCurrency": {"type": "array", "items": CURRENCY_FIGURES},
    "ordersByStatus": {"type": "object", "additionalProperties": {"type": "integer"}},
}
REQUIRED_FIGURES = ["orders", "units", "revenue", "currency", "byCurrency", "ordersByStatus"]
SELLER_ANALYTICS = {
    "type": "object", "required": ["from", "to", *REQUIRED_FIGURES],
    "properties": {
        "from": {"type": ["string", "null"]}, "to": {"type": ["string", "null"]}, **ORDER_FIGURES,
    },
}
LIVESTREAM_ANALYTICS = {
    "type": "object",
    "required": ["livestreamId", *REQUIRED_FIGURES, "chatMessages", "peakViewers",
                 "totalViewers", "watchSeconds"],
    "properties": {
        "livestreamId": {"type": "string"}, **ORDER_FIGURES,
        "chatMessages": {"type": "integer"}, "peakViewers": {"type": "integer"},
        "totalViewers": {"type": "integer"}, "watchSeconds": {"type": "integer"},
    },
}


@api.route(
    "GET", "/api/v1/seller/analytics", summary="My orders, revenue and units sold",
    auth="seller", tags=("seller",), query={"from": DATE_TIME_QUERY, "to": DATE_TIME_QUERY},
    response=SELLER_ANALYTICS,
)
async def seller_analytics(request: web.Request) -> web.Response:
    query = request[QUERY]
    since = parse_moment(query.get("from"), "from")
    until = parse_moment(query.get("to"), "to")
    # Orders carry RLS: running as the seller's user shows exactly their own orders.
    async with seller_transaction(request) as (conn, seller_id):
        result = await analytics.seller_summary(conn, seller_id, since=since, until=until)
    return json_response(result)


@api.route(
    "GET", "/api/v1/seller/livestreams/{id}/analytics",
    summary="Orders, revenue and audience of one of my livestreams", auth="seller",
    tags=("seller",), response=LIVESTREAM_ANALYTICS,
)
async def livestream_analytics(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    async with seller_transaction(request) as (conn, seller_id):
        result = await analytics.livestream_summary(conn, seller_id, livestream_id)
    return json_response(result)
