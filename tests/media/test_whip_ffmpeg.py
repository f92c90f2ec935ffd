"""ffmpeg as an independent WHIP publisher, through a tiny WHIP endpoint in the test."""

from __future__ import annotations

import asyncio
import contextlib
import re

import imageio_ffmpeg
import pytest
from aiohttp import web

from media import SFU, BadOffer

from .peers import Viewer, accept, local_offer, new_pc, prefer, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(90)

# ffmpeg 9's whip muxer sends H.264 only ("supports only codec h264"); VP8 publishing
# is covered by the aiortc publisher in test_forwarding.py. Main and high are what
# x264 gives without -profile:v, and what hardware encoders emit; -bf 0 because WebRTC
# receivers play no B-frames.
ENCODERS = {
    f"h264-{profile}": ["-c:v", "libx264", "-profile:v", profile, "-tune", "zerolatency",
                        "-pix_fmt", "yuv420p", "-g", "30", "-bf", "0"]
    for profile in ("baseline", "main", "high")
}


def whip_app(sfu: SFU, room_id: str) -> web.Application:
    """Map POST /whip to SFU.publish and DELETE /whip/{id} to close_session."""

    async def post(request: web.Request) -> web.Response:
        try:
            session = await sfu.publish(room_id, await request.text(), "ffmpeg")
        except BadOffer as exc:
            return web.Response(status=400, text=exc.message)
        return web.Response(
            status=201, text=session.answer_sdp, content_type="application/sdp",
            headers={"Location": f"/whip/{session.id}"},
        )

    async def delete(request: web.Request) -> web.Response:
        await sfu.close_session(request.match_info["session_id"])
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/whip", post)
    app.router.add_delete("/whip/{session_id}", delete)
    return app


async def high_profile_viewer(sfu: SFU, room_id: str) -> Viewer:
    """Join with a decoding aiortc viewer whose offer labels its H.264 as high profile.

    aiortc decodes any profile (libavcodec) but its codec list only names baseline, so
    the offer is relabelled and the answer relabelled back, as another client's would be.
    """
    pc = new_pc()
    viewer = Viewer(pc)
    pc.on("track", viewer.consume)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    prefer(pc, "video", "video/H264")
    offer = re.sub(r"profile-level-id=42[0e]01f", "profile-level-id=64001f", await local_offer(pc))
    session = await sfu.watch(room_id, offer)
    await accept(pc, re.sub(r"profile-level-id=[0-9a-f]{6}", "profile-level-id=42e01f",
                            session.answer_sdp))
    return viewer


@pytest.mark.parametrize("codec", sorted(ENCODERS))
async def test_ffmpeg_whip_publisher_reaches_decoding_viewers(codec: str) -> None:
    async with running_sfu() as sfu:
        runner = web.AppRunner(whip_app(sfu, "whip-room"))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ffmpeg = await asyncio.create_subprocess_exec(
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            *ENCODERS[codec], "-c:a", "libopus", "-ar", "48000", "-ac", "2",
            "-t", "20", "-f", "whip", f"http://127.0.0.1:{port}/whip",
            stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        viewers = []
        try:
            await wait_for(lambda: "whip-room" in sfu.rooms and sfu.stats("whip-room")["state"]
                           == "live", timeout=15)
            if codec == "h264-baseline":
                viewers.append((await watch(sfu, "whip-room"))[0])
            else:
                # aiortc's own offer names baseline H.264 only: refused, with both sides named.
                with pytest.raises(BadOffer, match="cannot decode.*42e01f"):
                    await watch(sfu, "whip-room")
                viewers.append(await high_profile_viewer(sfu, "whip-room"))
            # A viewer offering high profile (as Chrome does) decodes every profile.
            viewers.append(await high_profile_viewer(sfu, "whip-room"))
            await wait_for(lambda: all(len(v.video_frames) >= 20 for v in viewers), timeout=15)
            await wait_for(lambda: all(v.audio_frames >= 10 for v in viewers), timeout=10)
            for viewer in viewers:
                assert {(w, h) for _, w, h in viewer.video_frames} == {(320, 240)}
            assert sfu.stats("whip-room")["packets_out"] > 0
        finally:
            if ffmpeg.returncode is None:
                ffmpeg.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                stderr = await asyncio.wait_for(ffmpeg.communicate(), 10)
                print(stderr[1].decode(errors="replace")[-2000:])
            for viewer in viewers:
                await viewer.close()
            await runner.cleanup()
