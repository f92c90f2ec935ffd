"""Probe a viewer's link with padding before switching it up a layer.

Switching a viewer to a layer its link cannot carry freezes it: the bigger keyframe and
the higher rate queue up, and by the time the reports show loss the picture has stopped
(measured before this module: 0.5-5 s behind a 300 kbit/s `tc tbf` link). So the
estimator (:mod:`media.estimator`) never switches up to find out; it asks for a probe:
padding-only RTX packets (RFC 4588: receivers count and drop them) that top the
viewer's current layer up to the next layer's rate, while it keeps getting its layer.

A probe is one paced cluster of padding at the missing rate, as long as sending
``PROBE_BITS`` at the target rate takes (0.5-2 s; at least ``MIN_PROBE_BYTES``, at most
``MAX_PROBE_BYTES``): long enough that a link which cannot carry the rate has used up a
token bucket's burst and started to queue. What
decides it is the round-trip time of the queue the padding shares with the media,
measured fast enough to stop before that queue holds more than a fraction of a
second of media:

* **ICE binding requests** (RFC 7675 consent checks, as aioice sends every few
  seconds anyway) every ``PING_EVERY`` during the probe: the request waits behind the
  padding on the viewer's link and the viewer answers at once, so each answer gives the
  queue within a ping interval plus the queue itself. Two answers in a row
  ``QUEUE_DELAY_LIMIT`` over the viewer's fastest, or one that does not come within
  ``PING_TIMEOUT``, fail the probe at once and the padding stops: the link queued.
  A probe whose pings all came back clean, the last one sent after the padding ended,
  passes. How late the probe's own timer ran while a ping was out (this process's
  event loop busy: a loaded machine) is taken off its time, and a ping out while the
  loop stalled outright (``STALL_SECONDS`` late) is not counted either way.
* **Receiver reports**, for a viewer whose ICE connection cannot be pinged (and as a
  second opinion): a sender report every ``REPORT_EVERY`` (the viewer's periodic ones
  are held meanwhile), so the receiver report answering it gives the round-trip time at
  that point of the probe: a queue (``QUEUE_DELAY_LIMIT``) or loss fails the probe; a
  clean answer to the report sent at the padding's end passes it (ping-less only).
  aiortc sends receiver reports every 0.5-1.5 s, too seldom to stop a probe in time on
  their own: padding went on into a full 400 ms queue and froze the viewer for 0.7 s.
* **Transport-wide-cc** (media.twcc), where negotiated: delay-based over-use fails the
  probe at once, and it passes only if the feedback shows the last second's packets
  arriving at ``DELIVERED_SHARE`` or more of the rate they were sent at.

No verdict within ``VERDICT_SECONDS`` of the padding's end fails it (conservative).
A failed probe backs the next one off (media.estimator).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .estimator import LOW_LOSS, BandwidthEstimator
from .forwarder import TrackForwarder, ViewerTrack

logger = logging.getLogger(__name__)

# The padding cluster: as long as it takes to send PROBE_BITS at the target rate (media
# included), within [MIN_PROBE_SECONDS, MAX_PROBE_SECONDS]. A `tc tbf` of 16 kB lets that
# much through at full speed: a link a quarter short of the target must have queued
# before the end (on 300 kbit/s topped up to ~400 kbit/s: after ~1.5 s; the pings stop
# the padding soon after the queue shows). Faster targets need less time to show it.
PROBE_BITS = 800_000
MIN_PROBE_SECONDS = 0.5
MAX_PROBE_SECONDS = 2.0
MIN_PROBE_BYTES = 30_000
MAX_PROBE_BYTES = 400_000
MIN_PADDING_BPS = 120_000
REPORT_EVERY = 0.25  # a sender report this often during a probe: the next answer is fresh
TICK_SECONDS = 0.01
PADDING_BYTES = 255  # the most one packet's padding length byte can say
QUEUE_DELAY_LIMIT = 0.06  # round-trip time over the minimum that fails a probe
PING_EVERY = 0.05
PING_TIMEOUT = 0.5  # one try (aioice's first retransmission time)
STALL_SECONDS = 0.05  # a probe's tick this late: the event loop stalled (pings meanwhile void)
MIN_PINGS = 5  # answers a probe needs to pass on pings
DELIVERED_SHARE = 0.85  # arrival rate over send rate of the last second's packets (TWCC)
VERDICT_SECONDS = 2.0  # after the last padding: an RTCP interval or two of the viewer's


@dataclass
class Probe:
    """One viewer's padding cluster and what decides it."""

    viewer: ViewerTrack
    layer: TrackForwarder
    estimator: BandwidthEstimator
    target_bps: float
    padding_bps: float
    cluster_bytes: int
    started: float
    sent_bytes: int = 0
    reported_at: float = 0.0
    ended: float | None = None
    # LSR key of each of the probe's sender reports -> padding bytes sent before it.
    report_keys: dict[int, int] = field(default_factory=dict)
    handle: asyncio.TimerHandle | None = None
    pinged_at: float = 0.0
    pings: list[float] = field(default_factory=list)  # queue delay of each answer, in order
    final_ping: float | None = None  # when the ping after the padding's end left
    pinging: bool = True  # False: the viewer cannot be pinged (receiver reports decide)
    tick_due: float = 0.0  # when the next tick should run (a later one: the loop stalled)
    lag: float = 0.0  # how late its ticks ran, summed: this process's own delays
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class Prober:
    """Run the probes of one simulcast track's viewers and judge them."""

    def __init__(self, on_verdict: Callable[[], None] | None = None) -> None:
        self.on_verdict = on_verdict  # called after each verdict (the layer policy reviews)
        self.probes: dict[ViewerTrack, Probe] = {}
        self.passed = 0
        self.failed = 0
        self.min_ping: dict[ViewerTrack, float] = {}  # each viewer's fastest ICE answer
        self.worst_queue = 0.0  # the longest queue a ping saw (s): what a probe cost
        self.stalled_at = -1.0  # when a probe's tick last found the event loop late
        self.stalls = 0  # pings not counted: the loop stalled while they were out

    def start(self, viewer: ViewerTrack, layer: TrackForwarder, target_bps: float,
              current_bps: float, estimator: BandwidthEstimator | None = None) -> bool:
        """Start topping ``viewer`` up from ``current_bps`` to ``target_bps``; False: cannot.

        A viewer without RTX (nowhere to put padding) or already probing is not probed.
        """
        if viewer in self.probes or viewer.rtx_pt is None or not viewer.active:
            return False
        now = time.monotonic()
        padding_bps = max(target_bps - current_bps, MIN_PADDING_BPS)
        seconds = min(max(PROBE_BITS / max(target_bps, 1.0), MIN_PROBE_SECONDS), MAX_PROBE_SECONDS)
        cluster = int(min(max(padding_bps / 8 * seconds, MIN_PROBE_BYTES), MAX_PROBE_BYTES))
        probe = Probe(viewer, layer, estimator or BandwidthEstimator(), target_bps, padding_bps,
                      cluster, now, reported_at=now)
        probe.pinging = ice_connection(viewer) is not None
        self.probes[viewer] = probe
        logger.debug("probe of SSRC %d: %.0f bit/s of padding on top of %.0f, %d bytes",
                     viewer.ssrc, padding_bps, current_bps, cluster)
        viewer.sr_hold_until = now + cluster * 8 / padding_bps + VERDICT_SECONDS
        self._tick(probe)
        return True

    def _tick(self, probe: Probe) -> None:
        """Send the padding due by now, a sender report every ``REPORT_EVERY``, pings."""
        probe.handle = None
        if probe.viewer.layer is not probe.layer:  # it switched: probe again from the new layer
            self.stop(probe.viewer)
            probe.estimator.probe_bps = None
            return
        now = time.monotonic()
        if probe.tick_due and now > probe.tick_due:
            probe.lag += now - probe.tick_due
            if now - probe.tick_due > STALL_SECONDS:
                self.stalled_at = now
        if probe.ended is None:
            due = min(probe.padding_bps / 8 * (now - probe.started), probe.cluster_bytes) \
                - probe.sent_bytes
            while due > 0:
                if not probe.layer.send_padding(probe.viewer, PADDING_BYTES):
                    break  # the viewer's socket is full: that is the answer coming anyway
                probe.sent_bytes += PADDING_BYTES + 12
                due -= PADDING_BYTES + 12
            done = probe.sent_bytes >= probe.cluster_bytes
            if done or now - probe.reported_at >= REPORT_EVERY:
                probe.reported_at = now
                key = probe.layer.send_sender_report(probe.viewer)
                if key is not None:
                    probe.report_keys[key] = probe.sent_bytes
            if done:
                probe.ended = now
        if probe.pinging and (probe.final_ping is None) and now - probe.pinged_at >= PING_EVERY:
            probe.pinged_at = now
            if probe.ended is not None:
                probe.final_ping = now
            task = asyncio.ensure_future(self._ping(probe, final=probe.ended is not None))
            probe.tasks.add(task)
            task.add_done_callback(probe.tasks.discard)
        if probe.ended is not None and now - probe.ended > VERDICT_SECONDS:
            logger.debug("probe of SSRC %d: no verdict", probe.viewer.ssrc)
            self._finish(probe, False, now)
            return
        wait = TICK_SECONDS if probe.ended is None else PING_EVERY
        probe.tick_due = now + wait
        probe.handle = asyncio.get_running_loop().call_later(wait, self._tick, probe)

    async def _ping(self, probe: Probe, final: bool) -> None:
        """Time one ICE binding request to the viewer and judge the probe by it."""
        sent = time.monotonic()
        lag = probe.lag
        rtt = await ping(probe.viewer)
        if self.probes.get(probe.viewer) is not probe:
            return  # judged (or stopped) meanwhile
        now = time.monotonic()
        # The time this process's busy event loop added (a loaded machine) is no queue.
        lag = probe.lag - lag + max(now - probe.tick_due, 0.0)
        if self.stalled_at >= sent or now - probe.tick_due > STALL_SECONDS:
            # This process stalled while the ping was out (a loaded machine): its time
            # says nothing of the viewer's link. The next ping asks again.
            self.stalls += 1
            if final:
                probe.final_ping = None
            return
        if rtt is None:
            if ice_connection(probe.viewer) is None:  # gone: the reports decide
                probe.pinging = False
                return
            rtt = PING_TIMEOUT
        fastest = self.min_ping.get(probe.viewer)
        if rtt < PING_TIMEOUT:
            fastest = self.min_ping[probe.viewer] = rtt if fastest is None else min(fastest, rtt)
        queued = max(rtt - (fastest if fastest is not None else rtt) - lag, 0.0)
        self.worst_queue = max(self.worst_queue, queued)
        probe.pings.append(queued)
        if rtt >= PING_TIMEOUT or queued >= 2.5 * QUEUE_DELAY_LIMIT or (
                len(probe.pings) >= 2 and min(probe.pings[-2:]) >= QUEUE_DELAY_LIMIT):
            logger.debug("probe of SSRC %d: %d bytes sent, pings queued %.3f s",
                         probe.viewer.ssrc, probe.sent_bytes, queued)
            self._finish(probe, False, now)
        elif final and len(probe.pings) >= MIN_PINGS:
            # The answer to the ping sent after the padding's end, every answer clean.
            self._finish(probe, self._delivered(probe), now)

    def on_report(self, viewer: ViewerTrack, estimator: BandwidthEstimator, lsr: int,
                  rtt: float | None, loss: float) -> None:
        """Judge ``viewer``'s probe from a receiver report (LSR key ``lsr``), if it can.

        A report answering one of the probe's sender reports with a queue building up
        (or loss) fails it at once; without pings, one answering the report sent at the
        end of the padding, without either, passes it.
        """
        probe = self.probes.get(viewer)
        if probe is None:
            return
        probe.estimator = estimator
        now = time.monotonic()
        sent = probe.report_keys.get(lsr)
        if sent is not None and rtt is not None:
            queued = rtt - (estimator.min_rtt if estimator.min_rtt is not None else rtt)
            if now - self.stalled_at < rtt + STALL_SECONDS:
                queued = 0.0  # this process stalled meanwhile: not the viewer's queue
            logger.debug("probe of SSRC %d: %d bytes sent, %.3f s queued, loss %.3f",
                         viewer.ssrc, sent, queued, loss)
            if queued >= QUEUE_DELAY_LIMIT or loss >= LOW_LOSS:
                self._finish(probe, False, now)
            elif sent >= probe.cluster_bytes and not probe.pinging:
                self._finish(probe, self._delivered(probe), now)
        elif probe.ended is not None and now - probe.ended > VERDICT_SECONDS:
            self._finish(probe, False, now)

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
            probe.estimator = estimator
            self._finish(probe, False, now)

    def _finish(self, probe: Probe, passed: bool, now: float) -> None:
        logger.debug("probe of SSRC %d %s after %.2f s, %d bytes, pings %s", probe.viewer.ssrc,
                     "passed" if passed else "failed", now - probe.started, probe.sent_bytes,
                     [round(q, 3) for q in probe.pings])
        self.stop(probe.viewer)
        if passed:
            self.passed += 1
        else:
            self.failed += 1
        probe.estimator.on_probe(passed, now)
        if self.on_verdict is not None:
            self.on_verdict()  # switch up now, or probe again, not at the next review

    def stop(self, viewer: ViewerTrack) -> None:
        """Forget ``viewer``'s probe (it left, switched or was judged)."""
        probe = self.probes.pop(viewer, None)
        if probe is not None:
            if probe.handle is not None:
                probe.handle.cancel()
            for task in list(probe.tasks):
                task.cancel()
            viewer.sr_hold_until = 0.0

    def forget(self, viewer: ViewerTrack) -> None:
        """Forget everything about a viewer that left."""
        self.stop(viewer)
        self.min_ping.pop(viewer, None)

    def close(self) -> None:
        """Stop every probe."""
        for viewer in list(self.probes):
            self.stop(viewer)


def ice_connection(viewer: ViewerTrack) -> Any | None:
    """Return the aioice connection ``viewer``'s media leaves on, if it has a nominated pair."""
    with contextlib.suppress(AttributeError):
        connection = viewer.sender.transport.transport._connection
        if connection._nominated and connection.remote_password:
            return connection
    return None


async def ping(viewer: ViewerTrack) -> float | None:
    """Return the round-trip time of one ICE binding request to ``viewer`` (None: no answer).

    The request is a consent check (RFC 7675) on the nominated pair, as aioice sends
    every few seconds: the viewer answers it at once, so the time is that of the path
    to it, queue included.
    """
    connection = ice_connection(viewer)
    if connection is None:
        return None
    from aioice import stun  # aiortc's ICE library

    pair = next(iter(connection._nominated.values()))
    request = connection.build_request(pair, nominate=False)
    started = time.monotonic()
    try:
        await pair.protocol.request(request, pair.remote_addr,
                                    integrity_key=connection.remote_password.encode("utf8"),
                                    retransmissions=0)
    except (stun.TransactionError, OSError, ConnectionError, AttributeError):
        return None
    return time.monotonic() - started
