"""Viewer quality controls: the WHEP `quality` parameter and `quality:set` on the events channel."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient

from server.keys import SFU
from tests.factories import Factory
from tests.media.peers import Viewer, accept, local_offer, new_pc, wait_for
from tests.signaling.conftest import ws_client
from tests.signaling.test_whip_http import SDP, livestream, publish_http


def quality_of(client: TestClient, livestream_id: str) -> list[str]:
    """Return the quality every viewer of the room asked for."""
    room = client.app[SFU].rooms[livestream_id]
    return [entry.quality for entry in room.viewers.values()]


async def test_watch_takes_a_quality_and_refuses_an_unknown_one(client, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], seller.access_token)
    viewer = Viewer(new_pc())
    try:
        viewer.pc.addTransceiver("video", direction="recvonly")
        offer = await local_offer(viewer.pc)
        url = f"/api/v1/livestreams/{stream['id']}/watch"
        resp = await client.post(url + "?quality=ultra", data=offer, headers=SDP)
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["code"] == "validation_error" and "quality" in error["message"]
        assert quality_of(client, stream["id"]) == []
        resp = await client.post(url + "?quality=low", data=offer, headers=SDP)
        assert resp.status == 201, await resp.text()
        assert quality_of(client, stream["id"]) == ["low"]
    finally:
        await viewer.pc.close()
        await publisher.close()


async def test_quality_set_on_the_events_channel_pins_the_viewers_quality(client, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], seller.access_token)
    pc = new_pc()
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("events")
    received: list[dict] = []

    @channel.on("message")
    def on_message(data: str) -> None:
        decoded = json.loads(data)
        received.extend(decoded if isinstance(decoded, list) else [decoded])

    def of(kind: str) -> list[dict]:
        return [e["payload"] for e in received if e["type"] == kind]

    ws = None
    try:
        resp = await client.post(f"/api/v1/livestreams/{stream['id']}/watch", data=await local_offer(pc),
                                 headers=SDP)
        assert resp.status == 201
        await accept(pc, await resp.text())
        await wait_for(lambda: of("welcome"), timeout=15)
        assert quality_of(client, stream["id"]) == ["auto"]

        channel.send(json.dumps({"type": "quality:set", "payload": {"layer": "low", "ref": "q1"}}))
        await wait_for(lambda: of("quality:current") and of("ack"), timeout=10)
        # A single-layer publisher: the choice is kept (for a later simulcast), no layer yet.
        assert of("quality:current") == [{"quality": "low", "layer": None}]
        assert quality_of(client, stream["id"]) == ["low"]

        channel.send(json.dumps({"type": "quality:set", "payload": {"layer": "ultra"}}))
        await wait_for(lambda: of("error"), timeout=10)
        assert of("error")[0]["code"] == "validation_error"

        # The WebSocket has no media session to change.
        ws = await ws_client(client, stream["id"])
        await ws.send("quality:set", layer="high")
        error = await ws.expect("error")
        assert error["code"] == "no_media_session"
        assert quality_of(client, stream["id"]) == ["low"]
    finally:
        if ws is not None:
            await ws.close()
        await pc.close()
        await publisher.close()
