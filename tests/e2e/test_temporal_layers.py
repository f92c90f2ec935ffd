"""VP8 temporal layers from Chromium: a viewer that needs less than the low layer gets TID 0.

Chromium publishes three simulcast layers (VP8 with three temporal layers each); an
aiortc ``auto`` viewer whose estimate is below the low layer's rate moves to that
layer's lowest temporal rung and keeps decoding (fewer frames per second, the same
SSRC, sequence numbers without gaps); when the estimate recovers it climbs back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from media.layers import SimulcastForwarder
from media.temporal import real_ssrc, rung_key
from tests.e2e.test_simulcast import page_server
from tests.media.peers import frames_at, inbound, longest_gap, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(180)

MAX_GAP_SECONDS = 1.5


def rate(viewer: Any, width: int, since: float, until: float) -> float:
    """Return frames per second decoded at ``width`` in [since, until)."""
    count = sum(1 for t, w, _h in viewer.video_frames if w == width and since <= t < until)
    return count / (until - since)


async def test_a_viewer_below_the_low_layer_gets_its_base_temporal_layer(browser: Any) -> None:
    async with running_sfu(remb_bitrate_bps=4_000_000, connect_timeout_seconds=20.0,
                           keyframe_interval_ms=500) as sfu, \
            page_server(sfu, "tl") as base:
        context = await browser.new_context()
        await context.grant_permissions(["camera"], origin=base)
        viewer = None
        try:
            page = await context.new_page()
            await page.goto(base + "/")
            await page.evaluate("(order) => window.publish(order)", ["q", "h", "f"])
            await wait_for(lambda: "tl" in sfu.rooms and sfu.stats("tl")["state"] == "live", timeout=20)
            viewer, _ = await watch(sfu, "tl", audio=False)
            await wait_for(lambda: frames_at(viewer, 1280) >= 10, timeout=60)
            video = sfu.rooms["tl"].forwarders["video"]
            assert isinstance(video, SimulcastForwarder)
            assert video.selector is not None
            low = video.selector.ssrc_of("q")
            assert low is not None
            await wait_for(lambda: len(video.temporal.rungs.get(low, [])) == 2, timeout=10)
            track = next(iter(video.policies))
            ssrcs_before, _ = await inbound(viewer)

            def squeeze() -> None:
                """Hold the estimate at a quarter of the low layer's rate (no probing up)."""
                layer = video.selector.layers[low]  # type: ignore[union-attr]
                estimator = video.policies[track].estimator
                estimator.estimate_bps = (layer.avg_bps or layer.peak_bps) / 4
                estimator.changed_at, estimator.probed_at = time.monotonic(), None
                video.review()

            dropped = time.monotonic()
            while video.ssrc_of(track) != rung_key(low, 0) or frames_at(viewer, 320, dropped) < 20:
                assert time.monotonic() - dropped < 40, f"on {video.ssrc_of(track)}"
                squeeze()
                await asyncio.sleep(0.2)
            thinned = time.monotonic()
            frames = len(viewer.video_frames)
            while time.monotonic() - thinned < 4:
                squeeze()
                await asyncio.sleep(0.2)
            assert len(viewer.video_frames) > frames + 10  # still decoding, thinned
            assert video.ssrc_of(track) == rung_key(low, 0), [
                (layer.rid, layer.max_tid, round(layer.avg_bps), round(layer.peak_bps))
                for layer in video.ranked()]
            fps = rate(viewer, 320, thinned, time.monotonic())
            assert 3 <= fps <= 12, f"{fps:.1f} fps on TID 0 (a quarter of ~30 expected)"
            assert longest_gap(viewer, dropped) < MAX_GAP_SECONDS
            assert video.viewers_per_layer()["q"] == 1
            rung = video.temporal.rungs[low][0]
            assert rung.dropped > 0

            # The estimate recovers: the viewer climbs back to full layers.
            video.policies[track].estimator.estimate_bps = None
            lifted = time.monotonic()
            await wait_for(lambda: real_ssrc(video.ssrc_of(track) or 0) != low, timeout=20)
            await wait_for(lambda: frames_at(viewer, 1280, lifted) >= 20, timeout=30)
            ssrcs_after, lost = await inbound(viewer)
            assert ssrcs_after == ssrcs_before and len(ssrcs_after) == 1
            assert lost < 100, f"{lost} packets counted lost: the sequence numbers jumped"
            print(f"TID 0 rung: {fps:.1f} fps decoded; {rung.dropped} packets thinned out")
        finally:
            if viewer is not None:
                await viewer.close()
            await context.close()
