"""Auth routes: signup, login, refresh (rotation), logout."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import accounts
from server.api import Api, json_response
from server.auth import RefreshReuse
from server.errors import rate_limited, unauthenticated
from server.keys import BODY, DB, LOGIN_LIMITER, PASSWORDS, TOKENS

api = Api()

EMAIL = {"type": "string", "format": "email", "minLength": 3, "maxLength": 254,
         "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$"}
PASSWORD = {"type": "string", "minLength": 8, "maxLength": 128}

USER = {
    "type": "object",
    "required": ["id", "email", "name", "role"],
    "properties": {
        "id": {"type": "string"}, "email": {"type": "string"}, "name": {"type": "string"},
        "role": {"enum": ["user", "seller", "admin"]},
    },
}
SESSION = {
    "type": "object",
    "required": ["accessToken", "refreshToken", "expiresIn", "user"],
    "properties": {
        "accessToken": {"type": "string"}, "refreshToken": {"type": "string"},
        "expiresIn": {"type": "integer"}, "user": USER,
    },
}
REFRESH_IN = {
    "type": "object", "required": ["refreshToken"], "additionalProperties": False,
    "properties": {"refreshToken": {"type": "string", "minLength": 1, "maxLength": 200}},
}


async def issue_session(request: web.Request, conn: Any, user_id: str) -> dict[str, Any]:
    """Return a fresh access + refresh token pair and the user for `user_id`."""
    tokens = request.app[TOKENS]
    me = await accounts.profile(conn, user_id)
    return {
        "accessToken": tokens.access_token(user_id, me["role"]),
        "refreshToken": await tokens.issue_refresh(conn, user_id),
        "expiresIn": tokens.access_ttl,
        "user": {k: me[k] for k in ("id", "email", "name", "role")},
    }


@api.route(
    "POST", "/api/v1/auth/signup", summary="Create an account", tags=("auth",), status=201,
    body={
        "type": "object", "required": ["email", "password", "name"], "additionalProperties": False,
        "properties": {
            "email": EMAIL, "password": PASSWORD,
            "name": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": r"\S"},
        },
    },
    response=SESSION, errors=(409,),
)
async def signup(request: web.Request) -> web.Response:
    data = request[BODY]
    password_hash = await request.app[PASSWORDS].hash(data["password"])
    async with request.app[DB].transaction(system=True) as conn:
        user_id = await accounts.create_user(
            conn, data["email"].strip().lower(), password_hash, data["name"].strip()
        )
        session = await issue_session(request, conn, user_id)
    return json_response(session, status=201)


@api.route(
    "POST", "/api/v1/auth/login", summary="Log in with email and password", tags=("auth",),
    body={
        "type": "object", "required": ["email", "password"], "additionalProperties": False,
        "properties": {"email": {"type": "string", "maxLength": 254},
                       "password": {"type": "string", "maxLength": 128}},
    },
    response=SESSION, errors=(401,),
)
async def login(request: web.Request) -> web.Response:
    data = request[BODY]
    email = data["email"].strip().lower()
    limiter = request.app[LOGIN_LIMITER]
    # Per account and per client address: one guesser cannot lock out everyone.
    wait = max(
        limiter.hit("email:" + email),
        limiter.hit("ip:" + (request.remote or ""), weight=0.1),
    )
    if wait:
        raise rate_limited(wait, "too many login attempts; try again later")
    async with request.app[DB].transaction(system=True) as conn:
        row = await accounts.login_row(conn, email)
        ok = await request.app[PASSWORDS].verify(row["password_hash"] if row else None, data["password"])
        if not ok or row is None:
            raise unauthenticated("wrong email or password")
        session = await issue_session(request, conn, str(row["id"]))
    return json_response(session)


@api.route(
    "POST", "/api/v1/auth/refresh", summary="Exchange a refresh token for new tokens",
    tags=("auth",), body=REFRESH_IN, response=SESSION, errors=(401,),
)
async def refresh(request: web.Request) -> web.Response:
    tokens = request.app[TOKENS]
    async with request.app[DB].transaction(system=True) as conn:
        rotated = await tokens.rotate_refresh(conn, request[BODY]["refreshToken"])
        if rotated is not None:
            user_id, refresh_token = rotated
            me = await accounts.profile(conn, user_id)
    if rotated is None:  # the family's revocation is committed above
        raise RefreshReuse()
    return json_response({
        "accessToken": tokens.access_token(user_id, me["role"]),
        "refreshToken": refresh_token,
        "expiresIn": tokens.access_ttl,
        "user": {k: me[k] for k in ("id", "email", "name", "role")},
    })


@api.route(
    "POST", "/api/v1/auth/logout", summary="Revoke a refresh token's login", tags=("auth",),
    body=REFRESH_IN, status=204,
)
async def logout(request: web.Request) -> web.Response:
    async with request.app[DB].transaction(system=True) as conn:
        await request.app[TOKENS].revoke(conn, request[BODY]["refreshToken"])
    return web.Response(status=204)
