"""A Chromium viewer negotiates transport-wide congestion control and climbs by probes.

Chromium publishes three layers; a second Chromium page watches over WHEP. Its answer
carries the transport-wide-cc extension and the transport-cc feedback; the SFU numbers
the packets it forwards and reads the feedback (media.twcc). The viewer starts on the
lowest layer and reaches the top one through padding probes that pass, and it keeps
decoding across the switches (frames decoded keep increasing, at 1280 in the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from media import SFU
from media.layers import SimulcastForwarder
from tests.e2e.test_shaped_links import LADDER
from tests.e2e.test_simulcast import page_server
from tests.media.peers import running_sfu, wait_for

pytestmark = pytest.mark.timeout(120)

VIEWER_PAGE = """<!doctype html><meta charset="utf-8"><title>viewer</title>
<video id="v" autoplay muted playsinline></video>
<script>
window.watch = async () => {
  const pc = new RTCPeerConnection({iceServers: []});
  window.vpc = pc;
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.ontrack = (e) => { document.getElementById('v').srcObject = new MediaStream([e.track]); };
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
  return answer;
};
window.inbound = async () => {
  let out = null;
  (await window.vpc.getStats()).forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') {
      out = {framesDecoded: r.framesDecoded || 0, frameWidth: r.frameWidth || 0,
             freezeCount: r.freezeCount || 0, freezes: r.totalFreezesDuration || 0,
             keyFramesDecoded: r.keyFramesDecoded || 0, packetsLost: r.packetsLost || 0};
    }
  });
  return out;
};
</script>
"""


@contextlib.asynccontextmanager
async def viewer_server(sfu: SFU, room_id: str, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve the viewer page and its WHEP endpoint from one origin, on ``host``."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=VIEWER_PAGE, content_type="text/html")

    async def whep(request: web.Request) -> web.Response:
        session = await sfu.watch(room_id, await request.text())
        return web.Response(status=201, text=session.answer_sdp, content_type="application/sdp")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/whep", whep)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_a_chromium_viewer_sends_transport_feedback_and_climbs_by_probes(browser: Any) -> None:
    async with running_sfu(remb_bitrate_bps=4_000_000, connect_timeout_seconds=20.0,
                           keyframe_interval_ms=500) as sfu, \
            page_server(sfu, "tw") as base, viewer_server(sfu, "tw") as viewer_base:
        context = await browser.new_context()
        await context.grant_permissions(["camera"], origin=base)
        try:
            page = await context.new_page()
            await page.goto(base + "/")
            await page.evaluate("([order, rates]) => window.publish(order, rates)",
                                [["q", "h", "f"], LADDER])
            await wait_for(lambda: "tw" in sfu.rooms and sfu.stats("tw")["state"] == "live", timeout=20)
            viewer = await context.new_page()
            await viewer.goto(viewer_base + "/")
            answer = await viewer.evaluate("() => window.watch()")
            assert "transport-wide-cc-extensions-01" in answer and "transport-cc" in answer, answer
            video = sfu.rooms["tw"].forwarders["video"]
            assert isinstance(video, SimulcastForwarder)
            await wait_for(lambda: bool(video.policies), timeout=20)
            track = next(iter(video.policies))

            layers: list[str | None] = []
            samples: list[dict[str, Any]] = []
            started = time.monotonic()
            while time.monotonic() - started < 40:
                rid = video.rid_of(track)
                if not layers or layers[-1] != rid:
                    layers.append(rid)
                stats = await viewer.evaluate("() => window.inbound()")
                if stats is not None:
                    stats["t"] = round(time.monotonic() - started, 1)
                    stats["rid"] = rid
                    stats["acked"] = track.twcc.received if track.twcc else None
                    samples.append(stats)
                if rid == "f" and stats and stats["frameWidth"] == 1280 and len(samples) > 10:
                    break
                await asyncio.sleep(0.5)
            story = (f"layers {layers}; probes passed {video.prober.passed}, failed "
                     f"{video.prober.failed}; feedback: {track.twcc and track.twcc.received} "
                     f"received, {track.twcc and track.twcc.lost} lost; samples "
                     f"{[(x['t'], x['rid'], x['framesDecoded'], x['freezes'], x['acked']) for x in samples]}")
            assert layers[0] == "q" and layers[-1] == "f", story
            assert video.prober.passed >= 2, story
            assert track.twcc is not None and track.twcc.received > 200, story
            assert track.twcc.acked_bps() is not None, story
            # Decoding went on across the switches (Chromium reports no decoder errors in
            # getStats: frames decoded must keep growing, at the top layer's size).
            decoded = [s["framesDecoded"] for s in samples]
            assert all(b >= a for a, b in zip(decoded, decoded[1:], strict=False)), story
            top_from = decoded[-1]

            async def decoding_top() -> bool:
                stats = await viewer.evaluate("() => window.inbound()")
                return stats["frameWidth"] == 1280 and stats["framesDecoded"] > top_from + 30

            deadline = time.monotonic() + 20
            while not await decoding_top():
                assert time.monotonic() < deadline, story
                await asyncio.sleep(0.5)
            # Known gap (issue 19): the switch up can stall Chromium's decoding for 0.2-4 s
            # on this loaded machine (totalFreezesDuration), so freezes are printed here.
            final = await viewer.evaluate("() => window.inbound()")
            print(f"\n{story}; final {final}")
        finally:
            await context.close()
