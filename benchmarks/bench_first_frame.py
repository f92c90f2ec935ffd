"""Benchmark a joining viewer's first decoded frame, without and with the GOP cache.

Run from the repository root: ``python -m benchmarks.bench_first_frame [--joins 20]
[--kinds chromium,aiortc,ffmpeg-1s,ffmpeg-5s] [--chromium-joins 5]``.

For each publisher kind the SFU runs twice in the same process, first with the GOP cache
off (``gop_cache_bytes=0``: a joining viewer waits for a keyframe, which it asks for with
a throttled PLI), then on (the default). The publisher is one of:

- ``chromium``: headless Chromium publishing its fake camera (VP8) over WHIP;
- ``aiortc``: an aiortc peer publishing a synthetic pattern (VP8);
- ``ffmpeg-1s`` / ``ffmpeg-5s``: ffmpeg's WHIP muxer, x264 with a keyframe every 1 s or
  5 s (``-g 30`` / ``-g 150``); ffmpeg ignores keyframe requests.

Then ``--joins`` viewers join one after another, each 0.3 s plus a random part of the
publisher's keyframe interval after the previous one left (a join right after the
previous one's keyframe would otherwise always wait a whole GOP; this way the joins fall
uniformly over a GOP): an aiortc peer that decodes, timed
from the creation of its offer to its first decoded frame (ICE and DTLS included).
With ``--chromium-joins N`` Chromium viewers join too, recording every presented frame (``requestVideoFrameCallback``)
and their ``getStats()``: when playback reaches the live frames (the cached frames have
squeezed RTP timestamps; live frames are 1/30 s apart), and any freeze after that.

Prints p50/p95 per kind and mode with the ratio off/on, and writes
``benchmarks/results/first_frame.json``. Target: p95 <= 400 ms for every kind with the
cache on, on loopback. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from media import SFU, BadOffer, MediaSettings, SessionNotFound
from media.aiortc_hook import ice_host_addresses

LOOPBACK = ["127.0.0.1"]
RESULTS = Path(__file__).parent / "results"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--allow-loopback-in-peer-connection",
    "--disable-background-networking", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required",
    "--disable-gpu",
]
WIDTH, HEIGHT, FPS = 640, 360, 30
TARGET_P95_MS = 400.0
ROOM = "bench"
KINDS = ("chromium", "aiortc", "ffmpeg-1s", "ffmpeg-5s")
# A gap between two presented frames longer than this, once live, counts as a freeze.
FREEZE_MS = 250.0

PAGE = """<!doctype html><meta charset="utf-8"><title>first frame</title><body><script>
async function gathered(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((r) => pc.addEventListener("icegatheringstatechange",
    () => pc.iceGatheringState === "complete" && r()));
}
async function negotiate(pc, url) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const resp = await fetch(url, {method: "POST", headers: {"Content-Type": "application/sdp"},
                                 body: pc.localDescription.sdp});
  if (resp.status !== 201) throw new Error(`${resp.status} ${await resp.text()}`);
  const location = resp.headers.get("Location");
  await pc.setRemoteDescription({type: "answer", sdp: await resp.text()});
  return location;
}
window.publish = async (url) => {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: __WIDTH__, height: __HEIGHT__, frameRate: __FPS__}, audio: false});
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver(stream.getVideoTracks()[0], {direction: "sendonly"});
  window.publisher = pc;
  await negotiate(pc, url);
};
window.watch = async (url, seconds) => {
  const t0 = performance.now();
  const pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver("video", {direction: "recvonly"});
  const video = document.createElement("video");
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.append(video);
  const frames = [];
  pc.addEventListener("track", (e) => {
    video.srcObject = new MediaStream([e.track]);
    const onFrame = (now, meta) => {
      frames.push([meta.presentationTime - t0, meta.rtpTimestamp]);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
  const location = await negotiate(pc, url);
  await new Promise((r) => setTimeout(r, seconds * 1000));
  let inbound = null;
  (await pc.getStats()).forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") inbound = s; });
  pc.close(); video.remove();
  await fetch(location, {method: "DELETE"});
  return {frames, inbound};
};
</script></body>"""
PAGE = PAGE.replace("__WIDTH__", str(WIDTH)).replace("__HEIGHT__", str(HEIGHT)).replace("__FPS__", str(FPS))


def keyframe_period(kind: str) -> float:
    """Return the publisher's keyframe interval, for spacing the joins (1 s if unknown)."""
    return float(kind.split("-")[1].rstrip("s")) if kind.startswith("ffmpeg") else 1.0


def log(message: str) -> None:
    """Print a progress line at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    """Return the ``q`` quantile (0-1) of ``values``, interpolated."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- the server: WHIP/WHEP in front of an SFU, and the Chromium page ---------------------


class Server:
    """A loopback HTTP server for WHIP/WHEP whose SFU is swapped per measurement."""

    def __init__(self) -> None:
        self.sfu: SFU | None = None
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Serve the page, POST /whip, POST /whep and DELETE /session/{id}."""
        app = web.Application()
        app.router.add_get("/", lambda _: web.Response(text=PAGE, content_type="text/html"))
        app.router.add_post("/whip", self._publish)
        app.router.add_post("/whep", self._watch)
        app.router.add_delete("/session/{id}", self._leave)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _publish(self, request: web.Request) -> web.Response:
        return await self._answer(request, publish=True)

    async def _watch(self, request: web.Request) -> web.Response:
        return await self._answer(request, publish=False)

    async def _answer(self, request: web.Request, *, publish: bool) -> web.Response:
        assert self.sfu is not None
        offer = await request.text()
        try:
            if publish:
                session = await self.sfu.publish(ROOM, offer, "bench")
            else:
                session = await self.sfu.watch(ROOM, offer)
        except BadOffer as exc:
            return web.Response(status=400, text=exc.message)
        return web.Response(
            status=201, text=session.answer_sdp, content_type="application/sdp",
            headers={"Location": f"/session/{session.id}"},
        )

    async def _leave(self, request: web.Request) -> web.Response:
        assert self.sfu is not None
        with contextlib.suppress(SessionNotFound):
            await self.sfu.close_session(request.match_info["id"])
        return web.Response(status=200)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- publishers ----------------------------------------------------------------------------


class PatternTrack(VideoStreamTrack):
    """Synthetic moving colour bars at 30 fps."""

    def __init__(self) -> None:
        super().__init__()
        x = np.linspace(0, 255, WIDTH, dtype=np.uint8)
        self._base = np.dstack([np.tile(x, (HEIGHT, 1))] * 3)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(np.roll(self._base, pts // 3000, axis=1), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def new_pc() -> RTCPeerConnection:
    """Return a peer connection that never contacts a STUN server."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def offer_of(pc: RTCPeerConnection) -> str:
    """Create and set a loopback-only offer; return its SDP."""
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


@contextlib.asynccontextmanager
async def publisher(kind: str, server: Server, browser: Any) -> AsyncIterator[None]:
    """Run one publisher of ``kind`` into the server's SFU room."""
    if kind == "aiortc":
        pc = new_pc()
        pc.addTransceiver(PatternTrack(), direction="sendonly")
        with ice_host_addresses(LOOPBACK):
            offer = await offer_of(pc)
        assert server.sfu is not None
        session = await server.sfu.publish(ROOM, offer, "bench")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=session.answer_sdp, type="answer"))
        try:
            yield
        finally:
            await pc.close()
    elif kind.startswith("ffmpeg"):
        import imageio_ffmpeg

        gop = str(int(kind.split("-")[1].rstrip("s")) * FPS)
        process = await asyncio.create_subprocess_exec(
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", f"testsrc=size={WIDTH}x{HEIGHT}:rate={FPS}",
            "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency",
            "-pix_fmt", "yuv420p", "-g", gop, "-keyint_min", gop, "-sc_threshold", "0",
            "-bf", "0", "-b:v", "800k", "-an", "-t", "600", "-f", "whip", f"{server.url}/whip",
            stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            yield
        finally:
            if process.returncode is None:
                process.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.communicate(), 10)
    elif kind == "chromium":
        page = await browser.new_page()
        await page.goto(server.url + "/")
        await page.evaluate("(url) => window.publish(url)", server.url + "/whip")
        try:
            yield
        finally:
            await page.close()
    else:
        raise ValueError(kind)


# --- viewers -------------------------------------------------------------------------------


async def aiortc_join(sfu: SFU, timeout: float = 15.0) -> float:
    """Join with a decoding aiortc viewer; return seconds from its offer to its first frame."""
    started = time.monotonic()
    pc = new_pc()
    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def read(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            await track.recv()
            if not first.done():
                first.set_result(time.monotonic())
            while True:  # keep draining so the receiver never backs up
                await track.recv()

    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(read(track))))
    pc.addTransceiver("video", direction="recvonly")
    with ice_host_addresses(LOOPBACK):
        offer = await offer_of(pc)
    session = await sfu.watch(ROOM, offer)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=session.answer_sdp, type="answer"))
    try:
        return await asyncio.wait_for(first, timeout) - started
    finally:
        with contextlib.suppress(SessionNotFound):
            await sfu.close_session(session.id)
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def playback(result: dict[str, Any]) -> dict[str, Any]:
    """Summarise a Chromium viewer's presented frames: first frame, time to live, freezes."""
    frames = result["frames"]
    if not frames:
        return {"first_ms": None}
    # Cached frames are squeezed in RTP time (a frame's bytes at the catch-up pace apart,
    # well under 1/60 s unless a frame is over ~40 kB); live frames are 1/30 s apart.
    # Live starts after the last small gap before ten live-looking gaps in a row.
    live_index, run = 0, 0
    for index in range(1, len(frames)):
        if (frames[index][1] - frames[index - 1][1]) & 0xFFFFFFFF < 90_000 // 60:
            live_index, run = index, 0
        else:
            run += 1
            if run == 10:
                break
    live = frames[live_index:]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(live)]
    inbound = result.get("inbound") or {}
    emitted = inbound.get("jitterBufferEmittedCount") or 0
    return {
        "first_ms": frames[0][0],
        "live_ms": frames[live_index][0],
        "cached_frames_shown": live_index,
        "frames_shown": len(frames),
        "longest_gap_after_live_ms": max(gaps, default=0.0),
        "freezes_after_live": sum(1 for g in gaps if g > FREEZE_MS),
        "chrome_freeze_count": inbound.get("freezeCount"),
        "frames_decoded": inbound.get("framesDecoded"),
        "frames_dropped": inbound.get("framesDropped"),
        "jitter_buffer_ms": 1000 * inbound.get("jitterBufferDelay", 0) / emitted if emitted else None,
    }


