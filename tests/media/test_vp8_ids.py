"""VP8 picture ids and TL0PICIDX continue per viewer across simulcast layer switches.

Two simulcast layers with unrelated picture ids, TL0PICIDX and timestamp bases (as
Chromium sends them) go through a real ``SimulcastForwarder``; one viewer, with a real
SRTP session and a loopback socket, is switched between them (and to a temporal rung).
What it receives is decrypted and read back: one SSRC, sequence numbers without a gap,
picture ids counting up by one per frame, TL0PICIDX by one per TID 0 frame, each
switch starting at the new layer's keyframe, and timestamps a frame period apart (the
publisher's sender reports place both layers on one clock). Retransmissions carry the
same ids as the first copy, from before a switch too.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pylibsrtp
import pytest
from aiortc.codecs import CODECS
from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket, RtpPacket

from media.aiortc_hook import _connected_send
from media.codecs import vp8_ids, vp8_temporal
from media.forwarder import ViewerTrack
from media.layers import SimulcastForwarder
from media.simulcast import LayerSelector
from media.temporal import rung_key

CODEC = CODECS["video"][0]  # VP8
L1T3 = (0, 2, 1, 2)  # Chromium's TIDs per frame (three temporal layers)
NTP_START = 0xE000_0000 << 32  # the publisher's NTP time of frame 0 (both layers)
PAD_RTX_PT = 97


@dataclass
class Encoding:
    """One simulcast layer of a synthetic publisher: its own SSRC and number spaces."""

    ssrc: int
    seq: int
    ts_base: int
    picture_id: int
    tl0: int
    long_id: bool = True
    frames: int = 0
    sent: list[RtpPacket] = field(default_factory=list)

    def frame(self, index: int, *, keyframe: bool = False, packets: int = 2) -> list[RtpPacket]:
        """Return the packets of frame ``index`` (the same capture instant on every layer)."""
        tid = 0 if keyframe else L1T3[index % 4]
        if self.frames and tid == 0:
            self.tl0 = (self.tl0 + 1) & 0xFF
        if self.frames:
            self.picture_id = (self.picture_id + 1) & (0x7FFF if self.long_id else 0x7F)
        self.frames += 1
        out = []
        for part in range(packets):
            ids = (bytes([0x80 | self.picture_id >> 8, self.picture_id & 0xFF]) if self.long_id
                   else bytes([self.picture_id]))
            # S on the first packet; the VP8 frame header's P bit (0: keyframe) follows.
            descriptor = bytes([0x90 if part == 0 else 0x80, 0xE0]) + ids + bytes([self.tl0, tid << 6 | 0x20])
            body = bytes([0x00 if keyframe else 0x01]) + bytes(30) if part == 0 else bytes(31)
            out.append(RtpPacket(payload_type=96, sequence_number=self.seq, ssrc=self.ssrc,
                                 timestamp=(self.ts_base + index * 3000) & 0xFFFFFFFF,
                                 marker=part == packets - 1, payload=descriptor + body))
            self.seq = (self.seq + 1) & 0xFFFF
        self.sent += out
        return out

    def sender_report(self) -> RtcpSrPacket:
        """Return a sender report placing frame 0 at ``NTP_START``."""
        return RtcpSrPacket(ssrc=self.ssrc, sender_info=RtcpSenderInfo(
            ntp_timestamp=NTP_START, rtp_timestamp=self.ts_base, packet_count=0, octet_count=0))


@dataclass
class Received:
    """What the viewer's socket got, decrypted: media packets and RTX copies."""

    media: list[RtpPacket] = field(default_factory=list)
    rtx: list[tuple[int, RtpPacket]] = field(default_factory=list)  # (original seq, payload)


