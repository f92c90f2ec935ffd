"""A conservative bandwidth estimate per viewer, from its RTCP feedback.

Loss-based as in GCC (draft-ietf-rmcat-gcc 6): more than 10 % loss cuts the estimate
to the rate the viewer was getting times (1 - loss/2), at once. A round-trip time
(from the report's LSR/DLSR) well over the viewer's minimum counts as overuse too (a
queue builds before loss shows). Going up never means trying the next layer on the
viewer: little loss (< 2 %) for a stable period asks for a probe instead
(:attr:`BandwidthEstimator.probe_bps`, sent as padding by :mod:`media.probe`), and only
a probe that passes at 1.2x the next layer's rate raises the estimate to it (the layer
policy then switches up). Whether a probe is due is asked on every layer review
(:meth:`BandwidthEstimator.wants_probe`), not only when a receiver report comes. A
failed probe doubles the next wait (up to 3 s), so a link that cannot carry the next
layer is not probed every second; a probe that passes resets it, and for a while after
it even 2 % loss counts as the switch failing. Loss-free reports without a queue let
the estimate keep up with the viewer's own layer's rate. A REMB
from the viewer (Chromium, where negotiated) caps the estimate. The layer policy turns
the estimate into a layer (down fast, up after a passed probe: the hysteresis lives here).
"""

from __future__ import annotations

from dataclasses import dataclass

START_BPS = 0.0  # a new viewer starts on the lowest layer
HIGH_LOSS = 0.10
LOW_LOSS = 0.02
STABLE_SECONDS = 2.0  # loss-free time before the first step up
MAX_STABLE_SECONDS = 3.0  # the longest back-off after failed probes (a lifted limit is found within ~10 s)
AFTER_PASS_SECONDS = 0.0  # after a passed probe, the next one (a layer higher, or the same if its rate rose) follows at once
# A step up asks for the next layer's rate plus this margin: a publisher's layer rates move
# by this much between the probe and the switch (with 1.1, a passed probe was often under
# the layer's rate by the time it ended, and a second one was needed).
PROBE_HEADROOM = 1.2
REMB_MAX_AGE = 5.0
# A round-trip time this much over the viewer's minimum means its link is queueing.
DELAY_OVERUSE_SECONDS = 0.15
OVERUSE_AS_LOSS = 0.3
KEEP_UP_QUEUE_SECONDS = 0.05  # the estimate follows its layer's rate only with less queue than this
LIMITED_SECONDS = 10.0  # a cut this recent says the viewer's link is the limit


