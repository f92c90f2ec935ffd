"""Forward one publisher track's RTP packets to every viewer, rewritten per viewer.

Each viewer gets its own SSRC, sequence-number and timestamp space: a viewer's
numbers are the publisher's plus per-viewer offsets fixed when the viewer starts
(at a keyframe for video). The per-packet work for a viewer is one ``struct``
rewrite of the 12-byte header in a shared buffer, one SRTP ``protect`` and one
``send`` on the viewer's connected socket: no packet objects are built per viewer.

Nothing here awaits, so the fan-out of one packet is never interleaved with
anything else, and a viewer whose socket cannot keep up loses its own packets
(counted as drops) without delaying the others.

GOP cache: a video track keeps its packets since the last keyframe (bounded in bytes).
A joining viewer is sent that GOP at once instead of waiting for the publisher's next
keyframe (ffmpeg ignores keyframe requests: 1-5 s of black). The cached frames get
timestamps squeezed into the time just before the newest frame's, each frame as far
before the next as its bytes take to send at the catch-up pace, so they arrive as
their timestamps say: the viewer's decoder fast-forwards through them, its jitter
buffer sees no jitter, and its clock sees one continuous stream at live delay
(measured in Chromium: squeezing them into 1 tick each made Chrome count a freeze
at most joins). Sequence numbers continue without a gap into the live packets.
The burst goes out in chunks, paced (``CATCH_UP_BYTES_PER_SECOND``), so neither the
viewer's link nor the event loop is flooded; packets arriving meanwhile join the GOP and the viewer joins
the live fan-out when it has caught up. A GOP longer than ``LONG_GOP_SECONDS`` also
sends the publisher a (throttled) keyframe request: a publisher that answers it
(browsers; measured: Chromium's VP8 GOPs last until someone asks) has a new keyframe
out before the viewer has decoded hundreds of old frames, and a viewer still catching
up then skips the rest of the old GOP. The fan-out loop itself is unchanged: a
publisher packet costs one list append more, a frame one keyframe check.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pylibsrtp
from aiortc import clock
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RtcpReceiverInfo,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
)

from .aiortc_hook import ForwardingReceiver, ForwardingSender, SrtpScratch
from .codecs import is_keyframe, vp8_ids, write_vp8_ids
from .twcc import SENT_MEMORY, TransportFeedbackAdapter

logger = logging.getLogger(__name__)

VIDEO_HISTORY = 512  # packets kept per video track to answer NACKs (~3 s at 1.5 Mbit/s)
AUDIO_HISTORY = 64
NACK_RESEND_INTERVAL = 0.1  # seconds between retransmissions of one packet (at least 1.5 RTT)
NACK_RESEND_MEMORY = 1024  # retransmission times kept per viewer track
RTP_VERSION_BYTE = 0x80  # V=2, no padding, no extension, no CSRC: extensions are not forwarded
# Bytes 1-11 of an RTP header: marker|payload type, sequence number, timestamp, SSRC.
HEADER_AFTER_FIRST_BYTE = struct.Struct("!BHII")
RTX_HEADER = struct.Struct("!BBHIIH")
# A one-byte header extension (RFC 8285) holding one 2-byte element: the transport-wide
# sequence number (media.twcc); the element byte is ID << 4 | (2 - 1), then one pad byte.
TWCC_EXTENSION = struct.Struct("!HHBHB")
TWCC_HEADER = 12 + TWCC_EXTENSION.size
TWCC_SENT_MASK = SENT_MEMORY - 1
GOP_CACHE_BYTES = 2_000_000  # default bound of a video track's GOP cache
CATCH_UP_CHUNK = 32  # cached packets sent to a joining viewer at a time
# The pace of a catch-up (20 Mbit/s): a 5 s GOP at 800 kbit/s goes in 0.2 s, and a 2 MB
# burst at line rate, which a real viewer's link would mostly drop, never happens.
CATCH_UP_BYTES_PER_SECOND = 2_500_000
# At least this many ticks between consecutive cached frames in a joining viewer's
# timeline; with paced timestamps, as many as the frame's bytes take to send.
CATCH_UP_TICKS_PER_FRAME = 1
CATCH_UP_PACED_TIMESTAMPS = True
# Sender reports go to this many viewers per event-loop turn (see send_sender_reports).
SENDER_REPORT_CHUNK = 32
# A joining viewer sent a GOP longer than this also asks for a keyframe (see add_viewer).
LONG_GOP_SECONDS = 1.0

Entry = tuple[int, int, int, bytearray]  # seq, timestamp, marker bit, packet buffer


def _newer(a: int, b: int) -> bool:
    """Return whether 16-bit sequence number ``a`` comes after ``b``."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


@dataclass
class TrackCounters:
    """Totals of the viewers that have left, so room counters never go backwards."""

    packets_out: int = 0
    bytes_out: int = 0
    drops: int = 0
    nacks_served: int = 0


