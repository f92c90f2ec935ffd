"""Authorization matrix: who may call what, and foreign ids look unknown (404)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.factories import Factory, User

ZERO = "00000000-0000-0000-0000-000000000000"


@dataclass
class World:
    owner: User
    intruder: User  # another seller
    shopper: User
    admin: User
    product: dict[str, Any]  # the owner's draft
    variant_id: str


@pytest.fixture
async def world(factory: Factory) -> World:
    owner, intruder = await factory.seller(), await factory.seller()
    product = await factory.product(owner, status="draft")
    return World(owner, intruder, await factory.user(), await factory.admin(), product, product["variantIds"][0])


# (method, path template, JSON body or None)
SELLER_CALLS = [
    ("GET", "/api/v1/seller/products", None),
    ("POST", "/api/v1/seller/products", {"title": "T", "price": 1, "currency": "USD"}),
    ("PATCH", "/api/v1/seller/products/{product}", {"title": "Mine now"}),
    ("POST", "/api/v1/seller/products/{product}/variants", {"sku": "STEAL-1"}),
    ("PATCH", "/api/v1/seller/products/{product}/variants/{variant}", {"stockDelta": -1, "reason": "x"}),
    ("POST", "/api/v1/seller/products/{product}/images", None),
]
ADMIN_CALLS = [
    ("POST", "/api/v1/admin/categories", {"name": "X", "slug": "x"}),
    ("PATCH", "/api/v1/admin/sellers/{seller}", {"kycStatus": "verified"}),
]
# Calls on the owner's resources that another seller must see as unknown.
FOREIGN_CALLS = [
    ("GET", "/api/v1/products/{product}", None),
    ("GET", "/api/v1/products/{product}/variants", None),
    *SELLER_CALLS[2:],
]


def _url(template: str, w: World) -> str:
    return template.format(product=w.product["id"], variant=w.variant_id, seller=w.owner.seller_id)


async def _call(client, method: str, url: str, body: Any, user: User | None) -> int:
    headers = user.headers if user else {}
    if url.endswith("/images"):
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("file", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, filename="a.png")
        resp = await client.request(method, url, data=form, headers=headers)
    else:
        resp = await client.request(method, url, json=body, headers=headers)
    return resp.status


@pytest.mark.parametrize(("method", "path", "body"), SELLER_CALLS + ADMIN_CALLS)
async def test_anonymous_is_401(client, world: World, method: str, path: str, body: Any) -> None:
    assert await _call(client, method, _url(path, world), body, None) == 401


@pytest.mark.parametrize(("method", "path", "body"), SELLER_CALLS)
async def test_plain_user_is_403_on_seller_routes(client, world: World, method: str, path: str, body: Any) -> None:
    assert await _call(client, method, _url(path, world), body, world.shopper) == 403


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize("role", ["shopper", "owner"])
async def test_non_admins_are_403_on_admin_routes(
    client, world: World, method: str, path: str, body: Any, role: str
) -> None:
    assert await _call(client, method, _url(path, world), body, getattr(world, role)) == 403


@pytest.mark.parametrize(("method", "path", "body"), FOREIGN_CALLS)
async def test_another_seller_gets_404_and_changes_nothing(
    client, factory: Factory, world: World, method: str, path: str, body: Any
) -> None:
    assert await _call(client, method, _url(path, world), body, world.intruder) == 404
    product = await (await client.get(f"/api/v1/products/{world.product['id']}", headers=world.owner.headers)).json()
    assert product["title"] == world.product["title"] and product["images"] == []
    assert [v["id"] for v in product["variants"]] == [world.variant_id]
    assert await factory.ledger(world.variant_id) == (10, 10)


async def test_variant_of_another_product_is_404(client, factory: Factory, world: World) -> None:
    # The owner's own variant, addressed under the owner's other product.
    other = await factory.product(world.owner)
    url = f"/api/v1/seller/products/{other['id']}/variants/{world.variant_id}"
    resp = await client.patch(url, json={"color": "Pink"}, headers=world.owner.headers)
    assert resp.status == 404


async def test_owner_and_admin_succeed(client, world: World) -> None:
    for method, path, body in SELLER_CALLS[:5]:
        status = await _call(client, method, _url(path, world), body, world.owner)
        assert status in (200, 201), (method, path, status)
    for method, path, body in ADMIN_CALLS:
        assert await _call(client, method, _url(path, world), body, world.admin) in (200, 201)
    seller = await (await client.get("/api/v1/me", headers=world.owner.headers)).json()
    assert seller["seller"]["kycStatus"] == "verified"


async def test_seller_listing_shows_only_own_products(client, world: World) -> None:
    listed = await (await client.get("/api/v1/seller/products", headers=world.intruder.headers)).json()
    assert listed["items"] == []
    listed = await (await client.get("/api/v1/seller/products", headers=world.owner.headers)).json()
    assert [p["id"] for p in listed["items"]] == [world.product["id"]]


async def test_admin_without_seller_account_is_403_on_seller_routes(client, world: World) -> None:
    for path in ("/api/v1/seller/products", "/api/v1/seller/orders", "/api/v1/seller/coupons",
                 "/api/v1/seller/livestreams"):
        assert (await client.get(path, headers=world.admin.headers)).status == 403, path


async def test_admin_category_and_kyc_errors(client, world: World) -> None:
    h = world.admin.headers
    resp = await client.post("/api/v1/admin/categories", json={"name": "Bags", "slug": "bags"}, headers=h)
    bags = await resp.json()
    resp = await client.post("/api/v1/admin/categories", json={"name": "Totes", "slug": "totes", "parentId": bags["id"]}, headers=h)
    assert resp.status == 201 and (await resp.json())["depth"] == 1
    resp = await client.post("/api/v1/admin/categories", json={"name": "Bags 2", "slug": "bags"}, headers=h)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "slug_taken"
    resp = await client.post("/api/v1/admin/categories", json={"name": "X", "slug": "x", "parentId": ZERO}, headers=h)
    assert resp.status == 400 and "parentId" in (await resp.json())["error"]["details"]["fields"]
    resp = await client.post("/api/v1/admin/categories", json={"name": "X", "slug": "Not A Slug"}, headers=h)
    assert resp.status == 400
    resp = await client.patch(f"/api/v1/admin/sellers/{ZERO}", json={"kycStatus": "verified"}, headers=h)
    assert resp.status == 404
    resp = await client.patch(f"/api/v1/admin/sellers/{world.owner.seller_id}", json={"kycStatus": "ok"}, headers=h)
    assert resp.status == 400
