"""The load test's media peers: a synthetic publisher and cheap counting viewers.

Viewers are aiortc peers joining over WHEP whose receivers are replaced by
``media.aiortc_hook.install_receiver``: RTP packets are counted, never decoded, except
the first video frames, which are depacketized and decoded once to time the first
decoded frame. A video frame ends at an RTP packet with the marker bit set; a gap of
more than ``FREEZE_SECONDS`` between frames counts as a freeze.

:class:`LeanMediaViewer` is the bulk of a large audience (scenario ``lean_share``): a
``benchmarks.lean.LeanViewer`` (real ICE/DTLS, packets counted from its socket without
SRTP, several times cheaper per packet) behind the same interface. It gives packets,
frames and loss, not first-frame or freeze times: those come from the aiortc viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.codecs import depayload, get_decoder
from aiortc.jitterbuffer import JitterFrame

from benchmarks.shop import API, LoadError, within
from media.aiortc_hook import CountingSinkBase, ice_host_addresses, install_receiver

LOOPBACK = ["127.0.0.1"]
FREEZE_SECONDS = 0.5
SDP = {"Content-Type": "application/sdp"}


class StreamCounter(CountingSinkBase):
    """Count one track's packets, frames, sequence gaps and freezes; decode its first frame."""

    def __init__(self, kind: str, joined_at: float, decode: bool) -> None:
        self.kind = kind
        self.joined_at = joined_at
        self.packets = self.frames = self.freezes = 0
        self.first_seq: int | None = None
        self.highest = 0
        self.first_packet_at: float | None = None
        self.first_decoded_at: float | None = None
        self.last_frame_at: float | None = None
        self.longest_gap = 0.0
        self._decode = decode and kind == "video"
        self._decoder: Any = None
        self._pending: list[bytes] = []
        self._decode_tries = 0

    def on_rtp(self, packet: Any, codec: Any) -> None:
        now = time.monotonic()
        seq = packet.sequence_number
        if self.first_seq is None:
            self.first_seq = self.highest = seq
            self.first_packet_at = now
        else:
            delta = (seq - self.highest) & 0xFFFF
            if delta < 0x8000:
                self.highest += delta
        self.packets += 1
        if self.kind != "video":
            return
        if self._decode and self.first_decoded_at is None:
            self._collect(packet, codec, now)
        if packet.marker:
            self.frames += 1
            if self.last_frame_at is not None:
                gap = now - self.last_frame_at
                self.longest_gap = max(self.longest_gap, gap)
                self.freezes += gap > FREEZE_SECONDS
            self.last_frame_at = now

    def _collect(self, packet: Any, codec: Any, now: float) -> None:
        """Depacketize until a frame is complete, then try to decode it (first frames only)."""
        self._pending.append(depayload(codec, packet.payload))
        if not packet.marker:
            return
        data, self._pending = b"".join(self._pending), []
        if self._decoder is None:
            self._decoder = get_decoder(codec)
        self._decode_tries += 1
        try:
            frames = self._decoder.decode(JitterFrame(data, packet.timestamp))
        except Exception:  # noqa: BLE001 - a frame before the keyframe may not decode
            frames = []
        if frames:
            self.first_decoded_at = now
        if frames or self._decode_tries > 300:
            self._decoder, self._decode = None, False  # stop decoding: counting only from here

    @property
    def expected(self) -> int:
        return 0 if self.first_seq is None else self.highest - self.first_seq + 1


