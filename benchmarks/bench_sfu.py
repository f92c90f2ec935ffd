"""Benchmark the SFU's encoded forwarding against the naive decode/re-encode relay.

Run from the repository root: ``python -m benchmarks.bench_sfu [--viewers 50]``.

Two processes: this one runs the SFU (and, in the second phase, aiortc's
``MediaRelay`` of decoded frames) behind a tiny loopback HTTP signaling endpoint and
measures only its own CPU time; a client process runs the publisher (replaying a
pre-encoded 640x360 VP8 clip at 30 fps, ~1.5 Mbit/s, plus Opus) and lightweight viewers
that count and check RTP packets without decoding them. Figures printed and written to
``benchmarks/results/``: server CPU per forwarded packet and per viewer-second,
delivered frame rate and loss per viewer, p99 added forwarding delay, and the ratio of
the naive relay to the SFU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import fractions
import json
import multiprocessing
import os
import pstats
import resource
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from media import SFU, MediaSettings, RoomNotFound
from media.aiortc_hook import CountingSinkBase, ice_host_addresses, install_receiver

LOOPBACK = ["127.0.0.1"]
RESULTS = Path(__file__).parent / "results"
CLIP_SECONDS, FPS, WIDTH, HEIGHT, BITRATE = 2, 30, 640, 360, 1_500_000
TARGET_US_PER_PACKET, TARGET_DELIVERED, TARGET_P99_MS = 10.0, 0.99, 5.0


def log(message: str) -> None:
    """Print a progress line at once."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- client process: replaying publisher and counting viewers ---------------------------


def encode_clip() -> list[tuple[bytes, bool]]:
    """Encode a short noisy clip once; return (packet bytes, is keyframe) per frame."""
    import av
    import numpy as np

    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.bit_rate, codec.framerate = BITRATE, FPS
    codec.time_base = fractions.Fraction(1, FPS)
    codec.gop_size = CLIP_SECONDS * FPS
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    rng = np.random.default_rng(7)
    packets: list[tuple[bytes, bool]] = []
    for index in range(CLIP_SECONDS * FPS):
        # Coarse noise in 8x8 blocks: hard enough to need the bitrate, not more.
        blocks = rng.integers(0, 255, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
        image = np.ascontiguousarray(blocks.repeat(8, axis=0).repeat(8, axis=1))
        image[:, (index * 8) % WIDTH] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        packets += [(bytes(p), p.is_keyframe) for p in codec.encode(frame)]
    packets += [(bytes(p), p.is_keyframe) for p in codec.encode(None)]
    return packets


class ReplayTrack(MediaStreamTrack):
    """Replay pre-encoded VP8 packets at 30 fps: aiortc packetizes, never encodes."""

    kind = "video"

    def __init__(self, clip: list[tuple[bytes, bool]]) -> None:
        super().__init__()
        self.clip, self.sent = clip, 0
        self._start: float | None = None

    async def recv(self) -> Any:
        import av

        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self.sent / FPS - time.monotonic()))
        packet = av.Packet(self.clip[self.sent % len(self.clip)][0])
        packet.pts, packet.time_base = self.sent * 3000, fractions.Fraction(1, 90000)
        self.sent += 1
        return packet


class CountingSink(CountingSinkBase):
    """Count a viewer track's packets, frames and sequence gaps; check its SSRC."""

    def __init__(self) -> None:
        self.packets = self.octets = self.frames = 0
        self.first_seq: int | None = None
        self.extended = 0
        self.ssrcs: set[int] = set()
        self.last_frame_ts: int | None = None

    def on_rtp(self, packet: Any, codec: Any) -> None:
        seq = packet.sequence_number
        if self.first_seq is None:
            self.first_seq = self.extended = seq
        else:
            delta = (seq - self.extended) & 0xFFFF
            if delta < 0x8000:
                self.extended += delta
        self.ssrcs.add(packet.ssrc)
        self.packets += 1
        self.octets += len(packet.payload)
        # A frame counts once, at its last packet; a retransmitted one does not count again.
        ts = packet.timestamp
        if packet.marker and (self.last_frame_ts is None
                              or 0 < (ts - self.last_frame_ts) & 0xFFFFFFFF < 0x80000000):
            self.frames += 1
            self.last_frame_ts = ts

    def snapshot(self) -> dict[str, int]:
        expected = 0 if self.first_seq is None else self.extended - self.first_seq + 1
        return {"packets": self.packets, "frames": self.frames, "expected": expected,
                "ssrcs": len(self.ssrcs)}


