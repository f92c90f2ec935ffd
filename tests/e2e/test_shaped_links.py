"""Adaptive quality on shaped links: viewers in network namespaces behind `tc tbf`.

Chromium publishes three layers (320x180, 640x360, 1280x720) to an in-process SFU; two
aiortc viewers (tests/e2e/shaped_viewer.py) run in network namespaces this test creates,
each joined to the host by a veth pair whose host end shapes what the SFU sends with
`tc qdisc tbf` (this kernel has no netem): one at 300 kbit/s, one at 5 Mbit/s. The
constrained viewer must settle on the low layer and keep playing (no freeze over
500 ms once settled), the other on the top layer; when the constraint lifts, the
constrained viewer climbs back to the top layer within 10 s; when it returns, the time
to switch down is measured.

Addresses: 10.(200 + pid % 50).N.0/24, assigned here; the namespaces (and with them both veth ends)
are deleted at the end. Without root or `tc` the test is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from media import SFU
from media.layers import SimulcastForwarder
from tests.e2e.test_simulcast import page_server
from tests.media.peers import running_sfu, wait_for

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
PREFIX = f"sa{os.getpid() % 10000}"
# Per process, so that two runs at once (helpers, CI shards) do not route each other's links
# (10.213 is tests/deploy's).
SUBNET = f"10.{200 + os.getpid() % 50 if os.getpid() % 50 != 13 else 250}"
FREEZE_SECONDS = 0.5
CLIMB_SECONDS = 10.0
LADDER = {"q": 150_000, "h": 500_000, "f": 1_500_000}  # maxBitrate per layer (bit/s)


def shaping_unavailable() -> str | None:
    """Return why shaped links cannot be built here, or None."""
    if os.geteuid() != 0:
        return "shaped-link tests need root (CAP_NET_ADMIN) to create namespaces and qdiscs"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install {package})"
    probe = f"{PREFIX}p"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        run("ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "p0", "root", "tbf",
            "rate", "300kbit", "burst", "16kb", "latency", "400ms")
    except RuntimeError as exc:
        return f"cannot shape a link here: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


def run(*args: str) -> None:
    done = subprocess.run(list(args), check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")


@dataclass
class ShapedLink:
    """A namespace joined to the host by a veth pair; the host end shapes what it is sent."""

    index: int
    rate: str
    ns: str = ""
    host_dev: str = ""

    def __post_init__(self) -> None:
        self.ns = f"{PREFIX}n{self.index}"
        self.host_dev = f"{PREFIX}h{self.index}"

    @property
    def host_address(self) -> str:
        return f"{SUBNET}.{self.index}.1"

    def up(self) -> ShapedLink:
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)  # a crash's leftover
        # The host end of a namespace deleted a moment ago can outlive it briefly.
        subprocess.run(["ip", "link", "del", self.host_dev], check=False, capture_output=True)
        run("ip", "netns", "add", self.ns)
        run("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.host_dev)
        run("ip", "link", "set", self.host_dev, "up")
        run("ip", "-n", self.ns, "addr", "add", f"{SUBNET}.{self.index}.2/24", "dev", "eth0")
        run("ip", "-n", self.ns, "link", "set", "eth0", "up")
        run("ip", "-n", self.ns, "link", "set", "lo", "up")
        self.shape(self.rate, "add")
        return self

    def shape(self, rate: str, verb: str = "change") -> None:
        """Limit what the SFU sends this viewer to ``rate`` (a token bucket, 400 ms of queue: a mobile link's buffer)."""
        run("tc", "qdisc", verb, "dev", self.host_dev, "root", "tbf", "rate", rate,
            "burst", "16kb", "latency", "400ms")

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)  # both veth ends go


