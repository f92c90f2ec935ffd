"""Admin routes: grow the category tree, decide sellers' KYC."""

from __future__ import annotations

from aiohttp import web

from commerce import catalog, sellers
from server.api import Api, json_response, path_id
from server.keys import BODY, DB, IDENTITY
from server.routes.catalog import CATEGORY
from server.routes.seller_products import UUID_PATTERN

api = Api()

CATEGORY_IN = {
    "type": "object", "additionalProperties": False, "required": ["name", "slug"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"\S"},
        "slug": {"type": "string", "maxLength": 100, "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"},
        "parentId": {"type": ["string", "null"], "pattern": UUID_PATTERN},
    },
}
SELLER = {
    "type": "object",
    "required": ["id", "userId", "displayName", "bio", "socials", "kycStatus", "createdAt"],
    "properties": {
        "id": {"type": "string"}, "userId": {"type": "string"}, "displayName": {"type": "string"},
        "bio": {"type": "string"}, "socials": {"type": "object"},
        "kycStatus": {"enum": ["pending", "verified", "rejected"]}, "createdAt": {"type": "string"},
    },
}
KYC_PATCH = {
    "type": "object", "additionalProperties": False, "required": ["kycStatus"],
    "properties": {"kycStatus": {"enum": ["pending", "verified", "rejected"]}},
}


@api.route(
    "POST", "/api/v1/admin/categories", summary="Add a category", auth="admin",
    tags=("admin",), body=CATEGORY_IN, response=CATEGORY, status=201, errors=(409,),
)
async def create_category(request: web.Request) -> web.Response:
    data = request[BODY]
    async with request.app[DB].transaction(request[IDENTITY].user_id) as conn:
        category = await catalog.create_category(
            conn, name=data["name"], slug=data["slug"], parent_id=data.get("parentId")
        )
    return json_response(category, status=201)


@api.route(
    "PATCH", "/api/v1/admin/sellers/{id}", summary="Set a seller's KYC status", auth="admin",
    tags=("admin",), body=KYC_PATCH, response=SELLER,
)
async def set_kyc(request: web.Request) -> web.Response:
    seller_id = path_id(request)
    async with request.app[DB].transaction(request[IDENTITY].user_id) as conn:
        seller = await sellers.set_kyc_status(conn, seller_id, request[BODY]["kycStatus"])
    return json_response(seller)
