"""Simulcast from Chromium: the SFU receives every layer and forwards the top one.

The page publishes its (fake) 1280x720 camera with three encodings, in either order:
low-first (q, h, f) or high-first (f, h, q). The RID order says nothing about quality,
so whichever order, a viewer must end up decoding the full 1280x720 layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from media import SFU, BadOffer
from tests.media.peers import running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(120)

PAGE = """<!doctype html><meta charset="utf-8"><title>simulcast</title>
<script>
window.publish = async (order, maxBitrates = {}) => {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: 1280, height: 720, frameRate: 30}, audio: false});
  const layers = {q: {rid: 'q', scaleResolutionDownBy: 4}, h: {rid: 'h', scaleResolutionDownBy: 2},
                  f: {rid: 'f', scaleResolutionDownBy: 1}};
  const pc = new RTCPeerConnection({iceServers: []});
  window.pc = pc;
  pc.addTransceiver(stream.getVideoTracks()[0],
    {direction: 'sendonly', sendEncodings: order.map(rid => maxBitrates[rid]
      ? {...layers[rid], maxBitrate: maxBitrates[rid]} : layers[rid])});
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise(done => pc.addEventListener('icegatheringstatechange',
      () => pc.iceGatheringState === 'complete' && done()));
  }
  const resp = await fetch('/whip', {method: 'POST', headers: {'Content-Type': 'application/sdp'},
                                     body: pc.localDescription.sdp});
  const answer = await resp.text();
  if (resp.status !== 201) throw new Error(resp.status + ' ' + answer);
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  return {offer: pc.localDescription.sdp, answer};
};
window.layersSent = async () => {
  const out = {};
  (await window.pc.getStats()).forEach(r => {
    if (r.type === 'outbound-rtp') out[r.rid] = [r.frameWidth || 0, r.framesEncoded || 0];
  });
  return out;
};
</script>
"""


@contextlib.asynccontextmanager
async def page_server(sfu: SFU, room_id: str) -> AsyncIterator[str]:
    """Serve the publishing page and its WHIP endpoint from one origin."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def whip(request: web.Request) -> web.Response:
        try:
            session = await sfu.publish(room_id, await request.text(), "chromium")
        except BadOffer as exc:
            return web.Response(status=400, text=exc.message)
        return web.Response(status=201, text=session.answer_sdp, content_type="application/sdp")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/whip", whip)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("order", [["q", "h", "f"], ["f", "h", "q"]], ids=["low-first", "high-first"])
async def test_simulcast_publisher_reaches_viewers_at_the_top_layer(browser: Any, order: list[str]) -> None:
    async with running_sfu(remb_bitrate_bps=4_000_000, connect_timeout_seconds=20.0) as sfu, \
            page_server(sfu, "sim") as base:
        context = await browser.new_context()
        await context.grant_permissions(["camera"], origin=base)
        viewer = None
        try:
            page = await context.new_page()
            await page.goto(base + "/")
            sdp = await page.evaluate("(order) => window.publish(order)", order)
            assert f"a=simulcast:send {';'.join(order)}" in sdp["offer"]
            assert f"a=simulcast:recv {';'.join(order)}" in sdp["answer"]
            assert "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in sdp["answer"]
            await wait_for(lambda: "sim" in sfu.rooms and sfu.stats("sim")["state"] == "live", timeout=20)
            viewer, _ = await watch(sfu, "sim", audio=False)
            await wait_for(
                lambda: sum(1 for _, w, _h in viewer.video_frames if w == 1280) >= 10, timeout=45
            )
            # Every layer reached the SFU; only the top one is forwarded.
            receiver = sfu.rooms["sim"].forwarders["video"].receiver
            assert receiver is not None and receiver.layers is not None
            assert {layer.rid for layer in receiver.layers.layers.values()} == set(order)
            assert receiver.layers.chosen_rid == "f"
        except AssertionError:
            sent = await page.evaluate("() => window.layersSent()")
            seen = {(w, h) for _, w, h in viewer.video_frames} if viewer else set()
            raise AssertionError(f"the browser sent {sent}; the viewer decoded sizes {seen}") from None
        finally:
            if viewer is not None:
                await viewer.close()
            await context.close()
