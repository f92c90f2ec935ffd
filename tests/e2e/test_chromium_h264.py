"""Chromium publishes H.264 over WHIP; aiortc and Chromium viewers decode it.

The publishing page keeps only H.264 in its codec preferences, so the offer carries no
VP8 to fall back on: if the SFU refuses Chromium's H.264 the WHIP POST fails and so does
the test. The room must then hold H.264 with the exact profile-level-id Chromium put
first. A Chromium viewer of an ffmpeg *baseline* publisher closes the profile matrix of
tests/e2e/test_h264_browser.py (main and high).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import imageio_ffmpeg
import pytest

from media.h264 import Profile, h264_format
from tests.e2e.test_h264_browser import endpoints
from tests.media.peers import running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(150)

NO_H264 = "this Chromium cannot encode H.264 (no H.264 in RTCRtpSender.getCapabilities('video'))"

PAGE = """<!doctype html><meta charset="utf-8"><title>h264</title>
<video id="video" autoplay muted playsinline></video>
<script>
window.h264Encoders = () => RTCRtpSender.getCapabilities('video').codecs
  .filter(c => c.mimeType.toLowerCase() === 'video/h264').map(c => c.sdpFmtpLine || '');
async function negotiate(pc, path) {
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise(done => pc.addEventListener('icegatheringstatechange',
      () => pc.iceGatheringState === 'complete' && done()));
  }
  const resp = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/sdp'},
                                  body: pc.localDescription.sdp});
  const answer = await resp.text();
  if (resp.status !== 201) throw new Error(path + ' answered ' + resp.status + ': ' + answer);
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  return {offer: pc.localDescription.sdp, answer};
}
window.publish = async () => {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: 640, height: 360, frameRate: 30}, audio: true});
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  const video = pc.addTransceiver(stream.getVideoTracks()[0], {direction: 'sendonly'});
  // Only H.264: no VP8 left for the server to pick instead.
  video.setCodecPreferences(RTCRtpSender.getCapabilities('video').codecs
    .filter(c => c.mimeType.toLowerCase() === 'video/h264'));
  pc.addTransceiver(stream.getAudioTracks()[0], {direction: 'sendonly'});
  return negotiate(pc, '/whip');
};
window.sent = async () => {
  const stats = await window.pc.getStats();
  let out = {codec: '', framesEncoded: 0, encoder: ''};
  stats.forEach(r => {
    if (r.type === 'outbound-rtp' && r.kind === 'video') {
      const codec = r.codecId && stats.get(r.codecId);
      out = {codec: codec ? codec.mimeType + ' ' + (codec.sdpFmtpLine || '') : '',
             framesEncoded: r.framesEncoded || 0, encoder: r.encoderImplementation || ''};
    }
  });
  return out;
};
window.view = async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.addTransceiver('audio', {direction: 'recvonly'});
  pc.ontrack = e => {
    if (e.track.kind === 'video') document.getElementById('video').srcObject = new MediaStream([e.track]);
  };
  return negotiate(pc, '/whep');
};
window.decoded = async () => {
  const stats = await window.pc.getStats();
  let out = {codec: '', framesDecoded: 0, decoder: ''};
  stats.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') {
      const codec = r.codecId && stats.get(r.codecId);
      out = {codec: codec ? codec.mimeType + ' ' + (codec.sdpFmtpLine || '') : '',
             framesDecoded: r.framesDecoded || 0, decoder: r.decoderImplementation || ''};
    }
  });
  out.videoWidth = document.getElementById('video').videoWidth;
  return out;
};
</script>
"""


def first_video_fmtp(sdp: str) -> tuple[str, str]:
    """Return the rtpmap and fmtp line of the first payload type of the m=video section."""
    section = sdp.split("m=video", 1)[1].split("\r\nm=", 1)[0]
    payload = section.split("\r\n", 1)[0].split()[2]
    rtpmap = re.search(rf"a=rtpmap:{payload} (\S+)", section)
    fmtp = re.search(rf"a=fmtp:{payload} (\S+)", section)
    return (rtpmap.group(1) if rtpmap else "", fmtp.group(1) if fmtp else "")


def fmtp_params(line: str) -> dict[str, str]:
    """Split ``a=fmtp`` parameters (``k=v;k=v``) into a dict."""
    return dict(part.split("=", 1) for part in line.split(";") if "=" in part)


async def chromium_decodes(page: Any, width: int | None, timeout: float = 45.0) -> dict[str, Any]:
    """Wait until the page's viewer decodes a growing number of frames (at ``width``, if given)."""
    deadline = asyncio.get_running_loop().time() + timeout
    first: dict[str, Any] | None = None
    last: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        last = await page.evaluate("() => window.decoded()")
        if last["videoWidth"] > 0 and width in (None, last["videoWidth"]) and last["framesDecoded"] > 0:
            if first is None:
                first = last
            elif last["framesDecoded"] >= first["framesDecoded"] + 30:
                return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"Chromium viewer did not keep decoding at width {width}: {last}")


