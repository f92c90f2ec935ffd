"""Signup, login, refresh rotation and reuse, logout, and the tokens we refuse."""

from __future__ import annotations

import base64
import json
import time

import jwt

from tests.factories import Factory


async def test_signup_login_and_me(client, factory: Factory) -> None:
    user = await factory.user(name="Amy")
    resp = await client.get("/api/v1/me", headers=user.headers)
    assert resp.status == 200
    me = await resp.json()
    assert me["email"] == user.email and me["name"] == "Amy" and me["role"] == "user"

    resp = await client.post("/api/v1/auth/login", json={"email": user.email.upper(), "password": user.password})
    assert resp.status == 200
    assert (await resp.json())["user"]["id"] == user.id


async def test_duplicate_email_is_409(client, factory: Factory) -> None:
    user = await factory.user()
    resp = await client.post(
        "/api/v1/auth/signup", json={"email": user.email, "password": "another password", "name": "X"}
    )
    assert resp.status == 409
    assert (await resp.json())["error"]["code"] == "email_taken"


async def test_wrong_password_and_unknown_email_are_401(client, factory: Factory) -> None:
    user = await factory.user()
    for email, password in ((user.email, "wrong password!"), ("nobody@example.test", "whatever12")):
        resp = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "unauthenticated"


async def test_signup_validation_names_fields(client) -> None:
    resp = await client.post("/api/v1/auth/signup", json={"email": "not-an-email", "password": "short"})
    assert resp.status == 400
    fields = (await resp.json())["error"]["details"]["fields"]
    assert {"email", "password", "name"} <= set(fields)


async def test_login_is_rate_limited(client, factory: Factory) -> None:
    user = await factory.user()
    statuses = []
    for _ in range(12):
        resp = await client.post("/api/v1/auth/login", json={"email": user.email, "password": "wrong password"})
        statuses.append(resp.status)
        if resp.status == 429:
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["code"] == "rate_limited"
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]


async def test_refresh_rotates_and_reuse_revokes_family(client, factory: Factory) -> None:
    user = await factory.user()
    first = user.refresh_token
    resp = await client.post("/api/v1/auth/refresh", json={"refreshToken": first})
    assert resp.status == 200
    second = (await resp.json())["refreshToken"]
    assert second != first

    # Replaying the spent token revokes the whole family, including the newest one.
    resp = await client.post("/api/v1/auth/refresh", json={"refreshToken": first})
    assert resp.status == 401
    resp = await client.post("/api/v1/auth/refresh", json={"refreshToken": second})
    assert resp.status == 401

    # Another login (another family) is untouched.
    resp = await client.post("/api/v1/auth/login", json={"email": user.email, "password": user.password})
    other = (await resp.json())["refreshToken"]
    resp = await client.post("/api/v1/auth/refresh", json={"refreshToken": other})
    assert resp.status == 200


async def test_logout_revokes_refresh_token(client, factory: Factory) -> None:
    user = await factory.user()
    resp = await client.post("/api/v1/auth/logout", json={"refreshToken": user.refresh_token})
    assert resp.status == 204
    resp = await client.post("/api/v1/auth/refresh", json={"refreshToken": user.refresh_token})
    assert resp.status == 401


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_forged_expired_and_alg_none_tokens_are_401(client, factory: Factory, settings) -> None:
    user = await factory.user()
    now = int(time.time())
    claims = {"sub": user.id, "role": "admin", "iat": now, "exp": now + 600, "iss": "shopstream", "typ": "access"}
    forged = jwt.encode(claims, "some-other-secret-that-is-long-enough-000", algorithm="HS256")
    expired = jwt.encode(
        {**claims, "role": "user", "iat": now - 1000, "exp": now - 10}, settings.jwt_secret.get(), algorithm="HS256"
    )
    alg_none = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "."
    hs512 = jwt.encode(claims, settings.jwt_secret.get(), algorithm="HS512")
    for token in (forged, expired, alg_none, hs512, "garbage", user.refresh_token):
        resp = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401, token
        body = await resp.json()
        assert body["error"]["code"] == "unauthenticated"
    resp = await client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    assert resp.status == 401
    resp = await client.get("/api/v1/me")
    assert resp.status == 401
