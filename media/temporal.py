"""VP8 temporal layers: a rung below a layer's full frame rate, for viewers who need less.

A VP8 encoder with temporal layers (Chromium's simulcast VP8 sends three) marks each
frame with a temporal layer id (TID, RFC 7741 4.2): TID 0 frames reference only TID 0
frames, TID 1 frames TID <= 1, and so on, so dropping every frame above a TID leaves a
decodable stream at a lower frame rate (three layers: TID 0 is a quarter of the rate,
TID <= 1 half). A :class:`TemporalRung` is such a thinned copy of one simulcast layer,
made once per packet for all of its viewers (the per-viewer fan-out is a plain
:class:`~media.forwarder.TrackForwarder`, so a thinned viewer costs what any viewer
costs): sequence numbers are renumbered without the dropped packets' gaps, and picture
ids so that the forwarded pictures count up by one; TL0PICIDX needs no change (every
TID 0 frame is kept). To the per-viewer layer machinery (:mod:`media.layers`) a rung is
one more layer, ranked just below its own, under the key ``(cap + 1) << 32 | ssrc``
(never a real SSRC); only the lowest spatial layer's rungs are offered, as the lowest
rungs of the ladder, to ``auto`` viewers whose estimate is below that layer's rate.
Switches to and from a rung happen at keyframes like any other, with the viewer's
numbers continuing across them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from .codecs import vp8_temporal, write_vp8_ids
from .forwarder import TrackForwarder
from .simulcast import Layer

if TYPE_CHECKING:
    from .layers import SimulcastForwarder

SSRC_MASK = 0xFFFFFFFF
GAP_MEMORY = 512  # publisher sequence numbers still missing whose renumbering is kept
PICTURE_MEMORY = 16  # recent pictures whose new picture ids are kept (for late packets)


def rung_key(ssrc: int, cap: int) -> int:
    """Return the layer key of ``ssrc``'s rung that keeps TIDs up to ``cap``."""
    return (cap + 1) << 32 | ssrc


def real_ssrc(key: int) -> int:
    """Return the publisher SSRC behind a layer key (a rung's or a layer's own)."""
    return key & SSRC_MASK


def is_rung(layer: Layer) -> bool:
    """Return whether ``layer`` is a temporal rung rather than a publisher encoding."""
    return layer.ssrc > SSRC_MASK


class TemporalRung:
    """One layer's frames with TID <= ``cap``, renumbered into a stream of their own."""

    def __init__(self, forwarder: TrackForwarder, layer: Layer, parent: Layer, cap: int) -> None:
        self.forwarder = forwarder
        self.layer = layer
        self.parent = parent
        self.cap = cap
        self.dropped = 0  # packets dropped so far: the renumbering offset
        self.last_seq: int | None = None
        self._gaps: dict[int, int] = {}  # missing publisher seq -> its offset
        self._picture_in: int | None = None
        self._picture_out = 0
        self._pictures: dict[int, int] = {}  # recent publisher picture id -> ours

    def rewrite(self, packet: RtpPacket, tid: int, picture_id: int, id_bytes: int) -> RtpPacket | None:
        """Return the packet as this rung forwards it, or None if it is dropped."""
        seq = packet.sequence_number
        last = self.last_seq
        if last is None or ((seq - last) & 0xFFFF) < 0x8000 and seq != last:
            if last is not None:  # packets skipped here may still come (retransmitted)
                if len(self._gaps) > GAP_MEMORY:
                    self._gaps.clear()
                for missing in range(1, min((seq - last) & 0xFFFF, GAP_MEMORY)):
                    self._gaps[(last + missing) & 0xFFFF] = self.dropped
            self.last_seq = seq
            if tid > self.cap:
                self.dropped += 1
                return None
            offset = self.dropped
        else:  # late: only a packet whose place was kept has a number
            found = self._gaps.pop(seq, None)
            if found is None or tid > self.cap:
                return None
            offset = found
        payload = packet.payload
        if id_bytes:
            patched = bytearray(payload)
            write_vp8_ids(patched, 0, 2 if id_bytes == 2 else -2, self._picture(picture_id, id_bytes), 0, 0)
            payload = bytes(patched)
        return RtpPacket(payload_type=packet.payload_type, marker=packet.marker,
                         sequence_number=(seq - offset) & 0xFFFF, timestamp=packet.timestamp,
                         ssrc=packet.ssrc, payload=payload)

    def _picture(self, picture_id: int, id_bytes: int) -> int:
        """Return our picture id for a kept picture: consecutive over the kept ones."""
        if picture_id in self._pictures:
            return self._pictures[picture_id]
        if self._picture_in is None:
            self._picture_out = picture_id
        else:
            self._picture_out = (self._picture_out + 1) & (0x7FFF if id_bytes == 2 else 0x7F)
        self._picture_in = picture_id
        if len(self._pictures) >= PICTURE_MEMORY:
            del self._pictures[next(iter(self._pictures))]
        self._pictures[picture_id] = self._picture_out
        return self._picture_out


class TemporalLayers:
    """The rungs of a simulcast track's VP8 layers, made as their TIDs show up."""

    def __init__(self, owner: SimulcastForwarder) -> None:
        self.owner = owner
        self.rungs: dict[int, list[TemporalRung]] = {}  # publisher SSRC -> its rungs

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Feed one publisher packet of any layer to that layer's rungs."""
        found = vp8_temporal(packet.payload)
        if found is None:
            return
        tid, picture_id, id_bytes = found
        rungs = self.rungs.get(packet.ssrc)
        if rungs is None or tid > len(rungs):
            rungs = self._add_rungs(packet.ssrc, tid, codec)
        now = time.monotonic()
        for rung in rungs:
            out = rung.rewrite(packet, tid, picture_id, id_bytes)
            if out is not None:
                layer = rung.layer
                layer.window_bytes += len(out.payload)
                layer.last_packet = now
                layer.pixels = rung.parent.pixels  # ranks it with its layer's size
                rung.forwarder.on_rtp(out, codec)

    def _add_rungs(self, ssrc: int, tid: int, codec: RTCRtpCodecParameters) -> list[TemporalRung]:
        """Make the rungs for caps below ``tid`` that ``ssrc`` does not have yet."""
        owner = self.owner
        rungs = self.rungs.setdefault(ssrc, [])
        parent = owner.selector.layers.get(ssrc) if owner.selector is not None else None
        if parent is None:
            return rungs
        for cap in range(len(rungs), tid):
            key = rung_key(ssrc, cap)
            forwarder = TrackForwarder(
                "video", codec, lambda: owner._keyframe_needed(ssrc), owner._publisher_media,
                gop_cache_bytes=owner._gop_cache_bytes,
            )
            forwarder.receiver = owner.receiver
            forwarder.vp8_ids = True  # viewers switch to and from it: their ids continue
            owner.layers[key] = forwarder
            layer = Layer(parent.rid, key, max_tid=cap)
            owner.selector.layers[key] = layer  # type: ignore[union-attr]
            rungs.append(TemporalRung(forwarder, layer, parent, cap))
        return rungs

    def clear(self) -> None:
        """Forget every rung (a new publisher stream: new layers, new SSRCs)."""
        self.rungs.clear()