class ViewerTrack:
    """One viewer's copy of one track: its SSRC, offsets, egress and counters."""

    __slots__ = (
        "active", "anchor_time", "drops", "egress", "fraction_lost", "gop_ts", "layer",
        "nacks_served", "next_layer", "next_pic", "next_seq", "next_tl0", "next_ts", "octets",
        "packets", "pic_offset", "prior", "pt", "resent", "rtt", "rtx_pt", "rtx_seq", "rtx_ssrc",
        "send", "sender", "seq_offset", "sr_hold_until", "sr_sent", "srtp", "ssrc", "start_seq",
        "tl0_offset", "ts_offset", "twcc", "twcc_id", "twcc_seq",
    )

    def __init__(self, sender: ForwardingSender) -> None:
        egress = sender.egress
        assert egress is not None and egress.srtp_handle is not None
        self.sender = sender
        self.ssrc = sender._ssrc
        self.pt = sender.payload_type or 0
        self.rtx_pt = sender.rtx_payload_type
        self.rtx_ssrc = sender._rtx_ssrc
        self.rtx_seq = random.randrange(0x8000)
        self.seq_offset = 0
        self.ts_offset = 0
        # Publisher timestamp -> viewer timestamp of the cached frames it was sent on
        # joining (their timestamps are squeezed, see the module docstring); for NACKs.
        self.gop_ts: dict[int, int] | None = None
        self.start_seq = 0
        # The viewer-space numbers its next first packet gets; random for a new viewer
        # (RFC 3550), continuing the old numbers after the publisher reconnects.
        self.next_seq = random.randrange(0x8000)
        self.next_ts = random.getrandbits(32)
        self.anchor_time: float | None = None
        self.active = False
        self.egress = egress  # keeps the SRTP session behind ``srtp`` alive
        self.srtp = egress.srtp_handle
        self.send = egress.send
        self.packets = 0
        self.octets = 0
        self.drops = 0
        self.nacks_served = 0
        self.fraction_lost = 0
        # Viewer sequence number -> time it was last retransmitted (bounded, see on_nack).
        self.resent: dict[int, float] = {}
        # Simulcast (media.simulcast): the layer's forwarder this viewer is on, and the
        # one it switches to at that layer's next keyframe (it waits there meanwhile).
        self.layer: TrackForwarder | None = None
        self.next_layer: TrackForwarder | None = None
        # The layer it left at its last switch, with the offsets it had there
        # (forwarder, seq_offset, ts_offset, start_seq, pic_offset, tl0_offset): NACKs of
        # packets from before the switch are answered from that layer's history.
        self.prior: tuple[TrackForwarder, int, int, int, int, int] | None = None
        # Middle 32 bits of the NTP time of our recent sender reports -> when each went
        # out: a receiver report's LSR/DLSR then gives the round-trip time (RFC 3550 6.4.1).
        self.sr_sent: dict[int, float] = {}
        # Periodic sender reports wait until then (a probe's report awaits its answer).
        self.sr_hold_until = 0.0
        self.rtt = 0.0  # the latest round-trip time its receiver reports gave (seconds)
        # Transport-wide congestion control (media.twcc), where negotiated and enabled:
        # the send times of its numbered packets; the extension's element byte; the next number.
        self.twcc: TransportFeedbackAdapter | None = None
        self.twcc_id = 0
        self.twcc_seq = 0
        # VP8 picture id and TL0PICIDX (simulcast layers, see TrackForwarder.vp8_ids): the
        # offsets added to the publisher's, and the values its next keyframe gets after a
        # switch (None: keep the offsets, e.g. a new viewer keeps the publisher's ids).
        self.pic_offset = 0
        self.tl0_offset = 0
        self.next_pic: int | None = None
        self.next_tl0: int | None = None

    def enable_twcc(self, extension_id: int) -> None:
        """Number this viewer's forwarded packets in the transport-wide-cc extension."""
        if not 0 < extension_id < 15:
            raise ValueError(f"a one-byte header extension ID is 1-14, not {extension_id}")
        self.twcc = TransportFeedbackAdapter()
        self.twcc_id = extension_id << 4 | 1


class CatchUp:
    """A joining viewer being sent the cached GOP, a paced chunk at a time."""

    __slots__ = ("gop", "handle", "index", "viewer")

    def __init__(self, viewer: ViewerTrack, gop: list[Entry]) -> None:
        self.viewer = viewer
        self.gop = gop  # the forwarder's current GOP list: it grows while we send
        self.index = 0
        self.handle: asyncio.TimerHandle | None = None


