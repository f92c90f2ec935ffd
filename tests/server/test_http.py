"""Middleware behaviour every route shares: error JSON, ids, limits, health, metrics."""

from __future__ import annotations

from tests.factories import Factory


async def test_malformed_json_is_400(client) -> None:
    resp = await client.post(
        "/api/v1/auth/login", data=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "malformed_json"


async def test_wrong_content_type_is_415(client) -> None:
    resp = await client.post("/api/v1/auth/login", data=b"email=x", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_oversized_body_is_413(client, settings) -> None:
    body = b'{"email": "' + b"a" * (settings.max_body_bytes + 10) + b'"}'
    resp = await client.post("/api/v1/auth/login", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"


async def test_unknown_route_and_method_give_error_json(client) -> None:
    resp = await client.get("/api/v1/does-not-exist")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await client.put("/api/v1/auth/login", json={})
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_request_id_is_echoed_or_generated(client) -> None:
    resp = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"
    resp = await client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert resp.headers["X-Request-Id"] != "bad id with spaces" and len(resp.headers["X-Request-Id"]) == 32


async def test_health_ready_and_metrics(client, factory: Factory) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"
    await factory.user()
    text = await (await client.get("/metrics")).text()
    assert 'shopstream_http_requests_total{method="POST",route="/api/v1/auth/signup",status="201"}' in text
    assert "shopstream_http_request_duration_seconds_bucket" in text


async def test_openapi_lists_every_registered_route(client) -> None:
    doc = await (await client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    missing = []
    for resource in client.app.router.resources():
        path = resource.canonical
        if not (path.startswith("/api/") or path in ("/healthz", "/readyz", "/metrics")):
            continue
        for route in resource:
            if route.method in ("HEAD", "OPTIONS"):
                continue
            if (route.method, path) not in documented:
                missing.append((route.method, path))
    assert not missing, f"routes missing from OpenAPI: {missing}"


async def test_access_log_line_is_json(aiohttp_client, clean_db, tmp_path, caplog) -> None:
    import json
    import logging

    from server.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path, log_requests=True), clean_db, run_migrations=False)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.INFO, logger="shopstream.access"):
        await client.get("/healthz", headers={"X-Request-Id": "req-1"})
    line = json.loads(caplog.records[-1].getMessage())
    assert line["route"] == "/healthz" and line["status"] == 200 and line["requestId"] == "req-1"
    assert {"method", "ms", "userId"} <= set(line)


def test_access_line_is_what_json_dumps_would_write() -> None:
    import json

    from server.middleware import access_line

    for path, user, seconds in (("/api/v1/products/1", None, 0.000523456),
                                ('/q"uote\\back\nline\u2028caf\u00e9\U0001f600', "u-1", 12.5)):
        fields = {"method": "GET", "route": "/api/v1/products/{id}", "path": path, "status": 200,
                  "ms": round(seconds * 1000, 2), "requestId": "req-1", "userId": user}
        line = access_line("GET", "/api/v1/products/{id}", path, 200, seconds, "req-1", user)
        assert line == json.dumps(fields) and json.loads(line) == fields


async def test_bad_cursor_is_400_on_every_list(client, factory: Factory) -> None:
    seller = await factory.seller()
    created = await client.post("/api/v1/seller/livestreams", json={"title": "Cursor show"}, headers=seller.headers)
    assert created.status == 201
    livestream_id = (await created.json())["id"]
    # A well-formed cursor of another listing is as bad as garbage.
    await factory.product(seller)
    await factory.product(seller)
    foreign = (await (await client.get("/api/v1/products", params={"limit": "1"})).json())["nextCursor"]
    assert foreign
    lists = [
        "/api/v1/products", "/api/v1/me/orders", "/api/v1/seller/orders", "/api/v1/seller/coupons",
        "/api/v1/livestreams", f"/api/v1/livestreams/{livestream_id}/chat", "/api/v1/seller/livestreams",
        "/api/v1/seller/products", "/api/v1/me/wishlist",
    ]
    for path in lists:
        for cursor in ("garbage!!", "W1sxLDJdXQ", foreign):
            if path == "/api/v1/products" and cursor == foreign:
                continue
            resp = await client.get(path, params={"cursor": cursor}, headers=seller.headers)
            assert resp.status == 400, (path, cursor)
            assert (await resp.json())["error"]["details"]["fields"] == {"cursor": "invalid cursor"}, path


async def test_nul_in_any_json_string_is_400_not_500(client, factory: Factory) -> None:
    user, seller = await factory.user(), await factory.seller()
    product = await factory.product(seller)
    cases = [
        ("PATCH", "/api/v1/me", {"name": "a\u0000b"}, user, "name"),
        ("POST", "/api/v1/me/cart/apply-coupon", {"code": "A\u0000B"}, user, "code"),
        ("POST", "/api/v1/seller/livestreams", {"title": "Show", "description": "\u0000"}, seller, "description"),
        ("PATCH", f"/api/v1/seller/products/{product['id']}", {"description": "x\u0000"}, seller, "description"),
    ]
    for method, path, body, who, field in cases:
        resp = await client.request(method, path, json=body, headers=who.headers)
        assert resp.status == 400, path
        error = (await resp.json())["error"]
        assert error["code"] == "validation_error" and error["details"]["fields"] == {field: "contains NUL"}, path
    # Nested deep in a list, the field path says where.
    stream = await (await client.post("/api/v1/seller/livestreams", json={"title": "Show"}, headers=seller.headers)).json()
    resp = await client.patch(
        f"/api/v1/seller/livestreams/{stream['id']}", json={"chatSettings": {"blockedWords": ["ok", "x\u0000"]}},
        headers=seller.headers,
    )
    assert resp.status == 400
    assert (await resp.json())["error"]["details"]["fields"] == {"chatSettings.blockedWords.1": "contains NUL"}
    resp = await client.patch("/api/v1/me", json={"name": "ok"}, headers=user.headers)
    assert resp.status == 200 and (await resp.json())["name"] == "ok"
