"""Keyframe gating for joining viewers, the PLI throttle, and NACK answering."""

from __future__ import annotations

import asyncio
import time

import pytest

from .peers import publish, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(60)


async def test_mid_stream_viewer_decodes_first_frame_within_a_second() -> None:
    # Without the GOP cache a joining viewer waits for a keyframe it asked for.
    async with running_sfu(gop_cache_bytes=0) as sfu:
        publisher, _ = await publish(sfu, "r")
        early, _ = await watch(sfu, "r")
        try:
            await wait_for(lambda: len(early.video_frames) >= 45)  # well past the first keyframe
            requests_before = sfu.stats("r")["keyframe_requests"]
            late, _ = await watch(sfu, "r")
            await wait_for(lambda: late.video_frames, timeout=5)
            assert late.video_frames[0][0] - late.started < 1.0
            assert sfu.stats("r")["keyframe_requests"] > requests_before  # the join asked
            await late.close()
        finally:
            await early.close()
            await publisher.close()


async def test_keyframe_requests_are_throttled_across_viewers() -> None:
    async with running_sfu(keyframe_interval_ms=500, gop_cache_bytes=0) as sfu:
        publisher, _ = await publish(sfu, "r")
        await wait_for(lambda: sfu.stats("r")["packets_in"] > 30)
        started = time.monotonic()
        joined = await asyncio.gather(*(watch(sfu, "r", audio=False) for _ in range(8)))
        viewers = [v for v, _ in joined]
        try:
            await wait_for(lambda: all(v.video_frames for v in viewers), timeout=10)
            elapsed = time.monotonic() - started
            requests = sfu.stats("r")["keyframe_requests"]
            assert 1 <= requests <= elapsed / 0.5 + 1
        finally:
            for viewer in viewers:
                await viewer.close()
            await publisher.close()


async def test_nack_is_answered_from_history_after_induced_loss() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r", audio=False)
        viewer, _ = await watch(sfu, "r", audio=False)
        transceiver = viewer.pc.getTransceivers()[0]
        video_pt = transceiver._codecs[0].payloadType
        dtls = transceiver.receiver.transport
        original = dtls._handle_rtp_data
        dropped: set[int] = set()

        async def lossy(data: bytes, arrival_time_ms: int) -> None:
            # Test-only loss on the viewer's side of the wire: drop every 15th media packet
            # once; retransmissions (RTX, another payload type) get through.
            seq = int.from_bytes(data[2:4], "big")
            if data[1] & 0x7F == video_pt and seq % 15 == 0 and seq not in dropped:
                dropped.add(seq)
                return
            await original(data, arrival_time_ms)

        dtls._handle_rtp_data = lossy
        try:
            await wait_for(lambda: len(dropped) >= 10 and len(viewer.video_frames) >= 60, 20)
            stats = sfu.stats("r")
            assert len(dropped) // 2 <= stats["nacks_served"] <= 2 * len(dropped)
            assert {(w, h) for _, w, h in viewer.video_frames} == {(320, 240)}
        finally:
            await viewer.close()
            await publisher.close()


async def test_viewer_plis_reach_the_publisher_under_the_throttle() -> None:
    async with running_sfu(keyframe_interval_ms=500, gop_cache_bytes=0) as sfu:
        publisher, _ = await publish(sfu, "r", audio=False)
        viewer, _ = await watch(sfu, "r", audio=False)
        try:
            await wait_for(lambda: len(viewer.video_frames) >= 30)
            await asyncio.sleep(0.6)  # past the throttle window of the join's PLI
            before = sfu.stats("r")["keyframe_requests"]
            receiver = viewer.pc.getTransceivers()[0].receiver
            media_ssrc = next(iter(receiver._RTCRtpReceiver__remote_streams))
            for _ in range(10):  # a burst of PLIs from the viewer
                await receiver._send_rtcp_pli(media_ssrc)
            await wait_for(lambda: sfu.stats("r")["keyframe_requests"] == before + 1, timeout=2)
            await asyncio.sleep(1.0)
            # One now and one deferred to the end of the window, never ten (the decoder
            # of the viewer may ask once more on its own).
            assert before + 2 <= sfu.stats("r")["keyframe_requests"] <= before + 3
        finally:
            await viewer.close()
            await publisher.close()