class TrackForwarder:
    """Fan one publisher track out to its viewers; also answers their NACKs."""

    def __init__(
        self,
        kind: str,
        codec: RTCRtpCodecParameters,
        on_keyframe_needed: Callable[[], None],
        on_publisher_media: Callable[[TrackForwarder], None],
        *,
        gop_cache_bytes: int = 0,
    ) -> None:
        self.kind = kind
        self.codec = codec
        self.is_video = kind == "video"
        self._keyframe_needed = on_keyframe_needed
        self._publisher_media = on_publisher_media
        self._history: list[tuple[int, int, int, bytearray] | None] = [None] * (
            VIDEO_HISTORY if self.is_video else AUDIO_HISTORY
        )
        self._mask = len(self._history) - 1
        self._scratch = SrtpScratch()
        self.viewers: list[ViewerTrack] = []
        self.waiting: list[ViewerTrack] = []
        self.catching_up: list[CatchUp] = []
        # The current GOP (video, cache on): packets from the last keyframe's first one,
        # in arrival order; None while there is none (no keyframe yet, or too large).
        self._gop_limit = gop_cache_bytes if self.is_video else 0
        self._gop: list[Entry] | None = None
        self._gop_bytes = 0
        self._frame_is_key = False
        self.receiver: ForwardingReceiver | None = None
        self.highest_seq: int | None = None
        self.highest_ts = 0
        self.frame_start_seq = 0
        self.last_packet_time = 0.0
        self._media_seen = False
        self.packets_in = 0
        self.bytes_in = 0
        self.nacks_missed = 0
        self.catch_up_skips = 0  # joining viewers that skipped to a new keyframe
        self.retired = TrackCounters()
        # Publisher sender report: (NTP timestamp, RTP timestamp, local arrival time).
        self._sender_report: tuple[int, int, float] | None = None
        # Set by the benchmark to record added forwarding delay (seconds) per packet.
        self.delay_probe: deque[float] | None = None
        # VP8 picture ids and TL0PICIDX rewritten per viewer (a simulcast layer: viewers
        # switch between layers whose ids are unrelated; media.layers sets it), and the
        # newest of each forwarded, which a viewer switching away continues from.
        self.vp8_ids = False
        self.highest_pic: int | None = None
        self.highest_tl0: int | None = None

    # --- publisher side (PacketSink) ----------------------------------------------------

    def on_receiver_started(self, receiver: ForwardingReceiver) -> None:
        """Take the packets of a newly connected publisher."""
        self.receiver = receiver

    def on_receiver_ended(self, receiver: ForwardingReceiver) -> None:
        """Forget a publisher that left."""
        if self.receiver is receiver:
            self.receiver = None

    def on_sender_report(self, packet: RtcpSrPacket) -> None:
        """Remember the publisher's NTP/RTP time pair for the viewers' sender reports."""
        info = packet.sender_info
        self._sender_report = (info.ntp_timestamp, info.rtp_timestamp, time.monotonic())

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Forward one publisher packet to every active viewer."""
        started = time.perf_counter() if self.delay_probe is not None else 0.0
        seq = packet.sequence_number
        in_order = self.highest_seq is None or _newer(seq, self.highest_seq)
        if not in_order:
            kept = self._history[seq & self._mask]
            if kept is not None and kept[0] == seq:
                # A copy of a packet already forwarded: Chromium pads its probes with RTX
                # copies of recent packets; sent on, they only load the viewers' links.
                return
        ts = packet.timestamp
        payload = packet.payload
        size = len(payload)
        buf = bytearray(12 + size)
        buf[0] = RTP_VERSION_BYTE
        buf[12:] = payload
        marker = 0x80 if packet.marker else 0
        entry = (seq, ts, marker, buf)
        self._history[seq & self._mask] = entry
        self.packets_in += 1
        self.bytes_in += size
        ids = vp8_ids(payload) if self.vp8_ids else None
        if in_order:
            if ids is not None:
                if ids[0]:
                    self.highest_pic = ids[1]
                if ids[2]:
                    self.highest_tl0 = ids[3]
            if self.highest_seq is None or ts != self.highest_ts:
                self.frame_start_seq = seq
                self._frame_is_key = False
            if self._gop_limit and not self._frame_is_key:
                self._check_keyframe(seq, payload)
            self.highest_seq = seq
            self.highest_ts = ts
            self.last_packet_time = time.monotonic()
            if not self._media_seen:
                self._media_seen = True
                self._publisher_media(self)
            if self.waiting:
                self._admit_waiting(seq, ts, payload)
        gop = self._gop
        if gop is not None:
            if self._gop_bytes + size > self._gop_limit and not self.catching_up:
                self._drop_gop()  # too long to be worth sending: wait for a keyframe
            else:
                gop.append(entry)
                self._gop_bytes += size

        scratch = self._scratch
        view, length, protect, cdata = scratch.view, scratch.length, scratch.protect, scratch.cdata
        total = 12 + size
        pack_into = HEADER_AFTER_FIRST_BYTE.pack_into
        # The protected packet's view, re-sliced only when the SRTP trailer's length
        # changes (viewers normally share one SRTP profile): one object less per viewer.
        out, out_length = view, -1
        sent_at = time.monotonic()  # for the viewers that number their packets (media.twcc)
        for viewer in self.viewers:
            if not in_order and not _newer(seq, (viewer.start_seq - 1) & 0xFFFF):
                continue  # a late packet from before this viewer's first keyframe
            twcc = viewer.twcc
            if twcc is None:
                view[:total] = buf
                length[0] = total
            else:  # the transport-wide sequence number in a one-byte header extension
                view[TWCC_HEADER:total + TWCC_EXTENSION.size] = payload
                view[0] = RTP_VERSION_BYTE | 0x10
                TWCC_EXTENSION.pack_into(view, 12, 0xBEDE, 1, viewer.twcc_id, viewer.twcc_seq, 0)
                length[0] = total + TWCC_EXTENSION.size
                twcc.sent[viewer.twcc_seq & TWCC_SENT_MASK] = (sent_at, total + TWCC_EXTENSION.size)
                viewer.twcc_seq = (viewer.twcc_seq + 1) & 0xFFFF
            pack_into(
                view, 1, marker | viewer.pt, (seq + viewer.seq_offset) & 0xFFFF,
                (ts + viewer.ts_offset) & 0xFFFFFFFF, viewer.ssrc,
            )
            if ids is not None and (viewer.pic_offset or viewer.tl0_offset):
                write_vp8_ids(view, 12 if twcc is None else TWCC_HEADER, ids[0],
                              ids[1] + viewer.pic_offset, ids[2], ids[3] + viewer.tl0_offset)
            if protect(viewer.srtp, cdata, length):
                viewer.drops += 1  # libsrtp refused (e.g. the session is gone)
                continue
            if length[0] != out_length:
                out_length = length[0]
                out = view[:out_length]
            try:
                viewer.send(out)
            except OSError:  # BlockingIOError: the viewer's buffer is full
                viewer.drops += 1
                continue
            viewer.packets += 1
            viewer.octets += size
        if self.delay_probe is not None and self.viewers:
            self.delay_probe.append(time.perf_counter() - started)

    def _admit_waiting(self, seq: int, ts: int, payload: bytes) -> None:
        """Start waiting viewers if this packet belongs to a keyframe; else ask for one."""
        if self.is_video and not is_keyframe(self.codec.name, payload):
            self._keyframe_needed()
            return
        start = self.frame_start_seq if self.is_video else seq
        now = time.monotonic()
        for viewer in self.waiting:
            if viewer.next_layer is self:
                self._take_over(viewer)
            viewer.start_seq = start
            viewer.seq_offset = (viewer.next_seq - start) & 0xFFFF
            next_ts = viewer.next_ts
            if viewer.anchor_time is not None:  # continue the old timeline after a gap
                next_ts += int((now - viewer.anchor_time) * self.codec.clockRate)
            viewer.ts_offset = (next_ts - ts) & 0xFFFFFFFF
            if self.vp8_ids:
                self._continue_vp8(viewer, payload)
            viewer.active = True
            self.viewers.append(viewer)
            # Earlier packets of the keyframe (e.g. SPS/PPS) arrived before we saw it.
            earlier = start
            while earlier != seq:
                entry = self._history[earlier & self._mask]
                if entry is not None and entry[0] == earlier:
                    self._send_one(viewer, entry)
                earlier = (earlier + 1) & 0xFFFF
        self.waiting.clear()

    def _take_over(self, viewer: ViewerTrack) -> None:
        """Take a viewer switching from another layer's forwarder at this keyframe.

        Its numbers continue from the last packet the old layer sent it: the viewer sees
        one stream whose next frame is this keyframe. Layers have unrelated timestamp
        bases, so the timeline continues by the time elapsed (at least one tick).
        """
        source = viewer.layer
        viewer.next_layer = None
        viewer.layer = self
        viewer.gop_ts = None
        if source is None or source is self:
            return
        if viewer in source.viewers:
            source.viewers.remove(viewer)
        else:
            source._stop_catch_up(viewer)
        if viewer in source.waiting:  # it never started there: nothing to continue
            source.waiting.remove(viewer)
            return
        viewer.prior = (source, viewer.seq_offset, viewer.ts_offset, viewer.start_seq,
                        viewer.pic_offset, viewer.tl0_offset)
        if source.highest_seq is not None:
            viewer.next_seq = (source.highest_seq + viewer.seq_offset + 1) & 0xFFFF
            viewer.next_ts = (source.highest_ts + viewer.ts_offset
                              + self._ticks_after(source)) & 0xFFFFFFFF
            viewer.anchor_time = None
        source._continued_by(viewer)

    def _ticks_after(self, source: TrackForwarder) -> int:
        """Return how far this layer's newest frame is after ``source``'s newest (ticks, >= 1).

        Simulcast layers capture their frames at the same instants but number them from
        unrelated timestamp bases: the publisher's sender reports of both layers (one NTP
        clock) place this frame on the source's timeline, so a viewer switching here
        sees its timestamps advance by the capture time between the two frames (a frame
        period, or a little less). Without both reports (or with a nonsense answer), by
        the time elapsed since the source's newest packet.
        """
        clock_rate = self.codec.clockRate
        mine, theirs = self._sender_report, source._sender_report
        if mine is not None and theirs is not None:
            ntp_diff = ((mine[0] - theirs[0] + (1 << 63)) & 0xFFFFFFFFFFFFFFFF) - (1 << 63)
            mine_since = ((self.highest_ts - mine[1] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            theirs_since = ((source.highest_ts - theirs[1] + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
            ticks = int(ntp_diff * clock_rate / (1 << 32)) + mine_since - theirs_since
            if -clock_rate <= ticks <= clock_rate:  # a second apart at most: both make sense
                return max(ticks, 1)  # (a frame captured no later than the last one sent)
        elapsed = max(time.monotonic() - source.last_packet_time, 0.0)
        return max(int(elapsed * clock_rate), 1)

    def _continued_by(self, viewer: ViewerTrack) -> None:
        """Note where ``viewer``'s VP8 ids stop on this layer: its next keyframe continues them."""
        if self.highest_pic is not None:
            viewer.next_pic = (self.highest_pic + viewer.pic_offset + 1) & 0x7FFF
        if self.highest_tl0 is not None:
            viewer.next_tl0 = (self.highest_tl0 + viewer.tl0_offset + 1) & 0xFF

    @staticmethod
    def _continue_vp8(viewer: ViewerTrack, payload: bytes | bytearray) -> None:
        """Give ``viewer`` the VP8 id offsets that continue its ids at this keyframe.

        After a switch (or a publisher's new stream) its picture ids continue by one and
        its TL0PICIDX by one (a keyframe is a new TL0 picture): a receiver's frame
        buffer sees no ids jumping back or ahead (RFC 7741 4.2; libwebrtc's VP8
        reference finder tracks frames and temporal layers by them).
        """
        ids = vp8_ids(payload[:8])
        if ids is None:
            return
        if viewer.next_pic is not None and ids[0]:
            viewer.pic_offset = (viewer.next_pic - ids[1]) & 0x7FFF
        if viewer.next_tl0 is not None and ids[2]:
            viewer.tl0_offset = (viewer.next_tl0 - ids[3]) & 0xFF
        viewer.next_pic = viewer.next_tl0 = None

    @staticmethod
    def _patch_vp8(viewer: ViewerTrack, packet: bytearray, base: int) -> None:
        """Rewrite the VP8 ids of a packet sent off the hot path (payload at ``base``)."""
        if not (viewer.pic_offset or viewer.tl0_offset):
            return
        ids = vp8_ids(packet[base: base + 8])
        if ids is not None:
            write_vp8_ids(packet, base, ids[0], ids[1] + viewer.pic_offset, ids[2], ids[3] + viewer.tl0_offset)

    # --- GOP cache ------------------------------------------------------------------------

    def _check_keyframe(self, seq: int, payload: bytes) -> None:
        """Start a new GOP when a packet of the current frame shows it is a keyframe."""
        if not is_keyframe(self.codec.name, payload):
            return
        self._frame_is_key = True
        for catch_up in list(self.catching_up):
            self._skip_to_keyframe(catch_up, seq)
        gop: list[Entry] = []
        earlier = self.frame_start_seq  # packets of this frame before the one that told us
        while earlier != seq:
            entry = self._history[earlier & self._mask]
            if entry is not None and entry[0] == earlier:
                gop.append(entry)
            earlier = (earlier + 1) & 0xFFFF
        self._gop = gop
        self._gop_bytes = sum(len(e[3]) - 12 for e in gop)

    def _skip_to_keyframe(self, catch_up: CatchUp, seq: int) -> None:
        """Let a viewer still catching up skip the rest of the old GOP for this keyframe.

        Its sequence numbers continue from the last packet it was sent (no gap to NACK);
        a decoder that is still working through the old frames drops them and jumps here.
        """
        if catch_up.handle is not None:
            catch_up.handle.cancel()
        self.catching_up.remove(catch_up)
        self.catch_up_skips += 1
        viewer = catch_up.viewer
        sent = catch_up.gop[: catch_up.index]
        last = sent[0][0]
        for entry in sent:
            if _newer(entry[0], last):
                last = entry[0]
        start = self.frame_start_seq
        viewer.seq_offset = (last + viewer.seq_offset + 1 - start) & 0xFFFF
        viewer.start_seq = start
        self.viewers.append(viewer)
        earlier = start  # packets of the keyframe before the one that showed it
        while earlier != seq:
            entry = self._history[earlier & self._mask]
            if entry is not None and entry[0] == earlier:
                self._send_one(viewer, entry)
            earlier = (earlier + 1) & 0xFFFF

    def _drop_gop(self) -> None:
        self._gop = None
        self._gop_bytes = 0

    def _start_catch_up(self, viewer: ViewerTrack, gop: list[Entry]) -> None:
        """Send a joining viewer the cached GOP, then make it a live viewer."""
        newest = self.highest_ts
        frames = list(dict.fromkeys(e[1] for e in gop))  # timestamps in arrival order
        viewer.start_seq = gop[0][0]
        viewer.seq_offset = (viewer.next_seq - viewer.start_seq) & 0xFFFF
        viewer.ts_offset = (viewer.next_ts - newest) & 0xFFFFFFFF
        if self.vp8_ids:
            self._continue_vp8(viewer, gop[0][3][12:20])
        last = len(frames) - 1 if frames[-1] == newest else len(frames)
        ticks_before_newest = [(last - i) * CATCH_UP_TICKS_PER_FRAME for i in range(len(frames))]
        if CATCH_UP_PACED_TIMESTAMPS:
            # Each cached frame as far before the newest as its bytes take to send at the
            # catch-up pace: the frames arrive as their timestamps say (no jitter).
            after: dict[int, int] = {}
            total = 0
            for entry in reversed(gop):
                total += len(entry[3])
                after[entry[1]] = total
            rate = self.codec.clockRate / CATCH_UP_BYTES_PER_SECOND
            floor = ticks_before_newest[last] if last < len(frames) else 0
            for i in range(last - 1, -1, -1):  # newest first, each strictly before the next
                floor = max(floor + 1, int(after[frames[i]] * rate))
                ticks_before_newest[i] = floor
        viewer.gop_ts = {
            ts: (newest + viewer.ts_offset - ticks) & 0xFFFFFFFF
            for ts, ticks in zip(frames, ticks_before_newest, strict=True)
        }
        viewer.active = True
        catch_up = CatchUp(viewer, gop)
        self.catching_up.append(catch_up)
        self._catch_up(catch_up)

    def _catch_up(self, catch_up: CatchUp) -> None:
        """Send the next chunk of cached packets; join the live fan-out at the end."""
        catch_up.handle = None
        viewer, gop = catch_up.viewer, catch_up.gop
        ts_map = viewer.gop_ts or {}
        end = min(len(gop), catch_up.index + CATCH_UP_CHUNK)
        sent = 0
        for index in range(catch_up.index, end):
            entry = gop[index]
            ts = entry[1]
            self._send_one(viewer, entry, ts_map.get(ts, (ts + viewer.ts_offset) & 0xFFFFFFFF))
            sent += len(entry[3])
        catch_up.index = end
        if end == len(gop):  # caught up: the next packet reaches it through the fan-out
            self.catching_up.remove(catch_up)
            self.viewers.append(viewer)
        else:
            catch_up.handle = asyncio.get_running_loop().call_later(
                sent / CATCH_UP_BYTES_PER_SECOND, self._catch_up, catch_up
            )

    def _stop_catch_up(self, viewer: ViewerTrack) -> None:
        for catch_up in self.catching_up:
            if catch_up.viewer is viewer:
                if catch_up.handle is not None:
                    catch_up.handle.cancel()
                self.catching_up.remove(catch_up)
                return

    def _send_one(self, viewer: ViewerTrack, entry: Entry, viewer_ts: int | None = None) -> None:
        seq, ts, marker, buf = entry
        packet = bytearray(buf)
        if viewer_ts is None:
            viewer_ts = (ts + viewer.ts_offset) & 0xFFFFFFFF
        HEADER_AFTER_FIRST_BYTE.pack_into(
            packet, 1, marker | viewer.pt, (seq + viewer.seq_offset) & 0xFFFF,
            viewer_ts, viewer.ssrc,
        )
        if self.vp8_ids:
            self._patch_vp8(viewer, packet, 12)
        if self._protect_and_send(viewer, packet):
            viewer.packets += 1
            viewer.octets += len(buf) - 12

    def _protect_and_send(self, viewer: ViewerTrack, packet: bytearray) -> bool:
        """Protect and send one packet off the hot path; False if it was dropped."""
        scratch = self._scratch
        scratch.view[: len(packet)] = packet
        scratch.length[0] = len(packet)
        if scratch.protect(viewer.srtp, scratch.cdata, scratch.length):
            viewer.drops += 1
            return False
        try:
            viewer.send(scratch.view[: scratch.length[0]])
        except OSError:
            viewer.drops += 1
            return False
        return True

    # --- viewer side ----------------------------------------------------------------------

    def add_viewer(self, viewer: ViewerTrack) -> None:
        """Add a connected viewer: it gets the cached GOP at once, or waits for a keyframe."""
        viewer.layer = self
        gop = self._gop
        if gop:
            self._start_catch_up(viewer, gop)
            if (self.highest_ts - gop[0][1]) & 0xFFFFFFFF > LONG_GOP_SECONDS * self.codec.clockRate:
                # A publisher that answers PLIs (browsers, OBS) sends a keyframe sooner
                # than the viewer decodes a long GOP; the viewer then skips to it.
                self._keyframe_needed()
            return
        self.waiting.append(viewer)
        if self.is_video:
            self._keyframe_needed()

    def remove_viewer(self, viewer: ViewerTrack) -> None:
        """Remove a viewer and keep its counters in the track's totals."""
        if viewer in self.viewers:
            self.viewers.remove(viewer)
        if viewer in self.waiting:
            self.waiting.remove(viewer)
        self._stop_catch_up(viewer)
        viewer.active = False
        self.retired.packets_out += viewer.packets
        self.retired.bytes_out += viewer.octets
        self.retired.drops += viewer.drops
        self.retired.nacks_served += viewer.nacks_served

    def restart(self) -> None:
        """Re-anchor every viewer for a new publisher stream (a reconnect).

        Viewers continue their own sequence and timestamp spaces where they stopped,
        and wait for the new stream's first keyframe.
        """
        for catch_up in self.catching_up:  # they wait for the new stream like the others
            if catch_up.handle is not None:
                catch_up.handle.cancel()
            self.viewers.append(catch_up.viewer)
        self.catching_up.clear()
        self._gop = None
        self._gop_bytes = 0
        self._frame_is_key = False
        now = time.monotonic()
        for viewer in self.viewers:
            if self.highest_seq is not None:
                viewer.next_seq = (self.highest_seq + viewer.seq_offset + 1) & 0xFFFF
                viewer.next_ts = (self.highest_ts + viewer.ts_offset) & 0xFFFFFFFF
                viewer.anchor_time = now
                self._continued_by(viewer)
            viewer.active = False
            self.waiting.append(viewer)
        self.viewers.clear()
        self._history = [None] * len(self._history)
        self.highest_seq = None
        self.highest_pic = self.highest_tl0 = None
        self._sender_report = None
        self._media_seen = False

    def switch_codec(self, codec: RTCRtpCodecParameters) -> None:
        """Take the next publisher stream in another codec (the room's viewers rejoin)."""
        self.codec = codec
        self.restart()

    def on_nack(self, viewer: ViewerTrack, lost: list[int]) -> None:
        """Retransmit the packets a viewer reports lost, from the bounded history.

        A receiver repeats a NACK until the packet arrives; resending the same packet
        again within ``NACK_RESEND_INTERVAL`` would only amplify the load on a viewer
        that is already losing packets, so such repeats are ignored.
        """
        if not viewer.active:
            return
        now = time.monotonic()
        resent = viewer.resent
        if len(resent) > NACK_RESEND_MEMORY:
            resent.clear()
        # A receiver NACKs every packet still missing whenever a new one goes missing
        # (aiortc does): on a queueing link, resending before the last copy could have
        # arrived only adds to the queue that lost it.
        interval = max(NACK_RESEND_INTERVAL, viewer.rtt * 1.5)
        for viewer_seq in lost:
            if now - resent.get(viewer_seq, -1.0) < interval:
                continue
            resent[viewer_seq] = now
            seq = (viewer_seq - viewer.seq_offset) & 0xFFFF
            entry = self._history[seq & self._mask]
            if (entry is None or entry[0] != seq) and viewer.gop_ts is not None:
                entry = self._cached(seq)
            if entry is None or entry[0] != seq or _newer(viewer.start_seq, seq):
                self.nacks_missed += 1
                continue
            _, ts, marker, buf = entry
            viewer_ts = (ts + viewer.ts_offset) & 0xFFFFFFFF
            if viewer.gop_ts is not None:
                viewer_ts = viewer.gop_ts.get(ts, viewer_ts)
            if viewer.rtx_pt is None:
                self._send_one(viewer, entry, viewer_ts)
            else:  # RFC 4588: original sequence number, then the original payload
                rtx = bytearray(RTX_HEADER.size) + buf[12:]
                RTX_HEADER.pack_into(
                    rtx, 0, RTP_VERSION_BYTE, marker | viewer.rtx_pt, viewer.rtx_seq,
                    viewer_ts, viewer.rtx_ssrc, viewer_seq,
                )
                viewer.rtx_seq = (viewer.rtx_seq + 1) & 0xFFFF
                if self.vp8_ids:
                    self._patch_vp8(viewer, rtx, RTX_HEADER.size)
                if not self._protect_and_send(viewer, rtx):
                    continue
            viewer.nacks_served += 1

    def _cached(self, seq: int) -> Entry | None:
        """Return the GOP cache's packet ``seq`` (older than the NACK history), if kept."""
        for entry in self._gop or ():
            if entry[0] == seq:
                return entry
        return None

    def on_receiver_report(self, viewer: ViewerTrack, report: RtcpReceiverInfo) -> None:
        """Keep the viewer's reported loss for the stats."""
        viewer.fraction_lost = report.fraction_lost

    def send_sender_reports(self) -> None:
        """Send each active viewer a sender report, in the publisher's NTP timeline.

        Audio and video reports derive from the same publisher clock, which is what a
        viewer needs to synchronise them. A viewer whose probe waits for its verdict
        (``sr_hold_until``, see media.probe) is skipped: its next receiver report must
        answer the probe's own sender report.
        """
        if self.highest_seq is None or not self.viewers:
            return
        self._send_report_chunk(list(self.viewers), 0)

    def _send_report_chunk(self, viewers: list[ViewerTrack], start: int) -> None:
        """Send the reports of ``SENDER_REPORT_CHUNK`` viewers from ``start``; the rest on a later loop turn.

        A round to every viewer at once held the event loop 3-9 ms at 200 viewers (measured
        in bench_cluster), which every packet arriving meanwhile waited for; in chunks,
        packets are forwarded between them. A viewer that left or changed layers since the
        round began is skipped.
        """
        if self.highest_seq is None:
            return
        now = time.monotonic()
        ntp, rtp_now = self._sender_clock(now)
        end = start + SENDER_REPORT_CHUNK
        present = set(self.viewers) if start else None  # the first chunk is this turn's own list
        for viewer in viewers[start:end]:
            if now >= viewer.sr_hold_until and (present is None or viewer in present):
                self._send_sender_report(viewer, ntp, rtp_now, now)
        if end < len(viewers):
            asyncio.get_running_loop().call_soon(self._send_report_chunk, viewers, end)

    def send_sender_report(self, viewer: ViewerTrack) -> int | None:
        """Send one viewer a sender report now; return its LSR key (None: not sent)."""
        if self.highest_seq is None or viewer not in self.viewers:
            return None
        now = time.monotonic()
        ntp, rtp_now = self._sender_clock(now)
        return self._send_sender_report(viewer, ntp, rtp_now, now)

    def _sender_clock(self, now: float) -> tuple[int, int]:
        """Return the NTP and RTP times of ``now`` in the publisher's timeline."""
        if self._sender_report is not None:
            ntp, rtp_ts, received = self._sender_report
        else:  # no publisher report yet: our clock and the newest packet
            ntp, rtp_ts, received = clock.current_ntp_time(), self.highest_ts, self.last_packet_time
        elapsed = max(now - received, 0.0)
        ntp = (ntp + int(elapsed * (1 << 32))) & 0xFFFFFFFFFFFFFFFF
        rtp_now = (rtp_ts + int(elapsed * self.codec.clockRate)) & 0xFFFFFFFF
        return ntp, rtp_now

    def _send_sender_report(self, viewer: ViewerTrack, ntp: int, rtp_now: int, now: float) -> int | None:
        sender = viewer.sender
        if sender.egress is None:
            return None
        report = RtcpSrPacket(
            ssrc=viewer.ssrc,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp,
                rtp_timestamp=(rtp_now + viewer.ts_offset) & 0xFFFFFFFF,
                packet_count=viewer.packets & 0xFFFFFFFF,
                octet_count=viewer.octets & 0xFFFFFFFF,
            ),
        )
        data = bytes(report)
        if len(viewer.sr_sent) > 8:
            viewer.sr_sent.clear()
        key = (ntp >> 16) & 0xFFFFFFFF
        viewer.sr_sent[key] = now
        if sender.cname:
            sdes = RtcpSdesPacket(
                chunks=[RtcpSourceInfo(ssrc=viewer.ssrc, items=[(1, sender.cname.encode())])]
            )
            data += bytes(sdes)
        try:
            sender.egress.send_rtcp(data)
        except (OSError, pylibsrtp.Error):
            logger.debug("sender report to SSRC %d failed", viewer.ssrc)
            return None
        return key

    def send_padding(self, viewer: ViewerTrack, size: int) -> bool:
        """Send a viewer one padding-only RTX packet of ``size`` padding bytes (1-255).

        A bandwidth probe (media.probe): RFC 4588 padding in the viewer's RTX stream,
        which receivers count and drop; False if it was not sent (no RTX, or dropped).
        """
        if viewer.rtx_pt is None or not viewer.active:
            return False
        twcc = viewer.twcc
        header = 12 if twcc is None else TWCC_HEADER
        packet = bytearray(header + size)
        packet[0] = RTP_VERSION_BYTE | 0x20  # the padding bit
        HEADER_AFTER_FIRST_BYTE.pack_into(packet, 1, viewer.rtx_pt, viewer.rtx_seq,
                                          (self.highest_ts + viewer.ts_offset) & 0xFFFFFFFF,
                                          viewer.rtx_ssrc)
        if twcc is not None:
            packet[0] |= 0x10
            TWCC_EXTENSION.pack_into(packet, 12, 0xBEDE, 1, viewer.twcc_id, viewer.twcc_seq, 0)
            twcc.on_sent(viewer.twcc_seq, time.monotonic(), len(packet))
            viewer.twcc_seq = (viewer.twcc_seq + 1) & 0xFFFF
        packet[-1] = size  # the padding's last byte is its length (RFC 3550 5.1)
        viewer.rtx_seq = (viewer.rtx_seq + 1) & 0xFFFF
        return self._protect_and_send(viewer, packet)

    def counters(self) -> TrackCounters:
        """Return the track's totals, including viewers that have left."""
        total = TrackCounters(**vars(self.retired))
        for viewer in self.viewers + self.waiting + [c.viewer for c in self.catching_up]:
            total.packets_out += viewer.packets
            total.bytes_out += viewer.octets
            total.drops += viewer.drops
            total.nacks_served += viewer.nacks_served
        return total
