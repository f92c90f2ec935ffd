"""The GOP cache: a joining viewer's first frame does not wait for the publisher's keyframe.

ffmpeg ignores keyframe requests (PLI), so without the cache a viewer joining an ffmpeg
publisher with a 5 s keyframe interval waits for the next keyframe (up to 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import imageio_ffmpeg
import pytest
from aiohttp import web

from media import SFU

from .peers import publish, running_sfu, wait_for, watch
from .test_whip_ffmpeg import whip_app

pytestmark = pytest.mark.timeout(120)

FPS = 30


@contextlib.asynccontextmanager
async def ffmpeg_publisher(sfu: SFU, room_id: str, keyframe_seconds: int) -> AsyncIterator[None]:
    """Publish ffmpeg's test pattern (H.264, one keyframe every ``keyframe_seconds``)."""
    runner = web.AppRunner(whip_app(sfu, room_id))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    gop = str(keyframe_seconds * FPS)
    ffmpeg = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}",
        "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-g", gop, "-keyint_min", gop, "-sc_threshold", "0", "-bf", "0", "-b:v", "400k",
        "-an", "-t", "60", "-f", "whip", f"http://127.0.0.1:{port}/whip",
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield
    finally:
        if ffmpeg.returncode is None:
            ffmpeg.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ffmpeg.communicate(), 10)
        await runner.cleanup()


async def test_viewer_of_a_5s_gop_ffmpeg_publisher_gets_its_first_frame_at_once() -> None:
    async with running_sfu() as sfu, ffmpeg_publisher(sfu, "r", keyframe_seconds=5):
        await wait_for(lambda: "r" in sfu.rooms and sfu.stats("r")["state"] == "live", timeout=20)
        await asyncio.sleep(1.0)  # the next keyframe is ~4 s away
        viewer, _ = await watch(sfu, "r", audio=False)
        try:
            await wait_for(lambda: viewer.video_frames, timeout=10)
            first = viewer.video_frames[0][0] - viewer.started
            assert first < 1.5, f"first frame after {first:.2f} s"
            # Then live: the cached frames plus the live ones keep decoding, no gap.
            await asyncio.sleep(2.0)
            assert len(viewer.video_frames) >= 2 * FPS
            assert {(w, h) for _, w, h in viewer.video_frames} == {(320, 240)}
            stats = sfu.stats("r")
            assert stats["nacks_missed"] == 0 and stats["drops"] == 0
        finally:
            await viewer.close()


async def test_cached_frames_fast_forward_to_live() -> None:
    """The joining viewer decodes the cached frames in a burst, then at the live rate."""
    async with running_sfu(keyframe_interval_ms=60_000) as sfu:  # no PLI after the first
        publisher, _ = await publish(sfu, "r", audio=False)
        early, _ = await watch(sfu, "r", audio=False)
        late = None
        try:
            video = sfu.rooms["r"].forwarders["video"]

            def cached() -> int:
                return len({entry[1] for entry in video._gop or ()})

            await wait_for(lambda: cached() >= 15, timeout=20)  # half a second of frames
            cached_frames = cached()
            late, _ = await watch(sfu, "r", audio=False)
            await wait_for(lambda: len(late.video_frames) >= cached_frames, timeout=10)
            first = late.video_frames[0][0]
            # The cached frames come in a burst: 15 frames of real time within 0.25 s.
            assert sum(1 for t, _, _ in late.video_frames if t - first < 0.25) >= cached_frames
            started = time.monotonic()
            count = len(late.video_frames)
            await asyncio.sleep(2.0)
            rate = (len(late.video_frames) - count) / (time.monotonic() - started)
            assert 20 <= rate <= 40  # then the live rate (30 fps), not a second burst
            assert sfu.stats("r")["nacks_missed"] == 0
        finally:
            for viewer in (early, late):
                if viewer is not None:
                    await viewer.close()
            await publisher.close()


async def test_gop_larger_than_the_cache_falls_back_to_a_keyframe_request() -> None:
    async with running_sfu(gop_cache_bytes=1) as sfu:  # every GOP is over the bound
        publisher, _ = await publish(sfu, "r", audio=False)
        early, _ = await watch(sfu, "r", audio=False)
        late = None
        try:
            await wait_for(lambda: len(early.video_frames) >= 30, timeout=20)
            assert sfu.rooms["r"].forwarders["video"]._gop is None  # over the bound: dropped
            requests = sfu.stats("r")["keyframe_requests"]
            late, _ = await watch(sfu, "r", audio=False)
            await wait_for(lambda: len(late.video_frames) >= 10, timeout=10)
            assert sfu.stats("r")["keyframe_requests"] > requests
        finally:
            for viewer in (early, late):
                if viewer is not None:
                    await viewer.close()
            await publisher.close()


async def test_joining_a_long_gop_skips_to_the_keyframe_it_asked_for(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A long GOP is sent and a keyframe requested; when it comes, the viewer skips to it.

    The catch-up is paced slowly (20 kB/s, a slow link) so that the aiortc publisher's
    answer to the keyframe request arrives while it is still running.
    """
    from media import forwarder

    monkeypatch.setattr(forwarder, "CATCH_UP_BYTES_PER_SECOND", 20_000)
    async with running_sfu(keyframe_interval_ms=500) as sfu:
        publisher, _ = await publish(sfu, "r", audio=False)
        early, _ = await watch(sfu, "r", audio=False)
        video = sfu.rooms["r"].forwarders["video"]
        late = []
        try:
            def span() -> float:
                gop = video._gop or []
                return ((video.highest_ts - gop[0][1]) & 0xFFFFFFFF) / 90_000 if gop else 0.0

            for _ in range(5):
                await wait_for(lambda: span() >= 3.0, timeout=30)  # GOP longer than 1 s
                joined, _ = await watch(sfu, "r", audio=False)
                late.append(joined)
                await wait_for(lambda: len(late[-1].video_frames) >= 30, timeout=15)
                if video.catch_up_skips:
                    break
            assert video.catch_up_skips >= 1
            count = len(late[-1].video_frames)
            await asyncio.sleep(1.5)
            assert len(late[-1].video_frames) >= count + 30  # it plays on, live
            assert {(w, h) for viewer in late for _, w, h in viewer.video_frames} == {(320, 240)}
            assert sfu.stats("r")["nacks_missed"] == 0
        finally:
            for viewer in (early, *late):
                await viewer.close()
            await publisher.close()
