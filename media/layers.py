"""Per-viewer simulcast layers: one forwarder per layer, each viewer on one layer at a time.

A simulcast publisher's layers each get their own :class:`TrackForwarder` (history, GOP
cache, sender reports), so a layer's packet costs what a single-layer room's packet
costs, times the viewers on that layer. Which layer a viewer gets is the business of a
small policy object per viewer (:class:`LayerPolicy`); this module only asks it, every
``REVIEW_SECONDS``, and moves the viewer when the answer changes. A move waits for the
target layer's keyframe (the target layer is asked for one, throttled per layer) while
the viewer keeps getting the old layer, and the viewer's SSRC, sequence numbers and
timestamps continue across it (see ``TrackForwarder._take_over``): it sees one stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

from .aiortc_hook import ForwardingReceiver
from .codecs import vp8_keyframe_size
from .estimator import BandwidthEstimator
from .forwarder import TrackCounters, TrackForwarder, ViewerTrack, _newer
from .probe import Prober
from .simulcast import Layer, LayerSelector
from .temporal import TemporalLayers, is_rung, real_ssrc

logger = logging.getLogger(__name__)

REVIEW_SECONDS = 0.5
QUALITIES = ("auto", "high", "low")
# An auto viewer drops to a temporal rung only when its estimate is below this share of
# the lowest encoding's rate (repeated loss there), not when it merely dips under it.
RUNG_BELOW = 0.7
# Without a cut, an auto viewer stays on a layer whose rate rose past its estimate by up to
# this factor (a publisher's rates move); beyond it (a layer ramping up at start-up to
# twice what the probe verified) it moves down before the link loses packets.
OUTGROWN = 1.2
SETTLE_SECONDS = 2.0
# A layer is probed for only once it has been sending this long: a publisher starts its
# layers low and ramps them up (Chromium: h from 190 to 350 kbit/s in ~5 s), and a probe
# that passed at the start rate let a 300 kbit/s viewer onto a layer that outgrew its link.
RAMP_SECONDS = 6.0  # a receiver report this soon after a switch may tell of the layer left


@dataclass
class LayerPolicy:
    """Choose one viewer's layer: pinned high or low, or (auto) the best its estimate carries."""

    quality: str = "auto"
    estimator: BandwidthEstimator = field(default_factory=BandwidthEstimator)
    _cuts: int = 0  # the estimator's cuts at the last choice

    @property
    def estimate_bps(self) -> float | None:
        """Return the viewer's bandwidth estimate (bit/s); None: nothing limits it."""
        return self.estimator.value(time.monotonic())

    def choose(self, ranked: list[Layer], current: Layer | None = None) -> Layer:
        """Return the layer to forward among ``ranked`` (lowest first, never empty).

        An auto viewer on ``current`` moves above it only after a passed probe; one not
        measured yet (estimate 0) starts on the lowest encoding at its full frame rate.
        """
        lowest = next((layer for layer in ranked if not is_rung(layer)), ranked[0])
        if self.quality == "low":  # the lowest encoding at its full frame rate
            return lowest
        estimate = self.estimate_bps
        if self.quality == "high" or estimate is None:
            return ranked[-1]
        if not estimate:
            return lowest
        if estimate >= RUNG_BELOW * (lowest.avg_bps or lowest.peak_bps):
            # Near the lowest encoding's rate: its full frame rate, not a temporal rung (an
            # estimate capped by what the viewer gets dips under its layer's rate at times).
            ranked = [layer for layer in ranked if not is_rung(layer)]
        fitting = [layer for layer in ranked if (layer.avg_bps or layer.peak_bps) <= estimate]
        chosen = fitting[-1] if fitting else ranked[0]
        if current in ranked:
            if ranked.index(chosen) > ranked.index(current) and not self.estimator.may_rise():
                return current  # type: ignore[return-value]
            if (ranked.index(chosen) < ranked.index(current)
                    and self.estimator.cuts == self._cuts
                    and (current.avg_bps or current.peak_bps) <= estimate * OUTGROWN):
                # Down when loss, delay or a REMB cut the estimate since the last choice,
                # or the layer outgrew it: a layer's rate moving a little is no cue.
                return current  # type: ignore[return-value]
            self._cuts = self.estimator.cuts
        return chosen


