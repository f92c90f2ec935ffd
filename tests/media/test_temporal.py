"""VP8 temporal layers: synthetic payload descriptors through the rungs of media.temporal."""

from __future__ import annotations

import itertools
import time

import pytest
from aiortc.codecs import CODECS
from aiortc.rtp import RtpPacket

from media.codecs import vp8_temporal
from media.layers import LayerPolicy, SimulcastForwarder
from media.simulcast import LayerSelector
from media.temporal import is_rung, real_ssrc, rung_key

CODEC = CODECS["video"][0]  # VP8
# Chromium's three temporal layers: TID per frame, repeating every four frames.
L1T3 = (0, 2, 1, 2)


def descriptor(tid: int, picture_id: int, tl0: int, *, start: bool, long_id: bool = True,
               keyframe: bool = False) -> bytes:
    """Return a VP8 payload: descriptor with picture id, TL0PICIDX and TID, then a frame byte."""
    first = 0x80 | (0x10 if start else 0)
    ids = bytes([0x80 | picture_id >> 8, picture_id & 0xFF]) if long_id else bytes([picture_id & 0x7F])
    frame = bytes([0x00 if keyframe else 0x01]) + bytes(20)  # P bit: 0 = keyframe
    return bytes([first, 0xE0]) + ids + bytes([tl0 & 0xFF, tid << 6 | 0x20]) + frame


def stream(frames: int, packets_per_frame: int = 2, *, ssrc: int = 1111, first_seq: int = 65530,
           first_id: int = 32760, long_id: bool = True) -> list[tuple[int, RtpPacket]]:
    """Return (TID, packet) for ``frames`` L1T3 frames; sequence numbers and ids wrap."""
    out = []
    seq, tl0 = first_seq, 250
    for frame in range(frames):
        tid = L1T3[frame % 4]
        if tid == 0 and frame:
            tl0 += 1
        for index in range(packets_per_frame):
            payload = descriptor(tid, (first_id + frame) & (0x7FFF if long_id else 0x7F), tl0,
                                 start=index == 0, long_id=long_id, keyframe=frame == 0)
            out.append((tid, RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF,
                                       timestamp=frame * 3000, ssrc=ssrc,
                                       marker=index == packets_per_frame - 1, payload=payload)))
            seq += 1
    return out


def test_the_descriptor_gives_tid_and_picture_id() -> None:
    assert vp8_temporal(descriptor(2, 0x1234, 7, start=True)) == (2, 0x1234, 2)
    assert vp8_temporal(descriptor(1, 0x55, 7, start=False, long_id=False)) == (1, 0x55, 1)
    assert vp8_temporal(bytes([0x90, 0x20, 0x40]) + bytes(5)) == (1, -1, 0)  # T only
    assert vp8_temporal(bytes([0x10, 0x00, 0x9D])) is None  # no X: no TID
    assert vp8_temporal(bytes([0x90, 0x80, 0x12, 0x00])) is None  # I without T
    assert vp8_temporal(bytes([0x90, 0xA0, 0x81])) is None  # cut short


def forwarder_with_layers() -> tuple[SimulcastForwarder, LayerSelector]:
    forwarder = SimulcastForwarder(CODEC, lambda ssrc: None, lambda layer: None)
    selector = LayerSelector(("q", "f"))
    forwarder.selector = selector
    selector.learn(1111, "q")
    selector.learn(2222, "f")
    return forwarder, selector


@pytest.mark.parametrize("long_id", [True, False])
def test_a_rung_keeps_low_tids_with_continuous_numbers(long_id: bool) -> None:
    forwarder, _selector = forwarder_with_layers()
    packets = stream(16, long_id=long_id, first_id=32760 if long_id else 120)
    out: dict[int, list[RtpPacket]] = {0: [], 1: []}
    for tid, packet in packets:
        forwarder.on_rtp(packet, CODEC)
        for rung in forwarder.temporal.rungs.get(1111, []):
            if rung.forwarder.highest_seq is not None and (
                    not out[rung.cap] or out[rung.cap][-1].sequence_number != rung.forwarder.highest_seq):
                out[rung.cap].append(_last(rung.forwarder))
    rungs = forwarder.temporal.rungs[1111]
    assert [rung.cap for rung in rungs] == [0, 1]
    assert forwarder.packets_in == len(packets)  # the rungs' copies are not ingress
    assert set(forwarder.layers) == {1111, rung_key(1111, 0), rung_key(1111, 1)}
    mask = 0x7FFF if long_id else 0x7F
    for cap, kept in out.items():
        expected = [p for tid, p in packets if tid <= cap]
        # The rungs appear with the first TID > 0 packet (frame 1): they start there.
        expected = expected[len(expected) - len(kept):]
        assert len(kept) == len(expected) and kept
        seqs = [p.sequence_number for p in kept]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs
        ids = [vp8_temporal(p.payload)[1] for p in kept]  # type: ignore[index]
        frame_ids = list(dict.fromkeys(ids))
        assert all((b - a) & mask == 1 for a, b in itertools.pairwise(frame_ids)), frame_ids
        for mine, theirs in zip(kept, expected, strict=True):
            assert vp8_temporal(mine.payload)[0] <= cap  # type: ignore[index]
            assert mine.timestamp == theirs.timestamp and mine.marker == theirs.marker
            # Everything but the picture id is the publisher's: TL0PICIDX, TID, frame data.
            start = 4 if long_id else 3
            assert mine.payload[start:] == theirs.payload[start:]
            assert mine.payload[:2] == theirs.payload[:2]


