"""Choose which simulcast layer of a publisher's video the SFU forwards.

A simulcast publisher (RFC 8853) sends up to three encodings of one track, each with its
own SSRC, named by a RID in the ``rtp-stream-id`` header extension. The order of RIDs in
the SDP says nothing about their quality (browsers send low-first or high-first as the
page asked), so the selector measures each layer's bitrate and forwards the highest one:
a higher resolution always costs more bits. The top layer often starts late (the
publisher's bandwidth estimate ramps up), so the choice moves up when a richer layer
appears and moves down only when the chosen one goes silent.

That choice is the top layer: it gets the publisher's REMB. Which layer each viewer
gets is chosen per viewer on top of the same measurement (see :mod:`media.layers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LAYERS = 3
# How often the choice is reconsidered, and by how much a layer must beat the chosen
# one to take over (a switch costs every viewer a keyframe wait).
WINDOW_SECONDS = 0.5
SWITCH_RATIO = 1.3
# A chosen layer that sent nothing for this long is given up.
SILENCE_SECONDS = 1.5


@dataclass
class Layer:
    """One simulcast encoding: its RID, SSRC and recent traffic."""

    rid: str
    ssrc: int
    window_bytes: int = 0
    rate_bps: float = 0.0
    # The highest rate measured: ranks the layers, so a still scene on the top layer
    # (few bits for a while) does not make a lower layer look better.
    peak_bps: float = 0.0
    # A smoothed rate: what a viewer of this layer typically needs (the estimate's unit).
    avg_bps: float = 0.0
    last_packet: float = 0.0
    # Width x height from the layer's keyframes (VP8), 0 until seen: ranks the layers
    # more surely than bitrates (at start-up a lower layer can briefly out-send a higher one).
    pixels: int = 0
    # Set for a temporal rung of this encoding (media.temporal): the highest TID it keeps.
    max_tid: int | None = None


@dataclass
class LayerSelector:
    """Track the layers of one simulcast track and choose the one to forward."""

    rids: tuple[str, ...]
    layers: dict[int, Layer] = field(default_factory=dict)
    chosen: int | None = None
    _window_start: float | None = None

    def learn(self, ssrc: int, rid: str) -> None:
        """Remember that ``ssrc`` carries the layer named ``rid`` (from its header extension)."""
        if rid in self.rids and ssrc not in self.layers:
            self.layers[ssrc] = Layer(rid, ssrc)

    def ssrc_of(self, rid: str) -> int | None:
        """Return the SSRC of the layer named ``rid``, once seen."""
        return next((layer.ssrc for layer in self.layers.values()
                     if layer.rid == rid and layer.max_tid is None), None)

    def on_packet(self, ssrc: int, size: int, now: float) -> tuple[bool, bool]:
        """Count one media packet; return (forward it, the choice just changed)."""
        layer = self.layers.get(ssrc)
        if layer is None:
            return False, False  # no RID seen for this SSRC yet: cannot tell its layer
        layer.window_bytes += size
        layer.last_packet = now
        switched = False
        if self.chosen is None:
            self.chosen, switched = ssrc, True  # start at once; move up when measured
            self._window_start = now
        elif self._window_start is not None and now - self._window_start >= WINDOW_SECONDS:
            switched = self._reconsider(now)
        return ssrc == self.chosen, switched

    def _reconsider(self, now: float) -> bool:
        elapsed = now - (self._window_start or now)
        for layer in self.layers.values():
            layer.rate_bps = layer.window_bytes * 8 / elapsed if elapsed > 0 else 0.0
            layer.peak_bps = max(layer.peak_bps, layer.rate_bps)
            if layer.rate_bps > 0:  # a paused layer keeps its last typical rate
                layer.avg_bps = (layer.rate_bps if not layer.avg_bps
                                 else 0.8 * layer.avg_bps + 0.2 * layer.rate_bps)
            layer.window_bytes = 0
        self._window_start = now
        current = self.layers[self.chosen] if self.chosen is not None else None
        alive = [layer for layer in self.layers.values()  # encodings, not temporal rungs
                 if now - layer.last_packet < SILENCE_SECONDS and layer.rate_bps > 0
                 and layer.max_tid is None]
        if not alive:
            return False
        by_size = all(layer.pixels for layer in alive) and current is not None and current.pixels
        best = max(alive, key=lambda layer: (layer.pixels, layer.peak_bps) if by_size else layer.peak_bps)
        if current is None or now - current.last_packet >= SILENCE_SECONDS:
            if best is current:
                return False
            target = best
        elif by_size and best is not current:
            target = best  # sizes from the keyframes: no need for a bitrate margin
        elif best is not current and best.peak_bps > current.peak_bps * SWITCH_RATIO:
            target = best
        else:
            return False
        self.chosen = target.ssrc
        return True

    @property
    def chosen_rid(self) -> str | None:
        """Return the RID of the forwarded layer, if any."""
        layer = self.layers.get(self.chosen) if self.chosen is not None else None
        return layer.rid if layer is not None else None

    def ranked(self, now: float) -> list[Layer]:
        """Return the layers sending now, lowest bitrate (quality) first."""
        alive = [layer for layer in self.layers.values()
                 if now - layer.last_packet < SILENCE_SECONDS]
        if alive and all(layer.pixels for layer in alive):
            return sorted(alive, key=lambda layer: (layer.pixels, layer.peak_bps))
        return sorted(alive, key=lambda layer: layer.peak_bps)
