"""Benchmark a relay hop (media/relay.py) and what a second worker adds.

Run from the repository root: ``python -m benchmarks.bench_cluster [--viewers 40]``.

Server processes (spawned): an *origin* SFU that takes the publisher and a *relay* SFU
that subscribes once to the origin over WHEP (``media.relay.open_relay``, the code the
cluster uses between workers and nodes) and fans out locally. Each reports its own CPU
time. This process publishes a pre-encoded 640x360 VP8 clip (30 fps, ~1.5 Mbit/s; no
encoding while measuring) and runs counting viewers (no decoding).

1. Hop: one viewer on the origin and one on the relay record when each packet arrives
   (matched by payload); the difference is the delay the hop adds (p50/p99). CPU per
   relayed packet: the relay's CPU over the packets it took in, and the origin's CPU
   per packet forwarded (the relay is one viewer to it).
2. Workers: the same viewers on one worker, then split over two (origin + relay, as
   SO_REUSEPORT spreads them); viewers per core = viewers / busiest process's CPU share,
   summed over the workers: a projection from measured per-viewer cost, not a
   saturation run. Loss is checked at the measured load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from benchmarks.bench_sfu import CountingSink, ReplayTrack, encode_clip, log
from media import SFU, MediaSettings, RoomNotFound
from media.aiortc_hook import ice_host_addresses, install_receiver

LOOPBACK = ["127.0.0.1"]
RESULTS = Path(__file__).parent / "results"
ROOM = "bench"
TARGET_HOP_P99_MS, TARGET_WORKER_RATIO = 5.0, 1.8


# --- server processes -----------------------------------------------------------------


def server_main(role: str, port: int, origin: str | None) -> None:
    """Run an origin or relay SFU behind loopback WHIP/WHEP endpoints until killed."""
    import uvloop

    uvloop.run(_serve(role, port, origin))


async def _serve(role: str, port: int, origin: str | None) -> None:
    sfu = SFU(MediaSettings(ice_servers=[], ice_host_addresses=LOOPBACK, max_viewers_per_room=2000))
    runner = web.AppRunner(build_app(sfu, role, origin))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def build_app(sfu: SFU, role: str, origin: str | None) -> web.Application:
    """Return the loopback WHIP/WHEP endpoints of an origin or relay SFU, and its stats."""
    from media.relay import open_relay

    lock = asyncio.Lock()

    async def subscribe(offer: str) -> str:
        async with aiohttp.ClientSession() as http, http.post(f"{origin}/watch", data=offer) as resp:
            resp.raise_for_status()
            return await resp.text()

    async def publish(request: web.Request) -> web.Response:
        session = await sfu.publish(ROOM, await request.text(), "bench")
        return web.Response(text=session.answer_sdp)

    async def watch(request: web.Request) -> web.Response:
        offer = await request.text()
        if role == "relay":
            async with lock:
                if ROOM not in sfu.rooms:
                    await open_relay(sfu, ROOM, "origin", subscribe)
        try:
            session = await sfu.watch(ROOM, offer, None)
        except RoomNotFound:
            return web.Response(status=404)
        return web.Response(text=session.answer_sdp)

    async def stats(request: web.Request) -> web.Response:
        room = sfu.rooms.get(ROOM)
        counters = room.stats() if room else None
        return web.json_response({
            "cpu": time.process_time(),
            "packets_in": counters.packets_in if counters else 0,
            "packets_out": counters.packets_out if counters else 0,
            "viewers": len(room.viewers) if room else 0,
        })

    app = web.Application()
    app.router.add_post("/publish", publish)
    app.router.add_post("/watch", watch)
    app.router.add_get("/stats", stats)
    return app


# --- this process: publisher and viewers ---------------------------------------------


class ArrivalSink(CountingSink):
    """Count like the SFU benchmark's sink, and note when each payload arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[int, float] = {}

    def on_rtp(self, packet: Any, codec: Any) -> None:
        self.arrivals[hash(packet.payload)] = time.perf_counter()
        super().on_rtp(packet, codec)


async def connect(pc: RTCPeerConnection, url: str) -> None:
    with ice_host_addresses(LOOPBACK):
        await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:
            async with http.post(url, data=pc.localDescription.sdp) as resp:
                if resp.status == 404 and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                    continue
                resp.raise_for_status()
                answer = await resp.text()
                break
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


async def viewer(url: str, sink_type: type[CountingSink] = CountingSink) -> tuple[RTCPeerConnection, CountingSink]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    sink = sink_type()
    receiver = install_receiver(pc.addTransceiver("video", direction="recvonly"), sink)
    receiver._nack = None  # loss counted as it is
    await connect(pc, url)
    return pc, sink


