"""A relay: take a room's media from its origin (another worker or node) as a WHEP client.

To the local room a relay is just another publisher: :func:`open_relay` offers a
receive-only peer connection to the origin, puts :class:`ForwardingReceiver` s on its
transceivers (so packets reach the room's forwarders without decoding) and attaches
the session as the room's publisher with :meth:`SFU.attach_upstream`. Local viewers
are served by the normal forwarder: their NACKs are answered from its history, their
PLIs go up the hop under the room's keyframe throttle (the origin throttles again for
its publisher), and the relay's own receiver NACKs what the hop lost.

The same code crosses machines: the only thing between origin and relay is WHEP.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from aiortc import RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from .aiortc_hook import (
    ForwardingReceiver,
    PacketSink,
    ice_host_addresses,
    install_receiver,
    negotiated_codecs,
)
from .errors import BadOffer
from .room import Room
from .session import MediaSession
from .sfu import SFU, _close_pc

logger = logging.getLogger(__name__)

# Sends the relay's SDP offer to the origin; returns the SDP answer.
Subscribe = Callable[[str], Awaitable[str]]

# H.264 formats the relay offers beside aiortc's own (42001f/42e01f, mode 1), so the
# origin answers with its room's exact format whatever profile its publisher sends
# (media/sdp.py's plan_watch): the relayed room must carry that format for its viewers.
EXTRA_H264 = tuple(
    (profile, mode)
    for profile in ("42e01f", "4d001f", "640c1f", "64001f", "f4001f")
    for mode in (1, 0)
    if (profile, mode) != ("42e01f", 1)
)
_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb")


def offer_every_h264(offer: str) -> tuple[str, set[int]]:
    """Add the :data:`EXTRA_H264` formats to an offer's video section; return it and their PTs."""
    used = {int(pt) for pt in re.findall(r"^a=rtpmap:(\d+) ", offer, re.M)}
    free = [pt for pt in range(96, 128) if pt not in used]
    lines = offer.split("\r\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("m=video "))
    except StopIteration:
        return offer, set()
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    while end > start and lines[end - 1] == "":
        end -= 1
    added: list[str] = []
    pts: set[int] = set()
    for (profile, mode), pt in zip(EXTRA_H264, free):
        pts.add(pt)
        added += [f"a=rtpmap:{pt} H264/90000"]
        added += [f"a=rtcp-fb:{pt} {fb}" for fb in _FEEDBACK]
        added += [f"a=fmtp:{pt} level-asymmetry-allowed=1;packetization-mode={mode};"
                  f"profile-level-id={profile}"]
    lines[start] += "".join(f" {pt}" for pt in sorted(pts))
    lines[end:end] = added
    return "\r\n".join(lines), pts


def _answered_video(answer: str, extra: set[int]) -> RTCRtpCodecParameters | None:
    """Return the answer's video codec if it is one of the formats aiortc does not know."""
    description = aiortc_sdp.SessionDescription.parse(answer)
    for media in description.media:
        if media.kind == "video" and media.rtp.codecs:
            codec = media.rtp.codecs[0]
            return codec if codec.payloadType in extra else None
    return None


class LateSink:
    """Hold a receiver's packets' destination until the answer has named the codec."""

    def __init__(self) -> None:
        self.target: PacketSink | None = None
        self._started: ForwardingReceiver | None = None

    def attach(self, target: PacketSink) -> None:
        """Send everything to `target` from now on."""
        self.target = target
        if self._started is not None:
            target.on_receiver_started(self._started)

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        if self.target is not None:
            self.target.on_rtp(packet, codec)

    def on_sender_report(self, packet: RtcpSrPacket) -> None:
        if self.target is not None:
            self.target.on_sender_report(packet)

    def on_receiver_started(self, receiver: ForwardingReceiver) -> None:
        if self.target is None:
            self._started = receiver
        else:
            self.target.on_receiver_started(receiver)

    def on_receiver_ended(self, receiver: ForwardingReceiver) -> None:
        if self.target is not None:
            self.target.on_receiver_ended(receiver)

    def restart(self) -> None:
        if self.target is not None:
            self.target.restart()


async def open_relay(sfu: SFU, room_id: str, origin: str, subscribe: Subscribe) -> MediaSession:
    """Subscribe to `room_id` at its origin and feed the local room; return the upstream session.

    `origin` names the origin (for logs and the session's identity). Raises
    :class:`BadOffer` if the origin's answer cannot be applied, or what `subscribe` raises.
    """
    pc = sfu.new_peer_connection()
    sinks = {"video": LateSink(), "audio": LateSink()}
    transceivers = {kind: pc.addTransceiver(kind, direction="recvonly") for kind in sinks}
    for kind, transceiver in transceivers.items():
        install_receiver(transceiver, sinks[kind])
    session = MediaSession(room_id, "publisher", f"relay:{origin}", pc)
    try:
        with ice_host_addresses(sfu.settings.ice_host_addresses):
            await pc.setLocalDescription(await pc.createOffer())
        offer, extra = offer_every_h264(pc.localDescription.sdp)
        answer = await subscribe(offer)
        try:
            chosen = _answered_video(answer, extra)
            with negotiated_codecs({"video": chosen} if chosen is not None else {}):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except Exception as exc:  # aiortc reports a bad answer with whatever it raises
            raise BadOffer(f"the origin's answer was refused: {exc or type(exc).__name__}") from exc
        codecs = {kind: t._codecs[0] for kind, t in transceivers.items() if t._codecs}
        if "video" not in codecs:
            raise BadOffer("the origin answered without video")
        room: Room = sfu.attach_upstream(session, codecs["video"])
    except BaseException:
        session.closed = True
        await _close_pc(pc)
        raise
    for kind, codec in codecs.items():
        sinks[kind].attach(room.forwarder(kind, codec))
    logger.info("relay of room %s from %s: %s", room_id, origin, session.id)
    return session
