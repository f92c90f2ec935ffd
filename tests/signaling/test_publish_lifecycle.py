"""A show's lifecycle through WHIP/WHEP: failed attempts, pauses and encoder switches.

Real aiortc publishers and viewers through the HTTP API and the livestream record in
PostgreSQL. The SFU's timers are shortened on the running app's SFU settings (they are
read when a session or room is created).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCRtpSender

from server.keys import SFU
from tests.factories import Factory
from tests.media.peers import PatternTrack, Viewer, accept, local_offer, new_pc, wait_for
from tests.signaling.test_whip_http import (
    SDP,
    livestream,
    publish_http,
    status_of,
    watch_http,
)
from tests.signaling.test_whip_http import (
    wait_for_status as wait_status,
)

pytestmark = pytest.mark.timeout(120)


def shorten(client: TestClient, **timers: float) -> None:
    """Shorten the running SFU's timers for this test."""
    for name, value in timers.items():
        setattr(client.app[SFU].settings, name, value)


async def test_publish_that_never_connects_leaves_a_scheduled_show_scheduled(
    client: TestClient, factory: Factory, clean_db: str,
) -> None:
    shorten(client, connect_timeout_seconds=1.0, publisher_grace_seconds=0.5)
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    ghost = new_pc()
    ghost.addTransceiver(PatternTrack(), direction="sendonly")
    resp = await client.post(
        f"/api/v1/livestreams/{stream['id']}/publish", data=await local_offer(ghost),
        headers={**SDP, "Authorization": f"Bearer {stream['streamKey']}"},
    )
    assert resp.status == 201, await resp.text()
    await ghost.close()  # the 201 arrived, the connection never comes
    assert await status_of(clean_db, stream["id"]) == "scheduled"  # not live on the 201
    # Connect timeout (1 s), then well past the grace period: still nothing happened.
    await wait_for(lambda: not client.app[SFU].sessions, timeout=10)
    await asyncio.sleep(2.0)
    assert await status_of(clean_db, stream["id"]) == "scheduled"
    assert stream["id"] not in client.app[SFU].rooms

    # The seller's working retry is accepted and goes live with its first media.
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    viewer = None
    try:
        await wait_status(clean_db, stream["id"], "live")
        viewer, _ = await watch_http(client, stream["id"])
        await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=20)
    finally:
        if viewer is not None:
            await viewer.close()
        await publisher.close()


async def test_paused_show_stays_resumable_until_the_idle_timeout(
    client: TestClient, factory: Factory, clean_db: str,
) -> None:
    shorten(client, publisher_grace_seconds=0.5, publisher_idle_timeout_seconds=6.0)
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    first, _ = await publish_http(client, stream["id"], seller.access_token)
    await wait_status(clean_db, stream["id"], "live")
    viewer, _ = await watch_http(client, stream["id"])
    second = None
    try:
        await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=20)
        await first.close()
        await wait_status(clean_db, stream["id"], "paused")  # viewers are told after the grace
        await asyncio.sleep(1.5)  # three grace periods: the old code ended the show here
        assert await status_of(clean_db, stream["id"]) == "paused"

        seen = len(viewer.video_frames)
        second, _ = await publish_http(client, stream["id"], seller.access_token)
        await wait_status(clean_db, stream["id"], "live")
        await wait_for(lambda: len(viewer.video_frames) >= seen + 5, timeout=20)  # same session

        await second.close()
        await wait_status(clean_db, stream["id"], "paused")
        # Nobody comes back: the idle timeout (6 s here, 30 minutes by default) ends it.
        await wait_status(clean_db, stream["id"], "ended", timeout=20)
        await wait_for(lambda: stream["id"] not in client.app[SFU].rooms, timeout=10)
    finally:
        await viewer.close()
        await first.close()
        if second is not None:
            await second.close()


async def test_reconnecting_publisher_may_switch_codec_without_viewers(
    client: TestClient, factory: Factory, clean_db: str,
) -> None:
    shorten(client, publisher_grace_seconds=30.0)
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    browser, _ = await publish_http(client, stream["id"], seller.access_token, "video/VP8")
    await wait_status(clean_db, stream["id"], "live")
    await browser.close()
    await wait_for(lambda: client.app[SFU].rooms[stream["id"]].publisher is None, timeout=10)
    # Within the grace period, the seller starts OBS (H.264) instead.
    obs, _ = await publish_http(client, stream["id"], stream["streamKey"], "video/H264")
    viewer = None
    try:
        assert client.app[SFU].rooms[stream["id"]].video_codec.mimeType == "video/H264"
        viewer, _ = await watch_http(client, stream["id"])
        await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=20)
        answer = viewer.pc.remoteDescription.sdp
        assert "H264/90000" in answer and "VP8/90000" not in answer
    finally:
        if viewer is not None:
            await viewer.close()
        await obs.close()


