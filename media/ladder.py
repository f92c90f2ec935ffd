"""A server-side simulcast ladder for single-layer publishers (OBS, ffmpeg).

A publisher that sends one encoding gives a viewer on a weak link nothing lower to
switch to. With the ladder on (``MediaSettings.ladder_layers``), the room's video is a
:class:`LadderForwarder`: the publisher's stream is the top layer (RID ``f``), and while
some viewer needs less (pinned ``low``, or an ``auto`` viewer whose estimate is below the
source's rate) a worker process decodes the source once and encodes one or two lower
layers (``h``: half the width and height, ``q``: a quarter) in the room's codec: VP8
with libvpx, H.264 with libx264 in constrained baseline, which every H.264 profile a
viewer negotiated decodes. The generated layers come back as RTP with their own SSRCs
and the same RTP timestamps as the source, and are forwarded by the per-viewer layer
machinery of :mod:`media.layers` exactly like a simulcast publisher's layers: the
estimator and quality pinning work, switches wait for the target's keyframe (the worker
makes one on request) and the viewer's numbers continue across them.

The worker is a separate process (``python -m media.ladder_worker``), so its codecs never
block the event loop and never share its core; source RTP goes to it and its layers
come back as UDP datagrams on loopback; JSON datagrams carry control (hello, layer
sizes, keyframe requests, CPU figures). It runs only while some viewer needs a lower
layer: it starts on the first such need and stops when nobody has needed one for
``ladder_idle_seconds`` (the generated layers then go away). Its stdin is a pipe from
the SFU: when the SFU goes, the worker sees EOF and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from .estimator import START_BPS
from .forwarder import TrackForwarder, ViewerTrack
from .layers import LayerPolicy, SimulcastForwarder
from .simulcast import Layer, LayerSelector
from .temporal import real_ssrc

logger = logging.getLogger(__name__)

SOURCE_RID = "f"
# Generated layers by their scale: 1 halves the width and height, 2 quarters them.
LADDER_RIDS = ("h", "q")
MAX_LADDER_LAYERS = len(LADDER_RIDS)
LADDER_IDLE_SECONDS = 10.0
KEYFRAME_INTERVAL = 0.5  # at most one forced keyframe per layer per this interval
RESTART_BACKOFF_SECONDS = 5.0  # after a worker died, wait this long before another
CPU_REPORT_SECONDS = 2.0
RTP_HEADER = struct.Struct("!BBHII")


# Tasks started from synchronous code (the forwarding path), kept until they finish.
_TASKS: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
    return task


def layer_sizes(width: int, height: int, count: int) -> dict[str, tuple[int, int]]:
    """Return the generated layers' sizes (even, at least 2x2) for a source size."""
    if not 0 <= count <= MAX_LADDER_LAYERS:
        raise ValueError(f"a ladder has 0 to {MAX_LADDER_LAYERS} layers, not {count}")
    return {
        rid: (max((width >> scale) & ~1, 2), max((height >> scale) & ~1, 2))
        for scale, rid in enumerate(LADDER_RIDS[:count], start=1)
    }


# --- the SFU side -------------------------------------------------------------------------


