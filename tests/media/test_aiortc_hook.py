"""The hook into aiortc itself: version pin, ICE host addresses, receiver and sender."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator

import aioice.ice
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket, RtpPacket

from media.aiortc_hook import (
    ForwardingReceiver,
    ForwardingSender,
    SrtpIngress,
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


@contextlib.asynccontextmanager
async def hooked_pair() -> AsyncIterator[
    tuple[ForwardingSender, ForwardingReceiver, RecordingSink]
]:
    """Connect a hooked video sender to a hooked receiver; yield both and the sink."""
    sending, receiving = new_pc(), new_pc()
    feedback, sink = RecordingFeedback(), RecordingSink()
    sender = install_sender(sending.addTransceiver("video", direction="sendonly"), feedback)
    receiver = install_receiver(receiving.addTransceiver("video", direction="recvonly"), sink)
    try:
        await local_offer(receiving)
        await sending.setRemoteDescription(receiving.localDescription)
        answer = await sending.createAnswer()
        with ice_host_addresses(["127.0.0.1"]):
            await sending.setLocalDescription(answer)
        await accept(receiving, sending.localDescription.sdp)
        await wait_for(lambda: feedback.started and sink.started, timeout=10)
        yield sender, receiver, sink
    finally:
        await sending.close()
        await receiving.close()


def _protected(sender: ForwardingSender, packet: RtpPacket) -> bytes:
    assert sender.egress is not None and sender.egress.srtp is not None
    return sender.egress.srtp.protect(packet.serialize())


async def test_srtp_ingress_delivers_media_from_the_datagram_callback() -> None:
    """SRTP media reaches the sink inside aioice's callback, header fields as aiortc parses them."""
    async with hooked_pair() as (sender, receiver, sink):
        connection = receiver.transport.transport._connection
        ingress = connection._shopstream_ingress
        assert isinstance(ingress, SrtpIngress) and ingress.dtls is receiver.transport
        packet = RtpPacket(payload_type=sender.payload_type or 0, marker=1, sequence_number=7,
                           timestamp=123456, ssrc=sender._ssrc, payload=b"\x10\x00frame")
        packet.csrc = [11, 12]
        packet.padding_size = 3
        packet.extensions.mid = "0"  # a header extension the ingress must skip
        receiving_dtls = receiver.transport
        rx_before = receiving_dtls._RTCDtlsTransport__rx_packets
        connection.data_received(_protected(sender, packet), 1)
        # No await in between: aiortc's own path would still hold it in its queue.
        assert len(sink.packets) == 1
        got, codec = sink.packets[0]
        assert (got.sequence_number, got.timestamp, got.marker, got.ssrc, got.payload) == (
            7, 123456, 1, sender._ssrc, b"\x10\x00frame")
        assert codec.name == "VP8"
        assert receiving_dtls._RTCDtlsTransport__rx_packets == rx_before + 1
        assert connection._queue.empty()


async def test_srtp_ingress_drops_replays_and_leaves_the_rest_to_aiortc() -> None:
    async with hooked_pair() as (sender, receiver, sink):
        connection = receiver.transport.transport._connection
        pt = sender.payload_type or 0
        first = _protected(sender, RtpPacket(payload_type=pt, sequence_number=1, timestamp=1,
                                             ssrc=sender._ssrc, payload=b"\x10a"))
        connection.data_received(first, 1)
        connection.data_received(first, 1)  # a replay: libsrtp refuses it
        tampered = bytearray(_protected(sender, RtpPacket(
            payload_type=pt, sequence_number=2, timestamp=1, ssrc=sender._ssrc, payload=b"\x10b")))
        tampered[-1] ^= 1
        connection.data_received(bytes(tampered), 1)
        assert [p.payload for p, _ in sink.packets] == [b"\x10a"]
        assert connection._queue.empty()

        # An unknown payload type is left to aiortc (which discards it); while it waits in
        # the queue, later media waits behind it, so the order is kept.
        table = receiver.transport._rtp_router.payload_type_table
        unused = next(p for p in range(96, 128) if p not in table)  # not even RTX
        unknown = _protected(sender, RtpPacket(payload_type=unused, sequence_number=3,
                                               timestamp=1, ssrc=sender._ssrc, payload=b"x"))
        later = _protected(sender, RtpPacket(payload_type=pt, sequence_number=4, timestamp=1,
                                             ssrc=sender._ssrc, payload=b"\x10c"))
        connection.data_received(unknown, 1)
        connection.data_received(later, 1)
        assert connection._queue.qsize() == 2 and len(sink.packets) == 1
        await wait_for(lambda: len(sink.packets) == 2, timeout=5)
        assert [p.payload for p, _ in sink.packets] == [b"\x10a", b"\x10c"]

        # RTCP keeps aiortc's path: the sender report still reaches the sink.
        assert sender.egress is not None
        report = RtcpSrPacket(ssrc=sender._ssrc, sender_info=RtcpSenderInfo(
            ntp_timestamp=1 << 32, rtp_timestamp=5, packet_count=4, octet_count=9))
        sender.egress.send_rtcp(bytes(report))
        await wait_for(lambda: sink.reports, timeout=5)
        assert sink.reports[0].sender_info.rtp_timestamp == 5


async def test_srtp_ingress_is_removed_when_the_receiver_stops() -> None:
    async with hooked_pair() as (_, receiver, _):
        connection = receiver.transport.transport._connection
        assert connection._shopstream_ingress is not None
        await receiver.stop()
        assert connection._shopstream_ingress is None


async def test_viewer_egress_sends_on_a_connected_socket_and_keeps_ice_consent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A viewer's socket is connected to its peer; consent checks still pass over it."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        viewer, viewer_id = await watch(sfu, "r")
        try:
            await wait_for(lambda: len(viewer.video_frames) > 3, timeout=10)
            egress = sfu.rooms["r"].viewers[viewer_id].senders["video"].egress
            assert egress is not None
            assert egress.send.__self__.getpeername() == egress.addr
            session = sfu.sessions[viewer_id]
            connection = session.pc.getTransceivers()[0].sender.transport.transport._connection
            answered = connection._query_consent_task
            await asyncio.sleep(2.0)  # ten consent intervals: six failures would close it
            assert session.pc.connectionState == "connected"
            assert connection._query_consent_task is answered and not answered.done()
            frames = len(viewer.video_frames)
            await wait_for(lambda: len(viewer.video_frames) > frames + 10, timeout=5)
        finally:
            await viewer.close()
            await publisher.close()
