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
from tests.e2e.test_twcc import viewer_server
from tests.media.peers import frames_at, inbound, longest_gap, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(180)

MAX_GAP_SECONDS = 1.5


def hold_below_low_layer(video: SimulcastForwarder, track: Any, low: int) -> None:
    """Hold a viewer's estimate at a quarter of the low layer's rate (no probing up)."""
    layer = video.selector.layers[low]  # type: ignore[union-attr]
    estimator = video.policies[track].estimator
    estimator.estimate_bps = (layer.avg_bps or layer.peak_bps) / 4
    # No probing up meanwhile: a probe that passed would lift it to the next rung.
    video.prober.stop(track)
    estimator.probed_at, estimator.probe_bps = None, None
    estimator.probe_after = time.monotonic() + 60
    video.review()


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

            dropped = time.monotonic()
            while video.ssrc_of(track) != rung_key(low, 0) or frames_at(viewer, 320, dropped) < 20:
                assert time.monotonic() - dropped < 40, f"on {video.ssrc_of(track)}"
                hold_below_low_layer(video, track, low)
                await asyncio.sleep(0.2)
            thinned = time.monotonic()
            frames = len(viewer.video_frames)
            while time.monotonic() - thinned < 4:
                hold_below_low_layer(video, track, low)
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


async def test_a_chromium_viewer_decodes_the_rung_and_the_switches(browser: Any) -> None:
    """libwebrtc checks VP8 picture ids and TL0PICIDX: the thinned stream and the switches
    to and from it must decode in Chromium too, without a lasting stall."""
    async with running_sfu(remb_bitrate_bps=4_000_000, connect_timeout_seconds=20.0,
                           keyframe_interval_ms=500) as sfu, \
            page_server(sfu, "tlc") as base, viewer_server(sfu, "tlc") as viewer_base:
        context = await browser.new_context()
        await context.grant_permissions(["camera"], origin=base)
        try:
            page = await context.new_page()
            await page.goto(base + "/")
            await page.evaluate("(order) => window.publish(order)", ["q", "h", "f"])
            await wait_for(lambda: "tlc" in sfu.rooms and sfu.stats("tlc")["state"] == "live", timeout=20)
            viewer = await context.new_page()
            await viewer.goto(viewer_base + "/")
            await viewer.evaluate("() => window.watch()")
            video = sfu.rooms["tlc"].forwarders["video"]
            assert isinstance(video, SimulcastForwarder) and video.selector is not None

            async def stats() -> dict[str, float]:
                return await viewer.evaluate("() => window.inbound()") or {"framesDecoded": 0, "frameWidth": 0}

            async def decoded_at(width: int, frames: int, timeout: float) -> None:
                deadline = time.monotonic() + timeout
                start = (await stats())["framesDecoded"]
                while True:
                    now = await stats()
                    if now["frameWidth"] == width and now["framesDecoded"] >= start + frames:
                        return
                    assert time.monotonic() < deadline, (
                        f"{now} waiting for {frames} frames at {width}; on layer {video.ssrc_of(track)}")
                    await asyncio.sleep(0.2)

            track = None
            await decoded_at(1280, 30, 60)
            low = video.selector.ssrc_of("q")
            assert low is not None
            await wait_for(lambda: len(video.temporal.rungs.get(low, [])) == 2, timeout=10)
            track = next(iter(video.policies))
            deadline = time.monotonic() + 40
            while video.ssrc_of(track) != rung_key(low, 0):
                assert time.monotonic() < deadline, f"on {video.ssrc_of(track)}"
                hold_below_low_layer(video, track, low)
                await asyncio.sleep(0.2)
            before = await stats()
            thinned = time.monotonic()
            while time.monotonic() - thinned < 5:
                hold_below_low_layer(video, track, low)
                await asyncio.sleep(0.2)
            after = await stats()
            assert after["frameWidth"] == 320, after
            fps = (after["framesDecoded"] - before["framesDecoded"]) / (time.monotonic() - thinned)
            assert 2 <= fps <= 14, f"{fps:.1f} fps decoded on the TID 0 rung: {before} -> {after}"

            # Back to the top layer. (Pinned: Chromium's own REMB, low after seconds of
            # receiving little, would hold an auto viewer down until probing lifts it.)
            video.set_quality(track, "high")
            lifted = time.monotonic()
            await decoded_at(1280, 20, 30)
            up = await stats()
            await asyncio.sleep(4)
            settled = await stats()
            fps_up = (settled["framesDecoded"] - up["framesDecoded"]) / 4
            # Full rate again (20 fps from this fake camera, less on a loaded machine):
            # well above the rung's, so no frames are held back after the switch.
            assert fps_up >= max(10.0, 2 * fps), f"{fps_up:.1f} fps after climbing back: {up} -> {settled}"
            print(f"Chromium: {fps:.1f} fps on TID 0, {fps_up:.1f} fps back on top "
                  f"({time.monotonic() - lifted:.1f} s); freezes {settled['freezeCount']}, "
                  f"{settled['freezes']:.2f} s frozen, {settled['packetsLost']} lost")
        finally:
            await context.close()
