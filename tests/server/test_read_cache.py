"""Hot reads: cached public catalog and livestream answers, their invalidation and headers.

The caches in these tests keep entries for a minute (READ_CACHE_SECONDS=60) unless a
test says otherwise: whatever a read shows fresh after a change, only the change's
announcement can have made fresh, never the one-tick age limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Secret, Settings
from server.payments import sweep_once
from server.read_cache import PRIVATE, PUBLIC, READ_CACHE, ReadCache
from tests.factories import Factory, make_address, make_livestream
from tests.signaling.conftest import ws_client

LONG = 60.0


async def _app(aiohttp_client: Any, dsn: str, settings: Settings, **overrides: Any) -> TestClient:
    """Start another instance of the server (same database and token secret as `client`)."""
    values: dict[str, Any] = {"read_cache_seconds": LONG, **overrides}
    return await aiohttp_client(create_app(dataclasses.replace(settings, **values), dsn, run_migrations=False))


@pytest.fixture
async def cached(aiohttp_client: Any, clean_db: str, settings: Settings) -> TestClient:
    return await _app(aiohttp_client, clean_db, settings)


def _reads(product_id: str, livestream_id: str) -> list[str]:
    return [
        "/api/v1/products?limit=20", f"/api/v1/products/{product_id}",
        f"/api/v1/products/{product_id}/variants", "/api/v1/livestreams?status=live",
        f"/api/v1/livestreams/{livestream_id}", f"/api/v1/livestreams/{livestream_id}/products",
    ]


async def _stock(client: TestClient, product_id: str) -> list[int]:
    resp = await client.get(f"/api/v1/products/{product_id}")
    assert resp.status == 200
    return [v["stock"] for v in (await resp.json())["variants"]]


async def test_cached_answers_equal_the_uncached_contract(
    aiohttp_client: Any, factory: Factory, clean_db: str, settings: Settings,
) -> None:
    seller = await factory.seller()
    products = [await factory.product(seller, stock=3 + i, variants=2) for i in range(3)]
    livestream_id = await make_livestream(
        factory, seller, products=tuple(p["id"] for p in products), highlighted=products[1]["id"]
    )
    uncached = await _app(aiohttp_client, clean_db, settings, read_cache_seconds=0)
    cached = await _app(aiohttp_client, clean_db, settings)
    for path in _reads(products[0]["id"], livestream_id):
        expected = await uncached.get(path)
        for _ in range(3):  # a miss, then hits
            got = await cached.get(path)
            assert got.status == expected.status == 200, path
            assert await got.read() == await expected.read(), path
            assert got.headers["Content-Type"] == expected.headers["Content-Type"], path
    stats = cached.server.app[READ_CACHE].stats
    assert stats["loads"] == 6 and stats["hits"] == 12, stats
    # Not found stays a 404 error body, never cached.
    missing = "/api/v1/products/00000000-0000-0000-0000-000000000000"
    for client_ in (cached, uncached):
        resp = await client_.get(missing)
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_stock_changes_are_visible_at_once(cached: TestClient, factory: Factory) -> None:
    """A checkout hold, a seller's stock delta, a buy-now sale and a released hold."""
    seller = await factory.seller()
    product = await factory.product(seller, stock=10)
    variant_id = product["variantIds"][0]
    livestream_id = await make_livestream(factory, seller, products=(product["id"],))
    buyer = await factory.user()
    address = await make_address(factory, buyer)
    list_path = f"/api/v1/products?seller={seller.seller_id}"
    stream_path = f"/api/v1/livestreams/{livestream_id}/products"

    async def every_read() -> set[int]:
        """The stock every cached read shows of the variant."""
        seen = set(await _stock(cached, product["id"]))
        seen |= {v["stock"] for v in (await (await cached.get(f"/api/v1/products/{product['id']}/variants")).json())["items"]}
        for path in (list_path, stream_path):
            items = (await (await cached.get(path)).json())["items"]
            seen |= {v["stock"] for p in items for v in p["variants"]}
        return seen

    assert await every_read() == {10}
    assert await every_read() == {10}  # now from memory

    resp = await cached.post(
        "/api/v1/checkout/session", headers={**buyer.headers, "Idempotency-Key": "hold-1"},
        json={"addressId": address, "items": [{"productId": product["id"], "variantId": variant_id, "qty": 2}]},
    )
    assert resp.status == 201
    assert await every_read() == {8}

    resp = await cached.patch(
        f"/api/v1/seller/products/{product['id']}/variants/{variant_id}", headers=seller.headers,
        json={"stockDelta": -3, "reason": "damaged"},
    )
    assert resp.status == 200
    assert await every_read() == {5}

    viewer = await ws_client(cached, livestream_id, buyer.access_token)
    try:
        await viewer.send("buy:now", productId=product["id"], variantId=variant_id, qty=1, ref="sale")
        await viewer.expect("ack", ref="sale", timeout=10)
        assert await every_read() == {4}
    finally:
        await viewer.close()

    # Holds past their expiry go back on the shelf.
    conn = await factory.conn()
    await conn.execute("UPDATE payments SET expires_at = now() - interval '1 second'")
    assert await sweep_once(cached.server.app) == 2
    assert await conn.fetchval("SELECT stock FROM product_variants WHERE id = $1", variant_id) == 7
    assert await every_read() == {7}