def new_pc() -> RTCPeerConnection:
    """Return a peer connection that never contacts a STUN server."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def _offer(pc: RTCPeerConnection) -> str:
    offer = await pc.createOffer()
    with ice_host_addresses(LOOPBACK):
        await pc.setLocalDescription(offer)
    return pc.localDescription.sdp


async def _post_sdp(http: aiohttp.ClientSession, url: str, sdp: str, headers: dict[str, str],
                    timeout: float = 20.0) -> tuple[str, str]:
    try:
        async with asyncio.timeout(timeout), http.post(url, data=sdp, headers={**SDP, **headers}) as resp:
            text = await resp.text()
            if resp.status != 201:
                code = f"http_{resp.status}"
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    import json

                    code = json.loads(text)["error"]["code"]
                raise LoadError(code, f"POST {url} -> {resp.status} {text[:200]}")
            return text, resp.headers.get("Location", "")
    except TimeoutError:
        raise LoadError("timeout", f"POST {url}: no answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise LoadError("network", f"POST {url}: {exc!r}") from None


class MediaViewer:
    """A WHEP viewer that counts packets and frames without decoding (but the first)."""

    kind = "aiortc"

    def __init__(self, base: str, livestream_id: str, decode: bool) -> None:
        self.url = f"{base}{API}/livestreams/{livestream_id}/watch"
        self.base = base
        self.pc = new_pc()
        self.joined_at = time.monotonic()
        self.video = StreamCounter("video", self.joined_at, decode)
        self.audio = StreamCounter("audio", self.joined_at, False)
        self.connected_at: float | None = None
        self.location = ""
        self.failed: str | None = None
        self.pc.on("connectionstatechange", self._state)

    def _state(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
        elif state == "failed" and self.failed is None:
            self.failed = "ice_failed"

    async def join(self, http: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        """Offer, post to WHEP, apply the answer; raise LoadError on refusal."""
        self.joined_at = self.video.joined_at = self.audio.joined_at = time.monotonic()
        install_receiver(self.pc.addTransceiver("video", direction="recvonly"), self.video)
        install_receiver(self.pc.addTransceiver("audio", direction="recvonly"), self.audio)
        offer = await within(timeout, _offer(self.pc), "WHEP offer (ICE gathering)")
        answer, self.location = await _post_sdp(http, self.url, offer, {}, timeout)
        await within(timeout, self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer")),
                     "WHEP answer")

    async def leave(self, http: aiohttp.ClientSession) -> None:
        """DELETE the session (best effort) and close the peer connection."""
        if self.location:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(5), http.delete(self.base + self.location):
                    pass
        with contextlib.suppress(Exception):  # noqa: BLE001 - closing a half-open peer
            await within(10, self.pc.close(), "closing a viewer's peer connection")

    def figures(self) -> dict[str, Any]:
        """Return this viewer's join and media figures."""
        def since_join(moment: float | None) -> float | None:
            return None if moment is None else moment - self.joined_at

        packets = self.video.packets + self.audio.packets
        expected = self.video.expected + self.audio.expected
        return {
            "kind": "aiortc",
            "connect_s": since_join(self.connected_at),
            "first_packet_s": since_join(self.video.first_packet_at),
            "first_frame_s": since_join(self.video.first_decoded_at),
            "video_packets": self.video.packets, "audio_packets": self.audio.packets,
            "frames": self.video.frames, "loss": max(0.0, 1 - packets / expected) if expected else None,
            "freezes": self.video.freezes, "longest_gap_s": self.video.longest_gap,
            "failed": self.failed,
        }