def _last(forwarder) -> RtpPacket:  # type: ignore[no-untyped-def]
    seq, ts, marker, buf = forwarder._history[forwarder.highest_seq & forwarder._mask]
    return RtpPacket(sequence_number=seq, timestamp=ts, marker=bool(marker), payload=bytes(buf[12:]))


def test_a_late_packet_takes_the_number_kept_for_it() -> None:
    forwarder, _ = forwarder_with_layers()
    packets = stream(16, first_seq=100)
    held = packets.pop(17)  # frame 8 (TID 0, frame 12 is the next), second packet: arrives late
    for _tid, packet in packets:
        forwarder.on_rtp(packet, CODEC)
    base = forwarder.temporal.rungs[1111][0]
    before = base.forwarder.highest_seq
    forwarder.on_rtp(held[1], CODEC)
    seq = base.forwarder.highest_seq
    assert seq == before  # a late packet does not move the newest number...
    history = base.forwarder._history
    numbers = {entry[0] for entry in history if entry is not None}
    kept = sorted(numbers, key=lambda s: (s - min(numbers)) & 0xFFFF)
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(kept)), kept  # ...it fills its gap


def test_rungs_rank_below_the_lowest_layer_only_and_serve_auto_viewers_only() -> None:
    forwarder, selector = forwarder_with_layers()
    now = time.monotonic()
    for ssrc, first_seq in ((1111, 100), (2222, 5000)):
        for _tid, packet in stream(16, ssrc=ssrc, first_seq=first_seq):
            forwarder.on_rtp(packet, CODEC)
    rates = {1111: 300_000, 2222: 1_500_000, rung_key(1111, 0): 80_000, rung_key(1111, 1): 160_000,
             rung_key(2222, 0): 400_000, rung_key(2222, 1): 800_000}
    for key, layer in selector.layers.items():
        layer.avg_bps = layer.peak_bps = rates[key]
        layer.pixels = 320 * 180 if real_ssrc(key) == 1111 else 1280 * 720
        layer.last_packet = now
    ranked = forwarder.ranked()
    assert [layer.ssrc for layer in ranked] == [rung_key(1111, 0), rung_key(1111, 1), 1111, 2222]
    assert all(layer.rid == "q" for layer in ranked[:3]) and is_rung(ranked[0])
    assert LayerPolicy("low").choose(ranked).ssrc == 1111  # pinned low: full frame rate
    auto = LayerPolicy("auto")
    auto.estimator.estimate_bps = 120_000
    assert auto.choose(ranked).ssrc == rung_key(1111, 0)
    auto.estimator.estimate_bps = 200_000
    assert auto.choose(ranked).ssrc == rung_key(1111, 1)
    auto.estimator.estimate_bps = 50_000
    assert auto.choose(ranked).ssrc == rung_key(1111, 0)  # the lowest rung is the floor
    auto.estimator.estimate_bps = 250_000  # just under the low layer's 300k: its full rate
    assert auto.choose(ranked).ssrc == 1111
    asked: list[int] = []
    forwarder._keyframe_needed = asked.append  # type: ignore[method-assign]
    forwarder.request_keyframe(rung_key(1111, 0))
    forwarder.layers[rung_key(1111, 1)]._keyframe_needed()
    assert asked == [1111, 1111]  # a rung's keyframe is its layer's
    assert forwarder.needed_bps(5_000_000) == 5_000_000  # nobody watches: nothing measured
    # A viewer on the TID 0 rung (only what needed_bps reads of a ViewerTrack).
    on_rung = type("OnRung", (), {"layer": forwarder.layers[rung_key(1111, 0)], "next_layer": None})()
    forwarder.policies[on_rung] = auto
    auto.estimator.limited_at = time.monotonic()  # held back by its link (not still climbing)
    # The publisher is asked for the whole low layer (x1.5 headroom), not for the rung's rate.
    assert forwarder.needed_bps(5_000_000) == 450_000
    assert selector.ssrc_of("q") == 1111