async def test_product_edits_highlights_and_state_are_visible_at_once(
    cached: TestClient, factory: Factory,
) -> None:
    seller = await factory.seller()
    first, second = await factory.product(seller), await factory.product(seller)
    livestream_id = await make_livestream(factory, seller, status="scheduled", products=(first["id"], second["id"]))
    detail = f"/api/v1/livestreams/{livestream_id}"
    assert (await (await cached.get(detail)).json())["status"] == "scheduled"
    assert (await (await cached.get("/api/v1/livestreams?status=live")).json())["items"] == []
    assert len((await (await cached.get("/api/v1/products")).json())["items"]) == 2

    resp = await cached.patch(f"/api/v1/seller/products/{first['id']}", headers=seller.headers,
                              json={"title": "Renamed"})
    assert resp.status == 200
    assert (await (await cached.get(f"/api/v1/products/{first['id']}")).json())["title"] == "Renamed"
    titles = {p["title"] for p in (await (await cached.get("/api/v1/products")).json())["items"]}
    assert "Renamed" in titles
    streamed = (await (await cached.get(f"{detail}/products")).json())["items"]
    assert {p["title"] for p in streamed} == titles

    resp = await cached.post(f"{detail.replace('/api/v1/', '/api/v1/seller/')}/start", headers=seller.headers)
    assert resp.status == 200
    assert (await (await cached.get(detail)).json())["status"] == "live"
    live = (await (await cached.get("/api/v1/livestreams?status=live")).json())["items"]
    assert [s["id"] for s in live] == [livestream_id]

    resp = await cached.post(f"/api/v1/seller/livestreams/{livestream_id}/highlight", headers=seller.headers,
                             json={"productId": second["id"]})
    assert resp.status == 200
    assert (await (await cached.get(detail)).json())["highlightedProductId"] == second["id"]
    streamed = (await (await cached.get(f"{detail}/products")).json())["items"]
    assert [p["id"] for p in streamed if p["highlightedAt"]] == [second["id"]]

    # Archiving takes a product out of every public read.
    resp = await cached.patch(f"/api/v1/seller/products/{second['id']}", headers=seller.headers,
                              json={"status": "archived"})
    assert resp.status == 200
    assert (await cached.get(f"/api/v1/products/{second['id']}")).status == 404
    assert [p["id"] for p in (await (await cached.get("/api/v1/products")).json())["items"]] == [first["id"]]


