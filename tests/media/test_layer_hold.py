"""An auto viewer is not moved down a layer without a sign from its link.

A passed probe raises a viewer's estimate to the rate the next layer had when the probe
started; a publisher whose layers ramp up then sends that layer faster than the
estimate. Seen with Chromium viewers on a lifted `tc tbf` link (tests/e2e/
test_shaped_chromium.py): moved back down 0.1-0.5 s after each switch up with no loss
reported, so the climb missed its 10 s. The viewer now stays (and a switch under way
goes on) until its estimate is cut (loss or delay in a receiver report, a lower REMB) or
the layer outgrows it by more than ``OUTGROWN``, and the publisher's REMB cap keeps the
layer it stays on (a cap under it paused that layer: 0.6 s without a frame).
"""

from __future__ import annotations

import time

from media.layers import SimulcastForwarder
from tests.media.test_vp8_ids import Encoding, Viewer, feed, simulcast, viewer  # noqa: F401


def rates(forwarder: SimulcastForwarder, q_bps: float, f_bps: float) -> None:
    assert forwarder.selector is not None
    for layer in forwarder.selector.layers.values():
        layer.avg_bps = layer.peak_bps = q_bps if layer.rid == "q" else f_bps
        layer.last_packet = time.monotonic()


async def test_a_viewer_stays_up_while_its_layer_outgrows_the_estimate_until_a_cut(viewer: Viewer) -> None:  # noqa: F811
    q = Encoding(ssrc=1111, seq=100, ts_base=0, picture_id=10, tl0=1)
    f = Encoding(ssrc=2222, seq=900, ts_base=5000, picture_id=20000, tl0=90)
    forwarder = simulcast(q, f)
    feed(forwarder, [q, f], 0, keyframes=(q, f))
    forwarder.add_viewer(viewer.track)  # auto, not measured yet: the low layer
    feed(forwarder, [q, f], 4, keyframes=(q,))
    policy = forwarder.policies[viewer.track]
    top, low = forwarder.layers[f.ssrc], forwarder.layers[q.ssrc]
    assert forwarder.layer_of(viewer.track) is low
    # A probe passes at the top layer's rate then (+10 %): the viewer switches up.
    rates(forwarder, 150_000, 700_000)
    policy.estimator.probe_bps = 770_000
    policy.estimator.on_probe(True, time.monotonic())
    forwarder.review()
    assert viewer.track.next_layer is top
    # The top layer ramps up past the estimate before its keyframe: the switch goes on.
    rates(forwarder, 150_000, 900_000)
    forwarder.review()
    assert viewer.track.next_layer is top
    feed(forwarder, [q, f], 8, keyframes=(f,))
    assert forwarder.layer_of(viewer.track) is top
    forwarder.review()
    assert forwarder.layer_of(viewer.track) is top and viewer.track.next_layer is None
    # Held back by its link before (a cut before its switch up): the publisher's REMB cap
    # still covers the layer it is on, not just the one its estimate would choose.
    policy.estimator.limited_at = forwarder._moved_at[viewer.track] - 1.0
    forwarder.review()
    assert forwarder.layer_of(viewer.track) is top and viewer.track.next_layer is None
    assert forwarder.needed_bps(5_000_000) == int((150_000 + 900_000) * 1.5)
    # Its receiver report shows loss: the estimate is cut, and down it goes.
    forwarder.on_receiver_report(viewer.track, 0.25, 0.01)
    assert viewer.track.next_layer is low
    got = viewer.read().media
    assert {p.ssrc for p in got} == {4242} and len(got) >= 6


async def test_a_remb_under_the_layer_moves_the_viewer_down(viewer: Viewer) -> None:  # noqa: F811
    q = Encoding(ssrc=1111, seq=100, ts_base=0, picture_id=10, tl0=1)
    f = Encoding(ssrc=2222, seq=900, ts_base=5000, picture_id=20000, tl0=90)
    forwarder = simulcast(q, f)
    feed(forwarder, [q, f], 0, keyframes=(q, f))
    forwarder.add_viewer(viewer.track)
    feed(forwarder, [q, f], 4, keyframes=(q,))
    policy = forwarder.policies[viewer.track]
    rates(forwarder, 150_000, 700_000)
    policy.estimator.probe_bps = 770_000
    policy.estimator.on_probe(True, time.monotonic())
    forwarder.review()
    feed(forwarder, [q, f], 8, keyframes=(f,))
    assert forwarder.layer_of(viewer.track) is forwarder.layers[f.ssrc]
    forwarder.on_remb(viewer.track, 300_000)
    rates(forwarder, 150_000, 700_000)
    forwarder.review()
    assert viewer.track.next_layer is forwarder.layers[q.ssrc]

