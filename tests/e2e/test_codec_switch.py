"""The viewer page when the seller switches encoder mid-show (browser VP8 <-> OBS H.264).

The room's viewers cannot decode the new codec on their old session: the server sends
`stream:renegotiate` and the page watches again on its own, on a new session that
carries the new codec. Nothing is left connected and silent.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from server.keys import SFU
from tests.e2e.conftest import PHONE, session_of, shoot
from tests.e2e.test_live_story import MISSING
from tests.e2e.test_reconnect import PLAYING, frames_increase, viewer_sessions, wait_for
from tests.factories import Factory
from tests.media.peers import wait_for as wait_until
from tests.signaling.test_whip_http import publish_http

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"backend routes not merged yet: {MISSING}")


async def test_viewer_page_rejoins_when_the_publisher_switches_codec(
    new_context: Any, factory: Factory, client: TestClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="media.sfu")
    seller = await factory.seller()
    shopper = await factory.user()
    resp = await client.post("/api/v1/seller/livestreams", json={"title": "New camera"}, headers=seller.headers)
    assert resp.status == 201, await resp.text()
    stream_id = (await resp.json())["id"]

    viewer_ctx, viewer_watch = await new_context(PHONE, session_of(shopper, "Sam"))
    viewer = await viewer_ctx.new_page()
    await viewer.goto("/")
    decodes_h264 = await viewer.evaluate(
        "() => RTCRtpReceiver.getCapabilities('video').codecs.some(c => c.mimeType === 'video/H264')"
    )
    # The brief's case is browser VP8 -> OBS H.264; a Chromium without H.264 tries the reverse.
    first, second = ("video/VP8", "video/H264") if decodes_h264 else ("video/H264", "video/VP8")

    browser_pub, _ = await publish_http(client, stream_id, seller.access_token, first)
    obs = None
    try:
        await viewer.goto(f"/live/{stream_id}")
        await wait_for(viewer, PLAYING, "viewer-playing", 3)
        [old] = viewer_sessions(client, stream_id)
        await wait_for(viewer, "() => document.body.dataset.events === 'open'", "events-open")

        # The seller's browser drops; within the grace period OBS publishes the other codec.
        await browser_pub.close()
        room = client.server.app[SFU].rooms[stream_id]
        await wait_until(lambda: room.publisher is None, timeout=10)
        obs, _ = await publish_http(client, stream_id, seller.access_token, second)
        assert room.video_codec.mimeType == second

        # The page is told, watches again by itself, and plays the new codec.
        await wait_until(lambda: [s.id for s in viewer_sessions(client, stream_id)] not in ([], [old.id]),
                         timeout=30)
        await wait_until(lambda: old.id not in client.server.app[SFU].sessions, timeout=15)
        # The page left its old session itself (told by the event), before the server
        # would have closed it (REJOIN_CLOSE_DELAY_SECONDS later).
        closed = [r.getMessage() for r in caplog.records if old.id[:8] in r.getMessage()]
        assert closed and closed[0].endswith("closed by the client"), closed
        [new] = viewer_sessions(client, stream_id)
        assert second.split("/")[1] + "/90000" in new.answer_sdp
        await wait_for(viewer, "() => document.body.dataset.mediaState === 'connected'", "reconnected", timeout=30_000)
        await frames_increase(viewer, "after-switch")
        await shoot(viewer, "codec-switch-viewer-playing")
        errors = [e for e in viewer_watch.real_errors() if f"/api/v1/sessions/{old.id}" not in e]
        assert errors == [], errors
    finally:
        await browser_pub.close()
        if obs is not None:
            await obs.close()
