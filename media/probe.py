"""Probe a viewer's link with padding before switching it up a layer.

Switching a viewer to a layer its link cannot carry freezes it: the bigger keyframe and
the higher rate queue up, and by the time the reports show loss the picture has stopped
(measured before this module: 0.5-5 s behind a 300 kbit/s `tc tbf` link). So the
estimator (:mod:`media.estimator`) never switches up to find out; it asks for a probe:
padding-only RTX packets (RFC 4588: receivers count and drop them) that top the
viewer's current layer up to the next layer's rate, while it keeps getting its layer.
A probe sends ``PROBE_BYTES`` of padding (more than a token bucket's burst, which lets
a short cluster through at full speed on a link that cannot carry the rate), at most
for ``MAX_PROBE_SECONDS``, with a sender report every ``REPORT_EVERY`` (the viewer's
periodic ones are held meanwhile). Each report waits in the same queue as the padding,
so the receiver report answering it gives the round-trip time at that point of the
probe: a queue building up (``QUEUE_DELAY_LIMIT`` over the viewer's minimum) or loss
fails the probe at once; a clean answer to a report sent after ``PROBE_BYTES`` passes
it, and only then does the estimate rise and the viewer switch. A viewer that
negotiated transport-wide-cc can fail earlier, on delay-based over-use (media.twcc),
and passes only if its feedback shows the last second's packets arriving at 85 % or
more of the rate they were sent at.
No answer within ``VERDICT_SECONDS`` of the end fails it (conservative).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from .estimator import LOW_LOSS, BandwidthEstimator
from .forwarder import TrackForwarder, ViewerTrack

# Padding beyond the current layer a probe must have sent before it can pass: more than
# a token bucket's burst (a `tc tbf` of 16 kB lets that much through at full speed), so
# that a link which cannot carry the rate has started to queue.
logger = logging.getLogger(__name__)

PROBE_BYTES = 40_000
MAX_PROBE_SECONDS = 3.0
REPORT_EVERY = 0.25  # a sender report this often during a probe: the next answer is fresh
TICK_SECONDS = 0.01
PADDING_BYTES = 255  # the most one packet's padding length byte can say
QUEUE_DELAY_LIMIT = 0.06  # round-trip time over the minimum that fails a probe
DELIVERED_SHARE = 0.85  # arrival rate over send rate of the last second's packets (TWCC)
VERDICT_SECONDS = 2.0  # after the last padding: an RTCP interval or two of the viewer's


@dataclass
class Probe:
    """One viewer's padding cluster and what decides it."""

    viewer: ViewerTrack
    layer: TrackForwarder
    target_bps: float
    padding_bps: float
    started: float
    sent_bytes: int = 0
    reported_at: float = 0.0
    ended: float | None = None
    # LSR key of each of the probe's sender reports -> padding bytes sent before it.
    report_keys: dict[int, int] = field(default_factory=dict)
    handle: asyncio.TimerHandle | None = None


