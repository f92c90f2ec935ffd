"""The Stripe provider against localstripe: intents, signed webhooks, declines, expiry, refunds."""

from __future__ import annotations

import time

from tests.checkout.conftest import (
    LocalStripe, assert_inventory_ok, checkout, make_shop, signed, stock_of, wait_for,
)
from tests.factories import Factory

WEBHOOK = "/api/v1/webhooks/stripe"


async def _order(client, user, order_id):  # type: ignore[no-untyped-def]
    return await (await client.get(f"/api/v1/me/orders/{order_id}", headers=user.headers)).json()


async def _paid_session(stripe_client, stripe_factory, localstripe, qty=2):  # type: ignore[no-untyped-def]
    shop = await make_shop(stripe_factory)
    resp = await checkout(stripe_client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item(qty)]}, "s1")
    assert resp.status == 201, await resp.text()
    session = await resp.json()
    assert session["provider"] == "stripe" and session["paymentIntentId"].startswith("pi_")
    intent = await localstripe.pay(session["paymentIntentId"])
    assert intent["status"] == "succeeded"
    order_id = session["orderIds"][0]

    async def paid() -> bool:
        return (await _order(stripe_client, shop.buyer, order_id))["status"] == "paid"

    await wait_for(paid)  # localstripe delivers the signed webhook about a second later
    return shop, session, order_id


async def test_confirm_then_signed_webhook_marks_paid(stripe_client, stripe_factory: Factory, localstripe: LocalStripe, clean_db: str) -> None:
    shop, session, order_id = await _paid_session(stripe_client, stripe_factory, localstripe)
    intent = await localstripe.get(f"/v1/payment_intents/{session['paymentIntentId']}")
    assert intent["amount"] == 2000 and intent["metadata"]["paymentId"] == session["paymentId"]
    conn = await stripe_factory.conn()
    assert await conn.fetchval("SELECT status FROM stock_holds WHERE payment_id = $1", session["paymentId"]) == "confirmed"
    assert await stock_of(stripe_factory, shop.product["variantIds"][0]) == 8
    # Replaying the checkout answers the same session (the same intent at Stripe too).
    resp = await checkout(stripe_client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item(2)]}, "s1")
    assert (await resp.json())["paymentIntentId"] == session["paymentIntentId"]
    await assert_inventory_ok(clean_db)


async def test_duplicate_and_out_of_order_webhooks(stripe_client, stripe_factory: Factory, localstripe: LocalStripe) -> None:
    shop, session, order_id = await _paid_session(stripe_client, stripe_factory, localstripe)
    conn = await stripe_factory.conn()
    events = await localstripe.events(session["paymentIntentId"])
    succeeded = next(e for e in events if e["type"] == "payment_intent.succeeded")
    before = await conn.fetchval("SELECT count(*) FROM processed_webhook_events")
    for _ in range(3):  # duplicates: answered, no effect, recorded once
        body, headers = signed(succeeded)
        resp = await stripe_client.post(WEBHOOK, data=body, headers=headers)
        assert resp.status == 200
    assert await conn.fetchval("SELECT count(*) FROM processed_webhook_events") == before
    # A late 'payment_failed' (or 'canceled') claim for a paid intent: the re-fetched
    # intent says succeeded, so nothing moves backward.
    for kind in ("payment_intent.payment_failed", "payment_intent.canceled"):
        stale = {**succeeded, "id": f"evt_stale_{kind}", "type": kind,
                 "data": {"object": {**succeeded["data"]["object"], "status": "canceled"}}}
        body, headers = signed(stale)
        assert (await stripe_client.post(WEBHOOK, data=body, headers=headers)).status == 200
    assert (await _order(stripe_client, shop.buyer, order_id))["status"] == "paid"
    assert await stock_of(stripe_factory, shop.product["variantIds"][0]) == 8
    # Unknown types are acknowledged and ignored.
    body, headers = signed({"id": "evt_x", "type": "customer.created", "data": {"object": {"id": "cus_1"}}})
    resp = await stripe_client.post(WEBHOOK, data=body, headers=headers)
    assert resp.status == 200 and (await resp.json())["handled"] is False


async def test_tampered_and_stale_signatures_are_refused(stripe_client, stripe_factory: Factory) -> None:
    event = {"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1"}}}
    body, headers = signed(event)
    resp = await stripe_client.post(WEBHOOK, data=body.replace(b"pi_1", b"pi_2"), headers=headers)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_signature"
    body, headers = signed(event, secret="whsec_wrong")
    assert (await stripe_client.post(WEBHOOK, data=body, headers=headers)).status == 400
    body, headers = signed(event, timestamp=int(time.time()) - 301)
    assert (await stripe_client.post(WEBHOOK, data=body, headers=headers)).status == 400
    assert (await stripe_client.post(WEBHOOK, data=body)).status == 400  # no header
    conn = await stripe_factory.conn()
    assert await conn.fetchval("SELECT count(*) FROM processed_webhook_events") == 0


