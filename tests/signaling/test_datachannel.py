"""Real aiortc DataChannel viewers and WebSocket clients in one room."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp.test_utils import TestClient

from signaling.hub import Participant
from tests.factories import Factory, make_livestream
from tests.signaling.conftest import dc_client, ws_client


async def test_datachannel_and_websocket_viewers_share_one_room(
    client: TestClient, factory: Factory, clean_db: str, loopback_ice: None, closing,
) -> None:
    seller = await factory.seller(name="Sam Seller")
    livestream_id = await make_livestream(factory, seller)
    app = client.server.app
    publisher = await dc_client(app, livestream_id, Participant(seller.id, "Sam Seller", "seller"), publisher=True)
    closing.append(publisher)
    viewers = []
    for start in range(0, 30, 10):  # connect in waves: ICE and DTLS on two cores take a while
        viewers += await asyncio.gather(*(dc_client(app, livestream_id) for _ in range(10)))
    closing.extend(viewers)
    chatter = await factory.user(name="Wendy")
    sockets = [await ws_client(client, livestream_id, chatter.access_token)]
    sockets += [await ws_client(client, livestream_id) for _ in range(9)]
    closing.extend(sockets)
    everyone = [publisher, *viewers, *sockets]

    count = await sockets[-1].expect("viewer:count", count=40)
    assert count == {"count": 40}, "the publisher is not a viewer"

    for n in range(4):
        sender = publisher if n % 2 else sockets[0]
        await sender.send("chat:send", message=f"msg {n}", ref=f"r{n}")
        await sender.expect("ack", ref=f"r{n}", timeout=10)
    for n in range(4, 10):  # a burst: several messages per tick go out as one message
        await publisher.send("chat:send", message=f"msg {n}", ref=f"r{n}")
    for n in range(4, 10):
        await publisher.expect("ack", ref=f"r{n}", timeout=10)
    for c in everyone:
        for _ in range(10):
            await c.expect("chat:new", timeout=20)
        assert [m["message"] for m in c.inbox.of("chat:new")] == [f"msg {n}" for n in range(10)]
        assert c.inbox.messages < len(c.inbox.all), "events arrive batched"
    names = {m["user"]["name"] for m in publisher.inbox.of("chat:new")}
    assert names == {"Sam Seller", "Wendy"}
    conn = await asyncpg.connect(clean_db)
    assert await conn.fetchval("SELECT count(*) FROM chat_messages WHERE livestream_id = $1", livestream_id) == 10
    await conn.close()

    await viewers[0].send_raw("{broken")
    assert (await viewers[0].expect("error", timeout=10))["code"] == "malformed_json"
    await viewers[0].send("chat:send", message="anon", ref="anon")
    assert (await viewers[0].expect("error", ref="anon", timeout=10))["code"] == "unauthenticated"
