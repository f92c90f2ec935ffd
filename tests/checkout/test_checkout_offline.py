"""Checkout with the offline provider: sessions, idempotency, coupons, confirm, cancel."""

from __future__ import annotations

from commerce.payments.offline import luhn_ok
from tests.checkout.conftest import Shop, assert_inventory_ok, checkout, make_shop, stock_of
from tests.factories import Factory, make_address, make_cart, make_coupon

CARD_OK = {"cardNumber": "4242 4242 4242 4242", "expMonth": 12, "expYear": 2030, "cvc": "123"}
CARD_DECLINED = {**CARD_OK, "cardNumber": "4000000000000002"}


async def test_buy_now_holds_stock_and_offline_card_pays(client, factory: Factory, shop: Shop, clean_db: str) -> None:
    body = {"addressId": shop.address_id, "items": [shop.item(qty=3)]}
    resp = await checkout(client, shop.buyer, body, "k1")
    assert resp.status == 201, await resp.text()
    session = await resp.json()
    assert session["provider"] == "offline" and session["amount"] == 3000
    assert session["currency"] == "USD" and len(session["orderIds"]) == 1
    assert await stock_of(factory, shop.product["variantIds"][0]) == 7

    resp = await client.post(f"/api/v1/payments/{session['paymentIntentId']}/confirm",
                             json=CARD_OK, headers=shop.buyer.headers)
    assert resp.status == 200, await resp.text()
    order = await (await client.get(f"/api/v1/me/orders/{session['orderIds'][0]}", headers=shop.buyer.headers)).json()
    assert order["status"] == "paid" and order["total"] == 3000
    assert order["items"][0]["qty"] == 3 and order["shippingAddress"]["city"] == "Springfield"
    # Confirming again is refused; the stock stays sold.
    resp = await client.post(f"/api/v1/payments/{session['paymentIntentId']}/confirm",
                             json=CARD_OK, headers=shop.buyer.headers)
    assert resp.status == 409
    assert await stock_of(factory, shop.product["variantIds"][0]) == 7
    await assert_inventory_ok(clean_db)


async def test_same_key_same_session_and_different_body_conflicts(client, factory: Factory, shop: Shop) -> None:
    body = {"addressId": shop.address_id, "items": [shop.item()]}
    first = await (await checkout(client, shop.buyer, body, "same")).json()
    resp = await checkout(client, shop.buyer, {"items": [shop.item()], "addressId": shop.address_id}, "same")
    assert resp.status == 201 and await resp.json() == first
    resp = await checkout(client, shop.buyer, {**body, "items": [shop.item(qty=2)]}, "same")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "idempotency_conflict"
    assert await stock_of(factory, shop.product["variantIds"][0]) == 9
    # The key is per user: another user's identical key is their own session.
    other = await factory.user()
    address = await make_address(factory, other)
    resp = await checkout(client, other, {"addressId": address, "items": [shop.item()]}, "same")
    assert resp.status == 201 and (await resp.json())["paymentIntentId"] != first["paymentIntentId"]


async def test_validation_and_not_found(client, factory: Factory, shop: Shop) -> None:
    item = shop.item()
    resp = await client.post("/api/v1/checkout/session", json={"addressId": shop.address_id, "items": [item]},
                             headers=shop.buyer.headers)
    assert resp.status == 400  # no Idempotency-Key
    resp = await checkout(client, shop.buyer, {"addressId": shop.address_id, "items": [{**item, "qty": 0}]}, "v1")
    assert resp.status == 400
    resp = await checkout(client, shop.buyer, {"addressId": shop.address_id, "items": [item], "total": 1}, "v2")
    assert resp.status == 400  # no mass assignment of totals
    other = await factory.user()
    foreign = await make_address(factory, other)
    resp = await checkout(client, shop.buyer, {"addressId": foreign, "items": [item]}, "v3")
    assert resp.status == 404
    resp = await checkout(client, shop.buyer, {"addressId": shop.address_id, "items": [{**item, "variantId": "nope"}]}, "v4")
    assert resp.status == 404
    resp = await checkout(client, shop.buyer, {"addressId": shop.address_id, "items": [{**item, "qty": 11}]}, "v5")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "out_of_stock"
    resp = await checkout(client, shop.buyer, {"addressId": shop.address_id}, "v6")
    assert resp.status == 400  # empty cart
    assert await stock_of(factory, shop.product["variantIds"][0]) == 10


