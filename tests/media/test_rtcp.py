"""RTCP the SFU sends: sender reports to viewers, receiver reports and REMB to publishers."""

from __future__ import annotations

import pytest
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)

from .peers import publish, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(60)


def _capture_rtcp(pc, into: list) -> None:  # type: ignore[no-untyped-def]
    """Record every RTCP packet a client peer receives (then handle it as usual)."""
    dtls = pc.getTransceivers()[0].receiver.transport
    original = dtls._handle_rtcp_data

    async def capture(data: bytes) -> None:
        into.extend(RtcpPacket.parse(data))
        await original(data)

    dtls._handle_rtcp_data = capture


async def test_sender_reports_to_viewers_and_receiver_reports_with_remb_to_publisher() -> None:
    async with running_sfu(remb_bitrate_bps=700_000) as sfu:
        publisher, _ = await publish(sfu, "r")
        to_publisher: list = []
        _capture_rtcp(publisher, to_publisher)
        viewer, _ = await watch(sfu, "r")
        to_viewer: list = []
        _capture_rtcp(viewer.pc, to_viewer)
        try:
            senders = {t.kind: t.sender._ssrc for t in publisher.getTransceivers()}

            def reports_for(ssrc: int) -> list[RtcpSrPacket]:
                return [p for p in to_viewer if isinstance(p, RtcpSrPacket) and p.ssrc == ssrc]

            viewer_ssrcs = {t.kind: t.receiver._RTCRtpReceiver__remote_streams
                            for t in viewer.pc.getTransceivers()}
            await wait_for(lambda: all(viewer_ssrcs.values()), timeout=10)
            video_ssrc = next(iter(viewer_ssrcs["video"]))
            audio_ssrc = next(iter(viewer_ssrcs["audio"]))
            await wait_for(lambda: len(reports_for(video_ssrc)) >= 2
                           and reports_for(audio_ssrc), timeout=10)
            first, second = reports_for(video_ssrc)[:2]
            assert second.sender_info.ntp_timestamp > first.sender_info.ntp_timestamp
            # The SR's RTP time advances with its NTP time at the 90 kHz video clock.
            ntp_seconds = (second.sender_info.ntp_timestamp
                           - first.sender_info.ntp_timestamp) / (1 << 32)
            rtp_seconds = ((second.sender_info.rtp_timestamp
                            - first.sender_info.rtp_timestamp) & 0xFFFFFFFF) / 90000
            assert abs(ntp_seconds - rtp_seconds) < 0.1
            assert second.sender_info.packet_count > 0

            await wait_for(lambda: any(isinstance(p, RtcpRrPacket) for p in to_publisher), 10)
            rr = [p for p in to_publisher if isinstance(p, RtcpRrPacket)]
            assert {r.ssrc for p in rr for r in p.reports} >= {senders["video"]}
            remb = [unpack_remb_fci(p.fci) for p in to_publisher
                    if isinstance(p, RtcpPsfbPacket) and p.fmt == RTCP_PSFB_APP]
            assert remb and all(bitrate == 700_000 for bitrate, _ in remb)
            assert all(ssrcs == [senders["video"]] for _, ssrcs in remb)
        finally:
            await viewer.close()
            await publisher.close()
