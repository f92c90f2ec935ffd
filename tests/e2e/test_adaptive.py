"""Per-viewer simulcast layers: Chromium publishes three layers, each viewer gets its own.

Two aiortc viewers watch one Chromium publisher (1280x720 sent as 320x180, 640x360 and
1280x720 layers): one pinned low, one at the default (the top layer). Each must decode
its own resolution; after a switch (in both directions) each keeps decoding, without a
long gap, at the other resolution, and its stream stays one stream: the same SSRC with
sequence numbers that continue (a jump would count as thousands of lost packets).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from media.layers import SimulcastForwarder
from server.routes.media import RoomMetrics
from tests.e2e.test_simulcast import page_server
from tests.media.peers import frames_at, inbound, longest_gap, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(180)

# The longest pause in decoded frames a switch may cause on this loaded machine: the
# target layer's keyframe comes within one PLI round trip, far less than this.
MAX_GAP_SECONDS = 1.5


def scrape(sfu: Any) -> str:
    """Return the room metrics as /metrics shows them."""
    registry = CollectorRegistry()
    registry.register(RoomMetrics(sfu))
    return generate_latest(registry).decode()


async def test_viewers_get_their_own_layer_and_switch_without_a_break(browser: Any) -> None:
    async with running_sfu(remb_bitrate_bps=4_000_000, connect_timeout_seconds=20.0,
                           keyframe_interval_ms=500) as sfu, \
            page_server(sfu, "ad") as base:
        context = await browser.new_context()
        await context.grant_permissions(["camera"], origin=base)
        high = low = None
        try:
            page = await context.new_page()
            await page.goto(base + "/")
            await page.evaluate("(order) => window.publish(order)", ["q", "h", "f"])
            await wait_for(lambda: "ad" in sfu.rooms and sfu.stats("ad")["state"] == "live", timeout=20)
            high, _ = await watch(sfu, "ad", audio=False)
            low, low_id = await watch(sfu, "ad", audio=False, quality="low")
            await wait_for(lambda: frames_at(high, 1280) >= 10 and frames_at(low, 320) >= 10,
                           timeout=60)
            video = sfu.rooms["ad"].forwarders["video"]
            assert isinstance(video, SimulcastForwarder)
            assert video.viewers_per_layer() == {"q": 1, "h": 0, "f": 1}
            metrics = scrape(sfu)
            assert 'shopstream_room_layer_viewers{layer="q",room="ad"} 1.0' in metrics
            assert 'shopstream_room_layer_viewers{layer="f",room="ad"} 1.0' in metrics
            ssrcs_before, _ = await inbound(low)

            # Up: the low viewer asks for the top layer.
            switched = time.monotonic()
            assert sfu.set_quality(low_id, "high") in ("q", "f")
            await wait_for(lambda: frames_at(low, 1280, switched) >= 30, timeout=30)
            frames_then = len(low.video_frames)
            await asyncio.sleep(1.0)
            assert len(low.video_frames) > frames_then + 5  # still decoding after the switch
            assert longest_gap(low, switched) < MAX_GAP_SECONDS
            assert video.viewers_per_layer() == {"q": 0, "h": 0, "f": 2}

            # Down again: the same viewer, back to the lowest layer.
            switched = time.monotonic()
            sfu.set_quality(low_id, "low")
            await wait_for(lambda: frames_at(low, 320, switched) >= 30, timeout=30)
            assert longest_gap(low, switched) < MAX_GAP_SECONDS
            ssrcs_after, lost = await inbound(low)
            assert ssrcs_after == ssrcs_before and len(ssrcs_after) == 1
            assert lost < 100, f"{lost} packets counted lost: the sequence numbers jumped"
            # The other viewer never moved.
            assert {w for _t, w, _h in high.video_frames[-10:]} == {1280}
            with pytest.raises(ValueError):
                sfu.set_quality(low_id, "ultra")
        except AssertionError:
            sent = await page.evaluate("() => window.layersSent()")
            sizes = {(w, h) for _, w, h in low.video_frames} if low else set()
            raise AssertionError(f"the browser sent {sent}; the low viewer decoded {sizes}") from None
        finally:
            for viewer in (high, low):
                if viewer is not None:
                    await viewer.close()
            await context.close()


async def test_an_auto_viewer_follows_its_loss_down_at_once_and_back_up(browser: Any) -> None:
    """Reported loss moves an auto viewer down; loss-free reports bring it back up within 10 s.

    The loss is injected as the viewer's receiver reports would carry it (the shaped-link
    test makes a real link lose packets); the viewer's real reports keep coming meanwhile.
    """
    async with running_sfu(remb_bitrate_bps=4_000_000, connect_timeout_seconds=20.0,
                           keyframe_interval_ms=500) as sfu, \
            page_server(sfu, "auto") as base:
        context = await browser.new_context()
        await context.grant_permissions(["camera"], origin=base)
        viewer = None
        try:
            page = await context.new_page()
            await page.goto(base + "/")
            await page.evaluate("(order) => window.publish(order)", ["q", "h", "f"])
            await wait_for(lambda: "auto" in sfu.rooms and sfu.stats("auto")["state"] == "live", timeout=20)
            viewer, _ = await watch(sfu, "auto", audio=False)
            await wait_for(lambda: frames_at(viewer, 1280) >= 10, timeout=60)
            video = sfu.rooms["auto"].forwarders["video"]
            assert isinstance(video, SimulcastForwarder)
            track = next(iter(video.policies))

            dropped = time.monotonic()
            while video.rid_of(track) != "q":
                assert time.monotonic() - dropped < 10, f"still on {video.rid_of(track)}"
                video.on_receiver_report(track, 0.4)
                await asyncio.sleep(0.5)
            down = time.monotonic() - dropped
            await wait_for(lambda: frames_at(viewer, 320, dropped) >= 10, timeout=20)
            lifted = time.monotonic()
            await wait_for(lambda: video.rid_of(track) == "f", timeout=10)
            climbed = time.monotonic() - lifted
            await wait_for(lambda: frames_at(viewer, 1280, lifted) >= 10, timeout=20)
            assert longest_gap(viewer, dropped) < MAX_GAP_SECONDS
            print(f"down to q in {down:.1f} s, back to f in {climbed:.1f} s")
        finally:
            if viewer is not None:
                await viewer.close()
            await context.close()
