"""The per-viewer bandwidth estimate and the layer policy built on it."""

from __future__ import annotations

import pytest

from media.estimator import MAX_STABLE_SECONDS, PROBE_HEADROOM, STABLE_SECONDS, BandwidthEstimator
from media.layers import LayerPolicy
from media.simulcast import Layer


def layers() -> list[Layer]:
    return [Layer("q", 1, avg_bps=150_000), Layer("h", 2, avg_bps=500_000), Layer("f", 3, avg_bps=2_000_000)]


def test_heavy_loss_cuts_the_estimate_below_the_current_rate_at_once() -> None:
    estimator = BandwidthEstimator()
    assert estimator.value(0.0) == 0.0  # nothing known: a new viewer starts on the lowest layer
    estimator.on_loss(0.4, 1.0, current_bps=2_000_000, next_bps=None)
    assert estimator.value(1.0) == pytest.approx(2_000_000 * 0.8)
    estimator.on_loss(0.4, 2.0, current_bps=500_000, next_bps=2_000_000)
    assert estimator.value(2.0) == pytest.approx(500_000 * 0.8)
    estimator.on_loss(0.05, 3.0, current_bps=150_000, next_bps=500_000)  # between: hold
    assert estimator.value(3.0) == pytest.approx(500_000 * 0.8)


def test_a_stable_period_asks_for_a_probe_and_only_a_passed_one_steps_up() -> None:
    estimator = BandwidthEstimator()
    estimator.on_loss(0.5, 0.0, current_bps=500_000, next_bps=2_000_000)
    estimator.on_loss(0.0, STABLE_SECONDS / 2, current_bps=150_000, next_bps=500_000)
    assert estimator.probe_bps is None  # not stable long enough
    estimator.on_loss(0.0, STABLE_SECONDS, current_bps=150_000, next_bps=500_000)
    assert estimator.probe_bps == pytest.approx(500_000 * PROBE_HEADROOM)
    assert estimator.value(STABLE_SECONDS) == pytest.approx(500_000 * 0.75)  # not before it passes
    # A failed probe leaves the estimate and doubles the wait for the next one.
    now = STABLE_SECONDS + 1
    estimator.on_probe(False, now)
    assert estimator.value(now) == pytest.approx(500_000 * 0.75)
    assert estimator.wait == min(2 * STABLE_SECONDS, MAX_STABLE_SECONDS) and estimator.probe_bps is None
    estimator.on_loss(0.0, now + estimator.wait - 0.1, current_bps=150_000, next_bps=500_000)
    assert estimator.probe_bps is None
    estimator.on_loss(0.0, now + estimator.wait, current_bps=150_000, next_bps=500_000)
    assert estimator.probe_bps is not None
    # A passed one raises the estimate to the probed rate and resets the wait.
    now += estimator.wait + 1
    estimator.on_probe(True, now)
    assert estimator.value(now) == pytest.approx(500_000 * PROBE_HEADROOM)
    assert estimator.wait == STABLE_SECONDS
    # Loss right after the switch it caused: down at once, and the next wait doubles.
    estimator.on_loss(0.03, now + 1, current_bps=500_000, next_bps=2_000_000)
    assert estimator.value(now + 1) < 500_000
    assert estimator.wait == min(2 * STABLE_SECONDS, MAX_STABLE_SECONDS)
    for _ in range(10):  # failed probes back off to a bound
        estimator.probe_bps = 600_000
        estimator.on_probe(False, now)
    assert estimator.wait == MAX_STABLE_SECONDS


def test_no_loss_at_the_top_keeps_up_with_its_rate_and_remb_caps_it() -> None:
    estimator = BandwidthEstimator()
    estimator.on_loss(0.2, 0.0, current_bps=2_000_000, next_bps=None)
    estimator.on_loss(0.0, STABLE_SECONDS, current_bps=2_000_000, next_bps=None)
    assert estimator.probe_bps is None  # nothing above to probe
    assert estimator.value(STABLE_SECONDS) == pytest.approx(2_000_000 * PROBE_HEADROOM)
    estimator.on_remb(300_000, STABLE_SECONDS)
    assert estimator.value(STABLE_SECONDS + 1) == 300_000
    assert estimator.value(STABLE_SECONDS + 60) == pytest.approx(2_000_000 * PROBE_HEADROOM)