async def test_declined_card_releases_the_holds(stripe_client, stripe_factory: Factory, localstripe: LocalStripe, clean_db: str) -> None:
    shop = await make_shop(stripe_factory)
    session = await (await checkout(stripe_client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item(4)]}, "d1")).json()
    assert await stock_of(stripe_factory, shop.product["variantIds"][0]) == 6
    # localstripe declines charges for Stripe's 4000 0000 0000 0341 (its 0002 is declined
    # only when attached to a customer).
    await localstripe.pay(session["paymentIntentId"], card="4000000000000341")

    async def canceled() -> bool:
        return (await _order(stripe_client, shop.buyer, session["orderIds"][0]))["status"] == "canceled"

    await wait_for(canceled)
    assert await stock_of(stripe_factory, shop.product["variantIds"][0]) == 10
    conn = await stripe_factory.conn()
    assert await conn.fetchval("SELECT status FROM payments WHERE id = $1", session["paymentId"]) == "failed"
    # The failed intent was canceled at Stripe, so it cannot be paid later.
    async def intent_canceled() -> bool:
        return (await localstripe.get(f"/v1/payment_intents/{session['paymentIntentId']}"))["status"] == "canceled"

    await wait_for(intent_canceled)
    await assert_inventory_ok(clean_db)


async def test_hold_expiry_releases_stock_and_cancels_the_intent(stripe_client, stripe_factory: Factory, localstripe: LocalStripe, clean_db: str) -> None:
    shop = await make_shop(stripe_factory)
    session = await (await checkout(stripe_client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item(3)]}, "e1")).json()
    conn = await stripe_factory.conn()
    await conn.execute("UPDATE payments SET expires_at = now() - interval '1 second' WHERE id = $1", session["paymentId"])

    async def released() -> bool:
        return await stock_of(stripe_factory, shop.product["variantIds"][0]) == 10

    await wait_for(released)  # the sweep runs every 0.2 s in this app
    assert (await _order(stripe_client, shop.buyer, session["orderIds"][0]))["status"] == "canceled"
    intent = await localstripe.get(f"/v1/payment_intents/{session['paymentIntentId']}")
    assert intent["status"] == "canceled"
    reasons = [r["reason"] for r in await conn.fetch(
        "SELECT reason FROM inventory_events WHERE variant_id = $1 ORDER BY id", shop.product["variantIds"][0])]
    assert reasons == ["initial", "hold", "hold released"]
    await assert_inventory_ok(clean_db)


async def test_refund_partial_then_full_with_restock(stripe_client, stripe_factory: Factory, localstripe: LocalStripe, clean_db: str) -> None:
    shop, session, order_id = await _paid_session(stripe_client, stripe_factory, localstripe)
    seller = shop.seller.headers
    url = f"/api/v1/seller/orders/{order_id}/refund"
    resp = await stripe_client.post(url, json={"amount": 500}, headers=seller)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "paid"
    intent = await localstripe.get(f"/v1/payment_intents/{session['paymentIntentId']}")
    assert intent["latest_charge"]["amount_refunded"] == 500
    resp = await stripe_client.post(url, json={"restock": True}, headers=seller)
    order = await resp.json()
    assert order["status"] == "refunded" and order["refundedAmount"] == 2000
    intent = await localstripe.get(f"/v1/payment_intents/{session['paymentIntentId']}")
    assert intent["latest_charge"]["amount_refunded"] == 2000
    assert await stock_of(stripe_factory, shop.product["variantIds"][0]) == 10
    # Stripe's charge.refunded for it changes nothing more (the amounts already agree).
    event = {"id": "evt_refund", "type": "charge.refunded",
             "data": {"object": {"id": intent["latest_charge"]["id"], "payment_intent": intent["id"]}}}
    body, headers = signed(event)
    assert (await stripe_client.post(WEBHOOK, data=body, headers=headers)).status == 200
    conn = await stripe_factory.conn()
    row = await conn.fetchrow("SELECT status, refunded_amount FROM payments WHERE id = $1", session["paymentId"])
    assert (row["status"], row["refunded_amount"]) == ("refunded", 2000)
    assert (await stripe_client.post(url, json={}, headers=seller)).status == 409
    await assert_inventory_ok(clean_db)


async def test_offline_confirm_is_404_with_stripe(stripe_client, stripe_factory: Factory) -> None:
    shop = await make_shop(stripe_factory)
    session = await (await checkout(stripe_client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item()]}, "o1")).json()
    resp = await stripe_client.post(
        f"/api/v1/payments/{session['paymentIntentId']}/confirm",
        json={"cardNumber": "4242424242424242", "expMonth": 12, "expYear": 2030, "cvc": "123"},
        headers=shop.buyer.headers,
    )
    assert resp.status == 404
