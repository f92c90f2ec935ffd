"""Padding probes timed by ICE binding requests (media.probe), against a real aiortc viewer.

The shaped-link tests (tests/e2e/test_shaped_links.py) show a probe failing on a link
that cannot carry it; here, on loopback, the pings themselves: a viewer answers them
within milliseconds, a probe on a link that carries it passes on its pings (not on a
receiver report, which aiortc sends only every 0.5-1.5 s), and a viewer that is gone
does not answer.
"""

from __future__ import annotations

import time

from media.estimator import BandwidthEstimator
from media.forwarder import TrackForwarder
from media.probe import PING_TIMEOUT, Prober, ice_connection, ping
from tests.media.peers import publish, running_sfu, wait_for, watch


async def test_a_viewer_answers_pings_and_a_probe_on_a_free_link_passes_on_them() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "probe", audio=False)
        viewer, session_id = await watch(sfu, "probe", audio=False)
        try:
            await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=20)
            room = sfu.rooms["probe"]
            track = room.viewers[session_id].tracks["video"]
            layer = room.forwarders["video"]
            assert isinstance(layer, TrackForwarder) and track.layer is layer
            assert ice_connection(track) is not None
            rtts = [await ping(track) for _ in range(5)]
            assert all(rtt is not None and rtt < 0.2 for rtt in rtts), rtts

            prober = Prober()
            estimator = BandwidthEstimator()
            estimator.probe_bps = 600_000
            started = time.monotonic()
            assert prober.start(track, layer, 600_000, 100_000, estimator)
            assert not prober.start(track, layer, 600_000, 100_000, estimator)  # one at a time
            await wait_for(lambda: track not in prober.probes, timeout=10)
            took = time.monotonic() - started
            assert prober.passed == 1 and prober.failed == 0
            # Judged by its pings at the padding's end, not by a receiver report a second later.
            assert took < 2.0 + 0.5, took
            assert estimator.estimate_bps == 600_000 and estimator.probe_bps is None
            assert track in prober.min_ping and prober.worst_queue < 0.2
            assert track.sr_hold_until == 0.0  # the periodic sender reports resume

            await viewer.close()
            started = time.monotonic()
            assert await ping(track) is None  # nobody answers
            assert time.monotonic() - started < PING_TIMEOUT + 0.5
        finally:
            await viewer.close()
            await publisher.close()

