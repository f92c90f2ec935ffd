"""Several app instances sharing one Redis: one room across processes, and Redis outages."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server import notify
from server.app import create_app
from server.config import Secret, Settings
from server.keys import HUB
from tests.factories import Factory, make_livestream
from tests.signaling.conftest import ws_client


@pytest.fixture
async def second(aiohttp_client: Any, clean_db: str, settings: Settings) -> TestClient:
    """A second app instance on the same database and Redis (another server process)."""
    return await aiohttp_client(create_app(settings, clean_db, run_migrations=False))


async def test_two_instances_share_chat_counts_highlights_stock_and_limits(
    client: TestClient, second: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    product = await factory.product(seller, stock=5)
    livestream_id = await make_livestream(factory, seller, products=(product["id"],))
    talker = await factory.user(name="Across")
    a = [await ws_client(client, livestream_id, seller.access_token), await ws_client(client, livestream_id)]
    b = [await ws_client(second, livestream_id, talker.access_token)] + [
        await ws_client(second, livestream_id) for _ in range(2)
    ]
    closing.extend(a + b)

    for c in a + b:  # the seller's own connection (a[0]) is not audience
        await c.expect("viewer:count", count=4, timeout=8)

    await b[0].send("chat:send", message="from B", ref="b1")
    await b[0].expect("ack", ref="b1")
    await a[0].send("chat:send", message="from A", ref="a1")
    await a[0].expect("ack", ref="a1")
    for c in a + b:
        assert (await c.expect("chat:new"))["message"] == "from B"
        assert (await c.expect("chat:new"))["message"] == "from A"
    await asyncio.sleep(0.3)
    for c in a + b:
        assert len(c.inbox.of("chat:new")) == 2, "delivered once: a process skips its own messages"

    contract = {"id": product["id"], "title": product["title"], "variants": []}
    await notify.room_event(client.server.app, livestream_id, "product:highlighted", contract)
    await notify.room_event(client.server.app, livestream_id, "order:new", {"orderId": "o1"}, audience="seller")
    for c in b:
        assert await c.expect("product:highlighted") == contract
    assert await a[0].expect("order:new") == {"orderId": "o1"}
    late = await ws_client(second, livestream_id)
    closing.append(late)
    assert late.welcome["room"]["highlightedProduct"] == contract

    conn = await factory.conn()
    await conn.execute("UPDATE product_variants SET stock = 3 WHERE id = $1", product["variantIds"][0])
    notify.stock_changed(client.server.app, product["variantIds"])
    for c in b:
        assert await c.expect("stock:update") == {
            "productId": product["id"], "variantId": product["variantIds"][0], "stock": 3,
        }
    assert all("order:new" not in [e["type"] for e in c.inbox.all] for c in a[1:] + b)

    # The chat limit (5 per window) counts the user's messages in every process.
    a_talker = await ws_client(client, livestream_id, talker.access_token)
    closing.append(a_talker)
    for n in range(4):  # one already sent from B
        await (a_talker if n % 2 else b[0]).send("chat:send", message=f"n{n}", ref=f"n{n}")
        await (a_talker if n % 2 else b[0]).expect("ack", ref=f"n{n}")
    await a_talker.send("chat:send", message="sixth", ref="six")
    assert (await a_talker.expect("error", ref="six"))["code"] == "rate_limited"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server on a free port that a test can kill and restart."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            import time

            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    yield server
    server.kill()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


@pytest.fixture
async def pair_on_own_redis(
    aiohttp_client: Any, clean_db: str, settings: Settings, own_redis: RedisServer,
) -> AsyncIterator[tuple[TestClient, TestClient]]:
    local = dataclasses.replace(settings, redis_url=Secret(own_redis.url))
    one = await aiohttp_client(create_app(local, clean_db, run_migrations=False))
    two = await aiohttp_client(create_app(local, clean_db, run_migrations=False))
    yield one, two


async def test_redis_going_away_degrades_to_local_delivery_and_recovers(
    pair_on_own_redis: tuple[TestClient, TestClient], own_redis: RedisServer, clean_db: str,
    caplog: pytest.LogCaptureFixture, closing,
) -> None:
    one, two = pair_on_own_redis
    factory = Factory(one, clean_db)
    try:
        seller = await factory.seller()
        livestream_id = await make_livestream(factory, seller)
    finally:
        await factory.close()
    on_one = await ws_client(one, livestream_id, seller.access_token)
    watcher_one = await ws_client(one, livestream_id)
    on_two = await ws_client(two, livestream_id)
    closing.extend([on_one, watcher_one, on_two])
    await on_one.send("chat:send", message="before", ref="1")
    await on_two.expect("chat:new", message="before")

    caplog.set_level(logging.WARNING, logger="shopstream.realtime.bus")
    own_redis.kill()
    bus_one = one.server.app[HUB].hub.bus
    await _until(lambda: not bus_one.connected)
    await on_one.send("chat:send", message="during", ref="2")
    await on_one.expect("ack", ref="2")
    await watcher_one.expect("chat:new", message="during")
    assert any("redis unavailable" in r.getMessage() for r in caplog.records)

    own_redis.start()
    bus_two = two.server.app[HUB].hub.bus
    await _until(lambda: bus_one.connected and bus_two.connected)
    await on_one.send("chat:send", message="after", ref="3")
    await on_two.expect("chat:new", message="after")
    assert any("redis is back" in r.getMessage() for r in caplog.records)
    # What was said while Redis was away is caught up from the stored chat: once, in order.
    assert [m["message"] for m in on_two.inbox.of("chat:new")] == ["before", "during", "after"]