@dataclass
class NsViewer:
    """A viewer process in a namespace and the frames it decoded (time, width)."""

    link: ShapedLink
    process: asyncio.subprocess.Process | None = None
    frames: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    session_id: str | None = None

    async def start(self, url: str) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.link.ns, sys.executable, "-m", "tests.e2e.shaped_viewer", url,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if "error" in item:
                    self.errors.append(item["error"])
                else:
                    self.frames.append((item["t"], item["w"]))

    def longest_gap(self, since: float, until: float) -> float:
        times = [since] + [t for t, _ in self.frames if since <= t <= until] + [until]
        return max(b - a for a, b in itertools.pairwise(times))

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), 5)
            if self.process.returncode is None:
                self.process.kill()


@contextlib.asynccontextmanager
async def whep_server(sfu: SFU, room_id: str, links: list[ShapedLink],
                      sessions: list[str]) -> AsyncIterator[int]:
    """Serve WHEP on the host ends of the links (what a viewer in a namespace can reach)."""

    async def whep(request: web.Request) -> web.Response:
        session = await sfu.watch(room_id, await request.text())
        sessions.append(session.id)
        return web.Response(status=201, text=session.answer_sdp, content_type="application/sdp")

    app = web.Application()
    app.router.add_post("/whep", whep)
    runner = web.AppRunner(app)
    await runner.setup()
    port = 0
    for link in links:
        site = web.TCPSite(runner, link.host_address, port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        await runner.cleanup()


UNAVAILABLE = shaping_unavailable()


@pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
async def test_constrained_viewer_settles_low_and_climbs_back(browser: Any) -> None:
    await scenario(browser, check_freezes=False)


@pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
async def test_constrained_viewer_never_freezes_once_settled(browser: Any) -> None:
    await scenario(browser, check_freezes=True)


async def scenario(browser: Any, *, check_freezes: bool) -> None:
    """Run the two shaped viewers; check freezes once settled, or the layers and the climb."""
    links = [ShapedLink(1, "300kbit"), ShapedLink(2, "5mbit")]
    viewers: list[NsViewer] = []
    context = None
    try:
        for link in links:
            link.up()
        addresses = ["127.0.0.1"] + [link.host_address for link in links]
        async with running_sfu(remb_bitrate_bps=4_000_000, connect_timeout_seconds=30.0,
                               keyframe_interval_ms=500, ice_host_addresses=addresses) as sfu, \
                page_server(sfu, "shaped") as base:
            context = await browser.new_context()
            await context.grant_permissions(["camera"], origin=base)
            page = await context.new_page()
            await page.goto(base + "/")
            # A ladder as apps configure it (LiveKit's defaults are close): the low layer fits
            # the constrained link, the middle one does not.
            await page.evaluate("([order, rates]) => window.publish(order, rates)",
                                [["q", "h", "f"], LADDER])
            await wait_for(lambda: "shaped" in sfu.rooms and sfu.stats("shaped")["state"] == "live",
                           timeout=30)
            sessions: list[str] = []
            async with whep_server(sfu, "shaped", links, sessions) as port:
                for link in links:
                    viewer = NsViewer(link)
                    viewers.append(viewer)
                    count = len(sessions)
                    await viewer.start(f"http://{link.host_address}:{port}/whep")
                    await wait_for(lambda c=count, v=viewer: len(sessions) > c or v.errors, timeout=30)
                    assert not viewer.errors, viewer.errors
                    viewer.session_id = sessions[-1]
                constrained, free = viewers
                room = sfu.rooms["shaped"]
                video = room.forwarders["video"]
                assert isinstance(video, SimulcastForwarder)

                def rid(viewer: NsViewer) -> str | None:
                    entry = room.viewers.get(viewer.session_id or "")
                    track = entry.tracks.get("video") if entry else None
                    return video.rid_of(track) if track is not None else None

                async def hold(viewer: NsViewer, layer: str, seconds: float) -> None:
                    """Wait until ``viewer`` has stayed on ``layer`` for ``seconds``."""
                    since = None
                    while True:
                        now = time.monotonic()
                        if rid(viewer) == layer:
                            since = since or now
                            if now - since >= seconds:
                                return
                        else:
                            since = None
                        await asyncio.sleep(0.1)

                timeline: list[tuple[float, str | None]] = []

                async def sample() -> None:
                    while True:
                        layer = rid(constrained)
                        if not timeline or timeline[-1][1] != layer:
                            timeline.append((time.monotonic(), layer))
                        await asyncio.sleep(0.05)

                sampler = asyncio.ensure_future(sample())
                started = time.monotonic()
                await asyncio.wait_for(hold(constrained, "q", 6.0), 90)
                await asyncio.wait_for(hold(free, "f", 3.0), 60)
                settled = time.monotonic()
                # Settled: both keep playing (the constrained one may probe upwards meanwhile).
                await asyncio.sleep(8.0)
                window_end = time.monotonic()
                gap = constrained.longest_gap(settled, window_end)
                widths = {w for t, w in constrained.frames if t >= settled}
                assert rid(free) == "f"
                times = [t for t, _ in constrained.frames if settled <= t <= window_end]
                gaps = [(round(a - started, 2), round(b - a, 2))
                        for a, b in itertools.pairwise(times) if b - a > 0.3]
                story = (f"the constrained viewer froze for {gap:.2f} s; gaps {gaps}; layers "
                         f"{[(round(t - started, 2), r) for t, r in timeline]}; "
                         f"settled at {settled - started:.2f}")
                story += f"; 1280 frames at {[round(t - started, 2) for t, w in constrained.frames if t >= settled and w == 1280][:5]}"
                story += (f"; probes passed {video.prober.passed}, failed {video.prober.failed}; layer "
                          f"rates {[(lay.rid, round(lay.avg_bps)) for lay in video.ranked()]}")
                if check_freezes:
                    # Once settled it should stay low and keep playing.
                    assert widths == {320} and gap < FREEZE_SECONDS, story
                    print(f"\nsettled after {settled - started:.1f} s; longest gap when settled "
                          f"{gap * 1000:.0f} ms; probes passed {video.prober.passed}, failed "
                          f"{video.prober.failed}; longest queue a probe's pings saw "
                          f"{video.prober.worst_queue * 1000:.0f} ms")
                    return
                assert {w for t, w in free.frames if t >= settled} == {1280}
                assert free.longest_gap(settled, window_end) < FREEZE_SECONDS

                # The constraint lifts: back to the top within 10 s.
                constrained.link.shape("5mbit")
                lifted = time.monotonic()
                try:
                    await asyncio.wait_for(hold(constrained, "f", 0.0), CLIMB_SECONDS)
                except TimeoutError:
                    raise AssertionError(
                        f"not on f {CLIMB_SECONDS} s after the link lifted at "
                        f"{lifted - started:.2f}; layers "
                        f"{[(round(t - started, 2), r) for t, r in timeline]}; probes passed "
                        f"{video.prober.passed}, failed {video.prober.failed}") from None
                climbed = time.monotonic() - lifted
                await wait_for(lambda: any(w == 1280 and t > lifted for t, w in constrained.frames),
                               timeout=10)

                # It comes back: how long until the SFU switched it down.
                await asyncio.sleep(2.0)
                constrained.link.shape("300kbit")
                dropped = time.monotonic()
                await asyncio.wait_for(hold(constrained, "q", 0.0), 20)
                down = time.monotonic() - dropped
                print(f"\nsettled after {settled - started:.1f} s; longest freeze when settled "
                      f"{gap * 1000:.0f} ms; climbed back in {climbed:.1f} s; switched down in {down:.1f} s; "
                      f"probes passed {video.prober.passed}, failed {video.prober.failed}")
    finally:
        with contextlib.suppress(NameError):
            sampler.cancel()
        for viewer in viewers:
            await viewer.stop()
        if context is not None:
            await context.close()
        for link in links:
            link.close()
