"""Benchmark simulcast forwarding (a layer per viewer) against single-layer forwarding.

Run from the repository root: ``python -m benchmarks.bench_simulcast [--viewers 50 200]``.

In one process and one run, for each viewer count: the CPU per forwarded packet of a
single-layer room (``TrackForwarder``) and of a simulcast room (``SimulcastForwarder``,
three layers at 1:2:6 packets, the viewers spread over them by their policies: a third
pinned low, a third on the middle layer by their bandwidth estimate, a third high).
Real libsrtp sessions and real loopback UDP sockets as in ``bench_sfu.measure_fanout``;
the simulcast figure includes the layer measurement the receiver does per packet. A
further figure: the simulcast room with every viewer numbering its packets for
transport-wide congestion control (the one-byte header extension and a send-time
record per packet, media.twcc), as Chromium viewers negotiate it.
With ``--temporal`` a third figure: the simulcast room again, its VP8 payloads carrying
three temporal layers (TIDs 0, 2, 1, 2 as Chromium sends them), so each layer also has
its thinned copies (media/temporal.py), and a quarter of the viewers, auto with an
estimate below the low layer's rate, on its TID 0 rung.
Also: how long an auto viewer takes to leave the top layer after its link starts
losing packets, counted in receiver reports (the SFU's reaction; the viewer's time on
the old layer then depends on the publisher's keyframe latency, measured end to end in
tests/e2e/test_adaptive.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import time
import types
from typing import Any

import pylibsrtp
from aiortc.codecs import CODECS
from aiortc.rtp import RtpPacket

from media.aiortc_hook import _connected_send
from media.forwarder import TrackForwarder, ViewerTrack
from media.layers import LayerPolicy, SimulcastForwarder
from media.simulcast import LayerSelector
from media.temporal import rung_key

LAYERS = (("q", 11, 1, 150_000), ("h", 12, 2, 500_000), ("f", 13, 6, 1_500_000))  # rid, ssrc, packets/frame, bps


async def viewers(count: int, twcc: bool = False) -> tuple[list[ViewerTrack], list[Any], list[socket.socket]]:
    """Make ``count`` viewer tracks with real SRTP sessions sending to loopback sinks.

    With ``twcc`` each viewer negotiated transport-wide-cc (a simulcast room numbers
    its packets, media.twcc).
    """
    loop = asyncio.get_running_loop()
    tracks, transports, sinks = [], [], []
    for index in range(count):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        sinks.append(sink)
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        transports.append(transport)
        session = pylibsrtp.Session(pylibsrtp.Policy(
            key=os.urandom(44), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        egress = types.SimpleNamespace(srtp=session, srtp_handle=session._srtp[0],
                                       send=_connected_send(transport._sock, sink.getsockname()))
        tracks.append(ViewerTrack(types.SimpleNamespace(  # type: ignore[arg-type]
            egress=egress, _ssrc=1000 + index, payload_type=96, rtx_payload_type=97,
            _rtx_ssrc=2000 + index, twcc_extension_id=3 if twcc else None)))
    return tracks, transports, sinks


def drain(sinks: list[socket.socket]) -> None:
    for sink in sinks:
        with contextlib.suppress(BlockingIOError):
            while True:
                sink.recv(2048)


def temporal_payload(frame: int, body: bytes) -> bytes:
    """Return a VP8 payload whose descriptor has a picture id, TL0PICIDX and TID (L1T3)."""
    tid = (0, 2, 1, 2)[frame % 4]
    return bytes([0x90, 0xE0, 0x80 | (frame >> 8) & 0x7F, frame & 0xFF, (frame // 4) & 0xFF,
                  tid << 6 | 0x20]) + body


async def measure(count: int, simulcast: bool, frames: int, temporal: bool = False,
                  twcc: bool = False) -> dict[str, float]:
    """Return CPU µs per forwarded packet (and per ingress packet) for one room."""
    codec = CODECS["video"][0]
    tracks, transports, sinks = await viewers(count, twcc)
    payload = base = bytes([0x10, 0x00]) + os.urandom(1100)  # a VP8 keyframe start, then data
    policies = ("low", "auto", "high", "thin") if temporal else ("low", "auto", "high")
    selector = LayerSelector(tuple(rid for rid, *_ in LAYERS))
    if simulcast:
        sink: Any = SimulcastForwarder(codec, lambda ssrc: None, lambda forwarder: None)
        sink.selector = selector
        for rid, ssrc, _, bps in LAYERS:
            selector.learn(ssrc, rid)
            layer = selector.layers[ssrc]
            layer.avg_bps = layer.peak_bps = bps
            layer.pixels = {"q": 1, "h": 4, "f": 16}[rid]
        mix = [(ssrc, n) for _, ssrc, n, _ in LAYERS]
    else:
        sink = TrackForwarder("video", codec, lambda: None, lambda forwarder: None)
        mix = [(LAYERS[-1][1], LAYERS[-1][2])]
    seqs = {ssrc: 0 for ssrc, _ in mix}
    cpu = 0.0
    packets_in = 0
    now = time.monotonic()
    for frame in range(frames):
        if temporal:  # the same keyframe start (P bit 0) and data behind the descriptor
            payload = temporal_payload(frame, base[1:])
        for ssrc, per_frame in mix:
            for _ in range(per_frame):
                seq = seqs[ssrc]
                seqs[ssrc] = seq + 1
                packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=frame * 3000,
                                   ssrc=ssrc, payload=payload)
                started = time.process_time()
                if simulcast:
                    selector.on_packet(ssrc, len(payload), now + frame / 30)
                sink.on_rtp(packet, codec)
                cpu += time.process_time() - started
                packets_in += 1
        if frame == 0:  # the viewers join once every layer has started
            for index, track in enumerate(tracks):
                if simulcast:
                    quality = policies[index % len(policies)]
                    policy = LayerPolicy("auto" if quality == "thin" else quality)
                    # The middle layer fits; "thin": less than the low layer (its TID 0 rung).
                    policy.estimator.estimate_bps = 100_000 if quality == "thin" else 600_000
                    sink.add_viewer(track, policy)
                else:
                    sink.add_viewer(track)
        if temporal and frame == 30:  # the rungs are measured: the thin viewers move down
            sink.review()
        if frame % 2 == 0:
            drain(sinks)
    sent = sum(track.packets for track in tracks)
    for transport in transports:
        transport.close()
    for s in sinks:
        s.close()
    result = {"us_per_packet_out": cpu / sent * 1e6, "us_per_packet_in": cpu / packets_in * 1e6,
              "packets_out": sent}
    if simulcast:
        result["viewers_per_layer"] = sink.viewers_per_layer()
        result["viewers_on_tid0"] = sum(1 for track in tracks if sink.ssrc_of(track) == rung_key(11, 0))
    return result


def reports_to_switch_down(loss: float = 0.3) -> int:
    """Return how many receiver reports with ``loss`` an auto viewer at the top takes to leave it."""
    from media.estimator import BandwidthEstimator
    from media.simulcast import Layer

    ranked = [Layer(rid, ssrc, avg_bps=bps, peak_bps=bps) for rid, ssrc, _, bps in LAYERS]
    policy = LayerPolicy("auto", BandwidthEstimator())
    current = ranked[-1]
    for report in range(1, 20):
        policy.estimator.on_loss(loss, float(report), current.avg_bps, None)
        if policy.choose(ranked) is not current:
            return report
    return -1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"frames": args.frames, "rooms": {}}
    for count in args.viewers:
        single = await measure(count, False, args.frames)
        layered = await measure(count, True, args.frames)
        numbered = await measure(count, True, args.frames, twcc=True)
        results["rooms"][count] = {
            "single_us_per_packet": round(single["us_per_packet_out"], 2),
            "simulcast_us_per_packet": round(layered["us_per_packet_out"], 2),
            "ratio": round(layered["us_per_packet_out"] / single["us_per_packet_out"], 3),
            # Every viewer numbering its packets for transport-wide congestion control.
            "simulcast_twcc_us_per_packet": round(numbered["us_per_packet_out"], 2),
            "twcc_ratio": round(numbered["us_per_packet_out"] / single["us_per_packet_out"], 3),
            "simulcast_viewers_per_layer": layered["viewers_per_layer"],
        }
        if args.temporal:
            thinned = await measure(count, True, args.frames, temporal=True)
            results["rooms"][count].update({
                "temporal_us_per_packet": round(thinned["us_per_packet_out"], 2),
                "temporal_ratio": round(thinned["us_per_packet_out"] / single["us_per_packet_out"], 3),
                "temporal_viewers_on_tid0": thinned["viewers_on_tid0"],
            })
    results["reports_to_switch_down_at_30pct_loss"] = reports_to_switch_down()
    return results


def main() -> None:
    """Parse arguments, run the benchmark, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--temporal", action="store_true",
                        help="also measure a room whose VP8 carries temporal layers")
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
