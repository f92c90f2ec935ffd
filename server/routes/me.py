"""The caller's own account: profile, addresses, becoming a seller."""

from __future__ import annotations

from aiohttp import web

from server import accounts
from server.api import Api, json_response, page_of, path_id
from server.keys import BODY, DB, IDENTITY, TOKENS

api = Api()

NULLABLE_STR = {"type": ["string", "null"]}
SELLER = {
    "type": "object",
    "required": ["id", "displayName", "bio", "socials", "kycStatus"],
    "properties": {
        "id": {"type": "string"}, "displayName": {"type": "string"}, "bio": {"type": "string"},
        "socials": {"type": "object"}, "kycStatus": {"enum": ["pending", "verified", "rejected"]},
    },
}
PROFILE = {
    "type": "object",
    "required": ["id", "email", "name", "role", "avatarUrl", "seller"],
    "properties": {
        "id": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"},
        "role": {"enum": ["user", "seller", "admin"]}, "avatarUrl": NULLABLE_STR,
        "createdAt": {"type": "string"}, "seller": {"oneOf": [SELLER, {"type": "null"}]},
    },
}
# additionalProperties: false is what refuses mass assignment (role, id, email...).
PROFILE_PATCH = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"\S"},
        "avatarUrl": {"type": ["string", "null"], "maxLength": 500, "pattern": r"^(https?://|/)"},
    },
}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": r"\S"}
_OPT_TEXT = {"type": ["string", "null"], "maxLength": 200}
ADDRESS_PROPS = {
    "line1": _TEXT, "line2": _OPT_TEXT, "city": _TEXT, "state": _OPT_TEXT,
    "postalCode": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": r"\S"},
    "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
    "phone": {"type": ["string", "null"], "maxLength": 30, "pattern": r"^[0-9 +()-]*$"},
}
ADDRESS_IN = {
    "type": "object", "additionalProperties": False,
    "required": ["line1", "city", "postalCode", "country"], "properties": ADDRESS_PROPS,
}
ADDRESS_PATCH = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": ADDRESS_PROPS,
}
ADDRESS = {
    "type": "object",
    "required": ["id", "line1", "city", "postalCode", "country"],
    "properties": {
        "id": {"type": "string"}, "line1": {"type": "string"}, "line2": NULLABLE_STR,
        "city": {"type": "string"}, "state": NULLABLE_STR, "postalCode": {"type": "string"},
        "country": {"type": "string"}, "phone": NULLABLE_STR, "createdAt": {"type": "string"},
    },
}


@api.route("GET", "/api/v1/me", summary="Read my profile", auth="user", tags=("me",), response=PROFILE)
async def get_me(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await accounts.profile(conn, user_id))


@api.route(
    "PATCH", "/api/v1/me", summary="Change my name or avatar", auth="user", tags=("me",),
    body=PROFILE_PATCH, response=PROFILE,
)
async def patch_me(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await accounts.update_profile(conn, user_id, request[BODY]))


@api.route(
    "GET", "/api/v1/me/addresses", summary="List my addresses", auth="user", tags=("me",),
    response=page_of(ADDRESS),
)
async def list_addresses(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        items = await accounts.list_addresses(conn, user_id)
    return json_response({"items": items, "nextCursor": None})


@api.route(
    "POST", "/api/v1/me/addresses", summary="Add an address", auth="user", tags=("me",),
    body=ADDRESS_IN, response=ADDRESS, status=201, errors=(409,),
)
async def add_address(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        return json_response(await accounts.add_address(conn, user_id, request[BODY]), status=201)


@api.route(
    "PATCH", "/api/v1/me/addresses/{id}", summary="Change an address", auth="user",
    tags=("me",), body=ADDRESS_PATCH, response=ADDRESS,
)
async def patch_address(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        address = await accounts.update_address(conn, user_id, path_id(request), request[BODY])
    return json_response(address)


@api.route(
    "DELETE", "/api/v1/me/addresses/{id}", summary="Delete an address", auth="user",
    tags=("me",), status=204,
)
async def delete_address(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        await accounts.delete_address(conn, user_id, path_id(request))
    return web.Response(status=204)


@api.route(
    "POST", "/api/v1/me/seller", summary="Become a seller", auth="user", tags=("me",),
    status=201, errors=(409,),
    body={
        "type": "object", "required": ["displayName"], "additionalProperties": False,
        "properties": {
            "displayName": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"\S"},
            "bio": {"type": "string", "maxLength": 2000},
            "socials": {
                "type": "object", "maxProperties": 10,
                "additionalProperties": {"type": "string", "maxLength": 300},
            },
        },
    },
    response={
        "type": "object", "required": ["profile", "accessToken"],
        "properties": {"profile": PROFILE, "accessToken": {"type": "string"}},
    },
)
async def become_seller(request: web.Request) -> web.Response:
    user_id = request[IDENTITY].user_id
    async with request.app[DB].transaction(user_id) as conn:
        role = await accounts.become_seller(conn, user_id, request[BODY])
        me = await accounts.profile(conn, user_id)
    # The old token still says "user"; hand back one that carries the new role.
    token = request.app[TOKENS].access_token(user_id, role)
    return json_response({"profile": me, "accessToken": token}, status=201)