class SimulcastForwarder:
    """Fan a simulcast track out with a layer per viewer; a ``TrackForwarder`` to the room."""

    kind = "video"
    is_video = True

    def __init__(
        self,
        codec: RTCRtpCodecParameters,
        on_keyframe_needed: Callable[[int], None],
        on_publisher_media: Callable[[TrackForwarder], None],
        *,
        gop_cache_bytes: int = 0,
    ) -> None:
        self.codec = codec
        self._keyframe_needed = on_keyframe_needed
        self._publisher_media = on_publisher_media
        self._gop_cache_bytes = gop_cache_bytes
        self.receiver: ForwardingReceiver | None = None
        self.selector: LayerSelector | None = None
        self.layers: dict[int, TrackForwarder] = {}
        self.policies: dict[ViewerTrack, LayerPolicy] = {}
        self.unplaced: list[ViewerTrack] = []  # viewers waiting for the first layer
        self.retired = TrackCounters()
        self._retired_in = [0, 0, 0]  # packets, bytes, NACKs missed of old streams' layers
        self._last_review = 0.0
        self.switches = 0
        self._moved_at: dict[ViewerTrack, float] = {}  # when each viewer's last switch was asked
        self.prober = Prober(self.review)
        self._first_seen: dict[int, float] = {}  # when each layer was first there to probe for
        self.temporal = TemporalLayers(self)  # VP8 temporal rungs (media/temporal.py)

    # --- publisher side (PacketSink) ----------------------------------------------------

    def on_receiver_started(self, receiver: ForwardingReceiver) -> None:
        """Take the layers of a newly connected publisher."""
        self.receiver = receiver
        self.selector = receiver.layers

    def on_receiver_ended(self, receiver: ForwardingReceiver) -> None:
        """Forget a publisher that left."""
        if self.receiver is receiver:
            self.receiver = None

    def on_sender_report(self, packet: RtcpSrPacket) -> None:
        """Hand a layer's sender report to its forwarder (and its temporal rungs')."""
        for key, layer in self.layers.items():
            if real_ssrc(key) == packet.ssrc:
                layer.on_sender_report(packet)

    def on_rtp(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Forward one packet of any layer to the viewers on that layer."""
        layer = self.layers.get(packet.ssrc)
        if layer is None:
            layer = self._new_layer(packet.ssrc)
        if self.codec.name == "VP8" and self.selector is not None:
            measured = self.selector.layers.get(packet.ssrc)
            if measured is not None:
                size = vp8_keyframe_size(packet.payload)
                if size is not None:
                    measured.pixels = size[0] * size[1]
        layer.on_rtp(packet, codec)
        if self.codec.name == "VP8":
            self.temporal.on_packet(packet, codec)
        now = time.monotonic()
        if now - self._last_review >= REVIEW_SECONDS:
            self._last_review = now
            self.review(now)

    def _new_layer(self, ssrc: int) -> TrackForwarder:
        layer = TrackForwarder(
            "video", self.codec, lambda: self._keyframe_needed(ssrc), self._publisher_media,
            gop_cache_bytes=self._gop_cache_bytes,
        )
        layer.receiver = self.receiver
        layer.vp8_ids = self.codec.name == "VP8"  # viewers switch: their ids continue
        self.layers[ssrc] = layer
        unplaced, self.unplaced = self.unplaced, []
        for viewer in unplaced:  # the first layer: start there, move when others rank
            layer.add_viewer(viewer)
        return layer

    # --- the layer choice -----------------------------------------------------------------

    def ranked(self, now: float | None = None) -> list[Layer]:
        """Return the layers sending now that have a forwarder, lowest quality first."""
        if self.selector is None:
            return []
        now = now if now is not None else _loop_time()
        ranked = [layer for layer in self.selector.ranked(now) if layer.ssrc in self.layers]
        lowest = next((layer.ssrc for layer in ranked if not is_rung(layer)), None)
        # Temporal rungs only below the lowest encoding: fewer frames before fewer pixels.
        return [layer for layer in ranked if not is_rung(layer) or real_ssrc(layer.ssrc) == lowest]

    def review(self, now: float | None = None) -> None:
        """Ask every viewer's policy for its layer; start the switches that changed."""
        ranked = self.ranked(_loop_time())
        if not ranked:
            return
        now = time.monotonic()
        for viewer, policy in list(self.policies.items()):
            ssrc = self.ssrc_of(viewer)
            current = self.selector.layers.get(ssrc) if self.selector and ssrc else None
            # A switch under way is judged as if done: the layer it goes to ramping up a
            # little before its keyframe comes does not call it off (see LayerPolicy.choose).
            heading = self._heading(viewer) or current
            target = self.layers[policy.choose(ranked, heading).ssrc]
            self.move(viewer, target)
            if current in ranked and policy.quality == "auto":
                # Not only when a receiver report comes: a passed probe's switch done,
                # the next probe follows at once.
                self._probe(viewer, policy, current, ranked[ranked.index(current) + 1:], now)

    def move(self, viewer: ViewerTrack, target: TrackForwarder) -> None:
        """Switch ``viewer`` to ``target`` at its next keyframe (or cancel a switch)."""
        pending = viewer.next_layer
        if pending is target or (pending is None and viewer.layer is target):
            return
        if pending is not None:  # the choice changed again before the keyframe came
            if viewer in pending.waiting:
                pending.waiting.remove(viewer)
            viewer.next_layer = None
            if viewer.layer is target:
                return
        current = viewer.layer
        if current is None or current not in self.layers.values():
            return  # still unplaced: it starts on a layer when one exists
        if viewer in current.waiting:  # not started yet: start on the target instead
            current.waiting.remove(viewer)
            target.add_viewer(viewer)
            return
        self.switches += 1
        logger.debug("viewer SSRC %d: switch asked to layer %s", viewer.ssrc, self._rid_of_layer(target))
        self._moved_at[viewer] = time.monotonic()
        viewer.next_layer = target
        target.waiting.append(viewer)
        target._keyframe_needed()

    def request_keyframe(self, ssrc: int) -> None:
        """Ask for a keyframe of the layer ``ssrc`` (a viewer's PLI/FIR, throttled)."""
        self._keyframe_needed(real_ssrc(ssrc))

    def layer_of(self, viewer: ViewerTrack) -> TrackForwarder | None:
        """Return the forwarder a viewer is on now."""
        return viewer.layer if viewer.layer in self.layers.values() else None

    def rid_of(self, viewer: ViewerTrack) -> str | None:
        """Return the RID of the layer a viewer is on now."""
        return self._rid_of_layer(self.layer_of(viewer))

    def _rid_of_layer(self, layer: TrackForwarder | None) -> str | None:
        if layer is None or self.selector is None:
            return None
        for ssrc, forwarder in self.layers.items():
            if forwarder is layer:
                found = self.selector.layers.get(ssrc)
                return found.rid if found else None
        return None

    def ssrc_of(self, viewer: ViewerTrack) -> int | None:
        """Return the key of the layer a viewer is on now (its SSRC, or a temporal rung's)."""
        for ssrc, forwarder in self.layers.items():
            if forwarder is viewer.layer:
                return ssrc
        return None

    def on_receiver_report(self, viewer: ViewerTrack, loss: float, rtt: float | None = None,
                           lsr: int = 0) -> None:
        """Feed a viewer's reported loss (0-1) and round-trip time to its estimate.

        ``lsr`` names the sender report the round-trip time answers: that of a probe
        (media.probe) gives the probe's verdict. Start a probe when the estimate asks for
        one; move the viewer if its layer changes.
        """
        policy = self.policies.get(viewer)
        ssrc = self.ssrc_of(viewer)
        if policy is None or ssrc is None or self.selector is None:
            return
        ranked = self.ranked()
        current = self.selector.layers.get(ssrc)
        if current is None:
            return
        above = [layer for layer in ranked if ranked.index(layer) > ranked.index(current)] \
            if current in ranked else []
        if not above and len(ranked) < len(self.selector.rids):
            return  # the layers above are not sending (yet): nothing to probe or lift
        estimator = policy.estimator
        now = time.monotonic()
        probe = self.prober.probes.get(viewer)
        if probe is not None and lsr in probe.report_keys:
            rtt_for_loss = None  # the probe's own queue: judged here, not overuse of the layer
        else:
            rtt_for_loss = rtt
        before = estimator.estimate_bps
        self.prober.on_report(viewer, estimator, lsr, rtt, loss)
        current_bps = current.avg_bps or current.rate_bps
        estimator.on_loss(
            loss, now, current_bps,
            (above[0].avg_bps or above[0].peak_bps) if above else None, rtt_for_loss,
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("report from SSRC %d on %s/%s: loss %.3f rtt %s (min %s) estimate %s -> %s; "
                         "layers %s", viewer.ssrc, current.rid, current.max_tid, loss, rtt,
                         estimator.min_rtt, before, estimator.estimate_bps,
                         " ".join(f"{layer.rid}/{layer.max_tid}:{layer.avg_bps / 1000:.0f}k" for layer in ranked))
        lowest = next((layer for layer in ranked if not is_rung(layer)), None)
        if (lowest is not None and estimator.estimate_bps and not is_rung(current) and (
                current is not lowest or probe is not None
                or now - self._moved_at.get(viewer, -SETTLE_SECONDS) < SETTLE_SECONDS)):
            # Loss seen above the lowest encoding, under a probe's padding or just after a
            # switch says nothing against the lowest encoding itself: such a cut lands on
            # it, not on a temporal rung (only loss while settled there thins the frames).
            estimator.estimate_bps = max(estimator.estimate_bps, lowest.avg_bps or lowest.peak_bps)
        logger.debug("viewer SSRC %d on %s: loss %.3f, rtt %s, estimate %s, probe %s, layers %s",
                     viewer.ssrc, current.rid, loss, None if rtt is None else round(rtt, 3),
                     estimator.estimate_bps and round(estimator.estimate_bps),
                     estimator.probe_bps and round(estimator.probe_bps),
                     [(layer.rid, round(layer.avg_bps or layer.peak_bps)) for layer in ranked])
        self._probe(viewer, policy, current, above, now)
        self.review()

    def _probe(self, viewer: ViewerTrack, policy: LayerPolicy, current: Layer,
               above: list[Layer], now: float) -> None:
        """Start a probe towards the layer above ``current`` if ``viewer``'s estimate wants one."""
        estimator = policy.estimator
        # Only towards a layer that sends more (a temporal rung can rank above its own
        # encoding while the encoding ramps up: a probe "up" to it passes and changes nothing).
        above = [layer for layer in above if (layer.avg_bps or layer.peak_bps)
                 > (current.avg_bps or current.peak_bps)]
        if not above:
            return
        if now - self._first_seen.setdefault(above[0].ssrc, now) < RAMP_SECONDS:
            return  # a layer the publisher just started: its rate is still ramping up
        if (viewer in self.prober.probes or policy.quality != "auto"
                or viewer.next_layer is not None
                or not estimator.wants_probe(now, above[0].avg_bps or above[0].peak_bps)):
            return  # probing, pinned or switching: no probe now
        layer = self.layer_of(viewer)
        if layer is None or estimator.probe_bps is None:
            return
        if not self.prober.start(viewer, layer, estimator.probe_bps,
                                 current.avg_bps or current.rate_bps, estimator):
            estimator.on_probe(True, now)  # no RTX to pad with: try the layer itself

    def on_transport_feedback(self, viewer: ViewerTrack, fci: bytes) -> None:
        """Feed a viewer's transport-cc feedback to its delay-based detector.

        Over-use (a queue building on its link) fails a running probe at once, before
        the probe's own sender report is answered: no switch up into a queue.
        """
        policy = self.policies.get(viewer)
        twcc = viewer.twcc
        if policy is None or twcc is None:
            return
        try:
            overuse = twcc.on_feedback(fci)
        except ValueError as exc:
            logger.debug("unreadable transport-cc feedback from SSRC %d: %s", viewer.ssrc, exc)
            return
        if overuse:
            self.prober.fail(viewer, policy.estimator, time.monotonic())

    def on_remb(self, viewer: ViewerTrack, bitrate_bps: float) -> None:
        """Feed a viewer's REMB to its estimate."""
        policy = self.policies.get(viewer)
        if policy is not None:
            policy.estimator.on_remb(bitrate_bps, time.monotonic())

    def needed_bps(self, ceiling: int) -> int:
        """Return the REMB cap for the publisher: what the best layer any viewer needs takes.

        Layers above it would be sent for nobody. The cap stays at ``ceiling`` while any
        viewer wants (or may probe towards) the top layer: pinned high, estimated above
        it, or auto and not held back by loss or delay lately (a viewer starts low and
        probes up); or nothing is measured yet. Otherwise it covers the best layer any
        viewer is on, and for an auto viewer the encoding above its own: the one it probes
        towards and climbs to when its link lifts (not sent, it could not climb until the
        cut is ``LIMITED_SECONDS`` old), unless its estimate does not even cover its own.
        """
        ranked = self.ranked()
        if not ranked or not self.policies or len(ranked) < 2:
            return ceiling
        top = ranked[-1]
        best = 0
        above = 0
        now = time.monotonic()
        encodings = self._encodings()
        for viewer, policy in self.policies.items():
            estimate = policy.estimate_bps
            if (policy.quality == "high" or estimate is None
                    or estimate >= (top.avg_bps or top.peak_bps)
                    or (policy.quality == "auto" and not policy.estimator.limited(now))):
                return ceiling
            chosen = policy.choose(ranked)
            best = max(best, ranked.index(chosen), self._needed_index(viewer, ranked))
            if (policy.quality == "auto" and not is_rung(chosen)
                    and estimate >= (chosen.avg_bps or chosen.peak_bps)):
                above = max(above, encodings.index(chosen) + 1 if chosen in encodings else 0)
        # A temporal rung needs its whole encoding sent: the lowest encoding is the floor.
        floor = next(index for index, layer in enumerate(ranked) if not is_rung(layer))
        needed = sum(layer.avg_bps or layer.peak_bps for layer in ranked[: max(best, floor) + 1]
                     if not is_rung(layer))
        # An auto viewer whose estimate covers its encoding probes the one above (and
        # climbs to it when its link lifts): that one is sent too, paused or not (a
        # paused one keeps its last rate).
        sent = {layer.ssrc for layer in ranked[: max(best, floor) + 1]}
        needed += sum(layer.avg_bps or layer.peak_bps for layer in encodings[:above + 1]
                      if layer.ssrc not in sent)
        return int(min(ceiling, max(needed * 1.5, 100_000)))

    def _heading(self, viewer: ViewerTrack) -> Layer | None:
        """Return the layer ``viewer`` is switching to, or else the one it is on (None: none)."""
        layer = viewer.next_layer or viewer.layer
        key = next((k for k, forwarder in self.layers.items() if forwarder is layer), None)
        return self.selector.layers.get(key) if self.selector is not None and key is not None else None

    def _needed_index(self, viewer: ViewerTrack, ranked: list[Layer]) -> int:
        """Return the rank of the layer ``viewer`` is on or switching to (0 if none).

        The publisher must keep sending it: a cap below it paused the layer a viewer was
        held on (measured: 0.6 s without a decoded frame).
        """
        found = self._heading(viewer)
        return ranked.index(found) if found in ranked else 0

    def _encodings(self) -> list[Layer]:
        """Return the publisher's encodings with a forwarder, sending now or not, lowest first."""
        if self.selector is None:
            return []
        known = [layer for layer in self.selector.layers.values()
                 if layer.ssrc in self.layers and not is_rung(layer)]
        if known and all(layer.pixels for layer in known):
            return sorted(known, key=lambda layer: (layer.pixels, layer.peak_bps))
        return sorted(known, key=lambda layer: layer.peak_bps)

    def set_quality(self, viewer: ViewerTrack, quality: str) -> None:
        """Pin a viewer's quality (``auto``, ``high`` or ``low``) and apply it at once."""
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)}")
        self.policies.setdefault(viewer, LayerPolicy()).quality = quality
        self.review()

    # --- viewer side (what the room calls on a TrackForwarder) ----------------------------

    def add_viewer(self, viewer: ViewerTrack, policy: LayerPolicy | None = None) -> None:
        """Add a connected viewer on the layer its policy chooses (or the first one)."""
        self.policies[viewer] = policy or self.policies.get(viewer) or LayerPolicy()
        extension_id = viewer.sender.twcc_extension_id
        if extension_id is not None and viewer.twcc is None:
            viewer.enable_twcc(extension_id)  # its feedback drives the estimate (media.twcc)
        ranked = self.ranked()
        if ranked:
            self.layers[self.policies[viewer].choose(ranked).ssrc].add_viewer(viewer)
        elif self.layers:
            next(iter(self.layers.values())).add_viewer(viewer)
        else:
            self.unplaced.append(viewer)

    def remove_viewer(self, viewer: ViewerTrack) -> None:
        """Remove a viewer from its layer (and from a pending switch)."""
        self.policies.pop(viewer, None)
        self._moved_at.pop(viewer, None)
        self.prober.forget(viewer)
        if viewer in self.unplaced:
            self.unplaced.remove(viewer)
        pending = viewer.next_layer
        if pending is not None and viewer in pending.waiting:
            pending.waiting.remove(viewer)
        viewer.next_layer = None
        if viewer.layer is not None and viewer.layer in self.layers.values():
            viewer.layer.remove_viewer(viewer)
        else:
            viewer.active = False
            self._retire_viewer(viewer)

    def _retire_viewer(self, viewer: ViewerTrack) -> None:
        self.retired.packets_out += viewer.packets
        self.retired.bytes_out += viewer.octets
        self.retired.drops += viewer.drops
        self.retired.nacks_served += viewer.nacks_served

    def restart(self) -> None:
        """Re-anchor every viewer for a new publisher stream (new layers, new SSRCs)."""
        viewers: list[ViewerTrack] = list(self.unplaced)
        for key, layer in self.layers.items():
            for viewer in list(layer.waiting):
                if viewer.next_layer is layer:  # a pending switch: it is on another layer
                    layer.waiting.remove(viewer)
                    viewer.next_layer = None
            layer.restart()  # continues each viewer's numbers where they stopped
            viewers.extend(layer.waiting)
            layer.waiting.clear()
            counters = layer.counters()
            for name in ("packets_out", "bytes_out", "drops", "nacks_served"):
                setattr(self.retired, name, getattr(self.retired, name) + getattr(counters, name))
            if self.is_ingress(key):
                self._retired_in[0] += layer.packets_in
                self._retired_in[1] += layer.bytes_in
            self._retired_in[2] += layer.nacks_missed
        # The viewers' own counters moved into ``retired`` with their layer: start anew.
        for viewer in viewers:
            viewer.packets = viewer.octets = viewer.drops = viewer.nacks_served = 0
            viewer.layer = None
        self.layers = {}
        self.temporal.clear()
        self.unplaced = viewers

    def switch_codec(self, codec: RTCRtpCodecParameters) -> None:
        """Take the next publisher stream in another codec (the room's viewers rejoin)."""
        self.codec = codec
        self.restart()

    def take_viewers(self, old: TrackForwarder) -> None:
        """Take over the viewers of the single-layer forwarder this one replaces."""
        if old.viewers or old.catching_up:
            old.restart()
        self.retired = TrackCounters(**vars(old.counters()))
        self._retired_in = [old.packets_in, old.bytes_in, old.nacks_missed]
        for viewer in list(old.waiting):
            viewer.packets = viewer.octets = viewer.drops = viewer.nacks_served = 0
            viewer.layer = None
            self.add_viewer(viewer)
        old.waiting.clear()

    def on_nack(self, viewer: ViewerTrack, lost: list[int]) -> None:
        """Answer a viewer's NACK from the history of the layer each packet came from.

        Packets lost just before a switch belong to the layer the viewer left; left
        unanswered, they stay a hole that stalls a receiver's jitter buffer (aiortc's
        waits for 512 more packets: ~20 s of a low layer).
        """
        layer = self.layer_of(viewer)
        if layer is None:
            return
        prior = viewer.prior
        if prior is not None and prior[0] in self.layers.values():
            first = (viewer.start_seq + viewer.seq_offset) & 0xFFFF  # its first on this layer
            before = [seq for seq in lost if _newer(first, seq)]
            if before:
                lost = [seq for seq in lost if not _newer(first, seq)]
                now = (viewer.seq_offset, viewer.ts_offset, viewer.start_seq,
                       viewer.pic_offset, viewer.tl0_offset)
                (old, viewer.seq_offset, viewer.ts_offset, viewer.start_seq,
                 viewer.pic_offset, viewer.tl0_offset) = prior
                try:
                    old.on_nack(viewer, before)
                finally:
                    (viewer.seq_offset, viewer.ts_offset, viewer.start_seq,
                     viewer.pic_offset, viewer.tl0_offset) = now
        if lost:
            layer.on_nack(viewer, lost)

    def send_sender_reports(self) -> None:
        """Send each layer's viewers their sender reports."""
        for layer in self.layers.values():
            layer.send_sender_reports()

    def counters(self) -> TrackCounters:
        """Return the track's totals, including viewers and layers that have gone."""
        total = TrackCounters(**vars(self.retired))
        for layer in self.layers.values():
            counters = layer.counters()
            total.packets_out += counters.packets_out
            total.bytes_out += counters.bytes_out
            total.drops += counters.drops
            total.nacks_served += counters.nacks_served
        return total

    def is_ingress(self, key: int) -> bool:
        """Return whether layer ``key`` is the publisher's (not made here, like a temporal rung)."""
        return key == real_ssrc(key)

    @property
    def packets_in(self) -> int:
        """Return the packets received on every layer."""
        return self._retired_in[0] + sum(layer.packets_in for key, layer in self.layers.items()
                                         if self.is_ingress(key))

    @property
    def bytes_in(self) -> int:
        """Return the payload bytes received on every layer."""
        return self._retired_in[1] + sum(layer.bytes_in for key, layer in self.layers.items()
                                         if self.is_ingress(key))

    @property
    def nacks_missed(self) -> int:
        """Return the NACKs no layer could answer."""
        return self._retired_in[2] + sum(layer.nacks_missed for layer in self.layers.values())

    @property
    def highest_seq(self) -> int | None:
        """Return a sequence number if any layer has had media (None otherwise)."""
        return next((layer.highest_seq for layer in self.layers.values()
                     if layer.highest_seq is not None), None)

    @property
    def last_packet_time(self) -> float:
        """Return when the newest packet of any layer arrived."""
        return max((layer.last_packet_time for layer in self.layers.values()), default=0.0)

    @property
    def viewers(self) -> list[ViewerTrack]:
        """Return the viewers receiving some layer now."""
        return [viewer for layer in self.layers.values() for viewer in layer.viewers]

    @property
    def waiting(self) -> list[ViewerTrack]:
        """Return the viewers not receiving yet (waiting for a first keyframe or layer)."""
        return self.unplaced + [viewer for layer in self.layers.values()
                                for viewer in layer.waiting if viewer.next_layer is not layer]

    def viewers_per_layer(self) -> dict[str, int]:
        """Return how many viewers each layer (by RID) carries now."""
        out: dict[str, int] = {}
        if self.selector is None:
            return out
        for ssrc, layer in self.layers.items():
            found = self.selector.layers.get(ssrc)
            if found is not None:
                out[found.rid] = out.get(found.rid, 0) + sum(1 for v in self.policies if v.layer is layer)
        return out


def _loop_time() -> float:
    return time.monotonic()
