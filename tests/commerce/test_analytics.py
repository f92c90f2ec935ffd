"""Seller analytics: which orders count, refunds, currencies, date ranges, per livestream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from commerce import livestreams as ls
from server.keys import DB
from tests.commerce.conftest import CommerceRows
from tests.factories import Factory


async def test_revenue_counts_paid_orders_minus_refunds(client, factory: Factory, rows: CommerceRows) -> None:
    seller, other, buyer = await factory.seller(), await factory.seller(), await factory.user()
    product = await factory.product(seller, price=1000)
    await rows.order(seller, buyer, product, qty=2, status="paid")
    await rows.order(seller, buyer, product, qty=1, status="shipped", refunded=300)
    await rows.order(seller, buyer, product, qty=3, status="delivered")
    await rows.order(seller, buyer, product, qty=5, status="created")
    await rows.order(seller, buyer, product, qty=4, status="canceled")
    await rows.order(seller, buyer, product, qty=1, status="refunded", refunded=1000)
    theirs = await factory.product(other, price=99)
    await rows.order(other, buyer, theirs, qty=9, status="paid")
    data = await (await client.get("/api/v1/seller/analytics", headers=seller.headers)).json()
    assert (data["orders"], data["units"], data["revenue"], data["currency"]) == (3, 6, 5700, "USD")
    assert data["byCurrency"] == [{"currency": "USD", "orders": 3, "revenue": 5700, "units": 6}]
    assert data["ordersByStatus"] == {"paid": 1, "shipped": 1, "delivered": 1, "created": 1, "canceled": 1, "refunded": 1}


async def test_mixed_currencies_are_reported_separately(client, factory: Factory, rows: CommerceRows) -> None:
    seller, buyer = await factory.seller(), await factory.user()
    usd = await factory.product(seller, price=1000)
    eur = await factory.product(seller, price=500, currency="EUR")
    await rows.order(seller, buyer, usd, qty=1)
    await rows.order(seller, buyer, eur, qty=2)
    data = await (await client.get("/api/v1/seller/analytics", headers=seller.headers)).json()
    assert data["revenue"] is None and data["currency"] is None and data["orders"] == 2
    assert data["byCurrency"] == [
        {"currency": "EUR", "orders": 1, "revenue": 1000, "units": 2},
        {"currency": "USD", "orders": 1, "revenue": 1000, "units": 1},
    ]


async def test_date_range(client, factory: Factory, rows: CommerceRows) -> None:
    seller, buyer = await factory.seller(), await factory.user()
    product = await factory.product(seller, price=100)
    now = datetime.now(UTC)
    await rows.order(seller, buyer, product, created_at=now - timedelta(days=10))
    await rows.order(seller, buyer, product, qty=2, created_at=now - timedelta(days=1))
    since = (now - timedelta(days=2)).isoformat().replace("+00:00", "Z")
    resp = await client.get("/api/v1/seller/analytics", params={"from": since}, headers=seller.headers)
    data = await resp.json()
    assert resp.status == 200 and (data["orders"], data["units"], data["revenue"]) == (1, 2, 200)
    until = (now - timedelta(days=5)).isoformat()
    data = await (await client.get("/api/v1/seller/analytics", params={"to": until}, headers=seller.headers)).json()
    assert (data["orders"], data["revenue"]) == (1, 100)
    empty = await (await client.get("/api/v1/seller/analytics", params={"from": now.isoformat()}, headers=seller.headers)).json()
    assert (empty["orders"], empty["revenue"], empty["currency"], empty["byCurrency"]) == (0, 0, None, [])
    for params in ({"from": "last week"}, {"to": "2026-01-01T00:00:00"},
                   {"from": now.isoformat(), "to": (now - timedelta(days=1)).isoformat()}):
        resp = await client.get("/api/v1/seller/analytics", params=params, headers=seller.headers)
        assert resp.status == 400, params
        assert (await resp.json())["error"]["details"]["fields"]


async def test_livestream_analytics(client, factory: Factory, rows: CommerceRows) -> None:
    seller, buyer, chatter = await factory.seller(), await factory.user(), await factory.user()
    product = await factory.product(seller, price=2500)
    stream_id = await rows.livestream(seller, status="live")
    other_stream = await rows.livestream(seller, status="live")
    await rows.order(seller, buyer, product, qty=2, livestream_id=stream_id)
    await rows.order(seller, buyer, product, qty=1, livestream_id=stream_id, status="created")
    await rows.order(seller, buyer, product, qty=7, livestream_id=other_stream)
    await rows.order(seller, buyer, product, qty=1)
    for i in range(3):
        await rows.chat(stream_id, chatter, f"hi {i}")
    await rows.chat(stream_id, chatter, "removed", deleted=True)
    async with client.app[DB].transaction(system=True) as conn:
        await ls.record_viewer_stats(conn, stream_id, peak=40, joined_delta=55, watch_seconds_delta=3600)
    resp = await client.get(f"/api/v1/seller/livestreams/{stream_id}/analytics", headers=seller.headers)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert (data["orders"], data["units"], data["revenue"], data["currency"]) == (1, 2, 5000, "USD")
    assert data["ordersByStatus"] == {"paid": 1, "created": 1}
    assert (data["chatMessages"], data["peakViewers"], data["totalViewers"], data["watchSeconds"]) == (3, 40, 55, 3600)
