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
    assert estimator.value(0.0) is None  # nothing known: nothing limits the viewer
    estimator.on_loss(0.4, 1.0, current_bps=2_000_000, next_bps=None)
    assert estimator.value(1.0) == pytest.approx(2_000_000 * 0.8)
    estimator.on_loss(0.4, 2.0, current_bps=500_000, next_bps=2_000_000)
    assert estimator.value(2.0) == pytest.approx(500_000 * 0.8)
    estimator.on_loss(0.05, 3.0, current_bps=150_000, next_bps=500_000)  # between: hold
    assert estimator.value(3.0) == pytest.approx(500_000 * 0.8)


def test_a_stable_period_steps_up_and_a_failed_probe_backs_off() -> None:
    estimator = BandwidthEstimator()
    estimator.on_loss(0.5, 0.0, current_bps=500_000, next_bps=2_000_000)
    estimator.on_loss(0.0, STABLE_SECONDS / 2, current_bps=150_000, next_bps=500_000)
    assert estimator.value(1.0) == pytest.approx(500_000 * 0.75)  # not stable long enough
    estimator.on_loss(0.0, STABLE_SECONDS, current_bps=150_000, next_bps=500_000)
    assert estimator.value(STABLE_SECONDS) == pytest.approx(500_000 * PROBE_HEADROOM)
    # The probe brings loss: down at once, and the next probe waits twice as long.
    now = STABLE_SECONDS + 1
    estimator.on_loss(0.3, now, current_bps=500_000, next_bps=2_000_000)
    assert estimator.value(now) < 500_000
    assert estimator.wait == 2 * STABLE_SECONDS
    estimator.on_loss(0.0, now + STABLE_SECONDS, current_bps=150_000, next_bps=500_000)
    assert estimator.value(now) < 500_000
    for _ in range(10):
        estimator.wait = min(estimator.wait * 2, MAX_STABLE_SECONDS)
    assert estimator.wait == MAX_STABLE_SECONDS


def test_no_loss_at_the_top_lifts_the_limit_and_remb_caps_it() -> None:
    estimator = BandwidthEstimator()
    estimator.on_loss(0.2, 0.0, current_bps=2_000_000, next_bps=None)
    estimator.on_loss(0.0, STABLE_SECONDS, current_bps=2_000_000, next_bps=None)
    assert estimator.value(STABLE_SECONDS) is None
    estimator.on_remb(300_000, STABLE_SECONDS)
    assert estimator.value(STABLE_SECONDS + 1) == 300_000
    assert estimator.value(STABLE_SECONDS + 60) is None  # an old REMB no longer counts


def test_the_policy_picks_the_best_layer_the_estimate_carries() -> None:
    ranked = layers()
    policy = LayerPolicy()
    assert policy.choose(ranked).rid == "f"
    policy.estimator.estimate_bps = 600_000
    assert policy.choose(ranked).rid == "h"
    policy.estimator.estimate_bps = 100_000
    assert policy.choose(ranked).rid == "q"  # the lowest layer is the floor
    assert LayerPolicy("high", policy.estimator).choose(ranked).rid == "f"
    assert LayerPolicy("low").choose(ranked).rid == "q"
