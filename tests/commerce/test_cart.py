"""The server-side cart: validation, merging, stock, currency, limits, totals, races."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from commerce import cart as cart_domain
from commerce.errors import NotFound
from server.keys import DB
from tests.factories import Factory

CART = "/api/v1/me/cart"
ITEMS = "/api/v1/me/cart/items"


def line(product, qty=1, variant=0):
    return {"productId": product["id"], "variantId": product["variantIds"][variant], "qty": qty}


async def test_empty_cart_is_created_lazily_once(client, factory: Factory) -> None:
    user = await factory.user()
    first = await (await client.get(CART, headers=user.headers)).json()
    second = await (await client.get(CART, headers=user.headers)).json()
    assert first["id"] == second["id"]
    assert first == {**first, "items": [], "subtotal": 0, "discount": 0, "total": 0,
                     "currency": None, "coupon": None}


async def test_add_merges_quantities_and_computes_totals(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller, stock=10, variants=2, price=1250)
    resp = await client.post(ITEMS, json=line(product, 2), headers=user.headers)
    assert resp.status == 200, await resp.text()
    resp = await client.post(ITEMS, json=line(product, 3), headers=user.headers)
    await client.post(ITEMS, json=line(product, 1, variant=1), headers=user.headers)
    cart = await (await client.get(CART, headers=user.headers)).json()
    assert [i["qty"] for i in cart["items"]] == [5, 1]
    first = cart["items"][0]
    assert first["priceAtAdd"] == 1250 and first["stock"] == 10 and first["sku"].startswith("SKU-")
    assert first["title"] == product["title"] and first["color"] == "Black"
    assert (cart["subtotal"], cart["discount"], cart["total"], cart["currency"]) == (7500, 0, 7500, "USD")


async def test_price_at_add_uses_variant_override(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller, price=1000)
    conn = await factory.conn()
    await conn.execute("UPDATE product_variants SET price_override = 777 WHERE id = $1", product["variantIds"][0])
    cart = await (await client.post(ITEMS, json=line(product, 2), headers=user.headers)).json()
    assert cart["items"][0]["priceAtAdd"] == 777 and cart["total"] == 1554


async def test_validation_names_fields(client, factory: Factory) -> None:
    user = await factory.user()
    for body, field in (
        ({"productId": "x", "variantId": str(uuid.uuid4()), "qty": 1}, "productId"),
        ({"productId": str(uuid.uuid4()), "variantId": str(uuid.uuid4()), "qty": 0}, "qty"),
        ({"productId": str(uuid.uuid4()), "variantId": str(uuid.uuid4()), "qty": 100}, "qty"),
        ({"productId": str(uuid.uuid4()), "variantId": str(uuid.uuid4())}, "qty"),
        ({"productId": str(uuid.uuid4()), "variantId": str(uuid.uuid4()), "qty": 1, "priceAtAdd": 1}, "priceAtAdd"),
    ):
        resp = await client.post(ITEMS, json=body, headers=user.headers)
        assert resp.status == 400, body
        error = (await resp.json())["error"]
        assert error["code"] == "validation_error" and field in error["details"]["fields"], error
    resp = await client.patch(f"{ITEMS}/{uuid.uuid4()}", json={"qty": "2"}, headers=user.headers)
    assert resp.status == 400 and "qty" in (await resp.json())["error"]["details"]["fields"]
    assert (await client.get(CART)).status == 401


async def test_unknown_foreign_or_inactive_variant_is_404(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller)
    other = await factory.product(seller)
    draft = await factory.product(seller, status="draft")
    for body in (
        {"productId": product["id"], "variantId": other["variantIds"][0], "qty": 1},
        {"productId": product["id"], "variantId": str(uuid.uuid4()), "qty": 1},
        line(draft),
    ):
        resp = await client.post(ITEMS, json=body, headers=user.headers)
        assert resp.status == 404, body
    cart = await (await client.get(CART, headers=user.headers)).json()
    assert cart["items"] == []


async def test_stock_is_checked_on_add_and_patch_without_holding(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller, stock=3)
    resp = await client.post(ITEMS, json=line(product, 4), headers=user.headers)
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "out_of_stock" and error["details"]["available"] == 3
    cart = await (await client.post(ITEMS, json=line(product, 2), headers=user.headers)).json()
    # Merged quantity counts: 2 in the cart + 2 more is over the 3 in stock.
    resp = await client.post(ITEMS, json=line(product, 2), headers=user.headers)
    assert resp.status == 409 and (await resp.json())["error"]["details"]["requested"] == 4
    item_id = cart["items"][0]["id"]
    resp = await client.patch(f"{ITEMS}/{item_id}", json={"qty": 5}, headers=user.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "out_of_stock"
    resp = await client.patch(f"{ITEMS}/{item_id}", json={"qty": 3}, headers=user.headers)
    assert resp.status == 200 and (await resp.json())["items"][0]["qty"] == 3
    conn = await factory.conn()
    assert await conn.fetchval("SELECT stock FROM product_variants WHERE id = $1", product["variantIds"][0]) == 3


async def test_one_currency_per_cart(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    usd = await factory.product(seller, currency="USD")
    eur = await factory.product(seller, currency="EUR")
    cart = await (await client.post(ITEMS, json=line(usd), headers=user.headers)).json()
    resp = await client.post(ITEMS, json=line(eur), headers=user.headers)
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "currency_mismatch" and error["details"]["cartCurrency"] == "USD"
    # Emptying the cart frees its currency.
    resp = await client.delete(f"{ITEMS}/{cart['items'][0]['id']}", headers=user.headers)
    assert resp.status == 200 and (await resp.json())["currency"] is None
    cart = await (await client.post(ITEMS, json=line(eur), headers=user.headers)).json()
    assert cart["currency"] == "EUR"


async def test_line_quantity_and_line_count_limits(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller, stock=500)
    await client.post(ITEMS, json=line(product, 99), headers=user.headers)
    resp = await client.post(ITEMS, json=line(product, 1), headers=user.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "qty_limit"

    many = await factory.product(seller, stock=5, variants=51)
    for i in range(49):  # 1 line already in the cart
        resp = await client.post(ITEMS, json=line(many, 1, variant=i), headers=user.headers)
        assert resp.status == 200
    resp = await client.post(ITEMS, json=line(many, 1, variant=50), headers=user.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "cart_full"
    # Adding to an existing line still works when the cart is full.
    resp = await client.post(ITEMS, json=line(many, 1, variant=0), headers=user.headers)
    assert resp.status == 200 and len((await resp.json())["items"]) == 50


async def test_another_users_cart_item_is_404(client, factory: Factory) -> None:
    seller, alice, bob = await factory.seller(), await factory.user(), await factory.user()
    product = await factory.product(seller)
    cart = await (await client.post(ITEMS, json=line(product), headers=alice.headers)).json()
    item = cart["items"][0]["id"]
    assert (await client.patch(f"{ITEMS}/{item}", json={"qty": 2}, headers=bob.headers)).status == 404
    assert (await client.delete(f"{ITEMS}/{item}", headers=bob.headers)).status == 404
    assert (await client.delete(f"{ITEMS}/not-a-uuid", headers=bob.headers)).status == 404
    cart = await (await client.get(CART, headers=alice.headers)).json()
    assert cart["items"][0]["qty"] == 1
    # Deleting twice: the second is 404.
    assert (await client.delete(f"{ITEMS}/{item}", headers=alice.headers)).status == 200
    assert (await client.delete(f"{ITEMS}/{item}", headers=alice.headers)).status == 404


async def test_rls_hides_other_carts_even_without_where(client, factory: Factory) -> None:
    seller, alice, bob = await factory.seller(), await factory.user(), await factory.user()
    product = await factory.product(seller)
    await client.post(ITEMS, json=line(product), headers=alice.headers)
    async with client.app[DB].transaction(bob.id) as conn:
        assert await conn.fetchval("SELECT count(*) FROM cart_items") == 0
        assert await conn.fetchval("SELECT count(*) FROM carts WHERE user_id = $1", alice.id) == 0


async def test_domain_add_item_for_realtime(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller, stock=5)
    async with client.app[DB].transaction(user.id) as conn:
        result = await cart_domain.add_item(conn, user.id, product["id"], product["variantIds"][0], 2)
    assert result["items"][0]["qty"] == 2 and result["total"] == 2000
    async with client.app[DB].transaction(user.id) as conn:
        try:
            await cart_domain.add_item(conn, user.id, "garbage", product["variantIds"][0], 1)
        except NotFound:
            pass
        else:
            raise AssertionError("a malformed id must be NotFound")


async def test_concurrent_adds_make_one_cart_and_one_line(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller, stock=1000)
    n = 25
    responses = await asyncio.gather(*(
        client.post(ITEMS, json=line(product, 2), headers=user.headers) for _ in range(n)
    ))
    assert [r.status for r in responses] == [200] * n
    conn: asyncpg.Connection = await factory.conn()
    carts = await conn.fetch("SELECT id FROM carts WHERE user_id = $1", user.id)
    assert len(carts) == 1
    lines = await conn.fetch("SELECT qty FROM cart_items WHERE cart_id = $1", carts[0]["id"])
    assert [r["qty"] for r in lines] == [2 * n]


async def test_concurrent_adds_never_exceed_stock(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller, stock=7)
    responses = await asyncio.gather(*(
        client.post(ITEMS, json=line(product, 1), headers=user.headers) for _ in range(12)
    ))
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 7 + [409] * 5
    cart = await (await client.get(CART, headers=user.headers)).json()
    assert cart["items"][0]["qty"] == 7


async def test_integral_float_qty_and_nul_coupon_code_are_not_server_errors(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller)
    resp = await client.post(ITEMS, json={**line(product), "qty": 3.0}, headers=user.headers)
    assert resp.status == 200 and (await resp.json())["items"][0]["qty"] == 3
    resp = await client.post("/api/v1/me/cart/apply-coupon", json={"code": "A\u0000B"}, headers=user.headers)
    assert resp.status == 400


async def test_concurrent_first_reads_create_one_cart(client, factory: Factory) -> None:
    user = await factory.user()
    responses = await asyncio.gather(*(client.get(CART, headers=user.headers) for _ in range(15)))
    assert {r.status for r in responses} == {200}
    assert len({(await r.json())["id"] for r in responses}) == 1
    conn = await factory.conn()
    assert await conn.fetchval("SELECT count(*) FROM carts WHERE user_id = $1", user.id) == 1
