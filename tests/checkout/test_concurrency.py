"""Races, actually raced over HTTP: no oversell, exact coupon limits, one session per key.

Every test ends by asserting the inventory invariant (and the admin endpoint agrees).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg

from server.keys import SALES
from tests.checkout.conftest import assert_inventory_ok, checkout, make_shop, stock_of
from tests.factories import Factory, make_buyers, make_cart, make_coupon


async def _admin_check(client, factory: Factory) -> None:  # type: ignore[no-untyped-def]
    admin = await factory.admin()
    resp = await client.get("/api/v1/admin/inventory/check", headers=admin.headers)
    assert resp.status == 200
    report = await resp.json()
    assert report["ok"] and report["variants"] >= 1, report


async def test_2000_buyers_100_units_exactly_100_holds(client, factory: Factory, clean_db: str) -> None:
    shop = await make_shop(factory, stock=100)
    buyers = await make_buyers(factory, 2000)
    item = shop.item(1)

    async def attempt(i: int) -> int:
        user, address = buyers[i]
        resp = await checkout(client, user, {"addressId": address, "items": [item]}, f"drop-{i}")
        await resp.read()
        return resp.status

    statuses = Counter(await asyncio.gather(*(attempt(i) for i in range(len(buyers)))))
    assert statuses == {201: 100, 409: 1900}
    assert await stock_of(factory, item["variantId"]) == 0
    conn = await factory.conn()
    assert await conn.fetchval("SELECT count(*) FROM stock_holds WHERE status = 'held'") == 100
    assert await conn.fetchval("SELECT count(*) FROM orders") == 100
    await assert_inventory_ok(clean_db)
    await _admin_check(client, factory)


async def test_coupon_limited_to_10_under_200_concurrent_redemptions(client, factory: Factory, clean_db: str) -> None:
    shop = await make_shop(factory, stock=1000)
    coupon = await make_coupon(factory, usage_limit=10)
    buyers = await make_buyers(factory, 200)

    async def attempt(i: int) -> tuple[int, str | None]:
        user, address = buyers[i]
        body = {"addressId": address, "items": [shop.item(1)], "couponCode": coupon["code"]}
        resp = await checkout(client, user, body, f"coupon-{i}")
        data = await resp.json()
        return resp.status, data.get("error", {}).get("code")

    results = Counter(await asyncio.gather(*(attempt(i) for i in range(200))))
    assert results == {(201, None): 10, (409, "coupon_invalid"): 190}
    conn = await factory.conn()
    assert await conn.fetchval("SELECT used_count FROM coupons WHERE id = $1", coupon["id"]) == 10
    assert await conn.fetchval("SELECT count(*) FROM coupon_redemptions WHERE status = 'held'") == 10
    assert await stock_of(factory, shop.product["variantIds"][0]) == 990
    await assert_inventory_ok(clean_db)


async def test_same_cart_same_key_concurrently_gives_one_session(client, factory: Factory, clean_db: str) -> None:
    shop = await make_shop(factory, stock=10)
    await make_cart(factory, shop.buyer, [(shop.product, 0, 2)])

    async def attempt() -> dict:
        resp = await checkout(client, shop.buyer, {"addressId": shop.address_id}, "cart-key")
        assert resp.status == 201, await resp.text()
        return await resp.json()

    sessions = await asyncio.gather(*(attempt() for _ in range(10)))
    assert all(s == sessions[0] for s in sessions)
    conn = await factory.conn()
    assert await conn.fetchval("SELECT count(*) FROM payments") == 1
    assert await stock_of(factory, shop.product["variantIds"][0]) == 8
    await assert_inventory_ok(clean_db)


async def test_holds_race_with_cancel_and_expiry(client, factory: Factory, clean_db: str) -> None:
    """Buyers cancel while others check out and the sweep expires holds: the ledger holds."""
    from server.payments import sweep_once

    shop = await make_shop(factory, stock=30, variants=2)
    buyers = await make_buyers(factory, 60)
    pool = await asyncpg.create_pool(clean_db, min_size=1, max_size=5)

    async def attempt(i: int) -> None:
        user, address = buyers[i]
        items = [shop.item(1, index=0), shop.item(1, index=1)] if i % 2 else [shop.item(2, index=i % 2)]
        resp = await checkout(client, user, {"addressId": address, "items": items}, f"mix-{i}")
        if resp.status != 201:
            return
        session = await resp.json()
        if i % 3 == 0:
            await client.post(f"/api/v1/me/orders/{session['orderIds'][0]}/cancel", headers=user.headers)
        elif i % 3 == 1:
            await pool.execute("UPDATE payments SET expires_at = now() WHERE id = $1", session["paymentId"])

    await asyncio.gather(*(attempt(i) for i in range(60)), sweep_once(client.app), sweep_once(client.app))
    await pool.close()
    await sweep_once(client.app)
    await assert_inventory_ok(clean_db)
    conn = await factory.conn()
    assert await conn.fetchval("SELECT count(*) FROM stock_holds WHERE status = 'held' AND expires_at <= now()") == 0


async def test_concurrent_sales_are_written_in_groups_and_fail_alone(client, factory: Factory, clean_db: str) -> None:
    """Sales of one variant raced: written a group at a time, each sale kept or undone on its own.

    There is one unit more than the buyers with their own address, so every stranger's
    sale is decided while stock remains, whichever order the server takes them in
    (which sales a group refuses for stock is shown in test_place_checkouts.py).
    """
    shop = await make_shop(factory, stock=36)
    buyers = await make_buyers(factory, 40)
    (_, strangers_address), = await make_buyers(factory, 1)
    item = shop.item(1)

    async def attempt(i: int) -> tuple[int, dict]:
        user, address = buyers[i]
        if i % 8 == 0:  # someone else's address: this sale alone is refused
            address = strangers_address
        resp = await checkout(client, user, {"addressId": address, "items": [item]}, f"group-{i}")
        return resp.status, await resp.json()

    results = await asyncio.gather(*(attempt(i) for i in range(40)), attempt(1))
    assert results[1] == results[-1]  # the same key twice, maybe in one group: one answer
    statuses = [status for status, _ in results[:-1]]
    assert statuses == [404 if i % 8 == 0 else 201 for i in range(40)], statuses
    assert all(body["error"]["code"] == "not_found" for status, body in results if status == 404)
    assert client.server.app[SALES].groups >= 1, "the sales were written one by one"
    assert await stock_of(factory, item["variantId"]) == 1
    conn = await factory.conn()
    assert await conn.fetchval("SELECT count(*) FROM stock_holds WHERE status = 'held'") == 35
    assert await conn.fetchval("SELECT count(*) FROM payments") == 35
    await assert_inventory_ok(clean_db)
