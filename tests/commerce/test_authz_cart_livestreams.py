"""Authorization matrix: plain users get 403 on seller endpoints; sellers get 404 for
another seller's livestreams, coupons and analytics; anonymous callers get 401."""

from __future__ import annotations

import pytest

from tests.commerce.conftest import CommerceRows
from tests.factories import Factory

# (method, path template, body); {ls} = seller A's livestream, {coupon} = A's coupon,
# {product} = A's product.
SELLER_ENDPOINTS = [
    ("GET", "/api/v1/seller/livestreams", None),
    ("POST", "/api/v1/seller/livestreams", {"title": "x"}),
    ("PATCH", "/api/v1/seller/livestreams/{ls}", {"title": "stolen"}),
    ("POST", "/api/v1/seller/livestreams/{ls}/start", None),
    ("POST", "/api/v1/seller/livestreams/{ls}/end", None),
    ("POST", "/api/v1/seller/livestreams/{ls}/stream-key", None),
    ("POST", "/api/v1/seller/livestreams/{ls}/products", {"productId": "{product}"}),
    ("DELETE", "/api/v1/seller/livestreams/{ls}/products/{product}", None),
    ("POST", "/api/v1/seller/livestreams/{ls}/highlight", {"productId": "{product}"}),
    ("GET", "/api/v1/seller/livestreams/{ls}/analytics", None),
    ("GET", "/api/v1/seller/coupons", None),
    ("POST", "/api/v1/seller/coupons", {"code": "MINE-1", "discountType": "percent", "value": 5}),
    ("GET", "/api/v1/seller/coupons/{coupon}", None),
    ("GET", "/api/v1/seller/analytics", None),
]
FOREIGN_ID_ENDPOINTS = [e for e in SELLER_ENDPOINTS if "{ls}" in e[1] or "{coupon}" in e[1]]


def _fill(value, ids):
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.fixture
async def world(client, factory: Factory, rows: CommerceRows):
    a, b, user = await factory.seller(), await factory.seller(), await factory.user()
    product = await factory.product(a)
    stream = await (await client.post("/api/v1/seller/livestreams", json={"title": "A's"}, headers=a.headers)).json()
    await client.post(f"/api/v1/seller/livestreams/{stream['id']}/products", json={"productId": product["id"]}, headers=a.headers)
    coupon = await (await client.post(
        "/api/v1/seller/coupons", json={"code": "ASONLY", "discountType": "percent", "value": 5}, headers=a.headers,
    )).json()
    ids = {"ls": stream["id"], "coupon": coupon["id"], "product": product["id"]}
    return {"a": a, "b": b, "user": user, "ids": ids, "stream": stream}


@pytest.mark.parametrize(("method", "path", "body"), SELLER_ENDPOINTS)
async def test_plain_user_is_forbidden_and_anonymous_unauthenticated(client, world, method, path, body) -> None:
    ids = world["ids"]
    url, data = _fill(path, ids), _fill(body, ids)
    resp = await client.request(method, url, json=data, headers=world["user"].headers)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "forbidden"
    resp = await client.request(method, url, json=data)
    assert resp.status == 401


@pytest.mark.parametrize(("method", "path", "body"), FOREIGN_ID_ENDPOINTS)
async def test_other_seller_gets_404_and_changes_nothing(client, factory: Factory, world, method, path, body) -> None:
    ids = world["ids"]
    resp = await client.request(method, _fill(path, ids), json=_fill(body, ids), headers=world["b"].headers)
    assert resp.status == 404, (method, path, await resp.text())
    own = await (await client.get("/api/v1/seller/livestreams", headers=world["a"].headers)).json()
    stream = own["items"][0]
    assert stream == world["stream"] | {"highlightedProductId": None}
    conn = await factory.conn()
    assert await conn.fetchval("SELECT count(*) FROM live_products") == 1


async def test_other_sellers_lists_do_not_leak(client, world) -> None:
    b = world["b"]
    assert (await (await client.get("/api/v1/seller/livestreams", headers=b.headers)).json())["items"] == []
    assert (await (await client.get("/api/v1/seller/coupons", headers=b.headers)).json())["items"] == []
    data = await (await client.get("/api/v1/seller/analytics", headers=b.headers)).json()
    assert data["orders"] == 0


async def test_admin_without_a_shop_is_forbidden(client, factory: Factory, world) -> None:
    admin = await factory.admin()
    resp = await client.get("/api/v1/seller/livestreams", headers=admin.headers)
    assert resp.status == 403


async def test_other_seller_cannot_attach_or_highlight_own_product_on_foreign_stream(client, factory: Factory, world) -> None:
    b = world["b"]
    theirs = await factory.product(b)
    url = f"/api/v1/seller/livestreams/{world['ids']['ls']}"
    for action in ("products", "highlight"):
        resp = await client.post(f"{url}/{action}", json={"productId": theirs["id"]}, headers=b.headers)
        assert resp.status == 404
    # And the owner cannot attach B's product to their own stream.
    resp = await client.post(f"{url}/products", json={"productId": theirs["id"]}, headers=world["a"].headers)
    assert resp.status == 404