async def test_chromium_publishes_h264_that_aiortc_and_chromium_decode(browser: Any) -> None:
    async with running_sfu(connect_timeout_seconds=20.0) as sfu, \
            endpoints(sfu, "ch264", owner="chromium", html=PAGE) as base:
        publisher_ctx = await browser.new_context()
        viewer_ctx = await browser.new_context()
        await publisher_ctx.grant_permissions(["camera", "microphone"], origin=base)
        viewer = None
        try:
            publisher = await publisher_ctx.new_page()
            await publisher.goto(base + "/")
            if not await publisher.evaluate("() => window.h264Encoders()"):
                pytest.skip(NO_H264)
            sdp = await publisher.evaluate("() => window.publish()")

            # The offer holds H.264 only; the server answered its first entry, unchanged.
            offered_map, offered_fmtp = first_video_fmtp(sdp["offer"])
            answered_map, answered_fmtp = first_video_fmtp(sdp["answer"])
            assert offered_map == "H264/90000", sdp["offer"]
            assert "VP8" not in sdp["offer"].split("m=video", 1)[1].split("m=audio", 1)[0]
            assert answered_map == "H264/90000", sdp["answer"]
            offered, answered = fmtp_params(offered_fmtp), fmtp_params(answered_fmtp)
            assert answered["profile-level-id"] == offered["profile-level-id"], (offered, answered)
            assert answered["packetization-mode"] == offered["packetization-mode"]
            print(f"Chromium offered {offered_fmtp}; the server answered {answered_fmtp}")

            await wait_for(lambda: "ch264" in sfu.rooms and sfu.stats("ch264")["state"] == "live",
                           timeout=30)
            codec = sfu.rooms["ch264"].video_codec
            assert codec.mimeType.lower() == "video/h264", codec
            assert codec.parameters["profile-level-id"] == offered["profile-level-id"]
            fmt = h264_format(codec)
            assert fmt is not None and fmt.profile in (Profile.CONSTRAINED_BASELINE, Profile.BASELINE)

            # (a) an aiortc viewer decodes the browser's H.264. Chromium may scale its
            # camera down on a loaded machine, so any decoded size counts.
            viewer, _ = await watch(sfu, "ch264")
            await wait_for(lambda: sum(1 for _, w, _h in viewer.video_frames if w > 0) >= 30,
                           timeout=45)

            # (b) a Chromium viewer over WHEP decodes it too, as H.264.
            watcher = await viewer_ctx.new_page()
            await watcher.goto(base + "/")
            view_sdp = await watcher.evaluate("() => window.view()")
            view_map, view_fmtp = first_video_fmtp(view_sdp["answer"])
            assert view_map == "H264/90000", view_sdp["answer"]
            assert fmtp_params(view_fmtp)["profile-level-id"] == offered["profile-level-id"]
            got = await chromium_decodes(watcher, None)
            assert got["codec"].lower().startswith("video/h264"), got

            sent = await publisher.evaluate("() => window.sent()")
            assert sent["codec"].lower().startswith("video/h264"), sent
            assert sent["framesEncoded"] > 0, sent
            print(f"publisher: {sent}; Chromium viewer: {got}")
        finally:
            if viewer is not None:
                await viewer.close()
            await viewer_ctx.close()
            await publisher_ctx.close()


async def test_chromium_plays_ffmpeg_baseline_profile(browser: Any) -> None:
    async with running_sfu(connect_timeout_seconds=20.0) as sfu, \
            endpoints(sfu, "ffbase", owner="ffmpeg", html=PAGE) as base:
        ffmpeg = await asyncio.create_subprocess_exec(
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-bf", "0",
            "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "libopus", "-ar", "48000", "-ac", "2",
            "-t", "50", "-f", "whip", f"{base}/whip",
            stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        context = await browser.new_context()
        try:
            await wait_for(lambda: "ffbase" in sfu.rooms and sfu.stats("ffbase")["state"] == "live",
                           timeout=30)
            codec = sfu.rooms["ffbase"].video_codec
            fmt = h264_format(codec)
            assert fmt is not None and fmt.profile in (Profile.CONSTRAINED_BASELINE, Profile.BASELINE), codec
            page = await context.new_page()
            await page.goto(base + "/")
            sdp = await page.evaluate("() => window.view()")
            view_map, view_fmtp = first_video_fmtp(sdp["answer"])
            assert view_map == "H264/90000", sdp["answer"]
            # Chromium offers baseline: the answer names ffmpeg's exact profile-level-id.
            assert fmtp_params(view_fmtp)["profile-level-id"] == codec.parameters["profile-level-id"]
            got = await chromium_decodes(page, 640)
            assert got["codec"].lower().startswith("video/h264"), got
            print(f"ffmpeg baseline {codec.parameters}; Chromium viewer: {got}")
        finally:
            await context.close()
            if ffmpeg.returncode is None:
                ffmpeg.terminate()
            await ffmpeg.wait()
