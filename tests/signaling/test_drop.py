"""Drops: the seller announces one over HTTP, every viewer (in every process) counts down to it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Settings
from server.keys import HUB
from tests.factories import Factory, make_livestream
from tests.signaling.conftest import ws_client
from tests.signaling.test_redis import RedisServer
from tests.signaling.test_redis_outage import redis_server, two_processes, until

__all__ = ["redis_server", "two_processes"]  # fixtures of the Redis outage tests, used here


@pytest.fixture
async def second(aiohttp_client: Any, clean_db: str, settings: Settings) -> TestClient:
    """A second app instance on the same database and Redis (another server process)."""
    return await aiohttp_client(create_app(settings, clean_db, run_migrations=False))


@pytest.fixture
async def third(aiohttp_client: Any, clean_db: str, settings: Settings) -> TestClient:
    """A third instance, whose rooms open only after the drop: its welcome comes from the database."""
    return await aiohttp_client(create_app(settings, clean_db, run_migrations=False))


def _drop_url(livestream_id: str) -> str:
    return f"/api/v1/seller/livestreams/{livestream_id}/drop"


async def test_drop_reaches_every_viewer_across_processes_and_late_joiners(
    client: TestClient, second: TestClient, third: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    product = await factory.product(seller, stock=4)
    livestream_id = await make_livestream(factory, seller, products=(product["id"],))
    viewers = [await ws_client(client, livestream_id), await ws_client(second, livestream_id)]
    closing.extend(viewers)
    assert all(v.welcome["room"]["drop"] is None for v in viewers)

    before = datetime.now(UTC)
    resp = await client.post(_drop_url(livestream_id), json={"productId": product["id"], "inSeconds": 60},
                             headers=seller.headers)
    assert resp.status == 200, await resp.text()
    drop = await resp.json()
    at = datetime.fromisoformat(drop["at"])
    assert before + timedelta(seconds=59) <= at <= datetime.now(UTC) + timedelta(seconds=61)
    assert drop["productId"] == product["id"]
    assert drop["product"]["id"] == product["id"] and drop["product"]["title"] == product["title"]
    assert drop["product"]["variants"][0]["stock"] == 4

    for v in viewers:  # the one in the other process heard it through the bus
        assert await v.expect("drop:announced", timeout=10) == drop
    late = await ws_client(second, livestream_id)  # a room that heard the event
    fresh = await ws_client(third, livestream_id)  # a room that opens from the database
    closing.extend([late, fresh])
    assert late.welcome["room"]["drop"] == drop
    assert fresh.welcome["room"]["drop"]["productId"] == product["id"]
    assert datetime.fromisoformat(fresh.welcome["room"]["drop"]["at"]) == at
    assert fresh.welcome["room"]["drop"]["product"]["id"] == product["id"]


async def test_an_explicit_time_is_kept_and_a_passed_drop_leaves_the_welcome(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    one, two = await factory.product(seller), await factory.product(seller)
    livestream_id = await make_livestream(factory, seller, products=(one["id"], two["id"]))
    at = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)
    resp = await client.post(_drop_url(livestream_id), json={"productId": one["id"], "at": at.isoformat()},
                             headers=seller.headers)
    assert resp.status == 200, await resp.text()
    assert datetime.fromisoformat((await resp.json())["at"]) == at

    # A second announcement replaces the first; once its time passes nobody is told of it.
    resp = await client.post(_drop_url(livestream_id), json={"productId": two["id"], "inSeconds": 1},
                             headers=seller.headers)
    assert resp.status == 200, await resp.text()
    conn = await factory.conn()
    pending = await conn.fetch("SELECT product_id FROM live_products WHERE drop_at IS NOT NULL")
    assert [str(r["product_id"]) for r in pending] == [two["id"]]
    await asyncio.sleep(1.5)
    after = await ws_client(client, livestream_id)
    closing.append(after)
    assert after.welcome["room"]["drop"] is None


async def test_drop_refusals(client: TestClient, factory: Factory, closing) -> None:
    seller, other_seller, viewer = await factory.seller(), await factory.seller(), await factory.user()
    product = await factory.product(seller)
    unattached = await factory.product(seller)
    foreign = await factory.product(other_seller)
    livestream_id = await make_livestream(factory, seller, products=(product["id"],))
    watcher = await ws_client(client, livestream_id)
    closing.append(watcher)
    url = _drop_url(livestream_id)

    async def post(body: Any, user: Any = seller) -> tuple[int, dict[str, Any]]:
        resp = await client.post(url, json=body, headers=user.headers if user else {})
        return resp.status, await resp.json()

    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    too_far = (datetime.now(UTC) + timedelta(hours=25)).isoformat()
    for body, field in [
        ({"productId": product["id"], "at": past}, "at"),
        ({"productId": product["id"], "at": too_far}, "at"),
        ({"productId": product["id"], "at": "2026-13-45T99:00:00Z"}, "at"),
        ({"productId": product["id"], "at": "x" * 41}, "at"),
        ({"productId": product["id"]}, "at"),  # neither at nor inSeconds
        ({"productId": product["id"], "inSeconds": 30, "at": past}, "at"),  # both
        ({"productId": product["id"], "inSeconds": 0}, "inSeconds"),
        ({"productId": product["id"], "inSeconds": 86401}, "inSeconds"),
        ({"productId": "not-a-uuid", "inSeconds": 30}, "productId"),
        ({"productId": product["id"], "inSeconds": 30, "extra": 1}, None),
    ]:
        status, answer = await post(body)
        assert status == 400, (body, answer)
        assert answer["error"]["code"] == "validation_error"
        if field is not None:
            assert field in answer["error"]["details"]["fields"], (body, answer)

    status, answer = await post({"productId": unattached["id"], "inSeconds": 30})
    assert status == 409 and answer["error"]["code"] == "not_attached"
    status, _ = await post({"productId": foreign["id"], "inSeconds": 30})
    assert status == 404
    status, _ = await post({"productId": product["id"], "inSeconds": 30}, other_seller)
    assert status == 404, "only the livestream's own seller"
    status, _ = await post({"productId": product["id"], "inSeconds": 30}, viewer)
    assert status == 403
    status, _ = await post({"productId": product["id"], "inSeconds": 30}, None)
    assert status == 401

    await asyncio.sleep(0.5)
    assert watcher.inbox.of("drop:announced") == [], "a refused drop is never announced"

    ended = await make_livestream(factory, seller, status="ended", products=(product["id"],))
    resp = await client.post(_drop_url(ended), json={"productId": product["id"], "inSeconds": 30},
                             headers=seller.headers)
    assert resp.status == 409


@pytest.mark.timeout(180)
async def test_a_drop_announced_while_redis_is_down_reaches_the_other_process_after(
    two_processes: tuple[TestClient, TestClient], redis_server: RedisServer, clean_db: str, closing,
) -> None:
    one, two = two_processes
    factory = Factory(one, clean_db)
    try:
        seller = await factory.seller()
        product = await factory.product(seller)
        livestream_id = await make_livestream(factory, seller, products=(product["id"],))
    finally:
        await factory.close()
    viewer = await ws_client(two, livestream_id)
    closing.append(viewer)
    bus_one, bus_two = one.server.app[HUB].hub.bus, two.server.app[HUB].hub.bus

    redis_server.kill()
    await until(lambda: not bus_one.connected and not bus_two.connected)
    resp = await one.post(_drop_url(livestream_id), json={"productId": product["id"], "inSeconds": 120},
                          headers=seller.headers)
    assert resp.status == 200, await resp.text()
    drop = await resp.json()
    redis_server.start()
    await until(lambda: bus_one.connected and bus_two.connected)
    caught = await viewer.expect("drop:announced", timeout=20)
    assert caught["productId"] == product["id"]
    assert datetime.fromisoformat(caught["at"]) == datetime.fromisoformat(drop["at"])
    await asyncio.sleep(0.5)
    assert len(viewer.inbox.of("drop:announced")) == 1, "caught up once"
