"""Real aiortc peers for the media tests: a synthetic publisher and decoding viewers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from media import SFU, MediaSettings
from media.aiortc_hook import ice_host_addresses

LOOPBACK = ["127.0.0.1"]


def loopback_settings(**overrides: object) -> MediaSettings:
    """Return SFU settings for tests: loopback ICE only, short timers."""
    values: dict[str, object] = dict(
        ice_servers=[], ice_host_addresses=LOOPBACK, max_viewers_per_room=50,
        remb_bitrate_bps=1_000_000, publisher_grace_seconds=2.0, keyframe_interval_ms=500,
        connect_timeout_seconds=5.0,
    )
    values.update(overrides)
    return MediaSettings(**values)  # type: ignore[arg-type]


class PatternTrack(VideoStreamTrack):
    """Synthetic video: moving colour bars from numpy, at 30 fps."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        x = np.linspace(0, 255, width, dtype=np.uint8)
        self._base = np.dstack([np.tile(x, (height, 1))] * 3)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.roll(self._base, pts // 3000, axis=1)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def new_pc() -> RTCPeerConnection:
    """Return a peer connection that never contacts a STUN server."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def local_offer(pc: RTCPeerConnection) -> str:
    """Create and set an offer gathered on loopback only; return its SDP."""
    offer = await pc.createOffer()
    with ice_host_addresses(LOOPBACK):
        await pc.setLocalDescription(offer)
    return pc.localDescription.sdp


async def accept(pc: RTCPeerConnection, answer_sdp: str) -> None:
    """Apply the SFU's answer."""
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))


def prefer(pc: RTCPeerConnection, kind: str, mime: str) -> None:
    """Restrict a client's transceivers of ``kind`` to codecs of ``mime``."""
    from aiortc import RTCRtpSender

    wanted = (mime, f"{kind}/rtx")
    codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType in wanted]
    for transceiver in pc.getTransceivers():
        if transceiver.kind == kind:
            transceiver.setCodecPreferences(codecs)


@dataclass
class Viewer:
    """A decoding viewer that records the frames it gets."""

    pc: RTCPeerConnection
    video_frames: list[tuple[float, int, int]] = field(default_factory=list)
    audio_frames: int = 0
    channels: list[RTCDataChannel] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def consume(self, track: MediaStreamTrack) -> None:
        self.tasks.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.video_frames.append((time.monotonic(), frame.width, frame.height))
                else:
                    self.audio_frames += 1

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def frames_at(viewer: Viewer, width: int, since: float = 0.0) -> int:
    """Return how many frames ``viewer`` decoded at ``width`` after ``since``."""
    return sum(1 for t, w, _h in viewer.video_frames if w == width and t >= since)


def longest_gap(viewer: Viewer, since: float) -> float:
    """Return the longest pause between decoded frames after ``since``."""
    times = [t for t, _w, _h in viewer.video_frames if t >= since]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def inbound(viewer: Viewer) -> tuple[set[int], int]:
    """Return the media SSRCs a viewer's video receiver saw and the packets it counts lost.

    The repair (RTX) stream is left out: retransmissions and probe padding arrive on it.
    """
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
    repair = set(receiver._RTCRtpReceiver__rtx_ssrc)  # type: ignore[attr-defined]
    ssrcs = set(receiver._RTCRtpReceiver__remote_streams) - repair  # type: ignore[attr-defined]
    stats = await receiver.getStats()
    lost = sum(s.packetsLost for s in stats.values() if s.type == "inbound-rtp")
    return ssrcs, lost


async def publish(
    sfu: SFU, room_id: str, *, video_mime: str = "video/VP8", audio: bool = True,
    owner: str = "seller", size: tuple[int, int] = (320, 240),
) -> tuple[RTCPeerConnection, str]:
    """Publish synthetic video (and audio) from a real aiortc peer; return pc and session id."""
    pc = new_pc()
    pc.addTransceiver(PatternTrack(*size), direction="sendonly")
    prefer(pc, "video", video_mime)
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    session = await sfu.publish(room_id, await local_offer(pc), owner)
    await accept(pc, session.answer_sdp)
    return pc, session.id


async def watch(sfu: SFU, room_id: str, *, audio: bool = True, datachannel: bool = False,
                viewer: str | None = None, quality: str = "auto") -> tuple[Viewer, str]:
    """Join ``room_id`` with a decoding aiortc viewer; return it and its session id."""
    pc = new_pc()
    result = Viewer(pc)
    pc.on("track", result.consume)
    pc.addTransceiver("video", direction="recvonly")
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    if datachannel:
        result.channels.append(pc.createDataChannel("events"))
    session = await sfu.watch(room_id, await local_offer(pc), viewer, quality)
    await accept(pc, session.answer_sdp)
    return result, session.id


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``predicate()`` is true, or fail the test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running_sfu(**overrides: object) -> AsyncIterator[SFU]:
    """Run an SFU with loopback settings and close it afterwards."""
    sfu = SFU(loopback_settings(**overrides))
    try:
        yield sfu
    finally:
        await sfu.close()

