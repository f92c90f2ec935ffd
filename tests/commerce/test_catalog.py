"""Public catalog: visibility, search ranking, category subtrees, pagination, demo data."""

from __future__ import annotations

import base64
import json

import asyncpg
import pytest

from commerce import catalog
from tests.factories import Factory


async def _set(factory: Factory, product_id: str, **columns: object) -> None:
    conn = await factory.conn()
    for column, value in columns.items():
        await conn.execute(f"UPDATE products SET {column} = $2 WHERE id = $1", product_id, value)


async def test_product_detail_follows_the_contract(client, factory: Factory) -> None:
    seller = await factory.seller()
    product = await factory.product(seller, stock=7, variants=2, price=2500)
    resp = await client.get(f"/api/v1/products/{product['id']}")
    assert resp.status == 200
    body = await resp.json()
    assert body["id"] == product["id"] and body["price"] == 2500 and body["currency"] == "USD"
    assert body["sellerId"] == seller.seller_id
    assert body["seller"] == {"id": seller.seller_id, "displayName": f"Shop of {seller.email}"}
    assert body["status"] == "active" and body["images"] == [] and body["categoryId"] is None
    assert [v["stock"] for v in body["variants"]] == [7, 7]
    assert {v["price"] for v in body["variants"]} == {2500}
    resp = await client.get(f"/api/v1/products/{product['id']}/variants")
    assert [v["id"] for v in (await resp.json())["items"]] == product["variantIds"]


async def test_variant_price_is_override_or_product_price(client, factory: Factory) -> None:
    seller = await factory.seller()
    product = await factory.product(seller, variants=2, price=1000)
    conn = await factory.conn()
    await conn.execute("UPDATE product_variants SET price_override = 750 WHERE id = $1", product["variantIds"][0])
    body = await (await client.get(f"/api/v1/products/{product['id']}")).json()
    prices = {v["id"]: (v["price"], v["priceOverride"]) for v in body["variants"]}
    assert prices == {product["variantIds"][0]: (750, 750), product["variantIds"][1]: (1000, None)}


@pytest.mark.parametrize("status", ["draft", "archived"])
async def test_non_active_products_are_visible_only_to_their_seller(client, factory: Factory, status: str) -> None:
    owner, other, shopper = await factory.seller(), await factory.seller(), await factory.user()
    product = await factory.product(owner, status=status)
    for who in (None, other, shopper):
        headers = who.headers if who else {}
        assert (await client.get(f"/api/v1/products/{product['id']}", headers=headers)).status == 404
        assert (await client.get(f"/api/v1/products/{product['id']}/variants", headers=headers)).status == 404
    resp = await client.get(f"/api/v1/products/{product['id']}", headers=owner.headers)
    assert resp.status == 200 and (await resp.json())["status"] == status
    listed = await (await client.get("/api/v1/products", headers=owner.headers)).json()
    assert listed["items"] == []


async def test_unknown_and_malformed_ids_are_404(client) -> None:
    assert (await client.get("/api/v1/products/00000000-0000-0000-0000-000000000000")).status == 404
    assert (await client.get("/api/v1/products/nope")).status == 404


async def test_search_ranks_title_matches_first(client, factory: Factory) -> None:
    seller = await factory.seller()
    in_title = await factory.product(seller, title="Linen shirt", description="Cool in summer.")
    in_description = await factory.product(seller, title="Summer top", description="Made of linen.")
    await factory.product(seller, title="Wool socks", description="Warm.")
    resp = await client.get("/api/v1/products", params={"search": "linen"})
    ids = [p["id"] for p in (await resp.json())["items"]]
    assert ids == [in_title["id"], in_description["id"]]
    # websearch syntax: quoted phrases and exclusions.
    resp = await client.get("/api/v1/products", params={"search": "summer -linen"})
    assert [p["id"] for p in (await resp.json())["items"]] == []
    resp = await client.get("/api/v1/products", params={"search": '"wool socks"'})
    assert len((await resp.json())["items"]) == 1
    # Only stop words: nothing matches, and it is not an error.
    resp = await client.get("/api/v1/products", params={"search": "the"})
    assert resp.status == 200 and (await resp.json())["items"] == []


async def test_category_filter_includes_subcategories(client, factory: Factory) -> None:
    seller = await factory.seller()
    fashion = await factory.category("fashion")
    tops = await factory.category("tops", parent=fashion)
    shirts = await factory.category("shirts", parent=tops)
    home = await factory.category("home")
    products = {}
    for name, category in (("f", fashion), ("t", tops), ("s", shirts), ("h", home)):
        products[name] = (await factory.product(seller))["id"]
        await _set(factory, products[name], category_id=category)
    await factory.product(seller)  # no category

    async def listed(category: str) -> set[str]:
        resp = await client.get("/api/v1/products", params={"category": category})
        assert resp.status == 200
        return {p["id"] for p in (await resp.json())["items"]}

    assert await listed("fashion") == {products["f"], products["t"], products["s"]}
    assert await listed(tops) == {products["t"], products["s"]}  # by id as well as slug
    assert await listed("shirts") == {products["s"]}
    assert await listed("home") == {products["h"]}
    assert await listed("no-such-category") == set()


async def test_seller_filter_and_bad_seller_id(client, factory: Factory) -> None:
    a, b = await factory.seller(), await factory.seller()
    pa = await factory.product(a)
    await factory.product(b)
    resp = await client.get("/api/v1/products", params={"seller": a.seller_id})
    assert [p["id"] for p in (await resp.json())["items"]] == [pa["id"]]
    resp = await client.get("/api/v1/products", params={"seller": "not-an-id"})
    assert resp.status == 400
    assert "seller" in (await resp.json())["error"]["details"]["fields"]


