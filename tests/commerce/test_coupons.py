"""Seller coupons and applying them to a cart: every reason a coupon is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.commerce.conftest import CommerceRows
from tests.factories import Factory

COUPONS = "/api/v1/seller/coupons"
APPLY = "/api/v1/me/cart/apply-coupon"


async def _cart_with(client, factory: Factory, seller, user, *, qty=2, **product):
    item = await factory.product(seller, **product)
    resp = await client.post(
        "/api/v1/me/cart/items",
        json={"productId": item["id"], "variantId": item["variantIds"][0], "qty": qty},
        headers=user.headers,
    )
    assert resp.status == 200, await resp.text()
    return item


async def test_create_and_list_coupons(client, factory: Factory) -> None:
    seller = await factory.seller()
    resp = await client.post(
        COUPONS, headers=seller.headers,
        json={"code": "spring-10", "discountType": "percent", "value": 10, "minSubtotal": 500,
              "startsAt": "2026-01-01T00:00:00+00:00", "endsAt": "2099-01-01T00:00:00Z",
              "usageLimit": 100, "perUserLimit": 1},
    )
    assert resp.status == 201, await resp.text()
    coupon = await resp.json()
    assert coupon["code"] == "SPRING-10" and coupon["usedCount"] == 0 and coupon["currency"] is None
    resp = await client.post(
        COUPONS, headers=seller.headers,
        json={"code": "FIVEOFF", "discountType": "amount", "value": 500, "currency": "USD"},
    )
    assert resp.status == 201
    page = await (await client.get(f"{COUPONS}?limit=1", headers=seller.headers)).json()
    assert [c["code"] for c in page["items"]] == ["FIVEOFF"] and page["nextCursor"]
    page2 = await (await client.get(f"{COUPONS}?limit=1&cursor={page['nextCursor']}", headers=seller.headers)).json()
    assert [c["code"] for c in page2["items"]] == ["SPRING-10"] and page2["nextCursor"] is None
    one = await (await client.get(f"{COUPONS}/{coupon['id']}", headers=seller.headers)).json()
    assert one == coupon


async def test_code_taken_is_409_case_insensitively(client, factory: Factory) -> None:
    a, b = await factory.seller(), await factory.seller()
    body = {"code": "DUP1", "discountType": "percent", "value": 5}
    assert (await client.post(COUPONS, json=body, headers=a.headers)).status == 201
    resp = await client.post(COUPONS, json={**body, "code": "dup1"}, headers=b.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "code_taken"


@pytest.mark.parametrize(("body", "field"), [
    ({"code": "X", "discountType": "percent", "value": 5}, "code"),
    ({"code": "OK123", "discountType": "percent", "value": 101}, "value"),
    ({"code": "OK123", "discountType": "percent", "value": 0}, "value"),
    ({"code": "OK123", "discountType": "amount", "value": 5}, "currency"),
    ({"code": "OK123", "discountType": "free", "value": 5}, "discountType"),
    ({"code": "OK123", "discountType": "percent", "value": 5, "usedCount": 3}, "usedCount"),
    ({"code": "OK123", "discountType": "percent", "value": 5, "startsAt": "yesterday"}, "startsAt"),
    ({"code": "OK123", "discountType": "percent", "value": 5, "endsAt": "2026-01-01T00:00:00"}, "endsAt"),
    ({"code": "OK123", "discountType": "percent", "value": 5,
      "startsAt": "2026-02-01T00:00:00Z", "endsAt": "2026-01-01T00:00:00Z"}, "endsAt"),
])
async def test_coupon_validation(client, factory: Factory, body, field) -> None:
    seller = await factory.seller()
    resp = await client.post(COUPONS, json=body, headers=seller.headers)
    assert resp.status == 400, await resp.text()
    assert field in (await resp.json())["error"]["details"]["fields"]


async def test_apply_and_remove_coupon_totals(client, factory: Factory, rows: CommerceRows) -> None:
    seller, user = await factory.seller(), await factory.user()
    await _cart_with(client, factory, seller, user, qty=3, price=1000)
    code = await rows.coupon(seller, discount_type="percent", value=15)
    resp = await client.post(APPLY, json={"code": code.lower()}, headers=user.headers)
    assert resp.status == 200, await resp.text()
    cart = await resp.json()
    assert (cart["subtotal"], cart["discount"], cart["total"]) == (3000, 450, 2550)
    assert cart["coupon"]["code"] == code and cart["coupon"]["valid"] is True
    amount = await rows.coupon(seller, discount_type="amount", value=5000, currency="USD")
    cart = await (await client.post(APPLY, json={"code": amount}, headers=user.headers)).json()
    assert (cart["discount"], cart["total"]) == (3000, 0)  # never more than the subtotal
    resp = await client.delete("/api/v1/me/cart/coupon", headers=user.headers)
    cart = await resp.json()
    assert cart["coupon"] is None and cart["total"] == 3000


async def test_coupon_that_stops_applying_stays_visible_with_reason(
    client, factory: Factory, rows: CommerceRows
) -> None:
    seller, user = await factory.seller(), await factory.user()
    await _cart_with(client, factory, seller, user, qty=2, price=1000)
    code = await rows.coupon(seller, min_subtotal=2000)
    cart = await (await client.post(APPLY, json={"code": code}, headers=user.headers)).json()
    assert cart["discount"] == 200
    item = cart["items"][0]["id"]
    cart = await (await client.patch(f"/api/v1/me/cart/items/{item}", json={"qty": 1}, headers=user.headers)).json()
    assert cart["discount"] == 0 and cart["total"] == 1000
    assert cart["coupon"]["valid"] is False and cart["coupon"]["reason"] == "min_subtotal"


def _now() -> datetime:
    return datetime.now(UTC)


REASONS = {
    "expired": lambda s: {"ends_at": _now() - timedelta(hours=1), "starts_at": _now() - timedelta(days=2)},
    "not_started": lambda s: {"starts_at": _now() + timedelta(hours=1)},
    "exhausted": lambda s: {"usage_limit": 3, "used_count": 3},
    "min_subtotal": lambda s: {"min_subtotal": 10**6},
    "currency": lambda s: {"discount_type": "amount", "value": 100, "currency": "EUR"},
    "wrong_seller": lambda s: {},  # a coupon of another seller
}


@pytest.mark.parametrize("reason", sorted(REASONS))
async def test_every_coupon_reason(client, factory: Factory, rows: CommerceRows, reason: str) -> None:
    seller, other, user = await factory.seller(), await factory.seller(), await factory.user()
    await _cart_with(client, factory, seller, user, price=1000)
    owner = other if reason == "wrong_seller" else seller
    code = await rows.coupon(owner, **REASONS[reason](seller))
    resp = await client.post(APPLY, json={"code": code}, headers=user.headers)
    assert resp.status == 409, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "coupon_invalid" and error["details"]["reason"] == reason
    cart = await (await client.get("/api/v1/me/cart", headers=user.headers)).json()
    assert cart["coupon"] is None


async def test_unknown_code_and_empty_cart(client, factory: Factory, rows: CommerceRows) -> None:
    seller, user = await factory.seller(), await factory.user()
    code = await rows.coupon(seller)
    resp = await client.post(APPLY, json={"code": code}, headers=user.headers)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "cart_empty"
    await _cart_with(client, factory, seller, user)
    resp = await client.post(APPLY, json={"code": "NOPE-NOPE"}, headers=user.headers)
    error = (await resp.json())["error"]
    assert resp.status == 409 and error["details"]["reason"] == "unknown"
    resp = await client.post(APPLY, json={"code": ""}, headers=user.headers)
    assert resp.status == 400


async def test_per_user_limit_counts_this_users_redemptions(
    client, factory: Factory, rows: CommerceRows
) -> None:
    seller, user, other = await factory.seller(), await factory.user(), await factory.user()
    await _cart_with(client, factory, seller, user)
    await _cart_with(client, factory, seller, other)
    code = await rows.coupon(seller, per_user_limit=1)
    conn = await factory.conn()
    await conn.execute(
        "INSERT INTO coupon_redemptions (coupon_id, user_id, status) SELECT id, $2, 'redeemed' FROM coupons WHERE code = $1",
        code, user.id,
    )
    resp = await client.post(APPLY, json={"code": code}, headers=user.headers)
    error = (await resp.json())["error"]
    assert resp.status == 409 and error["details"]["reason"] == "exhausted" and error["details"]["scope"] == "user"
    assert (await client.post(APPLY, json={"code": code}, headers=other.headers)).status == 200


async def test_find_coupon_refuses_impossible_codes_without_a_query_error(client) -> None:
    from commerce import coupons
    from commerce.errors import CouponInvalid
    from server.keys import DB

    async with client.app[DB].transaction(system=True) as conn:
        for code in ("A\x00B", "X" * 41):
            with pytest.raises(CouponInvalid) as caught:
                await coupons.find_coupon(conn, code)
            assert caught.value.details["reason"] == "unknown"
