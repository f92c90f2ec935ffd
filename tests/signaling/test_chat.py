"""Chat over the events protocol: fan-out, storage, limits, slow mode, sanctions, moderation."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp.test_utils import TestClient

from tests.factories import Factory, make_livestream
from tests.signaling.conftest import ws_client


async def test_every_message_reaches_every_recipient_once_in_order_and_is_stored(
    client: TestClient, factory: Factory, clean_db: str, closing,
) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    senders = [await factory.user() for _ in range(3)]
    clients = [await ws_client(client, livestream_id, u.access_token) for u in senders]
    clients += [await ws_client(client, livestream_id) for _ in range(20)]
    closing.extend(clients)

    async def talk(i: int) -> None:
        for n in range(5):
            await clients[i].send("chat:send", message=f"{i}:{n}", ref=f"{i}-{n}")
            await clients[i].expect("ack", ref=f"{i}-{n}")

    await asyncio.gather(*(talk(i) for i in range(3)))
    for c in clients:
        for _ in range(15):
            await c.expect("chat:new")
    orders = [[m["message"] for m in c.inbox.of("chat:new")] for c in clients]
    assert all(order == orders[0] for order in orders), "every recipient sees one order"
    assert sorted(orders[0]) == sorted(f"{i}:{n}" for i in range(3) for n in range(5)), "each exactly once"
    for i in range(3):
        mine = [m for m in orders[0] if m.startswith(f"{i}:")]
        assert mine == [f"{i}:{n}" for n in range(5)], "each sender's messages in the order sent"
    conn = await asyncpg.connect(clean_db)
    stored = await conn.fetchval("SELECT count(*) FROM chat_messages WHERE livestream_id = $1", livestream_id)
    await conn.close()
    assert stored == 15
    late = await ws_client(client, livestream_id)
    closing.append(late)
    # History is ordered by insert time; concurrent senders may interleave differently
    # from the live order, but each sender's own messages keep their order.
    history = [m["message"] for m in late.welcome["room"]["recentChat"]]
    assert sorted(history) == sorted(orders[0])
    for i in range(3):
        assert [m for m in history if m.startswith(f"{i}:")] == [f"{i}:{n}" for n in range(5)]


async def test_rate_limit_answers_a_clear_error_and_the_seller_is_exempt(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    viewer = await factory.user()
    livestream_id = await make_livestream(factory, seller)
    v = await ws_client(client, livestream_id, viewer.access_token)
    s = await ws_client(client, livestream_id, seller.access_token)
    closing.extend([v, s])
    for n in range(5):  # CHAT_RATE_LIMIT default: 5 per 10 s
        await v.send("chat:send", message=f"m{n}", ref=f"v{n}")
        await v.expect("ack", ref=f"v{n}")
    await v.send("chat:send", message="one too many", ref="v5")
    error = await v.expect("error", ref="v5")
    assert error["code"] == "rate_limited" and 1 <= error["details"]["retryAfter"] <= 10
    for n in range(8):
        await s.send("chat:send", message=f"seller {n}", ref=f"s{n}")
        await s.expect("ack", ref=f"s{n}")


async def test_slow_mode_blocked_words_and_links_follow_the_livestream_settings(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    viewer = await factory.user()
    livestream_id = await make_livestream(
        factory, seller, chat_settings={"slowModeSeconds": 30, "blockedWords": ["Scam"], "blockLinks": True},
    )
    v = await ws_client(client, livestream_id, viewer.access_token)
    closing.append(v)
    await v.send("chat:send", message="this is a SCAM!", ref="w")
    assert (await v.expect("error", ref="w"))["code"] == "blocked_content"
    await v.send("chat:send", message="scampi is fine", ref="fine")
    await v.expect("ack", ref="fine")
    for link in ("see https://evil.example/x", "go to www.evil.test", "visit cheap-stuff.shop now"):
        await v.send("chat:send", message=link, ref="link")
        assert (await v.expect("error", ref="link"))["code"] == "links_blocked"
    await v.send("chat:send", message="second message", ref="slow")
    error = await v.expect("error", ref="slow")
    assert error["code"] == "slow_mode" and 25 <= error["details"]["retryAfter"] <= 30


async def test_mute_ban_and_delete_by_the_seller(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    other_seller = await factory.seller()
    troll = await factory.user()
    livestream_id = await make_livestream(factory, seller)
    t = await ws_client(client, livestream_id, troll.access_token)
    watcher = await ws_client(client, livestream_id)
    closing.extend([t, watcher])
    url = f"/api/v1/seller/livestreams/{livestream_id}/moderation"

    await t.send("chat:send", message="rude words", ref="1")
    message_id = (await t.expect("ack", ref="1"))["id"]
    await watcher.expect("chat:new", id=message_id)

    resp = await client.post(url, json={"action": "delete", "messageId": message_id}, headers=other_seller.headers)
    assert resp.status == 404, "another seller's livestream is not found"
    resp = await client.post(url, json={"action": "delete", "messageId": message_id}, headers=troll.headers)
    assert resp.status == 403
    resp = await client.post(url, json={"action": "delete", "messageId": message_id}, headers=seller.headers)
    assert resp.status == 200, await resp.text()
    assert await watcher.expect("chat:deleted") == {"id": message_id}
    await t.expect("chat:deleted", id=message_id)
    late = await ws_client(client, livestream_id)
    closing.append(late)
    assert late.welcome["room"]["recentChat"] == []

    resp = await client.post(url, json={"action": "mute"}, headers=seller.headers)
    assert resp.status == 400
    resp = await client.post(url, json={"action": "mute", "userId": troll.id, "seconds": 2}, headers=seller.headers)
    assert resp.status == 200 and (await resp.json())["until"]
    assert (await t.expect("error"))["code"] == "muted", "the muted user is told at once"
    await t.send("chat:send", message="am I muted?", ref="2")
    assert (await t.expect("error", ref="2"))["code"] == "muted"
    await asyncio.sleep(2.2)
    await t.send("chat:send", message="mute is over", ref="3")
    await t.expect("ack", ref="3")

    resp = await client.post(url, json={"action": "ban", "userId": troll.id}, headers=seller.headers)
    assert resp.status == 200 and (await resp.json())["until"] is None
    await t.send("chat:send", message="banned?", ref="4")
    assert (await t.expect("error", ref="4"))["code"] == "banned"
    resp = await client.post(url, json={"action": "unban", "userId": troll.id}, headers=seller.headers)
    assert resp.status == 200
    await t.send("chat:send", message="back again", ref="5")
    await t.expect("ack", ref="5")

    resp = await client.post(url, json={"action": "ban", "userId": "00000000-0000-0000-0000-000000000000"},
                             headers=seller.headers)
    assert resp.status == 404
    resp = await client.post(url, json={"action": "delete", "messageId": "00000000-0000-0000-0000-000000000000"},
                             headers=seller.headers)
    assert resp.status == 404
    admin = await factory.admin()
    resp = await client.post(url, json={"action": "unmute", "userId": troll.id}, headers=admin.headers)
    assert resp.status == 200


async def test_chat_is_closed_after_the_livestream_ends(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    viewer = await factory.user()
    livestream_id = await make_livestream(factory, seller, status="ended")
    v = await ws_client(client, livestream_id, viewer.access_token)
    closing.append(v)
    await v.send("chat:send", message="anyone?", ref="x")
    assert (await v.expect("error", ref="x"))["code"] == "chat_closed"