async def chromium_join(browser: Any, server: Server, seconds: float) -> dict[str, Any]:
    """Watch for ``seconds`` in a Chromium page; return its playback summary."""
    page = await browser.new_page()
    try:
        await page.goto(server.url + "/")
        result = await page.evaluate("([u, s]) => window.watch(u, s)", [server.url + "/whep", seconds])
    finally:
        await page.close()
    return playback(result)


# --- the run -------------------------------------------------------------------------------


async def wait_live(sfu: SFU, timeout: float = 30.0) -> None:
    """Wait until the room's publisher media flows."""
    deadline = time.monotonic() + timeout
    while not (ROOM in sfu.rooms and sfu.rooms[ROOM].state.value == "live"):
        if time.monotonic() > deadline:
            raise RuntimeError("the publisher did not go live")
        await asyncio.sleep(0.05)


async def measure(kind: str, cache: bool, args: argparse.Namespace, server: Server,
                  browser: Any) -> dict[str, Any]:
    """Run one publisher kind with the cache on or off; return its figures."""
    settings = MediaSettings(
        ice_servers=[], ice_host_addresses=LOOPBACK, max_viewers_per_room=50,
        keyframe_interval_ms=500, connect_timeout_seconds=15.0,
        **({} if cache else {"gop_cache_bytes": 0}),
    )
    server.sfu = sfu = SFU(settings)
    mode = "on" if cache else "off"
    try:
        async with publisher(kind, server, browser):
            await wait_live(sfu)
            await asyncio.sleep(1.5)
            samples: list[float] = []
            for index in range(args.joins):
                samples.append(await aiortc_join(sfu) * 1000)
                if (index + 1) % 5 == 0:
                    log(f"{kind}, cache {mode}: {index + 1}/{args.joins} joins, "
                        f"last {samples[-1]:.0f} ms")
                await asyncio.sleep(0.3 + random.uniform(0, keyframe_period(kind)))
            chromium: list[dict[str, Any]] = []
            if browser is not None and args.chromium_joins:
                for _ in range(args.chromium_joins):
                    chromium.append(await chromium_join(browser, server, args.chromium_seconds))
                    await asyncio.sleep(0.3 + random.uniform(0, keyframe_period(kind)))
                log(f"{kind}, cache {mode}: Chromium viewers {[c.get('live_ms') for c in chromium]}")
            stats = sfu.stats(ROOM)
    finally:
        await sfu.close()
        server.sfu = None
    return {
        "kind": kind, "cache": cache, "joins_ms": [round(s, 1) for s in samples],
        "p50_ms": round(percentile(samples, 0.5), 1), "p95_ms": round(percentile(samples, 0.95), 1),
        "max_ms": round(max(samples), 1), "keyframe_requests": stats["keyframe_requests"],
        "chromium_viewers": chromium,
    }