async def test_all_or_nothing_across_variants(client, factory: Factory, clean_db: str) -> None:
    shop = await make_shop(factory, stock=2, variants=2)
    body = {"addressId": shop.address_id, "items": [shop.item(qty=1, index=0), shop.item(qty=3, index=1)]}
    resp = await checkout(client, shop.buyer, body, "aon")
    assert resp.status == 409
    assert (await resp.json())["error"]["details"]["variantIds"] == [shop.product["variantIds"][1]]
    assert [await stock_of(factory, v) for v in shop.product["variantIds"]] == [2, 2]
    # A retry with the same key (after the failure) is a fresh attempt.
    resp = await checkout(client, shop.buyer, {**body, "items": [shop.item(qty=1, index=0), shop.item(qty=2, index=1)]}, "aon")
    assert resp.status == 201  # the failed attempt rolled its key back with everything else
    assert [await stock_of(factory, v) for v in shop.product["variantIds"]] == [1, 0]
    await assert_inventory_ok(clean_db)


async def test_cart_checkout_two_sellers_coupon_split_and_decline_releases(client, factory: Factory, clean_db: str) -> None:
    a = await make_shop(factory, stock=5, price=1000)
    b_seller = await factory.seller()
    b_product = await factory.product(b_seller, stock=5, price=3000)
    coupon = await make_coupon(factory, value=10)
    await make_cart(factory, a.buyer, [(a.product, 0, 2), (b_product, 0, 1)], coupon_id=coupon["id"])
    resp = await checkout(client, a.buyer, {"addressId": a.address_id}, "cart1")
    assert resp.status == 201, await resp.text()
    session = await resp.json()
    assert len(session["orderIds"]) == 2 and session["amount"] == 4500
    orders = [await (await client.get(f"/api/v1/me/orders/{o}", headers=a.buyer.headers)).json()
              for o in session["orderIds"]]
    assert sorted((o["subtotal"], o["discount"]) for o in orders) == [(2000, 200), (3000, 300)]
    conn = await factory.conn()
    assert await conn.fetchval("SELECT used_count FROM coupons WHERE id = $1", coupon["id"]) == 1

    resp = await client.post(f"/api/v1/payments/{session['paymentIntentId']}/confirm",
                             json=CARD_DECLINED, headers=a.buyer.headers)
    assert resp.status == 402 and (await resp.json())["error"]["code"] == "card_declined"
    for o in session["orderIds"]:
        order = await (await client.get(f"/api/v1/me/orders/{o}", headers=a.buyer.headers)).json()
        assert order["status"] == "canceled"
    assert await stock_of(factory, a.product["variantIds"][0]) == 5
    assert await stock_of(factory, b_product["variantIds"][0]) == 5
    # The released hold gave its coupon redemption back; the cart is still active.
    assert await conn.fetchval("SELECT used_count FROM coupons WHERE id = $1", coupon["id"]) == 0
    assert await conn.fetchval("SELECT status FROM carts WHERE user_id = $1", a.buyer.id) == "active"
    await assert_inventory_ok(clean_db)

    resp = await checkout(client, a.buyer, {"addressId": a.address_id}, "cart2")
    session = await resp.json()
    resp = await client.post(f"/api/v1/payments/{session['paymentIntentId']}/confirm",
                             json=CARD_OK, headers=a.buyer.headers)
    assert resp.status == 200
    assert await conn.fetchval("SELECT status FROM carts WHERE user_id = $1", a.buyer.id) == "converted"
    assert await conn.fetchval(
        "SELECT status FROM coupon_redemptions WHERE payment_id = $1", session["paymentId"]) == "redeemed"


async def test_coupon_per_user_limit(client, factory: Factory, shop: Shop) -> None:
    coupon = await make_coupon(factory, per_user_limit=1)
    body = {"addressId": shop.address_id, "items": [shop.item()], "couponCode": coupon["code"].lower()}
    assert (await checkout(client, shop.buyer, body, "c1")).status == 201
    resp = await checkout(client, shop.buyer, body, "c2")
    assert resp.status == 409 and (await resp.json())["error"]["details"]["reason"] == "per_user_limit"
    resp = await checkout(client, shop.buyer, {**body, "couponCode": "NOSUCHCODE"}, "c3")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "coupon_invalid"


