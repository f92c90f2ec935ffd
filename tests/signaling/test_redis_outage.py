"""Redis killed and restarted under two server processes: the chat of the outage catches up.

Two app instances (two server processes as far as the hub knows: each has its own
process id, hub and subscription) share one database and one Redis that the test runs
itself on a free port, so killing it harms nobody else. Viewers on both instances
watch one room while Redis is away: local delivery continues in each process; once
Redis is back, cross-process delivery resumes and each process's viewers receive the
chat the other process stored during the outage, exactly once and in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Secret
from server.keys import HUB
from signaling.catchup import ChatLog
from tests.conftest import make_settings
from tests.factories import Factory, make_livestream
from tests.signaling.conftest import EventsClient, ws_client
from tests.signaling.test_redis import RedisServer

pytestmark = pytest.mark.timeout(180)

DURING = 24  # messages from each process while Redis is away


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    server = RedisServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def two_processes(
    redis_server: RedisServer, aiohttp_client: Any, clean_db: str, tmp_path: Path,
) -> AsyncIterator[tuple[TestClient, TestClient]]:
    settings = make_settings(tmp_path, redis_url=Secret(redis_server.url),
                             redis_prefix=f"outage-{secrets.token_hex(4)}:", realtime_tick_ms=50,
                             chat_rate_limit=1000)
    one = await aiohttp_client(create_app(settings, clean_db, run_migrations=False))
    two = await aiohttp_client(create_app(dataclasses.replace(settings), clean_db, run_migrations=False))
    yield one, two


async def until(condition: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def chat_of(client: EventsClient) -> list[str]:
    return [m["message"] for m in client.inbox.of("chat:new")]


async def say(talker: EventsClient, message: str) -> None:
    await talker.send("chat:send", message=message, ref=message)
    await talker.expect("ack", ref=message, timeout=15)
    # A connection may send 20 messages a second (signaling/sessions.py): stay under it,
    # now that a quiet room acknowledges at once.
    await asyncio.sleep(0.06)


async def test_chat_sent_while_redis_is_down_reaches_the_other_process_once_in_order(
    two_processes: tuple[TestClient, TestClient], redis_server: RedisServer, clean_db: str, closing: list,
) -> None:
    one, two = two_processes
    factory = Factory(one, clean_db)
    try:
        seller = await factory.seller()
        buyer = await factory.user(name="Buyer on two")
        product = await factory.product(seller)
        livestream_id = await make_livestream(factory, seller, products=(product["id"],))
    finally:
        await factory.close()
    talker_one = await ws_client(one, livestream_id, seller.access_token)
    talker_two = await ws_client(two, livestream_id, buyer.access_token)
    viewers_one = [await ws_client(one, livestream_id) for _ in range(2)]
    viewers_two = [await ws_client(two, livestream_id) for _ in range(2)]
    closing.extend([talker_one, talker_two, *viewers_one, *viewers_two])
    bus_one, bus_two = one.server.app[HUB].hub.bus, two.server.app[HUB].hub.bus

    await say(talker_one, "before")
    for viewer in viewers_two:
        await viewer.expect("chat:new", message="before", timeout=10)

    redis_server.kill()
    await until(lambda: not bus_one.connected and not bus_two.connected)
    from_one = [f"one-{n}" for n in range(DURING)]
    from_two = [f"two-{n}" for n in range(DURING)]
    for a, b in zip(from_one, from_two, strict=True):
        await say(talker_one, a)
        await say(talker_two, b)
    # The seller highlights a product through process one meanwhile.
    resp = await one.post(f"/api/v1/seller/livestreams/{livestream_id}/highlight",
                          json={"productId": product["id"]}, headers=seller.headers)
    assert resp.status == 200, await resp.text()
    # Local delivery goes on in each process while Redis is away.
    await until(lambda: all(chat_of(v)[-DURING:] == from_one for v in viewers_one))
    await until(lambda: all(chat_of(v)[-DURING:] == from_two for v in viewers_two))
    assert not any(m.startswith("two-") for v in viewers_one for m in chat_of(v))
    assert not any(m.startswith("one-") for v in viewers_two for m in chat_of(v))

    redis_server.start()
    await until(lambda: bus_one.connected and bus_two.connected)
    await say(talker_one, "after-one")
    await say(talker_two, "after-two")

    def caught_up(viewer: EventsClient, theirs: list[str]) -> bool:
        chat = chat_of(viewer)
        return "after-one" in chat and "after-two" in chat and all(m in chat for m in theirs)

    await until(lambda: all(caught_up(v, from_two) for v in viewers_one)
                and all(caught_up(v, from_one) for v in viewers_two))
    await asyncio.sleep(0.5)  # anything delivered twice would have arrived by now
    for viewers, theirs in ((viewers_one, from_two), (viewers_two, from_one)):
        for viewer in viewers:
            chat = chat_of(viewer)
            assert len(chat) == len(set(chat)), f"a message was delivered twice: {chat}"
            assert sorted(chat) == sorted(["before", *from_one, *from_two, "after-one", "after-two"])
            assert [m for m in chat if m in theirs] == theirs, "the caught-up chat is out of order"
            # The missed chat arrives before anything sent after Redis came back from that process.
            sender_after = "after-two" if theirs is from_two else "after-one"
            assert chat.index(theirs[-1]) < chat.index(sender_after)
    # The highlight made during the outage reaches process two's viewers too, once.
    for viewer in viewers_two:
        assert [p["id"] for p in viewer.inbox.of("product:highlighted")] == [product["id"]]
    assert one.server.app[HUB].hub.stats["caught_up"] == DURING
    assert two.server.app[HUB].hub.stats["caught_up"] == DURING


def test_chat_log_remembers_what_it_delivered_and_where_to_catch_up_from() -> None:
    log = ChatLog(margin=30.0, limit=100)
    assert log.first_time({"id": "a", "ts": 1000.0})
    assert not log.first_time({"id": "a", "ts": 1000.0})
    assert log.release() == (False, None)  # not held: nothing to catch up
    log.hold()
    log.first_time({"id": "b", "ts": 2000.0})  # local chat during the outage moves nothing held
    assert log.release() == (True, 970.0)
    assert log.delivered("a") and log.delivered("b")
    fresh = ChatLog()
    fresh.hold()
    assert fresh.release() == (True, None)  # held before any chat: read it all (bounded)
    busy = ChatLog(margin=30.0, limit=10)
    for n in range(50):
        busy.first_time({"id": str(n), "ts": 5000.0 + n})
    assert not busy.delivered("0") and busy.delivered("49")


async def test_a_room_opened_during_the_outage_catches_up_from_what_it_opened_with(
    two_processes: tuple[TestClient, TestClient], redis_server: RedisServer, clean_db: str, closing: list,
) -> None:
    one, two = two_processes
    factory = Factory(one, clean_db)
    try:
        seller = await factory.seller()
        livestream_id = await make_livestream(factory, seller)
    finally:
        await factory.close()
    talker = await ws_client(one, livestream_id, seller.access_token)
    closing.append(talker)
    await say(talker, "old")
    bus_one, bus_two = one.server.app[HUB].hub.bus, two.server.app[HUB].hub.bus

    redis_server.kill()
    await until(lambda: not bus_one.connected and not bus_two.connected)
    await say(talker, "before-join")
    late = await ws_client(two, livestream_id)  # process two opens the room only now
    closing.append(late)
    assert [m["message"] for m in late.welcome["room"]["recentChat"]] == ["old", "before-join"]
    said = [f"m{n}" for n in range(10)]
    for message in said:
        await say(talker, message)

    redis_server.start()
    await until(lambda: bus_one.connected and bus_two.connected)
    await say(talker, "after")
    await until(lambda: "after" in chat_of(late))
    await asyncio.sleep(0.5)
    assert chat_of(late) == [*said, "after"], "welcome's chat again, a gap, a duplicate or disorder"
