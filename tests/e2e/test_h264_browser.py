"""Chromium plays ffmpeg's main and high profile H.264 as forwarded, untouched.

The viewer's answer carries the publisher's exact format under Chromium's own payload
type when Chromium offers that profile, else Chromium's own entry of a profile that
decodes it; either way Chromium must accept the answer and decode the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import imageio_ffmpeg
import pytest
from aiohttp import web

from media import SFU, BadOffer
from tests.media.peers import running_sfu, wait_for

pytestmark = pytest.mark.timeout(120)

PAGE = """<!doctype html><meta charset="utf-8"><title>viewer</title>
<video id="video" autoplay muted playsinline></video>
<script>
window.watch = async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  pc.ontrack = e => { if (e.track.kind === 'video') document.getElementById('video').srcObject = new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise(done => pc.addEventListener('icegatheringstatechange',
      () => pc.iceGatheringState === 'complete' && done()));
  }
  const resp = await fetch('/whep', {method: 'POST', headers: {'Content-Type': 'application/sdp'},
                                     body: pc.localDescription.sdp});
  const answer = await resp.text();
  if (resp.status !== 201) throw new Error(resp.status + ' ' + answer);
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  return {offer: pc.localDescription.sdp, answer};
};
window.played = () => {
  const v = document.getElementById('video');
  return [v.videoWidth, v.getVideoPlaybackQuality().totalVideoFrames];
};
</script>
"""


@contextlib.asynccontextmanager
async def endpoints(sfu: SFU, room_id: str, *, owner: str = "ffmpeg", html: str = PAGE) -> AsyncIterator[str]:
    """Serve a test page, WHIP (for ffmpeg or the page) and WHEP (for the page) from one origin."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def whip(request: web.Request) -> web.Response:
        try:
            session = await sfu.publish(room_id, await request.text(), owner)
        except BadOffer as exc:
            return web.Response(status=400, text=exc.message)
        return web.Response(status=201, text=session.answer_sdp, content_type="application/sdp",
                            headers={"Location": f"/whip/{session.id}"})

    async def whep(request: web.Request) -> web.Response:
        try:
            session = await sfu.watch(room_id, await request.text())
        except BadOffer as exc:
            return web.Response(status=400, text=exc.message)
        return web.Response(status=201, text=session.answer_sdp, content_type="application/sdp")

    async def leave(request: web.Request) -> web.Response:
        with contextlib.suppress(Exception):
            await sfu.close_session(request.match_info["id"])
        return web.Response(status=200, text="")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/whip", whip)
    app.router.add_delete("/whip/{id}", leave)
    app.router.add_post("/whep", whep)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("profile", ["main", "high"])
async def test_chromium_plays_ffmpeg_main_and_high_profile(browser: Any, profile: str) -> None:
    async with running_sfu(connect_timeout_seconds=20.0) as sfu, endpoints(sfu, "h264") as base:
        ffmpeg = await asyncio.create_subprocess_exec(
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-c:v", "libx264", "-profile:v", profile, "-tune", "zerolatency", "-bf", "0",
            "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "libopus", "-ar", "48000", "-ac", "2",
            "-t", "40", "-f", "whip", f"{base}/whip",
            stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        context = await browser.new_context()
        try:
            await wait_for(lambda: "h264" in sfu.rooms and sfu.stats("h264")["state"] == "live",
                           timeout=20)
            published = sfu.rooms["h264"].video_codec.parameters["profile-level-id"]
            page = await context.new_page()
            await page.goto(base + "/")
            sdp = await page.evaluate("() => window.watch()")
            if "H264/90000" not in sdp["offer"]:
                pytest.skip("this Chromium offers no H.264 (built without proprietary codecs)")
            same_profile = {"main": "4d", "high": "64"}[profile]
            if re.search(rf"profile-level-id={same_profile}00", sdp["offer"]):
                # Chromium offers this profile: the answer names ffmpeg's exact format.
                assert f"profile-level-id={published}" in sdp["answer"], sdp["answer"]
            else:
                # This Chromium lists no plain High entry, but its High 4:4:4 Predictive
                # entry decodes High (H.264 A.2.11): that is what it gets answered.
                assert "profile-level-id=f4001f" in sdp["answer"], sdp["answer"]
            for _ in range(200):
                width, frames = await page.evaluate("() => window.played()")
                if width == 640 and frames > 30:
                    break
                await asyncio.sleep(0.1)
            assert (width, frames > 30) == (640, True), (width, frames)
        finally:
            await context.close()
            if ffmpeg.returncode is None:
                ffmpeg.terminate()
            await ffmpeg.wait()