async def stats(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/stats") as resp:
        return dict(await resp.json())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def measure_hop(origin: str, relay: str, seconds: float) -> dict[str, Any]:
    """Return the hop's added delay and the CPU per packet at origin and relay."""
    direct_pc, direct = await viewer(f"{origin}/watch", ArrivalSink)
    relayed_pc, relayed = await viewer(f"{relay}/watch", ArrivalSink)
    await asyncio.sleep(2.0)
    o0, r0 = await stats(origin), await stats(relay)
    await asyncio.sleep(seconds)
    o1, r1 = await stats(origin), await stats(relay)
    assert isinstance(direct, ArrivalSink) and isinstance(relayed, ArrivalSink)
    delays = [(relayed.arrivals[key] - at) * 1000 for key, at in direct.arrivals.items()
              if key in relayed.arrivals]
    for pc in (direct_pc, relayed_pc):
        await pc.close()
    relay_in = r1["packets_in"] - r0["packets_in"]
    origin_out = o1["packets_out"] - o0["packets_out"]
    return {
        "matched_packets": len(delays),
        "hop_delay_p50_ms": percentile(delays, 50), "hop_delay_p99_ms": percentile(delays, 99),
        "hop_delay_mean_ms": statistics.fmean(delays),
        # The relay's CPU covers taking a packet in and sending it to its one viewer.
        "relay_us_per_packet_in": (r1["cpu"] - r0["cpu"]) / max(relay_in, 1) * 1e6,
        "origin_us_per_packet_out": (o1["cpu"] - o0["cpu"]) / max(origin_out, 1) * 1e6,
        "origin_packets_in": o1["packets_in"] - o0["packets_in"], "relay_packets_in": relay_in,
    }


async def measure_workers(urls: list[str], viewers: int, seconds: float) -> dict[str, Any]:
    """Spread `viewers` over the workers at `urls`; return CPU shares, capacity and delivery."""
    peers: list[tuple[RTCPeerConnection, CountingSink]] = []
    for index in range(viewers):
        peers.append(await viewer(f"{urls[index % len(urls)]}/watch"))
    await asyncio.sleep(2.0)
    before = [await stats(u) for u in urls]
    snap0 = [s.snapshot() for _, s in peers]
    started = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - started
    after = [await stats(u) for u in urls]
    snap1 = [s.snapshot() for _, s in peers]
    for pc, _ in peers:
        await pc.close()
    got = sum(b["packets"] - a["packets"] for a, b in zip(snap0, snap1, strict=True))
    expected = sum(b["expected"] - a["expected"] for a, b in zip(snap0, snap1, strict=True))
    workers = []
    for url, a, b in zip(urls, before, after, strict=True):
        share = (b["cpu"] - a["cpu"]) / elapsed
        # The origin (urls[0]) also serves the relay, subscribed since phase 1: not a viewer.
        local = b["viewers"] - (1 if url == urls[0] else 0)
        workers.append({"url": url, "cpu_share": share, "viewers": local,
                        "viewers_per_core": local / share if share > 0 else 0.0})
    return {"viewers": viewers, "delivered": got / max(expected, 1), "workers": workers,
            "capacity_viewers": sum(w["viewers_per_core"] for w in workers)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ports = [_free_port(), _free_port()]
    origin, relay = (f"http://127.0.0.1:{p}" for p in ports)
    procs = [context.Process(target=server_main, args=("origin", ports[0], None), daemon=True),
             context.Process(target=server_main, args=("relay", ports[1], origin), daemon=True)]
    for proc in procs:
        proc.start()
    results: dict[str, Any] = {"cores": os.cpu_count(), "load_average_before": os.getloadavg(),
                               "seconds": args.seconds}
    try:
        log("encoding the clip")
        clip = encode_clip()
        publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        publisher.addTransceiver(ReplayTrack(clip), direction="sendonly")
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await connect(publisher, f"{origin}/publish")
        await asyncio.sleep(1.0)
        log("phase 1: one relay hop")
        results["hop"] = await measure_hop(origin, relay, args.seconds)
        log(json.dumps(results["hop"]))
        log(f"phase 2: {args.viewers} viewers on one worker")
        results["one_worker"] = await measure_workers([origin], args.viewers, args.seconds)
        log(json.dumps(results["one_worker"]))
        log(f"phase 2: {args.viewers} viewers over two workers (origin + relay)")
        results["two_workers"] = await measure_workers([origin, relay], args.viewers, args.seconds)
        log(json.dumps(results["two_workers"]))
        await publisher.close()
    finally:
        for proc in procs:
            proc.kill()
    one, two = results["one_worker"]["capacity_viewers"], results["two_workers"]["capacity_viewers"]
    results["worker_ratio"] = two / one if one else 0.0
    results["load_average_after"] = os.getloadavg()
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    hop = results["hop"]
    print(f"relay hop: +{hop['hop_delay_p50_ms']:.2f} ms p50, +{hop['hop_delay_p99_ms']:.2f} ms p99 "
          f"(target p99 <= {TARGET_HOP_P99_MS} ms) over {hop['matched_packets']} packets")
    print(f"CPU per packet: relay {hop['relay_us_per_packet_in']:.1f} us in (+1 viewer out), "
          f"origin {hop['origin_us_per_packet_out']:.1f} us per packet out")
    one, two = results["one_worker"], results["two_workers"]
    print(f"1 worker: {one['capacity_viewers']:.0f} viewers per full core (delivered {one['delivered']:.4f}); "
          f"2 workers: {two['capacity_viewers']:.0f} on two cores (delivered {two['delivered']:.4f}); "
          f"ratio {results['worker_ratio']:.2f}x (target >= {TARGET_WORKER_RATIO}x)")
    print(f"load average before/after: {results['load_average_before']} / {results['load_average_after']}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "bench_cluster.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"written: {path}")
    with contextlib.suppress(Exception):
        _plot(results, RESULTS / "bench_cluster.png")


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    labels = ["1 worker", "2 workers"]
    values = [results["one_worker"]["capacity_viewers"], results["two_workers"]["capacity_viewers"]]
    ax.bar(labels, values)
    ax.set_ylabel("viewers at 100 % CPU (projected)")
    ax.set_title(f"ratio {results['worker_ratio']:.2f}x, hop p99 +{results['hop']['hop_delay_p99_ms']:.1f} ms")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