class Ladder:
    """Run one ladder worker process and exchange its RTP and control datagrams."""

    def __init__(
        self,
        codec: RTCRtpCodecParameters,
        ssrcs: dict[str, int],
        on_rtp: Callable[[RtpPacket], None],
        on_sizes: Callable[[dict[str, tuple[int, int]]], None] = lambda sizes: None,
        on_keyframe_needed: Callable[[], None] = lambda: None,
    ) -> None:
        if codec.name not in ("VP8", "H264"):
            raise ValueError(f"the ladder encodes VP8 or H264, not {codec.name}")
        self.codec = codec
        self.ssrcs = ssrcs  # rid -> SSRC of the generated layers
        self._on_rtp = on_rtp
        self._on_sizes = on_sizes
        self._on_keyframe_needed = on_keyframe_needed  # the worker waits for a source keyframe
        self.process: asyncio.subprocess.Process | None = None
        self.cpu: dict[str, float] = {}  # the worker's latest CPU report
        self._transport: asyncio.DatagramTransport | None = None
        self._peer: tuple[str, int] | None = None
        self._ready = asyncio.Event()

    @property
    def running(self) -> bool:
        """Return whether the worker process is alive."""
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start the worker; return once it is ready to take packets."""
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _LadderProtocol(self), local_addr=("127.0.0.1", 0)
        )
        sock = self._transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        port = sock.getsockname()[1]
        args = [sys.executable, "-m", "media.ladder_worker", "--codec", self.codec.name,
                "--port", str(port), "--payload-type", str(self.codec.payloadType or 96)]
        for rid, ssrc in self.ssrcs.items():
            args += ["--layer", f"{rid}:{ssrc}"]
        self.process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.wait_for(self._ready.wait(), 15)
        except TimeoutError:
            await self.stop()
            raise RuntimeError("the ladder worker did not start within 15 s") from None
        logger.info("ladder worker %d started (%s)", self.process.pid, ", ".join(self.ssrcs))

    async def stop(self) -> None:
        """Stop the worker (EOF on its stdin, then a kill if it lingers)."""
        process, self.process = self.process, None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._peer = None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()
        logger.info("ladder worker %d stopped", process.pid)

    def feed(self, packet: RtpPacket) -> None:
        """Send one source packet to the worker."""
        if self._peer is None or self._transport is None:
            return
        header = RTP_HEADER.pack(0x80, (0x80 if packet.marker else 0) | packet.payload_type,
                                 packet.sequence_number, packet.timestamp, packet.ssrc)
        self._transport.sendto(header + packet.payload, self._peer)

    def request_keyframe(self, rid: str) -> None:
        """Make the worker encode the next frame of layer ``rid`` as a keyframe."""
        self._control({"keyframe": rid})

    def _control(self, message: dict[str, Any]) -> None:
        if self._peer is not None and self._transport is not None:
            self._transport.sendto(json.dumps(message).encode(), self._peer)

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr != self._peer:  # only our worker's first datagram, its hello, comes from elsewhere
            if self._peer is None and self.process is not None and data[:1] == b"{" \
                    and json.loads(data).get("hello") == self.process.pid:
                self._peer = addr
                self._ready.set()
            return
        if data[:1] == b"{":
            message = json.loads(data)
            if "sizes" in message:
                self._on_sizes({rid: tuple(size) for rid, size in message["sizes"].items()})
            elif "need_keyframe" in message:
                self._on_keyframe_needed()
            elif "cpu" in message:
                self.cpu = message["cpu"]
        else:
            self._on_rtp(RtpPacket.parse(data))


class _LadderProtocol(asyncio.DatagramProtocol):
    def __init__(self, ladder: Ladder) -> None:
        self.ladder = ladder

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.ladder._received(data, addr)
        except (ValueError, TypeError, AttributeError, KeyError):  # malformed: not our worker
            logger.debug("ladder: dropped a malformed datagram from %s", addr)


class LadderForwarder(SimulcastForwarder):
    """A single-layer publisher's video as a layered track: the source plus generated layers.

    To the room it is a :class:`SimulcastForwarder` (viewers, policies, quality pinning,
    switches with continuity); it measures the layers itself (the receiver has no
    simulcast selector), runs the ladder worker while some viewer needs a lower layer,
    and answers keyframe requests for a generated layer from the worker.
    """

    def __init__(
        self,
        codec: RTCRtpCodecParameters,
        on_keyframe_needed: Callable[[int], None],
        on_publisher_media: Callable[[TrackForwarder], None],
        *,
        gop_cache_bytes: int = 0,
        ladder_layers: int = 2,
        idle_seconds: float = LADDER_IDLE_SECONDS,
    ) -> None:
        super().__init__(codec, self._keyframe_of, on_publisher_media, gop_cache_bytes=gop_cache_bytes)
        layer_sizes(2, 2, ladder_layers)  # validates the count
        self._source_keyframe = on_keyframe_needed
        self.ladder_layers = ladder_layers
        self.idle_seconds = idle_seconds
        self.selector = LayerSelector((SOURCE_RID, *LADDER_RIDS[:ladder_layers]))
        self.source_ssrc: int | None = None
        self.ladder: Ladder | None = None
        self.ladder_starts = 0
        self._generated: dict[int, str] = {}  # SSRC -> RID of the running ladder's layers
        self._needed_at = 0.0  # when some viewer last needed a lower layer
        self._failed_at = -1e9
        self._keyframe_asked: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    # --- publisher side -------------------------------------------------------------------

    def on_receiver_started(self, receiver: Any) -> None:
        """Take the packets of a newly connected publisher (the selector stays ours)."""
        self.receiver = receiver

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Forward a source packet to its viewers and to the ladder worker."""
        selector = self.selector
        assert selector is not None
        if packet.ssrc != self.source_ssrc:
            if self.source_ssrc is not None:  # the publisher's SSRC changed: a new stream
                selector.layers.pop(self.source_ssrc, None)
            self.source_ssrc = packet.ssrc
            selector.learn(packet.ssrc, SOURCE_RID)
        selector.on_packet(packet.ssrc, len(packet.payload), time.monotonic())
        if self.ladder is not None:
            self.ladder.feed(packet)
        super().on_rtp(packet, codec)

    def _on_generated(self, packet: RtpPacket) -> None:
        """Forward a generated layer's packet (from the worker) like a simulcast layer's."""
        if packet.ssrc not in self._generated or self.selector is None:
            return
        self.selector.on_packet(packet.ssrc, len(packet.payload), time.monotonic())
        super().on_rtp(packet, self.codec)

    def _on_sizes(self, sizes: dict[str, tuple[int, int]]) -> None:
        """Rank the layers by the sizes the worker reports (for H.264 too)."""
        assert self.selector is not None
        by_rid = {layer.rid: layer for layer in self.selector.layers.values() if layer.max_tid is None}
        for rid, (width, height) in sizes.items():
            if rid in by_rid:
                by_rid[rid].pixels = width * height

    def on_sender_report(self, packet: RtcpSrPacket) -> None:
        """Give the source's sender report to every layer: they share its timestamps."""
        for ssrc, layer in self.layers.items():
            if real_ssrc(ssrc) == packet.ssrc or ssrc in self._generated:
                layer.on_sender_report(packet)

    def is_ingress(self, key: int) -> bool:
        """Return whether layer ``key`` is the publisher's (not the ladder's, nor a rung)."""
        return key not in self._generated and super().is_ingress(key)

    def needed_bps(self, ceiling: int) -> int:
        """Return the publisher's REMB cap: the full rate, which the ladder decodes."""
        return ceiling

    # --- keyframes ------------------------------------------------------------------------

    def _keyframe_of(self, ssrc: int) -> None:
        rid = self._generated.get(ssrc)
        if rid is None:
            self._source_keyframe(ssrc)
            return
        now = time.monotonic()
        if self.ladder is not None and now - self._keyframe_asked.get(ssrc, -1e9) >= KEYFRAME_INTERVAL:
            self._keyframe_asked[ssrc] = now
            self.ladder.request_keyframe(rid)

    def _source_keyframe_for_ladder(self) -> None:
        """Ask the publisher for a keyframe the worker can start decoding at."""
        if self.source_ssrc is not None:
            self._source_keyframe(self.source_ssrc)

    # --- when the ladder runs -------------------------------------------------------------

    def add_viewer(self, viewer: ViewerTrack, policy: LayerPolicy | None = None) -> None:
        """Add a viewer; an auto one starts on the source, not on a generated layer.

        (In a simulcast room a new auto viewer starts on the lowest layer and probes up;
        here the lower layers cost an encoder, so it starts where nothing is generated.)
        """
        policy = policy or self.policies.get(viewer) or LayerPolicy()
        if policy.quality == "auto" and policy.estimator.estimate_bps == START_BPS \
                and policy.estimator.limited_at is None:
            policy.estimator.estimate_bps = None
        super().add_viewer(viewer, policy)

    def wants_lower(self, policy: LayerPolicy) -> bool:
        """Return whether a viewer needs (or asked for) less than the source."""
        if policy.quality == "low":
            return True
        source = self.selector.layers.get(self.source_ssrc) if self.selector and self.source_ssrc else None
        estimate = policy.estimate_bps
        if policy.quality != "auto" or source is None or estimate is None:
            return False
        # A new auto viewer's estimate starts at 0 and climbs by probes (media.probe):
        # only one that loss or delay held back lately needs less than the source.
        return policy.estimator.limited(time.monotonic()) and estimate < (source.avg_bps or source.peak_bps)

    def review(self, now: float | None = None) -> None:
        """Choose every viewer's layer, then start or stop the ladder for their needs."""
        super().review(now)
        now = time.monotonic()
        if any(self.wants_lower(policy) for policy in self.policies.values()):
            self._needed_at = now
            if self.ladder is None and self._task is None and self.source_ssrc is not None \
                    and now - self._failed_at >= RESTART_BACKOFF_SECONDS:
                self._task = _spawn(self._start_ladder())
        elif self.ladder is not None and self._task is None and now - self._needed_at >= self.idle_seconds:
            generated = [self.layers[ssrc] for ssrc in self._generated if ssrc in self.layers]
            if not any(v.layer in generated or v.next_layer in generated for v in self.policies):
                self._task = _spawn(self._stop_ladder())
        if self.ladder is not None and self._task is None and not self.ladder.running:
            logger.warning("ladder worker died; the generated layers are gone")
            self._failed_at = now
            self._task = _spawn(self._stop_ladder())

    def ranked(self, now: float | None = None) -> list[Layer]:
        """Return the layers sending now, lowest first; generated ones only while running."""
        return [layer for layer in super().ranked(now)
                if layer.ssrc not in self._generated or self.ladder is not None]

    async def _start_ladder(self) -> None:
        ssrcs = {rid: random.getrandbits(32) for rid in LADDER_RIDS[: self.ladder_layers]}
        ladder = Ladder(self.codec, ssrcs, self._on_generated, self._on_sizes,
                        self._source_keyframe_for_ladder)
        try:
            assert self.selector is not None
            for rid, ssrc in ssrcs.items():
                self.selector.learn(ssrc, rid)
                self._generated[ssrc] = rid
            await ladder.start()
            self.ladder = ladder
            self.ladder_starts += 1
        except (OSError, RuntimeError):
            logger.exception("could not start the ladder worker")
            self._failed_at = time.monotonic()
            self._forget_generated()
        finally:
            self._task = None

    async def _stop_ladder(self) -> None:
        ladder, self.ladder = self.ladder, None
        try:
            self._forget_generated()
            if ladder is not None:
                await ladder.stop()
        finally:
            self._task = None

    def _forget_generated(self) -> None:
        """Drop the generated layers' forwarders (their counters stay in the totals).

        A viewer still on one (the worker died) switches back to the source at its next
        keyframe, its numbers continuing; meanwhile it gets nothing.
        """
        source = self.layers.get(self.source_ssrc) if self.source_ssrc is not None else None
        generated = [self.layers[ssrc] for ssrc in self._generated if ssrc in self.layers]
        for viewer in list(self.policies):
            if viewer.layer in generated and source is not None:
                self.move(viewer, source)
        for ssrc in list(self._generated):
            del self._generated[ssrc]
            if self.selector is not None:
                self.selector.layers.pop(ssrc, None)
            self._keyframe_asked.pop(ssrc, None)
            layer = self.layers.pop(ssrc, None)
            if layer is None:
                continue
            for viewer in list(layer.waiting):
                if viewer.next_layer is layer:
                    viewer.next_layer = None
            # Its viewers that left count here; those moving to the source take theirs along.
            for name in ("packets_out", "bytes_out", "drops", "nacks_served"):
                setattr(self.retired, name, getattr(self.retired, name) + getattr(layer.retired, name))
            self._retired_in[2] += layer.nacks_missed  # its packets came from us, not in

    def restart(self) -> None:
        """Re-anchor every viewer for a new publisher stream; the ladder starts anew."""
        if self.ladder is not None and self._task is None:
            self._task = _spawn(self._stop_ladder())
        super().restart()
        self._generated.clear()
        self.selector = LayerSelector((SOURCE_RID, *LADDER_RIDS[: self.ladder_layers]))
        self.source_ssrc = None

    def close_soon(self) -> None:
        """Stop the worker in the background (the forwarder is being replaced)."""
        _spawn(self.close())

    async def close(self) -> None:
        """Stop the worker (the room ends)."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._stop_ladder()
