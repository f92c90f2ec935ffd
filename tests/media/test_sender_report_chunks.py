"""A round of sender reports goes out a chunk of viewers per event-loop turn, so it never
holds the loop for all viewers at once; each viewer still gets exactly one report, and a
viewer that leaves mid-round gets none."""

from __future__ import annotations

import asyncio
import os
import struct
import types

import pylibsrtp
from aiortc.codecs import CODECS
from aiortc.rtp import RtpPacket

from media.forwarder import SENDER_REPORT_CHUNK, TrackForwarder, ViewerTrack


def _forwarder(viewers: int) -> tuple[TrackForwarder, list[tuple[int, bytes]]]:
    """A video forwarder with stand-in viewers (real libsrtp sessions) whose RTCP is captured."""
    codec = CODECS["video"][0]
    forwarder = TrackForwarder("video", codec, lambda: None, lambda forwarder: None)
    reports: list[tuple[int, bytes]] = []
    for index in range(viewers):
        session = pylibsrtp.Session(pylibsrtp.Policy(
            key=os.urandom(44), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        ssrc = 1000 + index
        egress = types.SimpleNamespace(
            srtp=session, srtp_handle=session._srtp[0], send=lambda data: None,
            send_rtcp=lambda data, ssrc=ssrc: reports.append((ssrc, bytes(data))))
        sender = types.SimpleNamespace(egress=egress, _ssrc=ssrc, payload_type=96, rtx_payload_type=97,
                                       _rtx_ssrc=2000 + index, cname="viewer")
        forwarder.add_viewer(ViewerTrack(sender))  # type: ignore[arg-type]
    keyframe = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A]) + os.urandom(200)  # VP8: a keyframe's start
    forwarder.on_rtp(RtpPacket(payload_type=96, sequence_number=1, timestamp=3000, ssrc=5, payload=keyframe), codec)
    assert len(forwarder.viewers) == viewers
    return forwarder, reports


def _reported_ssrcs(reports: list[tuple[int, bytes]]) -> list[int]:
    """The SSRC each sender report (RTCP type 200) names."""
    ssrcs = []
    for _, data in reports:
        _, packet_type, _, ssrc = struct.unpack_from("!BBHI", data)
        assert packet_type == 200
        ssrcs.append(ssrc)
    return ssrcs


async def _turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_round_goes_out_a_chunk_per_loop_turn_and_reaches_every_viewer_once() -> None:
    viewers = 3 * SENDER_REPORT_CHUNK + 5
    forwarder, reports = _forwarder(viewers)
    forwarder.send_sender_reports()
    assert len(reports) == SENDER_REPORT_CHUNK  # the rest waits for later turns of the loop
    await _turns(1)
    assert len(reports) == 2 * SENDER_REPORT_CHUNK
    await _turns(5)
    assert sorted(_reported_ssrcs(reports)) == [1000 + i for i in range(viewers)]


async def test_a_viewer_that_leaves_mid_round_gets_no_report() -> None:
    forwarder, reports = _forwarder(2 * SENDER_REPORT_CHUNK)
    leaving = forwarder.viewers[-1]
    forwarder.send_sender_reports()
    forwarder.remove_viewer(leaving)
    await _turns(3)
    ssrcs = _reported_ssrcs(reports)
    assert leaving.ssrc not in ssrcs
    assert len(ssrcs) == 2 * SENDER_REPORT_CHUNK - 1


async def test_a_small_room_is_reported_at_once() -> None:
    forwarder, reports = _forwarder(SENDER_REPORT_CHUNK)
    forwarder.send_sender_reports()
    assert sorted(_reported_ssrcs(reports)) == [1000 + i for i in range(SENDER_REPORT_CHUNK)]