class Viewer:
    """A ``ViewerTrack`` with real SRTP and a loopback socket, and the far end that reads it."""

    def __init__(self, track: ViewerTrack, inbound: pylibsrtp.Session, sink: socket.socket,
                 transport: asyncio.DatagramTransport) -> None:
        self.track, self.inbound, self.sink, self.transport = track, inbound, sink, transport
        self.got = Received()

    def read(self) -> Received:
        while True:
            try:
                data = self.sink.recv(2048)
            except BlockingIOError:
                return self.got
            packet = RtpPacket.parse(self.inbound.unprotect(data))
            if packet.payload_type == PAD_RTX_PT:
                original = packet.payload[0] << 8 | packet.payload[1]
                self.got.rtx.append((original, RtpPacket(
                    payload_type=96, sequence_number=original, timestamp=packet.timestamp,
                    ssrc=packet.ssrc, payload=packet.payload[2:])))
            else:
                self.got.media.append(packet)


@pytest.fixture
async def viewer() -> AsyncIterator[Viewer]:
    key = os.urandom(30)
    profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
    outbound = pylibsrtp.Session(pylibsrtp.Policy(
        key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    inbound = pylibsrtp.Session(pylibsrtp.Policy(
        key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    rtcp: list[bytes] = []  # the sender reports it was sent (unprotected), kept here
    egress = types.SimpleNamespace(srtp=outbound, srtp_handle=outbound._srtp[0],
                                   send=_connected_send(transport._sock, sink.getsockname()),  # type: ignore[attr-defined]
                                   send_rtcp=rtcp.append)
    # The forwarding sender's few attributes a ViewerTrack reads (media.aiortc_hook.ForwardingSender).
    sender = types.SimpleNamespace(egress=egress, _ssrc=4242, payload_type=96, cname=None,
                                   rtx_payload_type=PAD_RTX_PT, _rtx_ssrc=4343, twcc_extension_id=None)
    out = Viewer(ViewerTrack(sender), inbound, sink, transport)  # type: ignore[arg-type]
    yield out
    transport.close()
    sink.close()


def simulcast(q: Encoding, f: Encoding) -> SimulcastForwarder:
    forwarder = SimulcastForwarder(CODEC, lambda ssrc: None, lambda layer: None)
    forwarder.selector = LayerSelector(("q", "f"))
    for encoding, rid, pixels in ((q, "q", 320 * 180), (f, "f", 1280 * 720)):
        forwarder.selector.learn(encoding.ssrc, rid)
        forwarder.selector.layers[encoding.ssrc].pixels = pixels
    return forwarder


def feed(forwarder: SimulcastForwarder, encodings: list[Encoding], index: int,
         keyframes: tuple[Encoding, ...] = ()) -> None:
    """Send frame ``index`` of every layer through the forwarder (the low layer first)."""
    for encoding in encodings:
        for packet in encoding.frame(index, keyframe=encoding in keyframes):
            assert forwarder.selector is not None
            forwarder.selector.on_packet(encoding.ssrc, len(packet.payload), time.monotonic())
            forwarder.on_rtp(packet, CODEC)


def ids_of(packet: RtpPacket) -> tuple[int, int, int, bool]:
    """Return (picture id, TL0PICIDX, TID, starts a keyframe) of a forwarded packet."""
    found = vp8_ids(packet.payload)
    temporal = vp8_temporal(packet.payload)
    assert found is not None and temporal is not None
    index = 6 if found[0] > 0 else 5
    keyframe = bool(packet.payload[0] & 0x10) and not packet.payload[index] & 0x01
    return found[1], found[3], temporal[0], keyframe


def check_one_stream(packets: list[RtpPacket], mask: int = 0x7FFF) -> None:
    """Assert what a receiver's VP8 frame buffer needs: one stream, every number continuing."""
    assert {p.ssrc for p in packets} == {4242}
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs
    frames: list[tuple[int, int, int, int, bool]] = []  # ts, picture id, tl0, tid, keyframe
    for packet in packets:
        picture_id, tl0, tid, keyframe = ids_of(packet)
        if frames and frames[-1][0] == packet.timestamp:
            assert frames[-1][1:4] == (picture_id, tl0, tid)  # one frame: the same ids
            continue
        frames.append((packet.timestamp, picture_id, tl0, tid, keyframe))
    for before, after in itertools.pairwise(frames):
        assert 0 < (after[0] - before[0]) & 0xFFFFFFFF < 0x80000000, (before, after)
        assert (after[1] - before[1]) & mask == 1, (before, after)  # picture id: +1 a frame
        # TL0PICIDX: +1 on each TID 0 frame (a keyframe too), the same on the others.
        assert (after[2] - before[2]) & 0xFF == (1 if after[3] == 0 else 0), (before, after)


def layers() -> tuple[Encoding, Encoding]:
    q = Encoding(ssrc=1111, seq=65500, ts_base=0xFFFF0000, picture_id=32700, tl0=250)
    f = Encoding(ssrc=2222, seq=300, ts_base=123_456, picture_id=7, tl0=3)
    return q, f


async def test_a_switch_up_and_down_continues_picture_ids_and_tl0picidx(viewer: Viewer) -> None:
    q, f = layers()
    forwarder = simulcast(q, f)
    feed(forwarder, [q, f], 0, keyframes=(q, f))
    for encoding in (q, f):
        forwarder.on_sender_report(encoding.sender_report())
    forwarder.add_viewer(viewer.track)  # an auto viewer: the low layer, at its next keyframe
    feed(forwarder, [q, f], 1)
    feed(forwarder, [q, f], 4, keyframes=(q,))
    for index in range(5, 11):
        feed(forwarder, [q, f], index)
    before = len(viewer.read().media)
    assert before and forwarder.layer_of(viewer.track) is forwarder.layers[q.ssrc]
    # Up: still the low layer until the top layer's keyframe.
    forwarder.move(viewer.track, forwarder.layers[f.ssrc])
    feed(forwarder, [q, f], 11)
    assert forwarder.layer_of(viewer.track) is forwarder.layers[q.ssrc]
    feed(forwarder, [q, f], 12, keyframes=(f,))
    assert forwarder.layer_of(viewer.track) is forwarder.layers[f.ssrc]
    for index in range(13, 22):
        feed(forwarder, [q, f], index)
    # Down again, at the low layer's keyframe.
    forwarder.move(viewer.track, forwarder.layers[q.ssrc])
    feed(forwarder, [q, f], 22)
    feed(forwarder, [q, f], 23)
    feed(forwarder, [q, f], 24, keyframes=(q,))
    for index in range(25, 30):
        feed(forwarder, [q, f], index)
    got = viewer.read().media
    assert forwarder.switches == 2
    check_one_stream(got)
    # Each layer's stretch starts at its keyframe; the switch is one frame period later.
    # Up: q's frame 12 came first (it went out before f's keyframe of the same instant),
    # so f's keyframe is one tick after it. Down: q's keyframe of frame 24 follows f's
    # frame 23, a frame period later.
    starts = [i for i, packet in enumerate(got) if i and ids_of(packet)[3]]
    assert len(starts) == 2 and starts[0] == before + 4
    assert [(got[i].timestamp - got[i - 1].timestamp) & 0xFFFFFFFF for i in starts] == [1, 3000]
    assert got[starts[0]].payload[6:] == f.sent[20].payload[6:]  # f's frame 12 keyframe
    # Before its first switch the viewer's ids are the publisher's (nothing to continue).
    assert got[0].payload == q.sent[4].payload  # q's keyframe at frame 4


async def test_seven_bit_picture_ids_continue_too(viewer: Viewer) -> None:
    q = Encoding(ssrc=1111, seq=10, ts_base=5, picture_id=120, tl0=0, long_id=False)
    f = Encoding(ssrc=2222, seq=20000, ts_base=77, picture_id=3, tl0=200, long_id=False)
    forwarder = simulcast(q, f)
    feed(forwarder, [q, f], 0, keyframes=(q, f))
    forwarder.add_viewer(viewer.track)
    forwarder.move(viewer.track, forwarder.layers[q.ssrc])
    feed(forwarder, [q, f], 4, keyframes=(q,))
    for index in range(5, 12):
        feed(forwarder, [q, f], index)
    forwarder.move(viewer.track, forwarder.layers[f.ssrc])
    feed(forwarder, [q, f], 12, keyframes=(f,))
    for index in range(13, 20):
        feed(forwarder, [q, f], index)
    got = viewer.read().media
    assert forwarder.layer_of(viewer.track) is forwarder.layers[f.ssrc]
    check_one_stream(got, mask=0x7F)


async def test_a_temporal_rung_and_back_continue_the_ids(viewer: Viewer) -> None:
    q, f = layers()
    forwarder = simulcast(q, f)
    feed(forwarder, [q, f], 0, keyframes=(q, f))
    forwarder.add_viewer(viewer.track)
    forwarder.move(viewer.track, forwarder.layers[q.ssrc])
    feed(forwarder, [q, f], 4, keyframes=(q,))
    for index in range(5, 10):
        feed(forwarder, [q, f], index)
    forwarder.move(viewer.track, forwarder.layers[rung_key(q.ssrc, 0)])  # TID 0 only
    feed(forwarder, [q, f], 12, keyframes=(q,))
    for index in range(13, 26):
        feed(forwarder, [q, f], index)
    assert forwarder.layer_of(viewer.track) is forwarder.layers[rung_key(q.ssrc, 0)]
    forwarder.move(viewer.track, forwarder.layers[f.ssrc])
    feed(forwarder, [q, f], 28, keyframes=(f,))
    for index in range(29, 34):
        feed(forwarder, [q, f], index)
    got = viewer.read().media
    assert forwarder.layer_of(viewer.track) is forwarder.layers[f.ssrc]
    check_one_stream(got)
    # q's frames 4-9; the first packet of q's keyframe 12 (sent on q before the rung had
    # it); the rung's TID 0 frames 12-28 (its frame 28 went out before f's keyframe of the
    # same instant); f's frames 28-33.
    frames = {p.timestamp: ids_of(p)[2] for p in got}
    assert list(frames.values()) == [0, 2, 1, 2, 0, 2] + [0] + [0] * 5 + [0, 2, 1, 2, 0, 2]


async def test_retransmissions_carry_the_ids_first_sent_before_and_after_a_switch(viewer: Viewer) -> None:
    q, f = layers()
    forwarder = simulcast(q, f)
    feed(forwarder, [q, f], 0, keyframes=(q, f))
    for encoding in (q, f):
        forwarder.on_sender_report(encoding.sender_report())
    forwarder.add_viewer(viewer.track)
    forwarder.move(viewer.track, forwarder.layers[q.ssrc])
    feed(forwarder, [q, f], 4, keyframes=(q,))
    for index in range(5, 9):
        feed(forwarder, [q, f], index)
    forwarder.move(viewer.track, forwarder.layers[f.ssrc])  # its ids continue at f's keyframe
    feed(forwarder, [q, f], 9, keyframes=(f,))
    for index in range(10, 14):
        feed(forwarder, [q, f], index)
    got = list(viewer.read().media)
    check_one_stream(got)
    switch = next(i for i, p in enumerate(got) if i and ids_of(p)[3])
    lost = [got[switch - 1], got[switch + 1]]  # one from each side of the switch
    forwarder.on_nack(viewer.track, [p.sequence_number for p in lost])
    resent = viewer.read().rtx
    assert [seq for seq, _ in resent] == [p.sequence_number for p in lost]
    for (_, copy), first in zip(resent, lost, strict=True):
        assert copy.payload == first.payload  # ids and all, as first sent
        assert copy.timestamp == first.timestamp


def test_the_descriptor_parser_finds_the_ids() -> None:
    long = bytes([0x90, 0xE0, 0x80 | 0x12, 0x34, 0x56, 0x80]) + bytes(4)
    assert vp8_ids(long) == (2, 0x1234, 4, 0x56)
    short = bytes([0x90, 0xE0, 0x12, 0x56, 0x40]) + bytes(4)
    assert vp8_ids(short) == (-2, 0x12, 3, 0x56)
    assert vp8_ids(bytes([0x90, 0x80, 0x81, 0x02, 0x9D])) == (2, 0x102, 0, 0)  # I only
    assert vp8_ids(bytes([0x90, 0x40, 0x07, 0x9D])) == (0, 0, 2, 0x07)  # L only
    assert vp8_ids(bytes([0x90, 0x20, 0x40, 0x9D])) is None  # T only: nothing to rewrite
    assert vp8_ids(bytes([0x10, 0x00, 0x9D, 0x01])) is None  # no X
    assert vp8_ids(bytes([0x90, 0x80])) is None  # cut short