class Prober:
    """Run the probes of one simulcast track's viewers and judge them from their reports."""

    def __init__(self) -> None:
        self.probes: dict[ViewerTrack, Probe] = {}
        self.passed = 0
        self.failed = 0

    def start(self, viewer: ViewerTrack, layer: TrackForwarder, target_bps: float,
              current_bps: float) -> bool:
        """Start topping ``viewer`` up from ``current_bps`` to ``target_bps``; False: cannot.

        A viewer without RTX (nowhere to put padding) or already probing is not probed.
        """
        if viewer in self.probes or viewer.rtx_pt is None or not viewer.active:
            return False
        now = time.monotonic()
        # At least a tenth of the probe bytes a second, so that a probe always ends.
        padding_bps = max(target_bps - current_bps, PROBE_BYTES * 8 / MAX_PROBE_SECONDS)
        probe = Probe(viewer, layer, target_bps, padding_bps, now, reported_at=now)
        self.probes[viewer] = probe
        logger.debug("probe of SSRC %d: %.0f bit/s of padding on top of %.0f",
                     viewer.ssrc, padding_bps, current_bps)
        viewer.sr_hold_until = now + MAX_PROBE_SECONDS + VERDICT_SECONDS
        self._tick(probe)
        return True

    def _tick(self, probe: Probe) -> None:
        """Send the padding due by now and a sender report every ``REPORT_EVERY``."""
        probe.handle = None
        if probe.viewer.layer is not probe.layer:  # it switched: probe again from the new layer
            self.stop(probe.viewer)
            return
        now = time.monotonic()
        elapsed = min(now - probe.started, MAX_PROBE_SECONDS)
        due = probe.padding_bps / 8 * elapsed - probe.sent_bytes
        while due > 0:
            if not probe.layer.send_padding(probe.viewer, PADDING_BYTES):
                break  # the viewer's socket is full: that is the answer coming anyway
            probe.sent_bytes += PADDING_BYTES + 12
            due -= PADDING_BYTES + 12
        done = elapsed >= MAX_PROBE_SECONDS
        if done or now - probe.reported_at >= REPORT_EVERY:
            probe.reported_at = now
            key = probe.layer.send_sender_report(probe.viewer)
            if key is not None:
                probe.report_keys[key] = probe.sent_bytes
        if done:
            probe.ended = now
        else:
            probe.handle = asyncio.get_running_loop().call_later(TICK_SECONDS, self._tick, probe)

    def on_report(self, viewer: ViewerTrack, estimator: BandwidthEstimator, lsr: int,
                  rtt: float | None, loss: float) -> None:
        """Judge ``viewer``'s probe from a receiver report (LSR key ``lsr``), if it can.

        A report answering one of the probe's sender reports with a queue building up
        (or loss) fails it at once; one answering a report sent after ``PROBE_BYTES`` of
        padding, without either, passes it.
        """
        probe = self.probes.get(viewer)
        if probe is None:
            return
        now = time.monotonic()
        sent = probe.report_keys.get(lsr)
        if sent is not None and rtt is not None:
            queued = rtt - (estimator.min_rtt if estimator.min_rtt is not None else rtt)
            logger.debug("probe of SSRC %d: %d bytes sent, %.3f s queued, loss %.3f",
                         viewer.ssrc, sent, queued, loss)
            if queued >= QUEUE_DELAY_LIMIT or loss >= LOW_LOSS:
                self._finish(probe, estimator, False, now)
            elif sent >= PROBE_BYTES:
                self._finish(probe, estimator, self._delivered(probe), now)
        elif probe.ended is not None and now - probe.ended > VERDICT_SECONDS:
            self._finish(probe, estimator, False, now)

    @staticmethod
    def _delivered(probe: Probe) -> bool:
        """Return whether the viewer's link carried the probe's rate, where its feedback says.

        With transport-wide-cc the arrival times show it: over the last second (padding
        included), the packets must not have taken much longer to arrive than to leave.
        A token bucket's burst can hide a queue from the delay for a while, not that.
        """
        twcc = probe.viewer.twcc
        if twcc is None:
            return True  # the delay and loss at the probe's end are all there is
        ratio = twcc.delivery_ratio()
        return ratio is not None and ratio >= DELIVERED_SHARE

    def fail(self, viewer: ViewerTrack, estimator: BandwidthEstimator, now: float) -> None:
        """Fail ``viewer``'s probe, if one runs (delay-based over-use showed up)."""
        probe = self.probes.get(viewer)
        if probe is not None:
            self._finish(probe, estimator, False, now)

    def _finish(self, probe: Probe, estimator: BandwidthEstimator, passed: bool, now: float) -> None:
        logger.debug("probe of SSRC %d %s", probe.viewer.ssrc, "passed" if passed else "failed")
        self.stop(probe.viewer)
        if passed:
            self.passed += 1
        else:
            self.failed += 1
        estimator.on_probe(passed, now)

    def stop(self, viewer: ViewerTrack) -> None:
        """Forget ``viewer``'s probe (it left, switched or was judged)."""
        probe = self.probes.pop(viewer, None)
        if probe is not None:
            if probe.handle is not None:
                probe.handle.cancel()
            viewer.sr_hold_until = 0.0

    def close(self) -> None:
        """Stop every probe."""
        for viewer in list(self.probes):
            self.stop(viewer)
