"""The hook into aiortc itself: version pin, ICE host addresses, receiver and sender."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from media.aiortc_hook import (
    ForwardingReceiver,
    ForwardingSender,
    ice_host_addresses,
    install_receiver,
    install_sender,
)

from .peers import accept, local_offer, new_pc, publish, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(60)


def test_import_fails_loudly_on_another_aiortc_version() -> None:
    code = "import aiortc; aiortc.__version__ = '1.17.0'; import media.aiortc_hook"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "aiortc 1.16.x internals, found aiortc 1.17.0" in result.stderr


def _candidate_addresses(sdp: str) -> set[str]:
    return {line.split()[4] for line in sdp.splitlines() if line.startswith("a=candidate:")}


async def test_host_addresses_apply_inside_the_context_only() -> None:
    inside, outside = new_pc(), new_pc()
    for pc in (inside, outside):
        pc.addTransceiver("video", direction="recvonly")
    try:
        assert _candidate_addresses(await local_offer(inside)) == {"127.0.0.1"}
        await outside.setLocalDescription(await outside.createOffer())
        assert "127.0.0.1" not in _candidate_addresses(outside.localDescription.sdp)
    finally:
        await inside.close()
        await outside.close()


async def test_sfu_answers_with_configured_host_addresses_only() -> None:
    async with running_sfu() as sfu:
        pc = new_pc()
        pc.addTransceiver("video", direction="sendonly")
        session = await sfu.publish("r", await local_offer(pc), "seller")
        assert _candidate_addresses(session.answer_sdp) == {"127.0.0.1"}
        assert "stun" not in session.answer_sdp.lower()
        await pc.close()


class RecordingSink:
    """A PacketSink that keeps what the hooked receiver hands over."""

    def __init__(self) -> None:
        self.packets: list[tuple[RtpPacket, RTCRtpCodecParameters]] = []
        self.reports: list[RtcpSrPacket] = []
        self.started: list[ForwardingReceiver] = []
        self.ended: list[ForwardingReceiver] = []

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        self.packets.append((packet, codec))

    def on_sender_report(self, packet: RtcpSrPacket) -> None:
        self.reports.append(packet)

    def on_receiver_started(self, receiver: ForwardingReceiver) -> None:
        self.started.append(receiver)

    def on_receiver_ended(self, receiver: ForwardingReceiver) -> None:
        self.ended.append(receiver)


class RecordingFeedback:
    """A FeedbackHandler that keeps the viewer's feedback."""

    def __init__(self) -> None:
        self.started: list[ForwardingSender] = []
        self.nacks: list[list[int]] = []
        self.keyframe_requests = 0

    def on_sender_started(self, sender: ForwardingSender) -> None:
        self.started.append(sender)

    def on_sender_stopped(self, sender: ForwardingSender) -> None:
        pass

    def on_nack(self, sender: ForwardingSender, lost: list[int]) -> None:
        self.nacks.append(lost)

    def on_keyframe_request(self, sender: ForwardingSender) -> None:
        self.keyframe_requests += 1

    def on_receiver_report(self, sender: ForwardingSender, report: object) -> None:
        pass


async def test_receiver_and_sender_hooks_pass_encoded_packets_without_decoding() -> None:
    """A hooked sender's egress reaches a hooked receiver as raw RTP, feedback flows back."""
    sending, receiving = new_pc(), new_pc()
    feedback, sink = RecordingFeedback(), RecordingSink()
    sender = install_sender(sending.addTransceiver("video", direction="sendonly"), feedback)
    receiver = install_receiver(receiving.addTransceiver("video", direction="recvonly"), sink)
    try:
        offer = await local_offer(receiving)
        await sending.setRemoteDescription(receiving.localDescription)
        answer = await sending.createAnswer()
        with ice_host_addresses(["127.0.0.1"]):
            await sending.setLocalDescription(answer)
        await accept(receiving, sending.localDescription.sdp)
        assert offer
        await wait_for(lambda: feedback.started and sink.started, timeout=10)
        assert sender.egress is not None and sender.payload_type is not None
        for seq in (100, 101, 103):  # 102 is "lost": the receiver must NACK it
            packet = RtpPacket(payload_type=sender.payload_type, sequence_number=seq,
                               timestamp=9000, ssrc=sender._ssrc, payload=b"\x10\x00\x9d\x01*")
            sender.egress.sendto(sender.egress.srtp.protect(packet.serialize()), sender.egress.addr)
        await wait_for(lambda: len(sink.packets) == 3 and feedback.nacks, timeout=5)
        assert [p.sequence_number for p, _ in sink.packets] == [100, 101, 103]
        assert sink.packets[0][1].name == "VP8"
        assert sink.packets[0][0].payload == b"\x10\x00\x9d\x01*"
        assert feedback.nacks[-1] == [102]
        assert receiver.send_pli()
        await wait_for(lambda: feedback.keyframe_requests == 1, timeout=5)
    finally:
        await sending.close()
        await receiving.close()
    assert sink.ended == [receiver]


async def test_sfu_viewer_transceivers_use_the_forwarding_sender() -> None:
    async with running_sfu() as sfu:
        publisher, publisher_id = await publish(sfu, "r")
        viewer, viewer_id = await watch(sfu, "r")
        try:
            kinds = {t.kind: t for t in sfu.sessions[viewer_id].pc.getTransceivers()}
            assert all(isinstance(t.sender, ForwardingSender) for t in kinds.values())
            kinds = {t.kind: t for t in sfu.sessions[publisher_id].pc.getTransceivers()}
            assert all(isinstance(t.receiver, ForwardingReceiver) for t in kinds.values())
            await wait_for(lambda: len(viewer.video_frames) > 3, timeout=10)
        finally:
            await viewer.close()
            await publisher.close()
            await asyncio.sleep(0)