def chromium_summary(viewers: list[dict[str, Any]]) -> str:
    """Return one line about Chromium viewers' playback, or '-'."""
    shown = [v for v in viewers if v.get("first_ms") is not None]
    if not viewers:
        return "-"
    if not shown:
        return "no frame"
    live = [v["live_ms"] for v in shown]
    freezes = sum(v["freezes_after_live"] for v in shown)
    chrome = sum(v.get("chrome_freeze_count") or 0 for v in shown)
    return (f"first p50 {statistics.median(v['first_ms'] for v in shown):.0f} ms, live by "
            f"max {max(live):.0f} ms, freezes {freezes} (Chrome's count {chrome})")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every kind, cache off then on; print the table and return the results."""
    kinds = [k for k in args.kinds.split(",") if k]
    needs_browser = "chromium" in kinds or args.chromium_joins
    server = Server()
    await server.start()
    results: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        browser = None
        if needs_browser:
            from playwright.async_api import async_playwright

            playwright = await stack.enter_async_context(async_playwright())
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            stack.push_async_callback(browser.close)
        for kind in kinds:
            for cache in (False, True):
                log(f"{kind}, cache {'on' if cache else 'off'}: starting")
                results.append(await measure(kind, cache, args, server, browser))
    await server.close()

    print()
    print(f"{'publisher':<11} {'cache off p50/p95':>18} {'cache on p50/p95':>17} {'p95 ratio':>9}  target")
    table = []
    for kind in kinds:
        off = next(r for r in results if r["kind"] == kind and not r["cache"])
        on = next(r for r in results if r["kind"] == kind and r["cache"])
        ratio = off["p95_ms"] / on["p95_ms"] if on["p95_ms"] else float("inf")
        met = on["p95_ms"] <= TARGET_P95_MS
        table.append({"kind": kind, "off_p50_ms": off["p50_ms"], "off_p95_ms": off["p95_ms"],
                      "on_p50_ms": on["p50_ms"], "on_p95_ms": on["p95_ms"],
                      "p95_ratio": round(ratio, 2), "target_met": met})
        print(f"{kind:<11} {off['p50_ms']:>8.0f}/{off['p95_ms']:<6.0f} ms {on['p50_ms']:>7.0f}/"
              f"{on['p95_ms']:<6.0f} ms {ratio:>8.1f}x  {'met' if met else 'MISSED'}")
        for result in (off, on):
            if result["chromium_viewers"]:
                print(f"    Chromium viewers, cache {'on' if result['cache'] else 'off'}: "
                      f"{chromium_summary(result['chromium_viewers'])}")
    return {"joins": args.joins, "target_p95_ms": TARGET_P95_MS, "table": table, "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--chromium-joins", type=int, default=0,
                        help="Chromium viewers per run (playback to live, freezes)")
    parser.add_argument("--chromium-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "first_frame.json")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