class LeanMediaViewer:
    """A lean WHEP viewer (benchmarks/lean.py) with :class:`MediaViewer`'s interface.

    Its socket is drained by a :class:`benchmarks.lean.LeanReceiver` shared by every lean
    viewer of the run (one event-loop wake-up per tick for all of them). It needs the
    default asyncio loop: uvloop's UDP transport cannot pause reading.
    """

    kind = "lean"

    def __init__(self, base: str, livestream_id: str, receiver: Any) -> None:
        from benchmarks.lean import LeanViewer

        self.url = f"{base}{API}/livestreams/{livestream_id}/watch"
        self.lean = LeanViewer(self.url)
        self.receiver = receiver
        self.joined_at = time.monotonic()
        self.connected_at: float | None = None
        self.failed: str | None = None
        self.video = self  # the progress line reads `viewer.video.frames`

    @property
    def frames(self) -> int:
        return self.lean.snapshot()["frames"] if self.lean.sock is not None else 0

    async def join(self, http: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        """Offer, post to WHEP, connect (ICE, DTLS), then hand the socket to the receiver."""
        self.joined_at = time.monotonic()
        try:
            await self.lean.join(http, timeout)
        except TimeoutError:
            raise LoadError("timeout", f"lean viewer of {self.url}: not connected within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise LoadError("network", f"POST {self.url}: {exc!r}") from None
        except RuntimeError as exc:
            raise LoadError("ice_failed" if "ICE/DTLS" in str(exc) else "refused", str(exc)) from None
        self.connected_at = time.monotonic()
        self.receiver.add(self.lean)

    async def leave(self, http: aiohttp.ClientSession) -> None:
        """Stop draining, DELETE the session (best effort), close the socket and peer."""
        self.receiver.remove(self.lean)
        with contextlib.suppress(Exception):  # closing a half-open peer
            await within(15, self.lean.leave(http), "closing a lean viewer")

    def figures(self) -> dict[str, Any]:
        """Return this viewer's join and media figures (no first-frame or freeze times)."""
        snap = self.lean.snapshot() if self.lean.sock is not None else {}
        expected = snap.get("expected", 0)
        return {
            "kind": "lean",
            "connect_s": None if self.connected_at is None else self.connected_at - self.joined_at,
            "first_packet_s": None, "first_frame_s": None,
            "video_packets": snap.get("video_packets", 0),
            "audio_packets": snap.get("packets", 0) - snap.get("video_packets", 0),
            "frames": snap.get("frames", 0),
            "loss": snap["lost"] / expected if expected else None,
            "socket_drops": self.lean.socket_drops(),
            "freezes": 0, "longest_gap_s": None, "failed": self.failed,
        }


def ffmpeg_command(url: str, bearer: str, *, width: int, height: int, fps: int, video_kbps: int,
                   audio_kbps: int, seconds: float) -> list[str]:
    """Return ffmpeg's WHIP command line: lavfi test pattern + sine, H.264 baseline + Opus."""
    import imageio_ffmpeg

    return [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc=size={width}x{height}:rate={fps}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-preset", "veryfast",
        "-tune", "zerolatency", "-g", str(fps), "-b:v", f"{video_kbps}k",
        "-maxrate", f"{video_kbps}k", "-bufsize", f"{video_kbps}k",
        "-c:a", "libopus", "-b:a", f"{audio_kbps}k", "-ar", "48000", "-ac", "2",
        "-t", str(int(seconds) + 1), "-f", "whip", "-authorization", bearer, url,
    ]


class PatternTrack(VideoStreamTrack):
    """Synthetic video that moves (so the encoder has work and bitrate to spend), 30 fps."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        x = np.linspace(0, 255, width, dtype=np.uint8)
        self._base = np.dstack([np.tile(x, (height, 1))] * 3)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(np.roll(self._base, pts // 3000, axis=1), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Publisher:
    """The show's publisher: an ffmpeg WHIP subprocess or an aiortc peer."""

    def __init__(self, kind: str, base: str, livestream_id: str, bearer: str) -> None:
        self.kind = kind
        self.url = f"{base}{API}/livestreams/{livestream_id}/publish"
        self.base = base
        self.bearer = bearer
        self.process: subprocess.Popen[bytes] | None = None
        self.pc: RTCPeerConnection | None = None
        self.location = ""

    async def start(self, http: aiohttp.ClientSession, *, width: int, height: int, fps: int,
                    video_kbps: int, audio_kbps: int, seconds: float) -> None:
        if self.kind == "ffmpeg":
            self.process = subprocess.Popen(
                ffmpeg_command(self.url, self.bearer, width=width, height=height, fps=fps,
                               video_kbps=video_kbps, audio_kbps=audio_kbps, seconds=seconds),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            return
        from aiortc import AudioStreamTrack

        self.pc = new_pc()
        self.pc.addTransceiver(PatternTrack(width, height), direction="sendonly")
        self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        offer = await within(20, _offer(self.pc), "WHIP offer (ICE gathering)")
        answer, self.location = await _post_sdp(http, self.url, offer, {"Authorization": f"Bearer {self.bearer}"})
        await within(20, self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer")),
                     "WHIP answer")

    def failure(self) -> str | None:
        """Return why the publisher stopped early, if it did."""
        if self.process is not None and self.process.poll() not in (None, 0):
            err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            return f"ffmpeg exited with {self.process.returncode}: {err.strip()[-300:]}"
        return None

    async def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self.process.wait, 5)
            if self.process.poll() is None:
                self.process.kill()
                await asyncio.to_thread(self.process.wait, 5)
            if self.process.stderr is not None:
                self.process.stderr.close()
        if self.pc is not None:
            with contextlib.suppress(Exception):  # noqa: BLE001 - closing a half-open peer
                await within(10, self.pc.close(), "closing the publisher's peer connection")
