"""A live demo without a camera: a generated test card published over our own WHIP.

`shopstream demo` starts a :class:`DemoPublisher` on the demo livestream, so the viewer
URL it prints shows live video at once. The publisher is an ordinary WHIP client in
the same process: an aiortc peer connection whose video track draws a portrait test
card (colour bars, a moving bar, a clock) with numpy; aiortc encodes it (VP8) like any
camera frame, and the offer goes to `POST /api/v1/livestreams/{id}/publish` on the
server's own address with the stream key as Bearer, exactly as OBS would. It stays
small on CPU: 270x480 at 12 frames per second, no audio. When the session drops (the
seller took over the stream, the server restarted it) it tries again with a backoff;
when the livestream has ended it stops.

Demo product images are drawn here too (numpy, encoded as PNG with av), so the demo
needs no image files.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Sequence

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from media.aiortc_hook import ice_host_addresses
from server.config import Settings

log = logging.getLogger("shopstream.demo")

WIDTH, HEIGHT, FPS = 270, 480, 12
CLOCK_RATE = 90_000
TIME_BASE = fractions.Fraction(1, CLOCK_RATE)

# A 3x5 pixel font for what the card writes: the clock and "LIVE DEMO".
GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001010010010", "8": "111101111101111",
    "9": "111101111001111", ":": "000010000010000", " ": "000000000000000",
    "L": "100100100100111", "I": "111010010010111", "V": "101101101101010",
    "E": "111100111100111", "D": "110101101101110", "M": "101111111101101",
    "O": "111101101101111",
}
BARS = [(192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192), (192, 0, 0), (0, 0, 192)]


def draw_text(img: np.ndarray, text: str, x: int, y: int, scale: int, color: Sequence[int]) -> None:
    """Write `text` into an RGB image with the 3x5 font, each font pixel `scale` wide."""
    for ch in text:
        bits = GLYPHS.get(ch, GLYPHS[" "])
        for i, bit in enumerate(bits):
            if bit == "1":
                r, c = divmod(i, 3)
                img[y + r * scale:y + (r + 1) * scale, x + c * scale:x + (c + 1) * scale] = color
        x += 4 * scale


def card_background(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Return the still part of the test card: a gradient, colour bars and a title."""
    img = np.zeros((height, width, 3), np.uint8)
    ramp = np.linspace(0, 1, height)[:, None]
    img[:] = (np.stack([40 + 60 * ramp, 20 + 10 * ramp, 70 + 90 * ramp], axis=-1)).astype(np.uint8)
    bar_w = width // len(BARS)
    top = height // 3
    for i, color in enumerate(BARS):
        img[top:top + height // 6, i * bar_w:(i + 1) * bar_w] = color
    draw_text(img, "LIVE DEMO", (width - 35 * 5) // 2, top - 50, 5, (255, 255, 255))
    return img


class TestCardTrack(MediaStreamTrack):
    """A video track of generated frames (no camera): the card with a bar and a clock."""

    kind = "video"

    def __init__(self, width: int = WIDTH, height: int = HEIGHT, fps: int = FPS) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._background = card_background(width, height)
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        img = self._background.copy()
        # A bar sweeping across says "this is moving" at a glance.
        x = int((self._count * 6) % (self.width + 40)) - 40
        band = slice(self.height // 3 + self.height // 6 + 10, self.height // 3 + self.height // 6 + 40)
        img[band, max(0, x):max(0, x + 40)] = (255, 255, 255)
        draw_text(img, time.strftime("%H:%M:%S"), (self.width - 31 * 5) // 2, self.height * 2 // 3, 5, (255, 235, 120))
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = int(self._count * CLOCK_RATE / self.fps)
        frame.time_base = TIME_BASE
        self._count += 1
        return frame


class DemoPublisher:
    """Publish the test card to one livestream over the server's WHIP endpoint."""

    def __init__(self, base_url: str, livestream_id: str, stream_key: str, *,
                 host_addresses: Sequence[str] | None = None, retry_seconds: float = 3.0) -> None:
        self.url = f"{base_url}/api/v1/livestreams/{livestream_id}/publish"
        self.base_url = base_url
        self.stream_key = stream_key
        self.host_addresses = host_addresses
        self.retry_seconds = retry_seconds
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="demo-publisher")

    async def stop(self) -> None:
        """Stop publishing: leave the WHIP session (the room pauses) and close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._leave()

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    ended = await self._publish_once(http)
                except (aiohttp.ClientError, OSError, ValueError) as exc:
                    log.warning("demo publisher: %s; trying again", exc)
                    ended = False
                if ended:
                    log.info("demo publisher: the demo livestream has ended; not publishing")
                    return
                await self._leave(http)
                await asyncio.sleep(self.retry_seconds)

    async def _publish_once(self, http: aiohttp.ClientSession) -> bool:
        """Publish until the connection drops; return True when the livestream has ended."""
        # An explicit, empty ICE server list: aiortc's default would ask a public host.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc = pc
        pc.addTransceiver(TestCardTrack(), direction="sendonly")
        gone = asyncio.Event()

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState in ("failed", "closed"):
                gone.set()

        with ice_host_addresses(self.host_addresses):
            await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self.stream_key}"}
        async with http.post(self.url, data=pc.localDescription.sdp, headers=headers) as resp:
            body = await resp.text()
            if resp.status == 409 and "ended" in body:
                return True
            if resp.status != 201:
                raise ValueError(f"WHIP answered {resp.status}: {body[:200]}")
            location = resp.headers.get("Location")
            self.location = f"{self.base_url}{location}" if location and location.startswith("/") else location
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        await gone.wait()
        self.connected.clear()
        return False

    async def _leave(self, http: aiohttp.ClientSession | None = None) -> None:
        pc, location = self.pc, self.location
        self.pc, self.location = None, None
        if location:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                if http is None:
                    async with aiohttp.ClientSession() as own, own.delete(location):
                        pass
                else:
                    async with http.delete(location):
                        pass
        if pc is not None:
            await pc.close()


# --- product images -------------------------------------------------------------------


def encode_png(img: np.ndarray) -> bytes:
    """Return an RGB image as PNG bytes (encoded by av's PNG encoder)."""
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = img.shape[1], img.shape[0], "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def product_image(index: int, size: int = 480) -> np.ndarray:
    """Draw a simple product picture: a soft backdrop and a shape per demo product."""
    palettes = [((250, 221, 214), (200, 40, 60)), ((222, 236, 250), (245, 245, 240)),
                ((240, 230, 210), (196, 160, 110)), ((226, 226, 232), (30, 30, 36))]
    back, ink = palettes[index % len(palettes)]
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.empty((size, size, 3), np.uint8)
    shade = 1.0 - 0.18 * np.hypot(xx - 0.5, yy - 0.45)
    for c in range(3):
        img[..., c] = np.clip(back[c] * shade, 0, 255).astype(np.uint8)
    kind = index % 4
    if kind in (0, 3):  # a top, or a hoodie (with a hood)
        body = (abs(xx - 0.5) < 0.22) & (yy > 0.3) & (yy < 0.85)
        arms = (abs(xx - 0.5) < 0.38) & (yy > 0.3) & (yy < 0.3 + 0.25 * (1 - abs(xx - 0.5) / 0.38) + 0.1)
        shape = body | arms
        if kind == 3:
            shape |= np.hypot(xx - 0.5, yy - 0.3) < 0.13
        neck = np.hypot(xx - 0.5, yy - 0.28) < 0.07
        shape &= ~neck
    elif kind == 1:  # a sneaker: sole and upper
        sole = (xx > 0.15) & (xx < 0.85) & (yy > 0.62) & (yy < 0.68)
        upper = (((xx - 0.42) / 0.3) ** 2 + ((yy - 0.62) / 0.2) ** 2 < 1) & (yy < 0.62)
        toe = (((xx - 0.68) / 0.17) ** 2 + ((yy - 0.62) / 0.1) ** 2 < 1) & (yy < 0.62)
        shape = sole | upper | toe
        img[sole] = (60, 60, 60)
        shape &= ~sole
    else:  # a pour-over dripper over a cup
        cone = (yy > 0.25) & (yy < 0.5) & (abs(xx - 0.5) < 0.22 - 0.3 * (yy - 0.25))
        cup = (yy > 0.52) & (yy < 0.78) & (abs(xx - 0.5) < 0.16)
        handle = (np.hypot(xx - 0.68, yy - 0.64) < 0.07) & (np.hypot(xx - 0.68, yy - 0.64) > 0.04)
        shape = cone | cup | handle
    img[shape] = ink
    # A soft shadow line under every product.
    img[(yy > 0.86) & (yy < 0.88) & (abs(xx - 0.5) < 0.3)] = tuple(int(c * 0.8) for c in back)
    return img


def start_demo_publisher(settings: Settings, livestream: dict[str, str]) -> DemoPublisher:
    """Start publishing the test card to the demo livestream of a running server."""
    # The server's own address: loopback unless it listens on one address only.
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    publisher = DemoPublisher(
        f"http://{host}:{settings.port}", livestream["id"], livestream["streamKey"],
        host_addresses=settings.ice_host_addresses or None,
    )
    publisher.start()
    return publisher