async def test_cancel_releases_and_lifecycle(client, factory: Factory, shop: Shop, clean_db: str) -> None:
    variant = shop.product["variantIds"][0]
    s1 = await (await checkout(client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item(2)]}, "l1")).json()
    resp = await client.post(f"/api/v1/me/orders/{s1['orderIds'][0]}/cancel", headers=shop.buyer.headers)
    assert resp.status == 200 and (await resp.json())["status"] == "canceled"
    assert await stock_of(factory, variant) == 10
    resp = await client.post(f"/api/v1/me/orders/{s1['orderIds'][0]}/cancel", headers=shop.buyer.headers)
    assert resp.status == 409
    resp = await client.post(f"/api/v1/payments/{s1['paymentIntentId']}/confirm", json=CARD_OK, headers=shop.buyer.headers)
    assert resp.status == 409  # the payment was closed with its last order

    s2 = await (await checkout(client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item(2)]}, "l2")).json()
    order_id = s2["orderIds"][0]
    other = await factory.user()
    resp = await client.post(f"/api/v1/payments/{s2['paymentIntentId']}/confirm", json=CARD_OK, headers=other.headers)
    assert resp.status == 404  # owner only
    assert (await client.get(f"/api/v1/me/orders/{order_id}", headers=other.headers)).status == 404
    await client.post(f"/api/v1/payments/{s2['paymentIntentId']}/confirm", json=CARD_OK, headers=shop.buyer.headers)
    seller = shop.seller.headers
    assert (await client.post(f"/api/v1/seller/orders/{order_id}/deliver", headers=seller)).status == 409
    resp = await client.post(f"/api/v1/me/orders/{order_id}/cancel", headers=shop.buyer.headers)
    assert resp.status == 409  # paid orders are not canceled by the buyer
    stranger = await factory.seller()
    assert (await client.post(f"/api/v1/seller/orders/{order_id}/ship", headers=stranger.headers)).status == 404
    resp = await client.post(f"/api/v1/seller/orders/{order_id}/refund", json={"amount": 500, "restock": True}, headers=seller)
    assert resp.status == 400  # restock needs a full refund
    resp = await client.post(f"/api/v1/seller/orders/{order_id}/refund", json={"amount": 500}, headers=seller)
    assert resp.status == 200 and (await resp.json())["refundedAmount"] == 500
    resp = await client.post(f"/api/v1/seller/orders/{order_id}/refund", json={"restock": True}, headers=seller)
    data = await resp.json()
    assert resp.status == 200 and data["status"] == "refunded" and data["refundedAmount"] == 2000
    assert await stock_of(factory, variant) == 10
    assert (await client.post(f"/api/v1/seller/orders/{order_id}/ship", headers=seller)).status == 409

    s3 = await (await checkout(client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item(1)]}, "l3")).json()
    await client.post(f"/api/v1/payments/{s3['paymentIntentId']}/confirm", json=CARD_OK, headers=shop.buyer.headers)
    for step, status in (("ship", "shipped"), ("deliver", "delivered")):
        resp = await client.post(f"/api/v1/seller/orders/{s3['orderIds'][0]}/{step}", headers=seller)
        assert resp.status == 200 and (await resp.json())["status"] == status

    page = await (await client.get("/api/v1/seller/orders?limit=2", headers=seller)).json()
    assert len(page["items"]) == 2 and page["nextCursor"]
    rest = await (await client.get(f"/api/v1/seller/orders?limit=2&cursor={page['nextCursor']}", headers=seller)).json()
    ids = [o["id"] for o in page["items"] + rest["items"]]
    assert sorted(ids) == sorted([s1["orderIds"][0], order_id, s3["orderIds"][0]]) and rest["nextCursor"] is None
    mine = await (await client.get("/api/v1/me/orders", headers=shop.buyer.headers)).json()
    assert len(mine["items"]) == 3
    assert (await (await client.get("/api/v1/me/orders", headers=other.headers)).json())["items"] == []
    await assert_inventory_ok(clean_db)


def test_luhn() -> None:
    assert luhn_ok("4242424242424242") and luhn_ok("4000000000000002")
    assert not luhn_ok("4242424242424241")


async def test_paid_live_order_reaches_only_the_seller_feed_with_buyer_and_items(
    client, factory: Factory, shop: Shop,
) -> None:
    from tests.factories import make_livestream
    from tests.signaling.conftest import ws_client

    livestream_id = await make_livestream(factory, shop.seller, products=(shop.product["id"],))
    studio = await ws_client(client, livestream_id, shop.seller.access_token)
    viewer = await ws_client(client, livestream_id)
    try:
        body = {"addressId": shop.address_id, "items": [shop.item(qty=2)], "livestreamId": livestream_id}
        session = await (await checkout(client, shop.buyer, body, "live-1")).json()
        resp = await client.post(f"/api/v1/payments/{session['paymentIntentId']}/confirm",
                                 json=CARD_OK, headers=shop.buyer.headers)
        assert resp.status == 200
        order = await studio.expect("order:new", timeout=5)
        assert order["id"] == session["orderIds"][0] and order["total"] == 2000
        buyer_name = (await (await client.get("/api/v1/me", headers=shop.buyer.headers)).json())["name"]
        assert order["buyer"] == {"name": buyer_name}
        assert order["items"] == [{"title": shop.product["title"], "variant": "Black / 0", "qty": 2}]
        await viewer.expect("stock:update", timeout=5)  # the room did hear about the sale
        assert "order:new" not in [e["type"] for e in viewer.inbox.all]
    finally:
        await studio.close()
        await viewer.close()