async def _watch_with_events(client: TestClient, livestream_id: str) -> tuple[Viewer, list[dict[str, Any]], str]:
    """Watch with an `events` DataChannel; return the viewer, its events and Location."""
    pc = new_pc()
    viewer = Viewer(pc)
    pc.on("track", viewer.consume)
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("events")
    received: list[dict[str, Any]] = []

    @channel.on("message")
    def on_message(data: str) -> None:
        decoded = json.loads(data)
        received.extend(decoded if isinstance(decoded, list) else [decoded])

    resp = await client.post(
        f"/api/v1/livestreams/{livestream_id}/watch", data=await local_offer(pc), headers=SDP
    )
    assert resp.status == 201, await resp.text()
    await accept(pc, await resp.text())
    return viewer, received, resp.headers["Location"]


async def test_codec_switch_with_viewers_tells_them_to_rejoin(
    client: TestClient, factory: Factory, clean_db: str,
) -> None:
    shorten(client, publisher_grace_seconds=30.0)
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    browser, _ = await publish_http(client, stream["id"], seller.access_token, "video/VP8")
    await wait_status(clean_db, stream["id"], "live")
    viewer, received, _ = await _watch_with_events(client, stream["id"])
    obs = rejoined = None
    try:
        await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=20)
        await wait_for(lambda: any(e["type"] == "welcome" for e in received), timeout=15)
        await browser.close()
        await wait_for(lambda: client.app[SFU].rooms[stream["id"]].publisher is None, timeout=10)

        # An H.264-only encoder reconnects: accepted, and the VP8 viewer is told to rejoin.
        obs, _ = await publish_http(client, stream["id"], stream["streamKey"], "video/H264")
        await wait_for(lambda: any(e["type"] == "stream:renegotiate" for e in received), timeout=10)
        event = next(e for e in received if e["type"] == "stream:renegotiate")
        assert event["payload"] == {"reason": "codec_changed"}
        # Its old session is closed (not left connected and silent) ...
        await wait_for(lambda: viewer.pc.connectionState in ("closed", "failed"), timeout=15)
        # ... and watching again gets the new codec.
        rejoined, _ = await watch_http(client, stream["id"])
        await wait_for(lambda: len(rejoined.video_frames) >= 5, timeout=20)
        assert "H264/90000" in rejoined.pc.remoteDescription.sdp
    finally:
        await viewer.close()
        await browser.close()
        for peer in (obs, rejoined):
            if peer is not None:
                await peer.close()


async def test_reconnect_offering_the_rooms_codec_keeps_its_viewers(
    client: TestClient, factory: Factory, clean_db: str,
) -> None:
    """A reconnecting publisher that can send the viewers' codec keeps it: nobody rejoins."""
    shorten(client, publisher_grace_seconds=30.0)
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    first, _ = await publish_http(client, stream["id"], seller.access_token, "video/VP8")
    await wait_status(clean_db, stream["id"], "live")
    viewer, received, _ = await _watch_with_events(client, stream["id"])
    second = None
    try:
        await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=20)
        await first.close()
        await wait_for(lambda: client.app[SFU].rooms[stream["id"]].publisher is None, timeout=10)
        # The new encoder prefers H.264 but offers VP8 too: the room's VP8 is kept.
        second = new_pc()
        transceiver = second.addTransceiver(PatternTrack(320, 240), direction="sendonly")
        codecs = RTCRtpSender.getCapabilities("video").codecs
        transceiver.setCodecPreferences(
            [c for c in codecs if c.mimeType == "video/H264"]
            + [c for c in codecs if c.mimeType in ("video/VP8", "video/rtx")]
        )
        resp = await client.post(
            f"/api/v1/livestreams/{stream['id']}/publish", data=await local_offer(second),
            headers={**SDP, "Authorization": f"Bearer {seller.access_token}"},
        )
        assert resp.status == 201, await resp.text()
        await accept(second, await resp.text())
        assert client.app[SFU].rooms[stream["id"]].video_codec.mimeType == "video/VP8"
        seen = len(viewer.video_frames)
        await wait_for(lambda: len(viewer.video_frames) >= seen + 5, timeout=20)
        assert not any(e["type"] == "stream:renegotiate" for e in received)
        assert viewer.pc.connectionState == "connected"
    finally:
        await viewer.close()
        await first.close()
        if second is not None:
            await second.close()


def test_idle_timeout_setting_reaches_the_sfu(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from server.config import Settings

    settings = Settings.from_env({"PUBLISHER_IDLE_TIMEOUT": "90"}, data_dir=tmp_path)
    assert settings.publisher_idle_timeout == 90.0
    assert Settings.from_env({}, data_dir=tmp_path).publisher_idle_timeout == 1800.0


async def test_app_passes_the_idle_timeout_to_the_sfu(aiohttp_client, clean_db: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from server.app import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path, publisher_idle_timeout=123.0), clean_db, run_migrations=False)
    client = await aiohttp_client(app)
    assert client.app[SFU].settings.publisher_idle_timeout_seconds == 123.0