async def _post(url: str, sdp: str) -> str:
    import aiohttp

    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:  # a viewer process may be ready before the publisher is
            async with http.post(url, data=sdp) as response:
                if response.status == 404 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    continue
                response.raise_for_status()
                return await response.text()


async def _connect(pc: RTCPeerConnection, url: str) -> None:
    offer = await pc.createOffer()
    with ice_host_addresses(LOOPBACK):
        await pc.setLocalDescription(offer)
    answer = await _post(url, pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


async def client_phase(base: str, viewers: int, clip: Any, inbox: Any, outbox: Any) -> None:
    """Publish (with a clip), connect viewers, then measure between start and stop."""
    loop = asyncio.get_running_loop()
    publisher, track = None, None
    if clip is not None:
        publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        track = ReplayTrack(clip)
        publisher.addTransceiver(track, direction="sendonly")
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await _connect(publisher, f"{base}/publish")
    await asyncio.sleep(1.0)
    sinks: list[dict[str, CountingSink]] = []
    pcs = []
    for index in range(viewers):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        kinds = {"video": CountingSink(), "audio": CountingSink()}
        for kind, sink in kinds.items():
            receiver = install_receiver(pc.addTransceiver(kind, direction="recvonly"), sink)
            receiver._nack = None  # count loss as it is: no retransmissions requested
        await _connect(pc, f"{base}/watch")
        pcs.append(pc)
        sinks.append(kinds)
        if (index + 1) % 10 == 0 or index + 1 == viewers:
            outbox.put(("progress", f"viewers connected: {index + 1}/{viewers}"))
    deadline = time.monotonic() + 20
    while any(s["video"].frames == 0 for s in sinks) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    outbox.put(("ready", None))
    await loop.run_in_executor(None, inbox.get)  # "start"
    before = [{k: s.snapshot() for k, s in kinds.items()} for kinds in sinks]
    sent_before = track.sent if track else 0
    await loop.run_in_executor(None, inbox.get)  # "stop"
    after = [{k: s.snapshot() for k, s in kinds.items()} for kinds in sinks]
    per_viewer = []
    for b, a in zip(before, after, strict=True):
        video = {k: a["video"][k] - b["video"][k] for k in ("packets", "frames", "expected")}
        audio = {key: a["audio"][key] - b["audio"][key] for key in ("packets", "expected")}
        per_viewer.append({
            "packets": video["packets"] + audio["packets"],
            "expected": video["expected"] + audio["expected"],
            "frames": video["frames"],
            "ssrc_ok": a["video"]["ssrcs"] == 1 and a["audio"]["ssrcs"] <= 1,
        })
    frames_sent = track.sent - sent_before if track else None
    outbox.put(("result", {"frames_sent": frames_sent, "viewers": per_viewer}))
    await asyncio.sleep(1.0)  # let the other processes take their snapshots
    for pc in pcs:
        await pc.close()
    if publisher is not None:
        await publisher.close()


def client_main(
    port: int, phases: list[tuple[str, int]], publishes: bool, inbox: Any, outbox: Any
) -> None:
    """Run one client process: per phase, its share of viewers (and maybe the publisher)."""
    clip = None
    if publishes:
        clip = encode_clip()
        bits = sum(len(data) for data, _ in clip) * 8 / CLIP_SECONDS
        outbox.put(("progress", f"clip encoded: {len(clip)} frames, {bits / 1e6:.2f} Mbit/s"))
    for mode, viewers in phases:
        asyncio.run(client_phase(f"http://127.0.0.1:{port}/{mode}", viewers, clip, inbox, outbox))


# --- server process: SFU and naive relay ------------------------------------------------


class NaiveRelay:
    """Decode the publisher once and re-encode for every viewer (aiortc MediaRelay)."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, MediaStreamTrack] = {}
        self.pcs: list[RTCPeerConnection] = []

    async def answer(self, sdp: str, publisher: bool) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs.append(pc)
        if publisher:
            pc.on("track", lambda track: self.tracks.__setitem__(track.kind, track))
        else:
            for track in self.tracks.values():
                pc.addTrack(self.relay.subscribe(track))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await pc.createAnswer()
        with ice_host_addresses(LOOPBACK):
            await pc.setLocalDescription(answer)
        return pc.localDescription.sdp

    async def packets_sent(self) -> int:
        """Return the RTP packets sent to viewers so far (aiortc's sender stats)."""
        total = 0
        for pc in self.pcs:
            for sender in pc.getSenders():
                if sender.track is None:
                    continue
                for stats in (await sender.getStats()).values():
                    if stats.type == "outbound-rtp":
                        total += stats.packetsSent
        return total

    async def close(self) -> None:
        """Close every peer connection of the relay."""
        for pc in self.pcs:
            await pc.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run both phases and return the figures."""
    sfu = SFU(MediaSettings(ice_servers=[], ice_host_addresses=LOOPBACK,
                            max_viewers_per_room=args.viewers + 1, remb_bitrate_bps=2_000_000))
    naive = NaiveRelay()

    async def sfu_publish(request: web.Request) -> web.Response:
        session = await sfu.publish("bench", await request.text(), "bench")
        return web.Response(text=session.answer_sdp)

    async def sfu_watch(request: web.Request) -> web.Response:
        try:
            session = await sfu.watch("bench", await request.text(), None)
        except RoomNotFound:
            return web.Response(status=404)
        return web.Response(text=session.answer_sdp)

    async def naive_publish(request: web.Request) -> web.Response:
        return web.Response(text=await naive.answer(await request.text(), publisher=True))

    async def naive_watch(request: web.Request) -> web.Response:
        if len(naive.tracks) < 2:
            return web.Response(status=404)
        return web.Response(text=await naive.answer(await request.text(), publisher=False))

    app = web.Application()
    app.router.add_post("/sfu/publish", sfu_publish)
    app.router.add_post("/sfu/watch", sfu_watch)
    app.router.add_post("/naive/publish", naive_publish)
    app.router.add_post("/naive/watch", naive_watch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # Measured before the client processes start, so nothing else competes with it.
    fanout = await measure_fanout(args.viewers)
    log(f"fan-out alone: {fanout:.2f} us CPU per forwarded packet, {args.viewers} viewers")
    context = multiprocessing.get_context("spawn")
    count = max(1, args.client_processes)
    outbox = context.Queue()
    inboxes = [context.Queue() for _ in range(count)]
    clients = []
    for index, inbox in enumerate(inboxes):
        # Process 0 also publishes; the viewers are spread over the processes.
        phases = [(mode, _share(total, count, index))
                  for mode, total in (("sfu", args.viewers), ("naive", args.naive_viewers))]
        client = context.Process(target=client_main, daemon=True,
                                 args=(port, phases, index == 0, inbox, outbox))
        client.start()
        clients.append(client)
    loop = asyncio.get_running_loop()
    results: dict[str, Any] = {"viewers": args.viewers, "naive_viewers": args.naive_viewers,
                               "seconds": args.seconds, "cores": os.cpu_count(),
                               "client_processes": count, "fanout_us_per_packet": fanout,
                               # Other work on the machine inflates process CPU time too.
                               "load_average_before": os.getloadavg()}

    async def packets_out(mode: str) -> int:
        if mode == "sfu":
            return int(sfu.stats("bench")["packets_out"])
        return await naive.packets_sent()

    async def receive(wanted: str) -> list[Any]:
        found: list[Any] = []
        while len(found) < count:
            kind, payload = await loop.run_in_executor(None, outbox.get)
            if kind == wanted:
                found.append(payload)
            else:
                log(payload)
        return found

    for mode, viewers in (("sfu", args.viewers), ("naive", args.naive_viewers)):
        log(f"phase {mode}: {viewers} viewers")
        await receive("ready")
        probe: deque[float] = deque(maxlen=1_000_000)
        if mode == "sfu":
            sfu.rooms["bench"].forwarders["video"].delay_probe = probe
        out0 = await packets_out(mode)
        profiler = _profiler(mode)
        for inbox in inboxes:
            inbox.put("start")
        cpu0, wall0 = time.process_time(), time.monotonic()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        for second in range(args.seconds):
            await asyncio.sleep(1)
            if (second + 1) % 5 == 0:
                log(f"phase {mode}: measuring {second + 1}/{args.seconds} s")
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        forwarded = await packets_out(mode) - out0
        for inbox in inboxes:
            inbox.put("stop")
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        parts = await receive("result")
        frames_sent = next(p["frames_sent"] for p in parts if p["frames_sent"] is not None)
        per_viewer = [v for part in parts for v in part["viewers"]]
        for viewer in per_viewer:
            viewer["delivered"] = viewer["frames"] / frames_sent if frames_sent else 0.0
            viewer["loss"] = (max(0.0, 1 - viewer["packets"] / viewer["expected"])
                              if viewer["expected"] else 1.0)
        packets = sum(v["packets"] for v in per_viewer)
        figures = {
            "cpu_seconds": cpu, "wall_seconds": wall, "forwarded_packets": forwarded,
            "delivered_packets": packets,
            # User vs kernel: on loopback, sendto also pays for delivering to the viewer.
            "user_seconds": usage.ru_utime - usage0.ru_utime,
            "system_seconds": usage.ru_stime - usage0.ru_stime,
            "context_switches": (usage.ru_nvcsw + usage.ru_nivcsw)
            - (usage0.ru_nvcsw + usage0.ru_nivcsw),
            # Voluntary: the loop slept and was woken; involuntary: preempted.
            "voluntary_context_switches": usage.ru_nvcsw - usage0.ru_nvcsw,
            "us_per_packet": cpu / forwarded * 1e6 if forwarded else None,
            "cpu_per_viewer_second": cpu / wall / max(viewers, 1),
            "frames_sent": frames_sent,
            "min_delivered": min(v["delivered"] for v in per_viewer),
            "max_loss": max(v["loss"] for v in per_viewer),
            "ssrc_ok": all(v["ssrc_ok"] for v in per_viewer),
            "per_viewer": per_viewer,
        }
        if probe:
            ordered = sorted(probe)
            figures["p99_delay_ms"] = ordered[int(len(ordered) * 0.99) - 1] * 1e3
            figures["median_delay_ms"] = statistics.median(ordered) * 1e3
        results[mode] = figures
        log(f"phase {mode}: user {figures['user_seconds']:.2f} s, "
            f"system {figures['system_seconds']:.2f} s, {forwarded} packets forwarded")
        log(f"phase {mode}: {figures['us_per_packet']:.1f} us/packet, "
            f"min delivered {figures['min_delivered']:.3f}, max loss {figures['max_loss']:.4f}")
        if mode == "sfu":
            figures["sfu_stats"] = sfu.stats("bench")
            log(f"SFU stats: {figures['sfu_stats']}")
            await sfu.close()
    results["load_average_after"] = os.getloadavg()
    for client in clients:
        client.join(timeout=30)
    await naive.close()
    await runner.cleanup()
    sfu_f, naive_f = results["sfu"], results["naive"]
    results["ratio_us_per_packet"] = naive_f["us_per_packet"] / sfu_f["us_per_packet"]
    results["ratio_cpu_per_viewer"] = (
        naive_f["cpu_per_viewer_second"] / sfu_f["cpu_per_viewer_second"]
    )
    results["targets_met"] = {
        "us_per_packet": sfu_f["us_per_packet"] <= TARGET_US_PER_PACKET,
        "delivered": sfu_f["min_delivered"] >= TARGET_DELIVERED,
        "p99_delay": sfu_f.get("p99_delay_ms", 1e9) < TARGET_P99_MS,
    }
    return results


async def measure_fanout(viewers: int, packets: int = 3000) -> float:
    """Return the CPU µs per packet of the forwarder's fan-out alone.

    Real libsrtp sessions and real loopback UDP sockets, but no peer connections: the
    viewers' senders are stand-ins carrying what ``ViewerTrack`` reads. This isolates
    the per-viewer work (copy, header rewrite, SRTP protect, sendto) from ingress,
    RTCP and the scheduling of the client processes.
    """
    import os as _os
    import socket
    import types

    import pylibsrtp
    from aiortc.codecs import CODECS
    from aiortc.rtp import RtpPacket

    from media.aiortc_hook import _connected_send
    from media.forwarder import TrackForwarder, ViewerTrack

    loop = asyncio.get_running_loop()
    codec = CODECS["video"][0]
    forwarder = TrackForwarder("video", codec, lambda: None, lambda forwarder: None)
    sinks, transports = [], []
    for index in range(viewers):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setblocking(False)
        sinks.append(sink)
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        transports.append(transport)
        session = pylibsrtp.Session(pylibsrtp.Policy(
            key=_os.urandom(44), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
        # Connected to its viewer, as the SFU's viewer egress is (Egress.bind).
        egress = types.SimpleNamespace(srtp=session, srtp_handle=session._srtp[0],
                                       send=_connected_send(transport._sock,  # type: ignore[attr-defined]
                                                            sink.getsockname()))
        forwarder.add_viewer(ViewerTrack(types.SimpleNamespace(  # type: ignore[arg-type]
            egress=egress, _ssrc=1000 + index, payload_type=96, rtx_payload_type=97,
            _rtx_ssrc=2000 + index)))
    payload = bytes([0x10, 0x00]) + _os.urandom(1100)  # a VP8 keyframe start, then data
    cpu = 0.0
    for seq in range(packets):
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=(seq // 8) * 3000,
                           ssrc=5, payload=payload)
        started = time.process_time()
        forwarder.on_rtp(packet, codec)
        cpu += time.process_time() - started
        if seq % 16 == 0:  # drain the sinks outside the measured time
            for sink in sinks:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sink.recv(2048)
    sent = sum(viewer.packets for viewer in forwarder.viewers)
    for transport in transports:
        transport.close()
    for sink in sinks:
        sink.close()
    return cpu / sent * 1e6


def _share(total: int, parts: int, index: int) -> int:
    """Return how many of ``total`` viewers process ``index`` of ``parts`` runs."""
    return total // parts + (1 if index < total % parts else 0)


def _profiler(mode: str) -> cProfile.Profile | None:
    """Profile the SFU phase when BENCH_PROFILE=1 (the figures are then inflated)."""
    if mode != "sfu" or os.environ.get("BENCH_PROFILE") != "1":
        return None
    profiler = cProfile.Profile(time.process_time)  # CPU time: other processes compete
    profiler.enable()
    return profiler


def write_results(results: dict[str, Any]) -> None:
    """Write JSON, and a PNG when matplotlib is installed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_sfu.json").write_text(json.dumps(results, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: skipping the PNG")
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    costs = [results["sfu"]["us_per_packet"], results["naive"]["us_per_packet"]]
    left.bar(["SFU", "naive relay"], costs)
    left.set_ylabel("server CPU µs per forwarded packet")
    right.plot([v["delivered"] * 100 for v in results["sfu"]["per_viewer"]], "o")
    right.set_xlabel("viewer")
    right.set_ylabel("frames delivered (%)")
    figure.tight_layout()
    figure.savefig(RESULTS / "bench_sfu.png")


def main() -> None:
    """Parse arguments, run the benchmark, print and save the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--naive-viewers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes the viewers are spread over (the first also publishes)")
    results = asyncio.run(run(parser.parse_args()))
    write_results(results)
    sfu_f, naive_f = results["sfu"], results["naive"]
    print(json.dumps({
        "viewers": results["viewers"],
        "sfu_us_per_packet": round(sfu_f["us_per_packet"], 2),
        "fanout_only_us_per_packet": round(results["fanout_us_per_packet"], 2),
        "sfu_min_delivered": round(sfu_f["min_delivered"], 4),
        "sfu_max_loss": round(sfu_f["max_loss"], 4),
        "sfu_p99_delay_ms": round(sfu_f.get("p99_delay_ms", float("nan")), 3),
        "naive_us_per_packet": round(naive_f["us_per_packet"], 2),
        "ratio_us_per_packet": round(results["ratio_us_per_packet"], 1),
        "ratio_cpu_per_viewer": round(results["ratio_cpu_per_viewer"], 1),
        "targets_met": results["targets_met"],
    }, indent=2))


if __name__ == "__main__":
    main()