async def test_etag_answers_304_until_the_answer_changes(cached: TestClient, factory: Factory) -> None:
    seller = await factory.seller()
    product = await factory.product(seller, stock=4)
    path = f"/api/v1/products/{product['id']}"
    first = await cached.get(path)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and first.headers["Cache-Control"] == PUBLIC
    assert first.headers["Vary"] == "Authorization"
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        resp = await cached.get(path, headers={"If-None-Match": header})
        assert resp.status == 304, header
        assert await resp.read() == b"" and resp.headers["ETag"] == etag
    resp = await cached.get(path, headers={"If-None-Match": '"other"'})
    assert resp.status == 200 and resp.headers["ETag"] == etag

    resp = await cached.patch(
        f"/api/v1/seller/products/{product['id']}/variants/{product['variantIds'][0]}",
        headers=seller.headers, json={"stockDelta": 1, "reason": "found one"},
    )
    assert resp.status == 200
    resp = await cached.get(path, headers={"If-None-Match": etag})
    assert resp.status == 200 and resp.headers["ETag"] != etag
    assert [v["stock"] for v in (await resp.json())["variants"]] == [5]
    # Lists and livestream reads carry ETags too, public for a CDN.
    resp = await cached.get("/api/v1/products?limit=20")
    again = await cached.get("/api/v1/products?limit=20", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304 and resp.headers["Cache-Control"] == PUBLIC


async def test_answers_that_depend_on_the_caller_never_leak(cached: TestClient, factory: Factory) -> None:
    owner, other = await factory.seller(), await factory.seller()
    draft = await factory.product(owner, status="draft")
    active = await factory.product(owner)
    livestream_id = await make_livestream(factory, owner, products=(draft["id"], active["id"]))
    for path in (f"/api/v1/products/{draft['id']}", f"/api/v1/products/{draft['id']}/variants"):
        for _ in range(2):
            resp = await cached.get(path, headers=owner.headers)
            assert resp.status == 200, path
            assert resp.headers["Cache-Control"] == PRIVATE and resp.headers["Vary"] == "Authorization"
            assert (await cached.get(path)).status == 404, "the owner's view was shared"
            assert (await cached.get(path, headers=other.headers)).status == 404
    # Signed-in callers get the shared answer of a public product, marked private.
    resp = await cached.get(f"/api/v1/products/{active['id']}", headers=other.headers)
    assert resp.status == 200 and resp.headers["Cache-Control"] == PRIVATE
    anonymous = await cached.get(f"/api/v1/products/{active['id']}")
    assert anonymous.headers["Cache-Control"] == PUBLIC
    assert await anonymous.read() == await resp.read()
    # Drafts stay out of the public lists, and the stream key out of the public livestream.
    ids = [p["id"] for p in (await (await cached.get("/api/v1/products", headers=owner.headers)).json())["items"]]
    assert ids == [active["id"]]
    streamed = (await (await cached.get(f"/api/v1/livestreams/{livestream_id}/products")).json())["items"]
    assert [p["id"] for p in streamed] == [active["id"]]
    for headers in (owner.headers, {}):
        body = await (await cached.get(f"/api/v1/livestreams/{livestream_id}", headers=headers)).json()
        assert "streamKey" not in body
    # Publishing the draft shows it to everyone at once.
    resp = await cached.patch(f"/api/v1/seller/products/{draft['id']}", headers=owner.headers,
                              json={"status": "active"})
    assert resp.status == 200
    assert (await cached.get(f"/api/v1/products/{draft['id']}")).status == 200


async def test_two_instances_sharing_redis_invalidate_each_other(
    aiohttp_client: Any, clean_db: str, settings: Settings, factory: Factory,
) -> None:
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set")
    shared = {"redis_url": Secret(url), "redis_prefix": f"test-cache-{secrets.token_hex(4)}:"}
    a = await _app(aiohttp_client, clean_db, settings, **shared)
    b = await _app(aiohttp_client, clean_db, settings, **shared)
    seller = await factory.seller()
    product = await factory.product(seller, stock=6)
    livestream_id = await make_livestream(factory, seller, status="scheduled")
    for app in (a, b):
        assert await _stock(app, product["id"]) == [6]
        assert (await (await app.get(f"/api/v1/livestreams/{livestream_id}")).json())["status"] == "scheduled"

    async def eventually(check: Any) -> None:
        # Redis pub/sub takes a moment (longer on a loaded machine); the age limit is a minute.
        async with asyncio.timeout(10):
            while not await check():
                await asyncio.sleep(0.02)

    resp = await b.patch(
        f"/api/v1/seller/products/{product['id']}/variants/{product['variantIds'][0]}",
        headers=seller.headers, json={"stockDelta": -2, "reason": "sold offline"},
    )
    assert resp.status == 200
    await eventually(lambda: _is(_stock(a, product["id"]), [4]))
    resp = await a.post(f"/api/v1/seller/livestreams/{livestream_id}/start", headers=seller.headers)
    assert resp.status == 200

    async def live_on_b() -> bool:
        return (await (await b.get(f"/api/v1/livestreams/{livestream_id}")).json())["status"] == "live"

    await eventually(live_on_b)
    assert b.server.app[READ_CACHE].stats["invalidated"] >= 1


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected


# -- the cache itself -------------------------------------------------------------------

async def test_concurrent_misses_share_one_load_and_changes_during_a_load_are_not_kept() -> None:
    cache = ReadCache(max_age=LONG)
    release = asyncio.Event()
    loads = 0

    async def load() -> tuple[dict[str, int], set[str]]:
        nonlocal loads
        loads += 1
        version = loads
        await release.wait()
        return {"v": version}, {"product:p"}

    waiters = [asyncio.create_task(cache.get("k", load)) for _ in range(50)]
    await asyncio.sleep(0.01)
    cache.invalidate({"product:p"})  # the change lands while the first load reads
    late = asyncio.create_task(cache.get("k", load))  # must not join the older load
    await asyncio.sleep(0.01)
    release.set()
    bodies = {(await w).body for w in waiters}
    assert bodies == {b'{"v":1}'} and loads == 2
    assert (await late).body == b'{"v":2}'
    assert (await cache.get("k", load)).body == b'{"v":2}' and loads == 2, "the later load is kept"


async def test_entries_are_served_no_longer_than_max_age() -> None:
    now = [0.0]
    cache = ReadCache(max_age=0.1, clock=lambda: now[0])
    version = 0

    async def load() -> tuple[dict[str, int], set[str]]:
        nonlocal version
        version += 1
        return {"v": version}, set()

    assert (await cache.get("k", load)).body == b'{"v":1}'
    now[0] = 0.06  # past half the age: served, refreshed behind the answer
    assert (await cache.get("k", load)).body == b'{"v":1}'
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert (await cache.get("k", load)).body == b'{"v":2}'
    now[0] = 0.2  # past the age: never served again
    assert (await cache.get("k", load)).body == b'{"v":3}'


async def test_while_redis_is_away_entries_live_one_tick_at_most() -> None:
    """Other processes' changes cannot arrive: the one-tick bound takes over from max_age."""
    from signaling.bus import Bus, connect

    now = [0.0]
    cache = ReadCache(max_age=LONG, unsynced_max_age=0.1, clock=lambda: now[0])
    redis = connect(f"redis://127.0.0.1:{_closed_port()}/0")
    await cache.start_bus(Bus(redis, prefix="test-unreachable:", process_id="p"))
    version = 0

    async def load() -> tuple[dict[str, int], set[str]]:
        nonlocal version
        version += 1
        return {"v": version}, set()

    try:
        assert cache.bus is not None and not cache.bus.connected
        assert (await cache.get("k", load)).body == b'{"v":1}'
        now[0] = 0.04
        assert (await cache.get("k", load)).body == b'{"v":1}'
        now[0] = 0.15
        assert (await cache.get("k", load)).body == b'{"v":2}'
    finally:
        await cache.stop()
        await redis.aclose()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
