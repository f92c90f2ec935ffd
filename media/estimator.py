"""A conservative bandwidth estimate per viewer, from its RTCP feedback.

Loss-based as in GCC (draft-ietf-rmcat-gcc 6): more than 10 % loss cuts the estimate
to the rate the viewer was getting times (1 - loss/2), at once; little loss (< 2 %)
for a stable period lets it rise to the next layer's rate (a probe: the viewer tries
that layer). A round-trip time (from the report's LSR/DLSR) well over the viewer's
minimum counts as overuse too (a queue builds before loss shows), and during a probe
even 2 % loss fails it. A failed probe doubles the next wait (up to 4 s),
so a link that cannot carry the next layer is not flooded every few seconds; a probe
that holds resets it. A REMB from the viewer (Chromium, where negotiated) caps the
estimate. The layer policy turns the estimate into a layer (down fast, up after a
stable period: the hysteresis lives here).
"""

from __future__ import annotations

from dataclasses import dataclass

HIGH_LOSS = 0.10
LOW_LOSS = 0.02
STABLE_SECONDS = 2.0  # loss-free time before the first step up
MAX_STABLE_SECONDS = 4.0  # the longest back-off after failed probes (a lifted limit is found within ~10 s)
PROBE_HEADROOM = 1.1  # a step up asks for the next layer's rate plus this margin
REMB_MAX_AGE = 5.0
# A round-trip time this much over the viewer's minimum means its link is queueing.
DELAY_OVERUSE_SECONDS = 0.15
OVERUSE_AS_LOSS = 0.3


@dataclass
class BandwidthEstimator:
    """Estimate what one viewer's link carries (bit/s); None until there is a reason."""

    estimate_bps: float | None = None
    remb_bps: float | None = None
    remb_at: float = -1e9
    wait: float = STABLE_SECONDS
    changed_at: float = 0.0
    probed_at: float | None = None  # when the last step up happened (until it holds)
    min_rtt: float | None = None

    def on_loss(self, loss: float, now: float, current_bps: float, next_bps: float | None,
                rtt: float | None = None) -> None:
        """Take one receiver report: ``loss`` (0-1) while getting ``current_bps``.

        ``next_bps`` is the rate of the layer above the current one (None at the top);
        ``rtt`` the round-trip time from the report, if known: a queue building up on
        the viewer's link (RTT well over its minimum) counts as overuse before any loss
        shows (retransmissions hide loss from the reports).
        """
        if rtt is not None and rtt >= 0:
            self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
            if rtt - self.min_rtt > DELAY_OVERUSE_SECONDS:
                loss = max(loss, OVERUSE_AS_LOSS)
        probing = self.probed_at is not None and now - self.probed_at < self.wait
        if loss > HIGH_LOSS or (probing and loss >= LOW_LOSS):
            base = current_bps if self.estimate_bps is None else min(self.estimate_bps, current_bps)
            self.estimate_bps = base * (1 - loss / 2)
            if self.probed_at is not None and now - self.probed_at < self.wait * 2:
                self.wait = min(self.wait * 2, MAX_STABLE_SECONDS)  # the probe failed
            self.probed_at = None
            self.changed_at = now
        elif loss < LOW_LOSS and self.estimate_bps is not None:
            if self.probed_at is not None and now - self.probed_at >= self.wait:
                self.probed_at = None  # the probe held: the next one may come sooner
                self.wait = STABLE_SECONDS
            if now - self.changed_at >= self.wait:
                self.changed_at = now
                if next_bps is None:
                    self.estimate_bps = None  # at the top with no loss: nothing limits it
                else:
                    self.estimate_bps = max(self.estimate_bps, next_bps * PROBE_HEADROOM)
                    self.probed_at = now

    def on_remb(self, bitrate_bps: float, now: float) -> None:
        """Take the viewer's own receive estimate (REMB)."""
        self.remb_bps = bitrate_bps
        self.remb_at = now

    def value(self, now: float) -> float | None:
        """Return the current estimate (bit/s), or None when nothing limits the viewer."""
        estimate = self.estimate_bps
        if self.remb_bps is not None and now - self.remb_at < REMB_MAX_AGE:
            estimate = self.remb_bps if estimate is None else min(estimate, self.remb_bps)
        return estimate
