"""A viewer whose `events` DataChannel closes has left: its media session ends at once.

Browsers close a page's channels (SCTP ABORT) when the page goes; without this the SFU
would keep counting the viewer until ICE consent runs out (~30 s).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient

from server.keys import SFU
from tests.factories import Factory
from tests.media.peers import Viewer, accept, local_offer, new_pc, wait_for
from tests.signaling.test_whip_http import SDP, livestream, publish_http


async def test_closing_the_events_channel_ends_the_viewer_media_session(client: TestClient, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    pc = new_pc()
    try:
        viewer = Viewer(pc)
        pc.on("track", viewer.consume)
        channel = pc.createDataChannel("events")
        opened = asyncio.Event()
        channel.on("open", opened.set)
        pc.addTransceiver("video", direction="recvonly")
        resp = await client.post(f"/api/v1/livestreams/{stream['id']}/watch", data=await local_offer(pc), headers=SDP)
        assert resp.status == 201, await resp.text()
        await accept(pc, await resp.text())
        await asyncio.wait_for(opened.wait(), 15)
        sfu = client.server.app[SFU]
        await wait_for(lambda: len(sfu.rooms[stream["id"]].viewers) == 1, timeout=15)
        # The peer connection stays up; only the channel goes, as when a page unloads.
        closed = time.monotonic()
        channel.close()
        await wait_for(lambda: len(sfu.rooms[stream["id"]].viewers) == 0, timeout=2.0)
        assert time.monotonic() - closed < 2.0
        assert pc.connectionState in ("connected", "closed")  # nothing else took it down first
    finally:
        await pc.close()
        await publisher.close()