@dataclass
class BandwidthEstimator:
    """Estimate what one viewer's link carries (bit/s); None until there is a reason."""

    # Start low and probe up (as GCC starts at a low rate; layer rates are not even known
    # while the publisher ramps up): a viewer started on a layer
    # its link cannot carry loses packets at once, and a receiver's jitter buffer may
    # stall on the holes long after the switch down (aiortc's waits for 512 packets).
    estimate_bps: float | None = START_BPS
    remb_bps: float | None = None
    remb_at: float = -1e9
    wait: float = STABLE_SECONDS
    probed_at: float | None = None  # when the last passed probe raised it (until that holds)
    min_rtt: float | None = None
    probe_bps: float | None = None  # a probe at this rate is wanted (or running)
    probe_after: float = STABLE_SECONDS  # no probe before then
    limited_at: float | None = None  # when loss or delay last cut the estimate
    last_loss: float = 0.0  # in the latest receiver report
    cuts: int = 0  # how often loss, delay or a lower REMB cut it (the layer policy's cue to move down)

    def on_loss(self, loss: float, now: float, current_bps: float, next_bps: float | None,
                rtt: float | None = None) -> None:
        """Take one receiver report: ``loss`` (0-1) while getting ``current_bps``.

        ``next_bps`` is the rate of the layer above the current one (None at the top);
        ``rtt`` the round-trip time from the report, if known: a queue building up on
        the viewer's link (RTT well over its minimum) counts as overuse before any loss
        shows (retransmissions hide loss from the reports).
        """
        queued = 0.0
        if rtt is not None and rtt >= 0:
            self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
            queued = rtt - self.min_rtt
            if queued > DELAY_OVERUSE_SECONDS:
                loss = max(loss, OVERUSE_AS_LOSS)
        switched = self.probed_at is not None and now - self.probed_at < self.wait
        if loss > HIGH_LOSS or (switched and loss >= LOW_LOSS):
            base = min(self.estimate_bps, current_bps) if self.estimate_bps else current_bps
            self.estimate_bps = base * (1 - loss / 2)
            self.limited_at = now
            self.cuts += 1
            if self.probed_at is not None and now - self.probed_at < self.wait * 2:
                self.wait = min(self.wait * 2, MAX_STABLE_SECONDS)  # the switch up failed
            self.probed_at = None
            self.probe_bps = None
            self.probe_after = now + self.wait
        elif loss < LOW_LOSS and self.estimate_bps is not None:
            if self.probed_at is not None and now - self.probed_at >= self.wait:
                self.probed_at = None  # the switch held
            if self.probed_at is None and self.estimate_bps and queued < KEEP_UP_QUEUE_SECONDS:
                # Its layer arrives without loss or a queue: keep up with that layer's rate
                # (a publisher's rates move; it would otherwise push a viewer off a layer
                # its link carries).
                self.estimate_bps = max(self.estimate_bps, current_bps * PROBE_HEADROOM)
            if next_bps is not None:
                self.wants_probe(now, next_bps)
        self.last_loss = loss

    def wants_probe(self, now: float, next_bps: float) -> bool:
        """Return whether a probe towards ``next_bps`` is due (and ask for it: :attr:`probe_bps`).

        It is once the back-off since the last cut or failed probe is over and the
        latest report showed little loss; the layer policy asks on every review, not only
        when a receiver report comes (aiortc's come every 0.5-1.5 s), so a probe that
        passed is followed by the next one as soon as the switch it caused is done.
        """
        if self.probe_bps is not None and self.probe_bps >= next_bps:
            return True
        self.probe_bps = None  # none, or one towards the layer it has reached since
        if self.estimate_bps is None or self.last_loss >= LOW_LOSS or now < self.probe_after:
            return False
        self.probe_bps = next_bps * PROBE_HEADROOM
        return True

    def limited(self, now: float) -> bool:
        """Return whether loss, delay or the viewer's REMB held the estimate back lately.

        Otherwise the viewer may still be climbing (it starts low and probes up).
        """
        if self.remb_bps is not None and now - self.remb_at < REMB_MAX_AGE:
            return True
        return self.limited_at is not None and now - self.limited_at < LIMITED_SECONDS

    def may_rise(self) -> bool:
        """Return whether the viewer may switch up now: a probe has just passed.

        Layer rates move (a publisher shifts its bits between layers), so an estimate
        that a layer's rate merely dips under is no reason to try that layer.
        """
        return self.estimate_bps is None or self.probed_at is not None

    def on_probe(self, passed: bool, now: float) -> None:
        """Take the verdict on the probe at :attr:`probe_bps`: raise the estimate, or back off."""
        if self.probe_bps is None:
            return
        if passed:
            self.estimate_bps = max(self.estimate_bps or 0.0, self.probe_bps)
            self.probed_at = now  # the switch it causes is watched for a while
            self.wait = STABLE_SECONDS
            self.probe_after = now + AFTER_PASS_SECONDS  # the link may carry more: go on
        else:
            self.wait = min(self.wait * 2, MAX_STABLE_SECONDS)
            self.probe_after = now + self.wait
        self.probe_bps = None

    def on_remb(self, bitrate_bps: float, now: float) -> None:
        """Take the viewer's own receive estimate (REMB)."""
        if self.remb_bps is None or bitrate_bps < self.remb_bps:
            self.cuts += 1
        self.remb_bps = bitrate_bps
        self.remb_at = now

    def value(self, now: float) -> float | None:
        """Return the current estimate (bit/s), or None when nothing limits the viewer."""
        estimate = self.estimate_bps
        if self.remb_bps is not None and now - self.remb_at < REMB_MAX_AGE:
            estimate = self.remb_bps if estimate is None else min(estimate, self.remb_bps)
        return estimate
