"""A Chromium viewer on a shaped link: settles low without freezing, climbs when it lifts.

As tests/e2e/test_shaped_links.py does for aiortc viewers, but the viewer is a headless
Chromium running inside the network namespace (Playwright launches it through
`ip netns exec`), so it negotiates transport-wide-cc and its feedback reaches the SFU.
Chromium publishes three layers from the host; the viewer's link is shaped with
`tc tbf` to 300 kbit/s: it must settle on the low layer and keep decoding (getStats:
frames decoded keep increasing, no freeze over 500 ms once settled); when the link
goes to 5 Mbit/s it must switch up, and the switch points must decode cleanly (frames
decoded never still for 500 ms, no PLI from the viewer: the VP8 picture ids and
TL0PICIDX continue across the layers, media.forwarder); it should reach the top layer
within 10 s and decode it at 1280 (an xfail when it does not: see the reason there).
With SHAPED_CHROMIUM_DUMP=path the samples and the SFU's layer decisions (debug logs of
media.layers and media.probe) are written to path and path.log.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from media.layers import SimulcastForwarder
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, playwright_api
from tests.e2e.test_shaped_links import (
    CLIMB_SECONDS,
    FREEZE_SECONDS,
    LADDER,
    UNAVAILABLE,
    ShapedLink,
)
from tests.e2e.test_simulcast import page_server
from tests.e2e.test_twcc import viewer_server
from tests.media.peers import running_sfu, wait_for

pytestmark = pytest.mark.timeout(240)
logger = logging.getLogger(__name__)

# More of the viewer's inbound-rtp stats than window.inbound() gives: what happens at a
# switch (frames dropped, PLIs/NACKs it sent, freezes, keyframes decoded).
DETAIL = """() => window.vpc.getStats().then(all => {
  let out = null;
  all.forEach(r => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') {
      out = {framesDecoded: r.framesDecoded || 0, frameWidth: r.frameWidth || 0,
             framesReceived: r.framesReceived || 0, framesDropped: r.framesDropped || 0,
             keyFramesDecoded: r.keyFramesDecoded || 0, pliCount: r.pliCount || 0,
             firCount: r.firCount || 0, nackCount: r.nackCount || 0,
             freezeCount: r.freezeCount || 0, freezes: r.totalFreezesDuration || 0,
             packetsLost: r.packetsLost || 0, packetsReceived: r.packetsReceived || 0,
             decoder: r.decoderImplementation || ''};
    }
  });
  return out;
})"""


def namespaced_chromium(tmp_path: Path, ns: str) -> str:
    """Return an executable that runs Chromium inside network namespace ``ns``."""
    wrapper = tmp_path / "chromium-in-ns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
    os.chmod(wrapper, 0o755)
    return str(wrapper)


@pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
async def test_a_chromium_viewer_settles_low_on_300_kbit_and_climbs_back(browser: Any, tmp_path: Path) -> None:
    link = ShapedLink(3, "300kbit")
    viewer_browser = context = None
    samples: list[tuple[float, str | None, dict[str, Any]]] = []
    dump = os.environ.get("SHAPED_CHROMIUM_DUMP")
    if dump:  # the layer decisions, next to the samples
        handler = logging.FileHandler(dump + ".log", mode="w")
        handler.setFormatter(logging.Formatter("%(relativeCreated)d %(name)s %(message)s"))
        for name in ("media.layers", "media.probe", __name__):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        link.up()
        async with running_sfu(remb_bitrate_bps=4_000_000, connect_timeout_seconds=30.0,
                               keyframe_interval_ms=500,
                               ice_host_addresses=["127.0.0.1", link.host_address]) as sfu, \
                page_server(sfu, "shc") as base, \
                viewer_server(sfu, "shc", host=link.host_address) as viewer_base, \
                playwright_api.async_playwright() as playwright:
            context = await browser.new_context()
            await context.grant_permissions(["camera"], origin=base)
            page = await context.new_page()
            await page.goto(base + "/")
            await page.evaluate("([order, rates]) => window.publish(order, rates)",
                                [["q", "h", "f"], LADDER])
            await wait_for(lambda: "shc" in sfu.rooms and sfu.stats("shc")["state"] == "live", timeout=30)
            viewer_browser = await playwright.chromium.launch(
                executable_path=namespaced_chromium(tmp_path, link.ns), args=CHROMIUM_ARGS, headless=True)
            viewer = await (await viewer_browser.new_context()).new_page()
            await viewer.goto(viewer_base + "/")
            answer = await viewer.evaluate("() => window.watch()")
            assert "transport-wide-cc" in answer
            video = sfu.rooms["shc"].forwarders["video"]
            assert isinstance(video, SimulcastForwarder)
            await wait_for(lambda: bool(video.policies), timeout=30)
            track = next(iter(video.policies))
            started = time.monotonic()

            async def sample(seconds: float, until: Any = None) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    stats = await viewer.evaluate(DETAIL)
                    samples.append((round(time.monotonic() - started, 1), video.rid_of(track), stats or {}))
                    logger.debug("sample %s", samples[-1])
                    if until is not None and until():
                        return
                    await asyncio.sleep(0.25)

            def story() -> str:
                policy = video.policies.get(track)
                layers = [(layer.rid, layer.max_tid, round(layer.avg_bps)) for layer in video.ranked()]
                return (f"on {video.ssrc_of(track)} estimate {policy and policy.estimate_bps} "
                        f"of layers {layers}; "
                        f"probes passed {video.prober.passed}, failed {video.prober.failed}; "
                        f"feedback {track.twcc and track.twcc.received} received; samples "
                        f"{[(t, r, s.get('framesDecoded'), s.get('frameWidth'), s.get('freezes'), s.get('pliCount')) for t, r, s in samples]}")

            # Settle: on the low layer for 6 s running (within a minute).
            since = None
            while since is None or time.monotonic() - since < 6.0:
                assert time.monotonic() - started < 60, story()
                await sample(0.25)
                since = (since or time.monotonic()) if samples[-1][1] == "q" else None
            # Settled: 8 s on the low layer, decoding on, no freeze over 500 ms.
            first = len(samples)
            await sample(8.0)
            window = samples[first - 1:]
            assert {r for _, r, _ in window} == {"q"}, story()
            decoded = [s.get("framesDecoded", 0) for _, _, s in window]
            assert all(b >= a for a, b in itertools.pairwise(decoded)), story()
            assert decoded[-1] - decoded[0] > 8 * 10, story()  # ~15 fps or more
            # A freeze Chromium counts shows in totalFreezesDuration; none may exceed 500 ms,
            # and all of them together stay under that here.
            frozen = window[-1][2].get("freezes", 0) - window[0][2].get("freezes", 0)
            assert frozen < FREEZE_SECONDS, story()
            stalls = [b[0] - a[0] for a, b in itertools.pairwise(window)
                      if b[2].get("framesDecoded") == a[2].get("framesDecoded")]
            assert sum(stalls) < FREEZE_SECONDS * 2, story()

            # The limit lifts: the top layer within 10 s, decoded at 1280.
            link.shape("5mbit")
            lifted = time.monotonic()
            first = len(samples)
            await sample(CLIMB_SECONDS, until=lambda: samples[-1][1] == "f")
            climbed = time.monotonic() - lifted
            on_top = samples[-1][1] == "f"
            if on_top:
                await sample(20.0, until=lambda: samples[-1][2].get("frameWidth") == 1280)
                assert samples[-1][2].get("frameWidth") == 1280, story()
            await sample(1.0)
            # The switch points decoded cleanly, wherever the climb got: frames decoded
            # never stood still for 500 ms, and Chromium asked for no keyframe (it sends a
            # PLI when it cannot decode what it got: picture ids out of step, a reference
            # missing). Before the VP8 ids continued across layers it stopped for 1-4 s.
            climb = samples[first - 1:]
            assert {r for _, r, _ in climb} != {"q"}, story()  # it did switch up
            decoded = [s.get("framesDecoded", 0) for _, _, s in climb]
            assert all(b >= a for a, b in itertools.pairwise(decoded)), story()
            still, since = 0.0, climb[0][0]
            for a, b in itertools.pairwise(climb):
                if b[2].get("framesDecoded") != a[2].get("framesDecoded"):
                    since = b[0]
                still = max(still, b[0] - since)
            assert still < FREEZE_SECONDS, story()
            assert climb[-1][2].get("pliCount") == climb[0][2].get("pliCount"), story()
            if not on_top:
                # Known gap (issue 19), measured with the SFU's debug logs: the climb from
                # the 300 kbit/s settling point (the low layer or its TID 1 rung) takes one
                # padding probe per step, each 1.5-3.5 s to reach PROBE_BYTES and be
                # answered by a receiver report, after a back-off of up to 3 s left from
                # the failed probes on the narrow link: three steps miss 10 s in about half
                # of the runs on this loaded machine. Decoding across the switches is
                # asserted above either way.
                pytest.xfail(f"no climb to the top layer within {CLIMB_SECONDS:.0f} s: {story()}")
            print(f"\nChromium viewer: settled on q, {frozen:.2f} s frozen in 8 s there; "
                  f"climbed to f in {climbed:.1f} s, decoding never still for {still:.2f} s; "
                  f"{story()[:200]}")
    finally:
        if dump:  # every sample, for a look at what happens around the switches
            Path(dump).write_text(json.dumps(samples))
        if viewer_browser is not None:
            await viewer_browser.close()
        if context is not None:
            await context.close()
        link.close()
