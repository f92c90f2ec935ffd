"""Seller products: create/edit, variants, stock as ledger events, images."""

from __future__ import annotations

import asyncio
import struct
import zlib

import aiohttp
import pytest

from tests.factories import Factory, User

NEW_PRODUCT = {"title": "Denim jacket", "description": "Stonewashed.", "price": 8900, "currency": "EUR"}


def png_bytes(seed: int = 0) -> bytes:
    """Return a valid 1x1 PNG (the seed changes the pixel, hence the hash)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"\x00" + bytes([seed % 256, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


async def create(client, seller: User, **overrides: object) -> dict:
    resp = await client.post("/api/v1/seller/products", json={**NEW_PRODUCT, **overrides}, headers=seller.headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def add_variant(client, seller: User, product_id: str, **body: object) -> aiohttp.ClientResponse:
    return await client.post(f"/api/v1/seller/products/{product_id}/variants", json=body, headers=seller.headers)


async def test_create_is_a_draft_then_publish(client, factory: Factory) -> None:
    seller = await factory.seller()
    category = await factory.category("outerwear")
    product = await create(client, seller, categoryId=category)
    assert product["status"] == "draft" and product["categoryId"] == category and product["currency"] == "EUR"
    assert (await client.get(f"/api/v1/products/{product['id']}")).status == 404
    resp = await client.patch(
        f"/api/v1/seller/products/{product['id']}", json={"status": "active", "price": 7900}, headers=seller.headers
    )
    assert resp.status == 200 and (await resp.json())["price"] == 7900
    public = await (await client.get(f"/api/v1/products/{product['id']}")).json()
    assert public["status"] == "active" and public["price"] == 7900
    listed = await (await client.get("/api/v1/seller/products", params={"status": "active"}, headers=seller.headers)).json()
    assert [p["id"] for p in listed["items"]] == [product["id"]]


@pytest.mark.parametrize(("body", "field"), [
    ({"title": "", "price": 1, "currency": "USD"}, "title"),
    ({"title": "x", "price": -1, "currency": "USD"}, "price"),
    ({"title": "x", "price": 1.5, "currency": "USD"}, "price"),
    ({"title": "x", "price": 1, "currency": "usd"}, "currency"),
    ({"title": "x", "price": 1, "currency": "USD", "status": "sold"}, "status"),
    ({"title": "x", "price": 1, "currency": "USD", "sellerId": "00000000-0000-0000-0000-000000000000"}, "sellerId"),
    ({"title": "x", "price": 1, "currency": "USD", "categoryId": "fashion"}, "categoryId"),
    ({"title": "x", "price": 1, "currency": "USD", "categoryId": "00000000-0000-0000-0000-000000000000"}, "categoryId"),
    ({"price": 1, "currency": "USD"}, "title"),
])
async def test_product_validation(client, factory: Factory, body: dict, field: str) -> None:
    seller = await factory.seller()
    resp = await client.post("/api/v1/seller/products", json=body, headers=seller.headers)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "validation_error" and field in error["details"]["fields"]


async def test_variant_sku_is_unique_per_seller(client, factory: Factory) -> None:
    a, b = await factory.seller(), await factory.seller()
    pa, pa2, pb = await create(client, a), await create(client, a), await create(client, b)
    assert (await add_variant(client, a, pa["id"], sku="JKT-M", size="M")).status == 201
    resp = await add_variant(client, a, pa2["id"], sku="JKT-M")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "sku_taken"
    assert (await add_variant(client, b, pb["id"], sku="JKT-M")).status == 201  # another seller may


async def test_initial_stock_and_deltas_are_ledger_events(client, factory: Factory) -> None:
    seller = await factory.seller()
    product = await create(client, seller)
    resp = await add_variant(client, seller, product["id"], sku="V1", color="Blue", initialStock=5, priceOverride=100)
    variant = await resp.json()
    assert variant["stock"] == 5 and variant["price"] == 100
    url = f"/api/v1/seller/products/{product['id']}/variants/{variant['id']}"
    for delta, expected in ((3, 8), (-6, 2), (10, 12)):
        resp = await client.patch(url, json={"stockDelta": delta, "reason": "count"}, headers=seller.headers)
        assert resp.status == 200 and (await resp.json())["stock"] == expected
    resp = await client.patch(url, json={"stockDelta": -13, "reason": "oops"}, headers=seller.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "insufficient_stock"
    # A refused change writes nothing, not even the attributes sent with it.
    resp = await client.patch(url, json={"color": "Red", "stockDelta": -13, "reason": "x"}, headers=seller.headers)
    assert resp.status == 409
    assert await factory.ledger(variant["id"]) == (12, 12)
    conn = await factory.conn()
    assert await conn.fetchval("SELECT count(*) FROM inventory_events WHERE variant_id = $1", variant["id"]) == 4
    resp = await client.patch(url, json={"color": "Red", "priceOverride": None}, headers=seller.headers)
    body = await resp.json()
    assert (body["color"], body["price"], body["stock"]) == ("Red", product["price"], 12)


@pytest.mark.parametrize(("body", "field"), [
    ({"stock": 5}, "stock"),
    ({"stockDelta": 3}, "reason"),
    ({"reason": "why"}, "stockDelta"),
    ({"stockDelta": 0, "reason": "nothing"}, "stockDelta"),
    ({"stockDelta": 1.5, "reason": "half"}, "stockDelta"),
    ({}, "body"),
])
async def test_variant_patch_validation(client, factory: Factory, body: dict, field: str) -> None:
    seller = await factory.seller()
    product = await factory.product(seller)
    url = f"/api/v1/seller/products/{product['id']}/variants/{product['variantIds'][0]}"
    resp = await client.patch(url, json=body, headers=seller.headers)
    assert resp.status == 400, await resp.text()
    fields = (await resp.json())["error"]["details"]["fields"]
    assert any(key.startswith(field) or field == "body" for key in fields), fields


async def test_racing_removals_never_oversell_and_match_the_ledger(client, factory: Factory) -> None:
    seller = await factory.seller()
    product = await factory.product(seller, stock=10)
    variant_id = product["variantIds"][0]
    url = f"/api/v1/seller/products/{product['id']}/variants/{variant_id}"

    async def change(delta: int) -> int:
        resp = await client.patch(url, json={"stockDelta": delta, "reason": "race"}, headers=seller.headers)
        return resp.status

    # 30 removals of 1 or 2 and 5 additions of 1 race for 10 units.
    deltas = [-1, -2] * 15 + [1] * 5
    statuses = await asyncio.gather(*(change(d) for d in deltas))
    assert set(statuses) <= {200, 409}
    accepted = sum(d for d, s in zip(deltas, statuses, strict=True) if s == 200)
    stock, ledger = await factory.ledger(variant_id)
    assert stock >= 0 and stock == ledger == 10 + accepted
    assert statuses.count(409) > 0  # the race was real: some removals were refused


async def upload(client, seller: User, product_id: str, data: bytes, filename: str = "x.png",
                 content_type: str = "image/png") -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type=content_type)
    return await client.post(f"/api/v1/seller/products/{product_id}/images", data=form, headers=seller.headers)


async def test_image_upload_is_stored_once_and_served(client, factory: Factory, settings) -> None:
    seller = await factory.seller()
    product = await factory.product(seller)
    image = png_bytes(1)
    resp = await upload(client, seller, product["id"], image, filename="photo.gif", content_type="image/gif")
    assert resp.status == 201, await resp.text()
    images = (await resp.json())["images"]
    assert len(images) == 1 and images[0].startswith("/uploads/") and images[0].endswith(".png")
    resp = await upload(client, seller, product["id"], image)  # same bytes: same name, listed once
    assert (await resp.json())["images"] == images
    served = await client.get(images[0])
    assert served.status == 200 and served.headers["Content-Type"] == "image/png"
    assert await served.read() == image
    assert len(list((settings.data_dir / "uploads").iterdir())) == 1
    public = await (await client.get(f"/api/v1/products/{product['id']}")).json()
    assert public["images"] == images


@pytest.mark.parametrize("data", [b"GIF89a" + b"\x00" * 20, b"<svg xmlns='http://www.w3.org/2000/svg'/>", b""])
async def test_non_images_are_415_whatever_their_name(client, factory: Factory, data: bytes) -> None:
    seller = await factory.seller()
    product = await factory.product(seller)
    resp = await upload(client, seller, product["id"], data, filename="photo.png", content_type="image/png")
    assert resp.status == 415


async def test_large_upload_is_413_and_json_is_415(client, factory: Factory, settings) -> None:
    seller = await factory.seller()
    product = await factory.product(seller)
    big = png_bytes() + b"\x00" * settings.max_upload_bytes
    assert (await upload(client, seller, product["id"], big)).status == 413
    resp = await client.post(f"/api/v1/seller/products/{product['id']}/images", json={}, headers=seller.headers)
    assert resp.status == 415
    form = aiohttp.FormData()
    form.add_field("other", png_bytes(), filename="a.png")
    resp = await client.post(f"/api/v1/seller/products/{product['id']}/images", data=form, headers=seller.headers)
    assert resp.status == 400


async def test_unknown_upload_names_are_404(client) -> None:
    for name in ("x.png", "../../etc/passwd", "a" * 64 + ".png"):
        assert (await client.get(f"/uploads/{name}")).status == 404