def test_the_policy_picks_the_best_layer_the_estimate_carries() -> None:
    ranked = layers()
    policy = LayerPolicy()
    assert policy.choose(ranked).rid == "q"  # a new viewer starts low
    policy.estimator.estimate_bps = None
    assert policy.choose(ranked).rid == "f"  # nothing limits it
    policy.estimator.estimate_bps = 600_000
    assert policy.choose(ranked).rid == "h"
    policy.estimator.estimate_bps = 100_000
    assert policy.choose(ranked).rid == "q"  # the lowest layer is the floor
    assert LayerPolicy("high", policy.estimator).choose(ranked).rid == "f"
    assert LayerPolicy("low").choose(ranked).rid == "q"


def test_an_auto_viewer_moves_up_only_after_a_passed_probe() -> None:
    ranked = layers()
    policy = LayerPolicy()
    policy.estimator.estimate_bps = 600_000  # e.g. the middle layer's rate dipped under it
    assert policy.choose(ranked, current=ranked[0]).rid == "q"
    policy.estimator.probe_bps = 550_000
    policy.estimator.on_probe(True, 10.0)
    assert policy.choose(ranked, current=ranked[0]).rid == "h"
    # A layer's rate rising a little past the estimate is no reason to move down; a cut
    # is, at once, and so is a layer that outgrew the estimate.
    policy.estimator.estimate_bps = 2_000_000  # it climbed to f
    ranked[2].avg_bps = 2_400_000
    assert policy.choose(ranked, current=ranked[2]).rid == "f"
    ranked[2].avg_bps = 3_000_000
    assert policy.choose(ranked, current=ranked[2]).rid == "h"
    ranked[2].avg_bps = 2_000_000
    policy.estimator.on_loss(0.5, 11.0, current_bps=2_000_000, next_bps=None)  # to 1.5 Mbit/s
    assert policy.choose(ranked, current=ranked[2]).rid == "h"  # down needs no probe


def test_the_publisher_is_asked_for_the_layer_above_a_held_back_auto_viewer() -> None:
    """The REMB cap covers an auto viewer's layer and the one it would climb to, sent or paused."""
    import time

    from media.forwarder import TrackForwarder
    from media.layers import SimulcastForwarder
    from media.simulcast import LayerSelector
    from tests.media.test_temporal import CODEC

    forwarder = SimulcastForwarder(CODEC, lambda ssrc: None, lambda layer: None)
    selector = LayerSelector(("q", "h", "f"))
    forwarder.selector = selector
    now = time.monotonic()
    for ssrc, rid, rate in ((1, "q", 150_000), (2, "h", 500_000), (3, "f", 2_000_000)):
        selector.learn(ssrc, rid)
        layer = selector.layers[ssrc]
        layer.avg_bps = layer.peak_bps = rate
        layer.last_packet = now
        forwarder.layers[ssrc] = TrackForwarder("video", CODEC, lambda: None, lambda layer: None)
    auto = LayerPolicy()

    class Unplaced:  # a viewer on no layer yet
        layer = next_layer = None

    forwarder.policies[Unplaced()] = auto  # type: ignore[index]
    auto.estimator.estimate_bps = 200_000
    auto.estimator.limited_at = now  # loss held it back: not the full rate any more
    assert forwarder.needed_bps(5_000_000) == int((150_000 + 500_000) * 1.5)
    selector.layers[2].last_packet = now - 60  # the publisher paused h: still asked for
    assert forwarder.needed_bps(5_000_000) == int((150_000 + 500_000) * 1.5)
    auto.estimator.estimate_bps = 100_000  # it does not even carry q: no climb soon
    assert forwarder.needed_bps(5_000_000) == int(150_000 * 1.5)