async def _all_pages(client, params: dict[str, str]) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(50):
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        resp = await client.get("/api/v1/products", params=query)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        assert len(page["items"]) <= int(params["limit"])
        ids += [p["id"] for p in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


async def test_pagination_has_no_duplicates_or_gaps(client, factory: Factory) -> None:
    seller = await factory.seller()
    made = [(await factory.product(seller, title=f"Lamp {i}"))["id"] for i in range(23)]
    conn = await factory.conn()
    # Many products sharing one created_at: the id must break the tie.
    await conn.execute("UPDATE products SET created_at = '2024-01-01T00:00:00Z' WHERE title LIKE 'Lamp 1%'")
    ids = await _all_pages(client, {"limit": "5"})
    assert len(ids) == len(set(ids)) == 23 and set(ids) == set(made)
    # Same for the ranked order (equal ranks everywhere).
    ids = await _all_pages(client, {"limit": "4", "search": "lamp"})
    assert len(ids) == len(set(ids)) == 23


async def test_new_products_do_not_shift_later_pages(client, factory: Factory) -> None:
    seller = await factory.seller()
    for i in range(6):
        await factory.product(seller, title=f"Vase {i}")
    first = await (await client.get("/api/v1/products", params={"limit": "3"})).json()
    await factory.product(seller, title="Newer vase")  # lands before page 1, not on page 2
    second = await (await client.get("/api/v1/products", params={"limit": "3", "cursor": first["nextCursor"]})).json()
    seen = [p["id"] for p in first["items"] + second["items"]]
    assert len(set(seen)) == 6 and second["nextCursor"] is None


@pytest.mark.parametrize("cursor", [
    "garbage!!", base64.urlsafe_b64encode(b"[1,2]").decode(),
    base64.urlsafe_b64encode(json.dumps({"k": "newest", "v": ["yesterday", "x"]}).encode()).decode(),
    base64.urlsafe_b64encode(json.dumps({"k": "ranked", "v": [0.5, "00000000-0000-0000-0000-000000000000"]}).encode()).decode(),
])
async def test_bad_cursor_is_400(client, cursor: str) -> None:
    resp = await client.get("/api/v1/products", params={"cursor": cursor})
    assert resp.status == 400
    assert (await resp.json())["error"]["details"]["fields"] == {"cursor": "invalid cursor"}


@pytest.mark.parametrize("limit", ["0", "101", "x"])
async def test_limit_is_bounded(client, limit: str) -> None:
    resp = await client.get("/api/v1/products", params={"limit": limit})
    assert resp.status == 400
    assert "limit" in (await resp.json())["error"]["details"]["fields"]


async def test_categories_are_listed_parents_first(client, factory: Factory) -> None:
    home = await factory.category("home")
    await factory.category("kitchen", parent=home)
    fashion = await factory.category("fashion")
    await factory.category("tops", parent=fashion)
    body = await (await client.get("/api/v1/categories")).json()
    assert [(c["slug"], c["depth"]) for c in body["items"]] == [
        ("fashion", 0), ("tops", 1), ("home", 0), ("kitchen", 1)]
    assert body["items"][1]["parentId"] == fashion


async def test_demo_data_shows_in_the_catalog(client, clean_db: str, settings) -> None:
    from server.demo import seed_demo

    await seed_demo(clean_db, settings)
    body = await (await client.get("/api/v1/categories")).json()
    assert {c["slug"] for c in body["items"]} == {"fashion", "tops", "shoes", "home", "kitchen"}
    fashion = await (await client.get("/api/v1/products", params={"category": "fashion"})).json()
    assert {p["title"] for p in fashion["items"]} == {"Women solid top", "Canvas sneakers", "Limited drop hoodie"}
    found = await (await client.get("/api/v1/products", params={"search": "hoodie"})).json()
    assert [p["title"] for p in found["items"]] == ["Limited drop hoodie"]
    assert sum(v["stock"] for v in found["items"][0]["variants"]) == 20


async def test_get_product_function_for_the_realtime_layer(factory: Factory, client) -> None:
    seller = await factory.seller()
    draft = await factory.product(seller, status="draft")
    conn: asyncpg.Connection = await factory.conn()
    with pytest.raises(catalog.NotFound):
        await catalog.get_product(conn, draft["id"])
    product = await catalog.get_product(conn, draft["id"], viewer_seller_id=seller.seller_id)
    assert product["id"] == draft["id"] and len(product["variants"]) == 1


async def test_search_matches_prefixes_and_forgives_typos(client, factory: Factory) -> None:
    seller = await factory.seller()
    sneakers = await factory.product(seller, title="Canvas sneakers", description="Rubber sole.")
    await factory.product(seller, title="Ceramic pour-over set", description="Two cups.")

    async def found(**params: str) -> list[str]:
        resp = await client.get("/api/v1/products", params=params)
        assert resp.status == 200, await resp.text()
        return [p["id"] for p in (await resp.json())["items"]]

    assert await found(q="sneak") == [sneakers["id"]]  # a prefix
    assert await found(q="Sneakers") == [sneakers["id"]]
    assert await found(q="snekers") == [sneakers["id"]]  # a typo
    assert await found(q="canvas snekers") == [sneakers["id"]]
    assert await found(search="sneak") == [sneakers["id"]]  # the older parameter name
    assert await found(q="bicycle") == []
    # Websearch syntax asks for exact words: no typo tolerance there.
    assert await found(q='"snekers"') == []


async def test_unknown_query_parameters_are_refused(client) -> None:
    resp = await client.get("/api/v1/products", params={"serch": "sneak", "limit": "5"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "validation_error"
    assert "serch" in error["message"] and "serch" in error["details"]["fields"]
