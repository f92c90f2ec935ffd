"""The events protocol over the WebSocket: welcome, identity, and answers to bad messages."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient

from tests.factories import Factory, make_livestream
from tests.signaling.conftest import ws_client


async def test_welcome_carries_identity_and_room_snapshot(client: TestClient, factory: Factory, closing) -> None:
    seller = await factory.seller(name="Sally")
    product = await factory.product(seller, stock=7)
    livestream_id = await make_livestream(factory, seller, products=(product["id"],), highlighted=product["id"])
    viewer = await factory.user(name="Vic")

    anonymous = await ws_client(client, livestream_id)
    signed_in = await ws_client(client, livestream_id, viewer.access_token)
    closing.extend([anonymous, signed_in])

    assert anonymous.welcome["identity"] is None
    assert signed_in.welcome["identity"] == {"userId": viewer.id, "name": "Vic", "role": "user"}
    room = signed_in.welcome["room"]
    assert room["livestreamId"] == livestream_id and room["state"] == "live"
    assert room["highlightedProduct"]["id"] == product["id"]
    assert room["highlightedProduct"]["variants"][0]["stock"] == 7
    assert room["viewerCount"] == 2 and room["recentChat"] == []
    assert signed_in.welcome["sessionId"] != anonymous.welcome["sessionId"]


async def test_bad_messages_get_error_events_and_the_connection_stays_usable(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    viewer = await factory.user()
    livestream_id = await make_livestream(factory, seller)
    c = await ws_client(client, livestream_id, viewer.access_token)
    closing.append(c)

    cases = [
        ("{not json", "malformed_json", None),
        ("[1, 2]", "bad_message", None),
        (json.dumps({"type": "nope", "payload": {"ref": "r1"}}), "unknown_type", "r1"),
        (json.dumps({"type": "chat:send", "payload": {"ref": "r2"}}), "validation_error", "r2"),
        (json.dumps({"type": "chat:send", "payload": {"message": 5, "ref": "r3"}}), "validation_error", "r3"),
        (json.dumps({"type": "chat:send", "payload": {"message": "x" * 501, "ref": "r4"}}), "validation_error", "r4"),
        (json.dumps({"type": "chat:send", "payload": {"message": "hi", "extra": 1, "ref": "r5"}}), "validation_error", "r5"),
        (json.dumps({"type": "cart:add", "payload": {"productId": "x", "variantId": "y", "qty": 1, "ref": "r6"}}),
         "validation_error", "r6"),
        (json.dumps({"type": "reaction:send", "payload": {"kind": "<script>"}}), "validation_error", None),
        (json.dumps({"type": "chat:send", "payload": "hi"}), "validation_error", None),
        ("x" * 5000, "too_large", None),
    ]
    for raw, code, ref in cases:
        await c.send_raw(raw)
        error = await c.expect("error")
        assert (error["code"], error["ref"]) == (code, ref), raw[:60]
    await c.send_raw(b"\x00binary")
    assert (await c.expect("error"))["code"] == "bad_message"

    await c.send("chat:send", message="still here", ref="ok")
    ack = await c.expect("ack", ref="ok")
    assert (await c.expect("chat:new"))["id"] == ack["id"]


async def test_anonymous_viewers_see_chat_but_cannot_chat_or_buy_until_auth(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    viewer = await factory.user(name="Late Login")
    product = await factory.product(seller)
    livestream_id = await make_livestream(factory, seller)
    anon = await ws_client(client, livestream_id)
    talker = await ws_client(client, livestream_id, seller.access_token)
    closing.extend([anon, talker])

    await anon.send("chat:send", message="hello", ref="a")
    assert (await anon.expect("error", ref="a"))["code"] == "unauthenticated"
    await anon.send("buy:now", productId=product["id"], variantId=product["variantIds"][0], qty=1, ref="b")
    assert (await anon.expect("error", ref="b"))["code"] == "unauthenticated"
    await talker.send("chat:send", message="welcome all", ref="t")
    assert (await anon.expect("chat:new"))["message"] == "welcome all"

    await anon.send("auth", accessToken="garbage", ref="bad")
    assert (await anon.expect("error", ref="bad"))["code"] == "unauthenticated"
    await anon.send("auth", accessToken=viewer.access_token, ref="login")
    assert (await anon.expect("ack", ref="login"))["identity"]["name"] == "Late Login"
    await anon.send("chat:send", message="now I can talk", ref="c")
    await anon.expect("ack", ref="c")
    assert (await talker.expect("chat:new", message="now I can talk"))["user"] == {"id": viewer.id, "name": "Late Login"}


async def test_websocket_refusals_are_http_errors(client: TestClient, factory: Factory) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    resp = await client.get(f"/api/v1/livestreams/{livestream_id}/events")
    assert resp.status == 426 and (await resp.json())["error"]["code"] == "upgrade_required"
    resp = await client.get("/api/v1/livestreams/00000000-0000-0000-0000-000000000000/events",
                            headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
    assert resp.status == 404
    resp = await client.get(f"/api/v1/livestreams/{livestream_id}/events?token=nope")
    assert resp.status == 401
