"""Benchmark a relay hop (media/relay.py), what a second worker adds, and the load generator.

Run from the repository root: ``python -m benchmarks.bench_cluster [--viewers 200] [--budget 0.5]``
(``--quick``: tiny sizes, to exercise every phase in under a minute).

Server processes (spawned): an *origin* SFU that takes the publisher and a *relay* SFU
that subscribes once to the origin over WHEP (``media.relay.open_relay``, the code the
cluster uses between workers and nodes) and fans out locally: two workers of a host, as
SO_REUSEPORT spreads viewers over them. Each reports its own CPU time. This process
publishes a pre-encoded 640x360 VP8 clip (30 fps, ~1.5 Mbit/s, plus Opus; no encoding
while measuring) and runs the viewers.

1. Hop (``--hop-runs`` times): one timed lean viewer on the origin and one on the relay;
   the kernel's arrival stamps of the same packet (matched by payload) in the window,
   relayed minus direct, is the delay the hop adds (p50/p99), split with both servers'
   traces (``/trace``) into origin order, the way to the relay's forwarder, the relay's
   fan-out and the kernel. CPU per relayed packet: the relay's CPU over the packets it
   took in, and the origin's CPU per packet forwarded (the relay is one viewer to it).
2. Client: this process's CPU per received packet with counting aiortc viewers (the
   baseline), then with lean viewers (``benchmarks/lean.py``: real ICE/DTLS, media
   counted from the socket without decrypting), and the viewers one client core runs.
3. Delay: ``--viewers`` lean viewers on one worker, then split over two; a few of them
   timed: publisher send to kernel arrival at the viewer, per packet (p50/p99), split
   with each worker's trace into socket wait (working / waiting for a core), ingress,
   place in the fan-out and kernel (:func:`summarize`); the SFU's own probe per worker
   (the issue's measure), garbage collections and sender-report rounds; each worker's
   CPU share (viewers per core projected from CPU per viewer). ``--pace 2.5`` paces the
   publisher as libwebrtc does (a keyframe spread out rather than sent back to back).
4. Saturation (measured): each worker in its own cgroup capped at ``--budget`` cores;
   viewers added in steps until loss starts (noting where a worker passes 95 % of its
   budget), for one worker and for two: viewers at 0 % loss, per core, and the 2-vs-1
   ratio. Skipped, saying why, where no cgroup can be created.
5. Projection (not measured): viewers a show reaches on N nodes of this kind, from the
   measured per-viewer and per-relay costs, and where a flat fan-out from the origin stops.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import multiprocessing
import os
import statistics
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from benchmarks import cpulimit
from benchmarks.bench_sfu import CountingSink, ReplayTrack, encode_clip, log
from benchmarks.cpulimit import CpuLimit
from benchmarks.lean import LeanReceiver, LeanViewer, SendLog, udp_socket_drops
from media import SFU, MediaSettings, RoomNotFound
from media.aiortc_hook import ice_host_addresses, install_receiver

LOOPBACK = ["127.0.0.1"]
RESULTS = Path(__file__).parent / "results"
ROOM = "bench"
TARGET_HOP_P99_MS, TARGET_WORKER_RATIO, TARGET_FANOUT_P99_MS, TARGET_CLIENT_VIEWERS = 5.0, 1.8, 5.0, 500
JOINS_AT_ONCE = 8
STREAM_BPS = 1_500_000  # the clip's target rate (bench_sfu.BITRATE); --pace multiplies it
PHASES = ("hop", "client", "delay", "saturation")
SATURATED_SHARE = 0.95  # a server using this much of its budget is saturated (reported beside loss)
SATURATION_STEPS = 12


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
            "drops": counters.drops if counters else 0,
            "bytes_in": counters.bytes_in if counters else 0,
        })

    async def probe(request: web.Request) -> web.Response:
        """Return the SFU's own fan-out delay (a video packet in to its last sendto) since the last call."""
        room = sfu.rooms.get(ROOM)
        forwarder = room.forwarders.get("video") if room else None
        if forwarder is None:
            return web.json_response({"samples": 0})
        values = list(forwarder.delay_probe or ())
        forwarder.delay_probe = deque(maxlen=1_000_000)
        if not values:
            return web.json_response({"samples": 0})
        return web.json_response({"samples": len(values), "p50_ms": percentile(values, 50) * 1e3,
                                  "p99_ms": percentile(values, 99) * 1e3})

    trace: dict[str, Any] = {"t_in": 0, "t_rx": 0, "records": [], "ingress": [], "gc": [], "reports": [], "ssrcs": set()}
    import aioice

    hooked = aioice.ice.Connection.data_received

    def data_received(self: Any, data: bytes, component: int) -> None:
        """Note when this process took a datagram from a socket (0 again once it is handled)."""
        trace["t_rx"] = time.time_ns()
        hooked(self, data, component)
        trace["t_rx"] = 0

    collecting: dict[str, int] = {}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        """Note each garbage collection: (generation, ns it started, ns it took)."""
        if phase == "start":
            collecting["at"] = time.time_ns()
        elif "at" in collecting:
            at = collecting.pop("at")
            trace["gc"].append((info["generation"], at, time.time_ns() - at))

    def install_hooks() -> None:
        """Hook this process's datagram reads and garbage collections, once tracing is asked for."""
        if not trace.get("hooked"):
            trace["hooked"] = True
            aioice.ice.Connection.data_received = data_received
            gc.callbacks.append(on_gc)

    async def remove_hooks(app: web.Application) -> None:
        if trace.get("hooked"):
            aioice.ice.Connection.data_received = hooked
            gc.callbacks.remove(on_gc)

    def traced_on_rtp(forwarder: Any) -> None:
        """Note when each publisher packet enters the forwarder (its fan-out starts)."""
        original = forwarder.on_rtp

        def on_rtp(packet: Any, codec: Any) -> None:
            # t_rx: the datagram's read, when the ingress fast path handed it over in that
            # callback (0: it took aiortc's queued path); this thread's CPU time, to tell a
            # wait spent working from one spent waiting for a core.
            trace["t_in"] = now = time.time_ns()
            cpu = time.thread_time_ns()
            original(packet, codec)
            trace["ingress"].append((packet.ssrc, packet.sequence_number, now, trace["t_rx"], cpu,
                                     time.time_ns(), time.thread_time_ns()))

        on_rtp.traced = True  # type: ignore[attr-defined]
        forwarder.on_rtp = on_rtp

    def traced_reports(forwarder: Any) -> None:
        """Time what a round of sender reports holds the loop for: each chunk where they go out in chunks."""
        name = "_send_report_chunk" if hasattr(forwarder, "_send_report_chunk") else "send_sender_reports"
        original = getattr(forwarder, name)

        def send(*args: Any) -> None:
            started = time.time_ns()
            original(*args)
            trace["reports"].append((forwarder.kind, started, time.time_ns() - started, len(forwarder.viewers)))

        setattr(forwarder, name, send)

    def traced_send(viewer: Any) -> None:
        """Note when the fan-out calls send for this viewer, and for which packet (header in clear)."""
        original, ssrc = viewer.send, viewer.ssrc

        def send(data: Any) -> None:
            trace["records"].append((ssrc, data[2] << 8 | data[3], trace["t_in"], time.time_ns()))
            original(data)

        viewer.send = send

    async def trace_packets(request: web.Request) -> web.Response:
        """POST {"ssrcs": [...]} (or {"all": true}): time these viewers' video packets; GET: the records since.

        A record is (SSRC, sequence number as the viewer gets it, ns the packet entered the
        forwarder, ns its send for this viewer started), CLOCK_REALTIME like the clients'.
        Only the named viewers' sends are wrapped: the others' cost does not change. Also
        every video packet's (SSRC, sequence number, ns it entered the forwarder) as received.
        """
        room = sfu.rooms.get(ROOM)
        forwarder = room.forwarders.get("video") if room else None
        if request.method == "GET":
            records, trace["records"] = trace["records"], []
            ingress, trace["ingress"] = trace["ingress"], []
            collections, trace["gc"] = trace["gc"], []
            reports, trace["reports"] = trace["reports"], []
            return web.json_response({"records": records, "ingress": ingress, "gc": collections,
                                      "reports": reports})
        if forwarder is None:
            return web.json_response({"traced": 0})
        install_hooks()
        if not getattr(forwarder.on_rtp, "traced", False):
            traced_on_rtp(forwarder)
            for each in room.forwarders.values():  # how long each round of sender reports holds the loop
                traced_reports(each)
        body = await request.json()
        wanted = {v.ssrc for v in forwarder.viewers} if body.get("all") else set(body["ssrcs"])
        for viewer in forwarder.viewers:
            if viewer.ssrc in wanted and viewer.ssrc not in trace["ssrcs"]:
                trace["ssrcs"].add(viewer.ssrc)
                traced_send(viewer)
        return web.json_response({"traced": len(wanted & trace["ssrcs"])})

    app = web.Application()
    app.on_cleanup.append(remove_hooks)
    app.router.add_route("*", "/trace", trace_packets)
    app.router.add_post("/publish", publish)
    app.router.add_post("/watch", watch)
    app.router.add_get("/stats", stats)
    app.router.add_get("/probe", probe)
    return app


# --- this process: publisher and viewers ---------------------------------------------


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
    return await _get(f"{url}/stats")


async def _get(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return dict(await resp.json())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure_hop(origin: str, relay: str, seconds: float) -> dict[str, Any]:
    """Return the hop's added delay, where it goes, and the CPU per packet at origin and relay.

    One timed lean viewer on the origin and one on the relay: the kernel's arrival stamps
    (SO_TIMESTAMPNS) of the same publisher packet at both, so this process's own scheduling
    is not in the figure. Both servers trace every viewer's sends and their ingress
    (``/trace``), which splits the hop into: the origin sending to the relay later than to
    the direct viewer (loop order), the way to the relay's forwarder (loopback, the relay's
    socket wait, its ingress), the relay's own fan-out, and the kernel's delivery.

    Both viewers' first packets are catch-ups from their SFU's GOP cache (the relay also took
    the origin's cache when it subscribed), sent at the catch-up pace after the same packets
    went out live: counting them, as this benchmark did before, made the hop's p99 swing
    with where in the clip's GOP the joins fell. Only packets sent in the window count.
    """
    async with aiohttp.ClientSession() as http:
        gen = Generator(http)
        await gen.add([origin, relay], 2, timing=2)
        direct, relayed = gen.viewers
        await asyncio.sleep(2.0)
        for url in (origin, relay):
            async with http.post(f"{url}/trace", json={"all": True}) as resp:
                resp.raise_for_status()
            await _get(f"{url}/trace")
        warm = [(relayed.arrivals[key] - at) / 1e6 for key, at in direct.arrivals.items() if key in relayed.arrivals]
        direct.arrivals.clear()
        relayed.arrivals.clear()
        o0, r0 = await stats(origin), await stats(relay)
        await asyncio.sleep(seconds)
        arrivals = (direct.arrivals, relayed.arrivals)
        direct.arrivals, relayed.arrivals = {}, {}  # none from while the servers answer the requests below
        o1, r1 = await stats(origin), await stats(relay)
        origin_trace, relay_trace = await _get(f"{origin}/trace"), await _get(f"{relay}/trace")
        direct.arrivals, relayed.arrivals = arrivals
        await gen.clear()
        await gen.receiver.close()
    matched = [(key, at) for key, at in direct.arrivals.items() if key in relayed.arrivals]
    delays = [(relayed.arrivals[key] - at) / 1e6 for key, at in matched]
    parts = hop_parts(direct, relayed, matched, origin_trace, relay_trace)
    relay_in = r1["packets_in"] - r0["packets_in"]
    origin_out = o1["packets_out"] - o0["packets_out"]
    with_warm_up = warm + delays
    return {
        "matched_packets": len(delays),
        "hop_delay_p50_ms": percentile(delays, 50), "hop_delay_p99_ms": percentile(delays, 99),
        "hop_delay_mean_ms": statistics.fmean(delays), "hop_delay_max_ms": max(delays),
        "unmatched_in_window": len(direct.arrivals) - len(matched),
        "parts": parts,
        # The packets before the window too (the joins' catch-ups, those the lean viewers saw).
        "with_join_catch_up": {"matched_packets": len(with_warm_up), "p50_ms": percentile(with_warm_up, 50),
                               "p99_ms": percentile(with_warm_up, 99), "max_ms": max(with_warm_up)},
        # The relay's CPU covers taking a packet in and sending it to its one viewer.
        "relay_us_per_packet_in": (r1["cpu"] - r0["cpu"]) / max(relay_in, 1) * 1e6,
        "origin_us_per_packet_out": (o1["cpu"] - o0["cpu"]) / max(origin_out, 1) * 1e6,
        "origin_packets_in": o1["packets_in"] - o0["packets_in"], "relay_packets_in": relay_in,
        "stream_bps": (o1["bytes_in"] - o0["bytes_in"]) * 8 / seconds,
    }


HOP_PARTS = ("hop", "origin_order", "to_relay_forwarder", "relay_fanout", "kernel_difference")
# to_relay_forwarder's own split: until the relay read the datagram (and of that, the relay's
# event loop on a core, working), the rest its ingress.
HOP_EXTRA = ("relay_socket_wait", "relay_socket_wait_working")


def hop_parts(direct: LeanViewer, relayed: LeanViewer, matched: list[tuple[int, int]],
              origin_trace: dict[str, Any], relay_trace: dict[str, Any]) -> dict[str, Any]:
    """Split each matched packet's hop delay (relayed arrival minus direct arrival), ms.

    ``origin_order``: the origin's send to the relay minus its send to the direct viewer;
    ``to_relay_forwarder``: that send to the packet entering the relay's forwarder;
    ``relay_fanout``: entering it to the send to the relayed viewer; ``kernel_difference``:
    the relayed viewer's send-to-arrival minus the direct one's. They add up to ``hop``.
    """
    sends = {(ssrc, seq): (t_in, t_out) for ssrc, seq, t_in, t_out in origin_trace["records"]}
    # The origin's packet to the relay is the one the relay took in with that SSRC and number.
    origin_seq = {(ssrc, seq): t_out for ssrc, seq, _, t_out in origin_trace["records"]}
    relay_in = {row[2]: (row[0], row[1]) for row in relay_trace["ingress"]}
    relay_read = {row[2]: row[3] for row in relay_trace["ingress"]}  # forwarder entry -> datagram read (0: queued)
    relay_clock = CpuClock(relay_trace["ingress"])
    relay_sends = {(ssrc, seq): (t_in, t_out) for ssrc, seq, t_in, t_out in relay_trace["records"]}
    rows = []
    for key, direct_at in matched:
        d_stamps = sends.get(direct.headers.get(key, (0, 0)))
        r_stamps = relay_sends.get(relayed.headers.get(key, (0, 0)))
        if d_stamps is None or r_stamps is None:
            continue
        relay_ingress = relay_in.get(r_stamps[0])
        to_relay = origin_seq.get(relay_ingress) if relay_ingress is not None else None
        if to_relay is None:
            continue
        relayed_at = relayed.arrivals[key]
        read = relay_read.get(r_stamps[0]) or r_stamps[0]
        working = min(max(relay_clock.at(read) - relay_clock.at(to_relay), 0.0), read - to_relay)
        rows.append(tuple(x / 1e6 for x in (
            relayed_at - direct_at, to_relay - d_stamps[1], r_stamps[0] - to_relay, r_stamps[1] - r_stamps[0],
            (relayed_at - r_stamps[1]) - (direct_at - d_stamps[1]), read - to_relay, working)))
    if not rows:
        return {"packets": 0}
    out: dict[str, Any] = {"packets": len(rows), "relay_gc": gc_pauses(relay_trace.get("gc", []))}
    for index, name in enumerate((*HOP_PARTS, *HOP_EXTRA)):
        column = [row[index] for row in rows]
        out[name] = {"p50": percentile(column, 50), "p99": percentile(column, 99), "max": max(column)}
    cut = out["hop"]["p99"]
    tail = [row for row in rows if row[0] >= cut]
    out["tail"] = {name: statistics.fmean(row[i] for row in tail) for i, name in enumerate((*HOP_PARTS, *HOP_EXTRA))}
    return out


class Generator:
    """This process's lean viewers (benchmarks/lean.py), joined a few at a time."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.receiver = LeanReceiver()
        self.viewers: list[LeanViewer] = []

    async def add(self, urls: list[str], count: int, timing: int = 0) -> None:
        """Join ``count`` viewers round-robin over ``urls``; ``timing`` of them, spread, are timed."""
        workers, start = len(urls), len(self.viewers)
        # Timed viewers spread over each worker's viewers in join order (the fan-out's order).
        every = max(1, count // workers // max(1, timing // workers)) if timing else 0
        fresh = [LeanViewer(f"{urls[(start + i) % workers]}/watch",
                            timing=bool(every) and (i // workers) % every == every - 1) for i in range(count)]
        gate = asyncio.Semaphore(JOINS_AT_ONCE)

        async def join(viewer: LeanViewer) -> None:
            async with gate:
                await viewer.join(self.http)
                self.receiver.add(viewer)

        self.viewers += fresh
        await asyncio.gather(*(join(v) for v in fresh))

    async def clear(self) -> None:
        """Make every viewer leave."""
        viewers, self.viewers = self.viewers, []
        for viewer in viewers:
            self.receiver.remove(viewer)
        await asyncio.gather(*(v.leave(self.http) for v in viewers))

    def totals(self) -> dict[str, int]:
        """Return packets, expected and lost summed over the viewers, and the client's socket drops."""
        snaps = [v.snapshot() for v in self.viewers]
        drops = udp_socket_drops()
        return {key: sum(s[key] for s in snaps) for key in ("packets", "expected", "lost")} | {
            "socket_drops": sum(drops.get(v.sock.getsockname()[1], 0) for v in self.viewers if v.sock)}


async def window(gen: Generator, urls: list[str], seconds: float, idle_share: float) -> dict[str, Any]:
    """Measure one steady window: loss, client CPU per packet, each server's CPU share and drops."""
    before = [await stats(u) for u in urls]
    for viewer in gen.viewers:
        viewer.arrivals.clear()
    g0, d0, cpu0, t0 = gen.totals(), gen.receiver.datagrams, time.process_time(), time.monotonic()
    start_ns = time.time_ns()  # a packet read late (the receiver drains every 20 ms) arrived before it
    await asyncio.sleep(seconds)
    for viewer in gen.viewers:  # the window's arrivals: none from while the servers answer requests after it
        if viewer.timing:
            viewer.window_arrivals = {key: at for key, at in viewer.arrivals.items() if at >= start_ns}
            viewer.arrivals = {}
    g1, d1, cpu1, elapsed = gen.totals(), gen.receiver.datagrams, time.process_time(), time.monotonic() - t0
    after = [await stats(u) for u in urls]
    packets, lost = g1["packets"] - g0["packets"], g1["lost"] - g0["lost"]
    client_cpu = cpu1 - cpu0 - idle_share * elapsed  # the publisher's own share measured before
    return {
        "viewers": len(gen.viewers), "seconds": elapsed, "packets": packets, "lost": lost,
        "loss": lost / max(packets + lost, 1), "client_socket_drops": g1["socket_drops"] - g0["socket_drops"],
        "client_cpu_share": client_cpu / elapsed,
        "client_us_per_packet": client_cpu / max(d1 - d0, 1) * 1e6,
        "server_cpu_share": [(b["cpu"] - a["cpu"]) / elapsed for a, b in zip(before, after, strict=True)],
        "server_drops": sum(b["drops"] - a["drops"] for a, b in zip(before, after, strict=True)),
        "server_viewers": [b["viewers"] for b in after],
    }


async def idle_share(seconds: float = 2.0) -> float:
    """Return this process's CPU share with the publisher alone (subtracted from the client's)."""
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    return (time.process_time() - cpu0) / (time.monotonic() - t0)


async def measure_client(origin: str, lean: int, aiortc: int, seconds: float, idle: float) -> dict[str, Any]:
    """Return the client's CPU per received packet: ``aiortc`` counting aiortc viewers, then ``lean`` lean ones."""
    peers = [await viewer(f"{origin}/watch") for _ in range(aiortc)]
    await asyncio.sleep(2.0)
    snap0 = [s.snapshot()["packets"] for _, s in peers]
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, elapsed = time.process_time() - cpu0 - idle * (time.monotonic() - t0), time.monotonic() - t0
    received = sum(s.snapshot()["packets"] - p for (_, s), p in zip(peers, snap0, strict=True))
    for pc, _ in peers:
        await pc.close()
    rate = received / max(aiortc, 1) / elapsed
    baseline = {"viewers": aiortc, "client_us_per_packet": cpu / max(received, 1) * 1e6,
                "client_cpu_share": cpu / elapsed, "packets_per_viewer_second": rate,
                "viewers_per_core": 1e6 / (cpu / max(received, 1) * 1e6 * rate) if cpu > 0 and rate else 0.0}
    async with aiohttp.ClientSession() as http:
        gen = Generator(http)
        await gen.add([origin], lean)
        await asyncio.sleep(2.0)
        lean_window = await window(gen, [origin], seconds, idle)
        await gen.clear()
        await gen.receiver.close()
    # Per viewer at the stream's full rate (packets + lost): what one client core keeps up with.
    rate = (lean_window["packets"] + lean_window["lost"]) / max(lean, 1) / lean_window["seconds"]
    lean_window["packets_per_viewer_second"] = rate
    lean_window["viewers_per_core"] = 1e6 / (lean_window["client_us_per_packet"] * rate) if rate else 0.0
    return {"aiortc": baseline, "lean": lean_window,
            "ratio_us_per_packet": baseline["client_us_per_packet"] / lean_window["client_us_per_packet"]}


async def measure_delay(origin: str, relay: str, viewers: int, timing: int, seconds: float, send_log: SendLog,
                        idle: float) -> dict[str, Any]:
    """Return publisher-to-viewer delay (p50/p99) with ``viewers`` on one worker, then split over two."""
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        gen = Generator(http)
        for label, urls in (("one_worker", [origin]), ("two_workers", [origin, relay])):
            log(f"delay: {viewers} lean viewers ({timing} timed) on {len(urls)} worker(s)")
            await gen.add(urls, viewers, timing)
            await asyncio.sleep(2.0)
            timed = [v for v in gen.viewers if v.timing]
            for url in urls:
                ssrcs = [ssrc for v in timed if v.url.startswith(url)
                         for ssrc, stream in v.streams.items() if stream.kind == "video"]
                async with http.post(f"{url}/trace", json={"ssrcs": ssrcs}) as resp:
                    resp.raise_for_status()
                await _get(f"{url}/trace")
                await _get(f"{url}/probe")
            figures = await window(gen, urls, seconds, idle)
            traces = [await _get(f"{url}/trace") for url in urls]
            # The measure: the SFU's own probe, one packet's walk over its worker's viewers.
            figures["sfu_probe_per_worker"] = [await _get(f"{url}/probe") for url in urls]
            for viewer in timed:
                viewer.arrivals = viewer.window_arrivals
            delays = send_log.delays_ms(timed)
            per_worker = [delay_rows(send_log, [v for v in timed if v.url.startswith(url)], trace)
                          for url, trace in zip(urls, traces, strict=True)]
            figures["frames_per_worker"] = [frame_delays(send_log, [v for v in timed if v.url.startswith(url)])
                                            for url in urls]
            figures["parts"] = summarize([row for rows in per_worker for row in rows])
            figures["parts_per_worker"] = [summarize(rows) for rows in per_worker]
            figures["gc_per_worker"] = [gc_pauses(trace["gc"]) for trace in traces]
            # Each video packet's whole fan-out (the probe's measure) in wall time and in the
            # worker's CPU time: the difference is time the worker was off its core mid-loop.
            figures["fanout_wall_cpu_ms_per_worker"] = [fanout_wall_cpu(trace["ingress"]) for trace in traces]
            # Each round of RTCP sender reports, video and audio: (kind, ns, ns it held the loop, viewers).
            figures["sender_reports_ms_per_worker"] = [[[r[0], r[2] / 1e6] for r in trace["reports"]]
                                                       for trace in traces]
            figures |= {"timed_packets": len(delays), "delay_p50_ms": percentile(delays, 50),
                        "delay_p99_ms": percentile(delays, 99), "delay_max_ms": max(delays)}
            # Per worker: the relay's viewers have the hop on top of their own fan-out.
            figures["delay_p50_p99_ms_per_worker"] = [
                [percentile(part, 50), percentile(part, 99)]
                for url in urls if (part := send_log.delays_ms([v for v in timed if v.url.startswith(url)]))]
            # As before this benchmark had a saturation run: viewers per core from CPU per viewer.
            figures["projected_viewers_per_core"] = sum(
                n / c for n, c in zip(figures["server_viewers"], figures["server_cpu_share"], strict=True) if c > 0)
            results[label] = figures
            log(json.dumps({k: v for k, v in figures.items() if k != "server_viewers"}))
            await gen.clear()
        await gen.receiver.close()
    one, two = results["one_worker"]["delay_p99_ms"], results["two_workers"]["delay_p99_ms"]
    results["p99_ratio"] = one / two if two else 0.0
    return results


PARTS = ("total", "socket_wait", "socket_wait_working", "ingress", "in_fanout", "kernel")


class CpuClock:
    """A worker's event-loop thread CPU time at any wall time, interpolated between its samples."""

    def __init__(self, ingress: list[list[int]]) -> None:
        samples = sorted((wall, cpu) for row in ingress for wall, cpu in ((row[2], row[4]), (row[5], row[6])))
        self.walls = [wall for wall, _ in samples]
        self.cpus = [cpu for _, cpu in samples]

    def at(self, wall: int) -> float:
        index = bisect.bisect_right(self.walls, wall)
        if index == 0 or index == len(self.walls):
            return float(self.cpus[min(index, len(self.cpus) - 1)])
        w0, w1, c0, c1 = self.walls[index - 1], self.walls[index], self.cpus[index - 1], self.cpus[index]
        return c0 + (c1 - c0) * (wall - w0) / max(w1 - w0, 1)


def delay_rows(send_log: SendLog, timed: list[LeanViewer], trace: dict[str, Any]) -> list[tuple[float, ...]]:
    """Split each timed packet's publisher-to-viewer delay where it was spent (ms; see :func:`summarize`)."""
    sends = {(row[0], row[1]): (row[2], row[3]) for row in trace["records"]}
    reads = {row[2]: row[3] for row in trace["ingress"]}  # forwarder entry -> the datagram's read (0: queued)
    clock = CpuClock(trace["ingress"])
    rows: list[tuple[float, ...]] = []
    for viewer in timed:
        for key, arrived in viewer.arrivals.items():
            sent, header = send_log.sent.get(key), viewer.headers.get(key)
            stamps = sends.get(header) if header is not None else None
            if sent is None or stamps is None:
                continue
            t_in, t_out = stamps
            t_rx = reads.get(t_in) or t_in  # a packet aiortc queued: its wait counts as socket wait
            working = min(max(clock.at(t_rx) - clock.at(sent), 0.0), t_rx - sent)
            burst = sent - send_log.frame_start[send_log.frame_of[key]]
            rows.append(tuple(x / 1e6 for x in (arrived - sent, t_rx - sent, working, t_in - t_rx, t_out - t_in,
                                                 arrived - t_out, burst)))
    return rows


def fanout_wall_cpu(ingress: list[list[int]]) -> dict[str, float]:
    """Return p50/p99 of each packet's fan-out in wall time and in the worker's thread CPU time (ms)."""
    wall = [(row[5] - row[2]) / 1e6 for row in ingress]
    cpu = [(row[6] - row[4]) / 1e6 for row in ingress]
    if not wall:
        return {}
    return {"wall_p50": percentile(wall, 50), "wall_p99": percentile(wall, 99),
            "cpu_p50": percentile(cpu, 50), "cpu_p99": percentile(cpu, 99)}


KEYFRAME_PACKETS = 20  # the clip's keyframe is ~27 packets, its other frames 3-11


def frame_delays(send_log: SendLog, timed: list[LeanViewer]) -> dict[str, Any]:
    """Return what the servers added to each frame's completion at a timed viewer (ms).

    A frame can be decoded when its last packet is in: its last packet's arrival minus the
    publisher's send of its last packet, per viewer and frame; p50/p99 over all frames and
    the largest over keyframe-sized ones (a packet's p99 falls in the keyframes' bursts,
    which are 1 frame in 60 here).
    """
    frames: dict[tuple[int, int], list[int]] = {}  # (viewer, RTP timestamp) -> [packets, last send, last arrival]
    for index, viewer in enumerate(timed):
        for key, arrived in viewer.arrivals.items():
            sent = send_log.sent.get(key)
            if sent is None:
                continue
            entry = frames.setdefault((index, send_log.frame_of[key]), [0, 0, 0])
            entry[0] += 1
            entry[1] = max(entry[1], sent)
            entry[2] = max(entry[2], arrived)
    # A frame counts once its publisher sent no more packets of it than the viewer got (whole).
    sent_per_frame: dict[int, int] = {}
    for ts in send_log.frame_of.values():
        sent_per_frame[ts] = sent_per_frame.get(ts, 0) + 1
    whole = [(count, (last_in - last_out) / 1e6) for (_, ts), (count, last_out, last_in) in frames.items()
             if count == sent_per_frame.get(ts)]
    if not whole:
        return {"frames": 0}
    delays = [delay for _, delay in whole]
    keyframes = [delay for count, delay in whole if count >= KEYFRAME_PACKETS]
    return {"frames": len(whole), "p50_ms": percentile(delays, 50), "p99_ms": percentile(delays, 99),
            "keyframes": len(keyframes), "keyframe_max_ms": max(keyframes, default=0.0)}


def gc_pauses(collections: list[list[int]]) -> dict[str, Any]:
    """Return a worker's garbage collections in the window: how many per generation, and the longest (ms)."""
    return {"count": [sum(1 for c in collections if c[0] == g) for g in range(3)],
            "longest_ms": [max((c[2] / 1e6 for c in collections if c[0] == g), default=0.0) for g in range(3)]}


def summarize(rows: list[tuple[float, ...]]) -> dict[str, Any]:
    """Return p50/p99 of each part of the publisher-to-viewer delay, and the parts of its tail (ms).

    - ``socket_wait``: publisher's send to the worker reading the datagram (loopback is
      synchronous: microseconds), of which ``socket_wait_working`` the worker's event loop
      was on a core running (fanning out earlier packets, audio, RTCP), the rest it waited
      for a core; for a relay's viewers it also holds the origin's fan-out and the hop;
    - ``ingress``: the read to the packet entering the forwarder (SRTP unprotect);
    - ``in_fanout``: entering the forwarder to the send for this viewer (the viewers before
      it in this packet's loop, any preemption meanwhile);
    - ``kernel``: that send to the kernel's arrival stamp at the viewer (SO_TIMESTAMPNS):
      the viewer process's own queueing is in none of them.

    ``burst``: how far into its frame's burst the publisher sent the packet (its pacing,
    not a delay). ``tail``: each part's mean over the packets whose total is at or above
    the total's p99, so the tail's parts add up to its total.
    """
    if not rows:
        return {"packets": 0}
    names = (*PARTS, "burst")
    out: dict[str, Any] = {"packets": len(rows)}
    for index, name in enumerate(names):
        column = [row[index] for row in rows]
        out[name] = {"p50": percentile(column, 50), "p99": percentile(column, 99)}
    cut = out["total"]["p99"]
    tail = [row for row in rows if row[0] >= cut]
    out["tail"] = {name: statistics.fmean(row[index] for row in tail) for index, name in enumerate(names)}
    # First packet of its frame (nothing of its own burst ahead of it) against the rest.
    for label, chosen in (("first_of_frame", [r for r in rows if r[6] == 0]), ("later_in_frame", [r for r in rows if r[6] > 0])):
        out[f"socket_wait_{label}"] = {"packets": len(chosen),
                                       "p50": percentile([r[1] for r in chosen], 50) if chosen else 0.0,
                                       "p99": percentile([r[1] for r in chosen], 99) if chosen else 0.0}
    return out


async def saturate(gen: Generator, urls: list[str], limits: list[CpuLimit], budget: float, seconds: float,
                   idle: float, max_viewers: int, first_step: int) -> dict[str, Any]:
    """Add viewers in steps until loss starts (at most 12 steps); return the steps.

    Each step also records whether the busiest server stayed under 95 % of its budget
    (the last such step is the capacity with CPU to spare; the last step without loss,
    the capacity at 0 % loss).

    Joins run with the quota lifted (a DTLS handshake is not what is measured); each
    window runs with every server capped at ``budget`` cores. The first step (a few
    viewers per worker) gives the CPU per viewer; steps then go from 80 % of the
    capacity that projects, 5 % at a time.
    """
    steps: list[dict[str, Any]] = []
    target = first_step * len(urls)
    while target <= max_viewers:
        for limit in limits:
            limit.set(None)
        await gen.add(urls, target - len(gen.viewers))
        await asyncio.sleep(1.0)
        for limit in limits:
            limit.set(budget)
        await asyncio.sleep(1.0)
        throttled0 = [limit.throttled() for limit in limits]
        figures = await window(gen, urls, seconds, idle)
        throttled1 = [limit.throttled() for limit in limits]
        figures["throttled_share"] = [(b[1] - a[1]) / max(b[0] - a[0], 1)
                                      for a, b in zip(throttled0, throttled1, strict=True)]
        busiest = max(figures["server_cpu_share"])
        figures["budget_used"] = busiest / budget
        figures["client_limited"] = figures["client_socket_drops"] > 0
        figures["ok"] = figures["lost"] == 0 and not figures["client_limited"]
        figures["under_budget"] = figures["ok"] and figures["budget_used"] < SATURATED_SHARE
        steps.append(figures)
        log(f"saturation, {len(urls)} worker(s) at {budget:g} core each: {target} viewers, "
                  f"lost {figures['lost']}, budget used {figures['budget_used']:.0%}, client drops "
                  f"{figures['client_socket_drops']}, client CPU {figures['client_cpu_share']:.0%}")
        if not figures["ok"] or len(steps) == SATURATION_STEPS:
            break
        # The capacity this step projects (CPU per viewer falls as fixed costs spread):
        # jump to 80 % of it, then climb 5 % at a time, 10 % once the budget is spent
        # (a server just over its budget takes a while to overflow its socket buffers).
        per_viewer = busiest / (target / len(urls))
        capacity = int(budget / per_viewer * len(urls)) if per_viewer > 0 else max_viewers
        climb = capacity // (20 if figures["under_budget"] else 10)
        target = max(target + max(len(urls), climb), min(int(capacity * 0.8), max_viewers))
    for limit in limits:
        limit.set(None)
    best = max((s["viewers"] for s in steps if s["ok"]), default=0)
    under = max((s["viewers"] for s in steps if s["under_budget"]), default=0)
    failed = next((s for s in steps if not s["ok"]), None)
    return {"budget_cores_each": budget, "workers": len(urls), "steps": steps, "viewers_at_0_loss": best,
            "viewers_per_core": best / (budget * len(urls)), "viewers_under_budget": under,
            "stopped_by": ("step or viewer limit" if failed is None
                           else "client (socket drops)" if failed["client_limited"] else "loss")}


async def measure_saturation(origin: str, relay: str, limits: list[CpuLimit], budget: float, seconds: float,
                             idle: float, max_viewers: int, first_step: int) -> dict[str, Any]:
    """Run :func:`saturate` for one worker (origin), then two (origin + relay), each in its own cgroup."""
    results: dict[str, Any] = {"cgroup": "v2" if limits[0].v2 else "v1"}
    async with aiohttp.ClientSession() as http:
        for label, urls in (("one_worker", [origin]), ("two_workers", [origin, relay])):
            gen = Generator(http)
            results[label] = await saturate(gen, urls, limits[:len(urls)], budget, seconds, idle, max_viewers,
                                            first_step)
            await gen.clear()
            await gen.receiver.close()
    one, two = results["one_worker"]["viewers_at_0_loss"], results["two_workers"]["viewers_at_0_loss"]
    results["ratio"] = two / one if one else 0.0
    one, two = results["one_worker"]["viewers_under_budget"], results["two_workers"]["viewers_under_budget"]
    results["ratio_under_budget"] = two / one if one else 0.0
    return results


def make_cgroups(pids: list[int]) -> tuple[list[CpuLimit], str | None]:
    """Put each server and this process (the load generator) in a cgroup of its own, weighted up.

    Return the groups (servers first, this process last) or none and why not.
    """
    limits: list[CpuLimit] = []
    try:
        for role, pid in zip(("origin", "relay", "client"), [*pids, os.getpid()], strict=True):
            limit = cpulimit.create(f"shopstream-bench-{role}")
            limits.append(limit)
            limit.prioritize()
            limit.add(pid)
    except (cpulimit.CpuLimitUnavailable, OSError) as exc:
        for limit in limits:
            limit.remove()
        return [], f"no CPU budget can be set here ({exc})"
    return limits, None


def project(results: dict[str, Any], node_cores: int, nic_gbps: float) -> dict[str, Any]:
    """Project viewers per show on N nodes of ``node_cores`` cores from the measured per-hop costs.

    A viewer costs its worker ``1 / viewers_per_core`` of a core (saturation, else the
    CPU projection); a relay costs the origin worker what one viewer does (it is one
    WHEP viewer there), and its own worker one ingress (``relay_us_per_packet_in``).
    Every worker of every node relays from the origin worker (flat): that stops when the
    origin worker's core is spent on relays. Past that, a second level of relays
    (not built: a relay subscribes to the origin only) multiplies the reach and adds a hop.
    """
    hop = results["hop"]
    saturation = results.get("saturation", {})
    per_core = (saturation.get("two_workers", {}).get("viewers_per_core")
                or results.get("delay", {}).get("two_workers", {}).get("projected_viewers_per_core", 0) / 2)
    pps = hop["origin_packets_in"] / results["seconds"]  # the show's packets per second (video)
    relay_share = hop["relay_us_per_packet_in"] * pps / 1e6  # a relay worker's ingress, of a core
    viewers_per_worker = per_core * max(0.0, 1 - relay_share)
    max_relays = per_core  # the origin worker, spent on relays only
    nic_viewers = nic_gbps * 1e9 / max(hop.get("stream_bps", 1.5e6), 1)
    rows = []
    for nodes in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        relays = nodes * node_cores - 1
        flat = relays <= max_relays
        per_node = min(node_cores * viewers_per_worker, nic_viewers)
        rows.append({"nodes": nodes, "relays_from_origin": relays if flat else int(max_relays),
                     "viewers": int(nodes * per_node) if flat else int(max_relays * viewers_per_worker),
                     "flat": flat, "two_level_viewers": int(nodes * per_node)})
    return {"viewers_per_core": per_core, "relay_ingress_share": relay_share, "max_relays_per_origin_worker":
            int(max_relays), "max_flat_nodes": int((max_relays + 1) // node_cores), "node_cores": node_cores,
            "nic_viewers_per_node": int(nic_viewers), "rows": rows}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ports = [_free_port(), _free_port()]
    origin, relay = (f"http://127.0.0.1:{p}" for p in ports)
    procs = [context.Process(target=server_main, args=("origin", ports[0], None), daemon=True),
             context.Process(target=server_main, args=("relay", ports[1], origin), daemon=True)]
    for proc in procs:
        proc.start()
    results: dict[str, Any] = {"cores": os.cpu_count(), "load_average_before": os.getloadavg(),
                               "seconds": args.seconds, "quick": args.quick}
    limits, no_cgroups = make_cgroups([p.pid for p in procs if p.pid])
    results["cgroups"] = no_cgroups or "servers and load generator each in a cgroup, weight 8x the default"
    log(f"cgroups: {results['cgroups']}")
    try:
        log("encoding the clip")
        clip = encode_clip()
        await _ready([origin, relay], procs)
        publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        publisher.addTransceiver(ReplayTrack(clip), direction="sendonly")
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await connect(publisher, f"{origin}/publish")
        send_log = SendLog()
        send_log.attach(publisher, args.pace * STREAM_BPS)
        results["publisher_pacing_bps"] = args.pace * STREAM_BPS
        await asyncio.sleep(1.0)
        idle = results["client_idle_share"] = await idle_share()
        log("phase 1: one relay hop")  # always: it also subscribes the relay for the other phases
        results["hop"] = await measure_hop(origin, relay, args.seconds)
        log(json.dumps(results["hop"]))
        results["hop_runs"] = [results["hop"]]
        for run_index in range(1, args.hop_runs):  # a new pair of viewers each time
            results["hop_runs"].append(await measure_hop(origin, relay, args.seconds))
            log(f"hop run {run_index + 1}: {json.dumps(results['hop_runs'][-1])}")
        if "client" in args.phases:
            log(f"phase 2: client cost, {args.aiortc_viewers} aiortc viewers then {args.lean_viewers} lean ones")
            results["client"] = await measure_client(origin, args.lean_viewers, args.aiortc_viewers, args.seconds,
                                                     idle)
            log(json.dumps(results["client"]))
        if "delay" in args.phases:
            log(f"phase 3: publisher-to-viewer delay at {args.viewers} viewers, 1 then 2 workers")
            results["delay"] = await measure_delay(origin, relay, args.viewers, args.timed, args.seconds, send_log,
                                                   idle)
        saturation = "saturation" in args.phases and args.budget > 0
        if saturation and limits:
            log(f"phase 4: saturation at {args.budget:g} core per worker")
            results["saturation"] = await measure_saturation(
                origin, relay, limits[:2], args.budget, args.seconds, idle, args.max_viewers, args.first_step)
            log(json.dumps({k: v for k, v in results["saturation"].items() if k != "steps"}, default=str))
        elif saturation:
            results["saturation"] = {"skipped": f"{no_cgroups}: saturation not measured"}
        await publisher.close()
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join(10)  # a cgroup with a task still exiting cannot be removed
        for limit in limits:
            limit.remove()
    if "saturation" in results and "skipped" not in results["saturation"] or "delay" in results:
        results["projection"] = project(results, args.node_cores, args.nic_gbps)
    results["load_average_after"] = os.getloadavg()
    return results


async def _ready(urls: list[str], procs: list[Any], timeout: float = 60.0) -> None:
    """Wait until every server process answers its stats endpoint."""
    deadline = time.monotonic() + timeout
    for url, proc in zip(urls, procs, strict=True):
        while True:
            try:
                await stats(url)
                break
            except aiohttp.ClientError:
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"server {url} did not start (exit code {proc.exitcode})") from None
                await asyncio.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=200, help="viewers per host for the delay phase")
    parser.add_argument("--timed", type=int, default=10, help="of which timed (SO_TIMESTAMPNS + decrypt)")
    parser.add_argument("--lean-viewers", type=int, default=300, help="lean viewers for the client-cost phase")
    parser.add_argument("--aiortc-viewers", type=int, default=40, help="aiortc viewers, the client-cost baseline")
    parser.add_argument("--seconds", type=float, default=6.0, help="each measuring window")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="saturation: CPU cores per worker (cgroup quota); 0 skips the saturation run")
    parser.add_argument("--max-viewers", type=int, default=1500, help="saturation: stop adding viewers here")
    parser.add_argument("--first-step", type=int, default=20,
                        help="saturation: viewers per worker in the first step (it measures CPU per viewer)")
    parser.add_argument("--node-cores", type=int, default=os.cpu_count() or 2, help="projection: cores per node")
    parser.add_argument("--nic-gbps", type=float, default=10.0, help="projection: a node's network interface")
    parser.add_argument("--phases", type=lambda text: set(text.split(",")), default=set(PHASES),
                        help=f"comma-separated, of {','.join(PHASES)} (the hop always runs; 'hop': only it)")
    parser.add_argument("--pace", type=float, default=0.0,
                        help="pace the publisher at this factor x 1.5 Mbit/s (libwebrtc: 2.5); 0: back to back, as aiortc")
    parser.add_argument("--hop-runs", type=int, default=1, help="measure the relay hop this many times")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short windows: exercise the code")
    args = parser.parse_args()
    if not args.phases <= set(PHASES):
        parser.error(f"--phases: unknown {', '.join(sorted(args.phases - set(PHASES)))}; known: {', '.join(PHASES)}")
    if args.quick:
        args.viewers, args.timed, args.lean_viewers, args.aiortc_viewers = 12, 4, 12, 3
        args.seconds, args.budget, args.max_viewers, args.first_step = 2.0, min(args.budget, 0.15), 40, 4
    results = asyncio.run(run(args))
    report(results)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("bench_cluster-quick.json" if args.quick else "bench_cluster.json")
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"written: {path}")
    with contextlib.suppress(Exception):
        _plot(results, path.with_suffix(".png"))


def report(results: dict[str, Any]) -> None:
    """Print the figures, each with its target and whether it is measured or projected."""
    hop = results["hop"]
    for index, run in enumerate(results.get("hop_runs", [hop])):
        warm = run["with_join_catch_up"]
        print(f"relay hop, run {index + 1}: +{run['hop_delay_p50_ms']:.2f} ms p50, +{run['hop_delay_p99_ms']:.2f} ms "
              f"p99, max +{run['hop_delay_max_ms']:.2f} (target p99 <= {TARGET_HOP_P99_MS} ms) over "
              f"{run['matched_packets']} packets in the window; with the joins' catch-up packets as before: "
              f"p99 +{warm['p99_ms']:.2f}, max +{warm['max_ms']:.2f} ms over {warm['matched_packets']}")
        parts = run["parts"]
        if parts.get("packets"):
            print("  where it goes (p50/p99/max ms): " + ", ".join(
                f"{name} {parts[name]['p50']:.2f}/{parts[name]['p99']:.2f}/{parts[name]['max']:.2f}"
                for name in HOP_PARTS) + f"; tail {parts['tail']['hop']:.2f} = " + " + ".join(
                f"{name} {parts['tail'][name]:.2f}" for name in HOP_PARTS[1:])
                + f" (the relay read it after {parts['tail']['relay_socket_wait']:.2f}, of which its loop "
                f"worked {parts['tail']['relay_socket_wait_working']:.2f}; relay garbage collections "
                f"{parts['relay_gc']['count']}, longest {max(parts['relay_gc']['longest_ms']):.1f} ms)")
    print(f"CPU per packet: relay {hop['relay_us_per_packet_in']:.1f} us in (+1 viewer out), "
          f"origin {hop['origin_us_per_packet_out']:.1f} us per packet out")
    if "client" in results:
        _report_client(results["client"])
    if "delay" in results:
        _report_delay(results["delay"])
    _report_saturation(results.get("saturation"))
    if "projection" in results:
        _report_projection(results["projection"])
    if results.get("publisher_pacing_bps"):
        print(f"publisher paced at {results['publisher_pacing_bps'] / 1e6:.2f} Mbit/s")
    print(f"load average before/after: {results['load_average_before']} / {results['load_average_after']}")


def _report_client(client: dict[str, Any]) -> None:
    lean, base = client["lean"], client["aiortc"]
    print(f"client (measured): lean viewer {lean['client_us_per_packet']:.2f} us per received packet, "
          f"{lean['viewers']} viewers took {lean['client_cpu_share']:.0%} of a core -> "
          f"{lean['viewers_per_core']:.0f} viewers of {lean['packets_per_viewer_second']:.0f} packets/s per client "
          f"core (target >= {TARGET_CLIENT_VIEWERS}); "
          f"aiortc viewer {base['client_us_per_packet']:.2f} us ({base['viewers_per_core']:.0f} per core); "
          f"ratio {client['ratio_us_per_packet']:.1f}x; lean loss {lean['loss']:.4%}")


def _report_delay(delay: dict[str, Any]) -> None:
    one, two = delay["one_worker"], delay["two_workers"]
    print(f"delay publisher -> viewer (measured) at {one['viewers']} viewers: 1 worker p50 "
          f"{one['delay_p50_ms']:.2f} / p99 {one['delay_p99_ms']:.2f} ms; 2 workers p50 {two['delay_p50_ms']:.2f} / "
          f"p99 {two['delay_p99_ms']:.2f} ms (per worker p50/p99: {_pairs(two['delay_p50_p99_ms_per_worker'])}; "
          f"target <= {TARGET_FANOUT_P99_MS} ms); ratio "
          f"{delay['p99_ratio']:.2f}x; loss {one['loss']:.4%} / {two['loss']:.4%}")
    print("SFU probe (a packet in to its last viewer's sendto, the issue's measure), p50/p99 ms per worker: "
          f"1 worker {_probes(one)}; 2 workers {_probes(two)}")
    for label, figures in (("1 worker", one), ("2 workers", two)):
        for index, parts in enumerate(figures.get("parts_per_worker", [])):
            if parts.get("packets"):
                print(f"  where it goes, {label}, worker {index + 1} ({parts['packets']} packets): {_parts(parts)}")
        for index, frames in enumerate(figures.get("frames_per_worker", [])):
            if frames.get("frames"):
                print(f"  whole frames, {label}, worker {index + 1}: last packet in minus last packet sent, p50/p99 "
                      f"{frames['p50_ms']:.2f}/{frames['p99_ms']:.2f} ms over {frames['frames']} frames; "
                      f"{frames['keyframes']} keyframes, the slowest {frames['keyframe_max_ms']:.2f} ms")
        for index, pauses in enumerate(figures.get("gc_per_worker", [])):
            print(f"  garbage collections, {label}, worker {index + 1}: per generation {pauses['count']}, "
                  f"longest {', '.join(f'{ms:.1f}' for ms in pauses['longest_ms'])} ms")
        for index, fanout in enumerate(figures.get("fanout_wall_cpu_ms_per_worker", [])):
            if fanout:
                print(f"  one packet's fan-out, {label}, worker {index + 1}: wall p50/p99 {fanout['wall_p50']:.2f}/"
                      f"{fanout['wall_p99']:.2f} ms, its CPU p50/p99 {fanout['cpu_p50']:.2f}/{fanout['cpu_p99']:.2f} ms")
        for index, rounds in enumerate(figures.get("sender_reports_ms_per_worker", [])):
            held = [ms for _, ms in rounds]
            if held:
                print(f"  sender reports, {label}, worker {index + 1}: {len(held)} calls, each held the loop "
                      f"{min(held):.1f}-{max(held):.1f} ms (mean {statistics.fmean(held):.1f})")
    print(f"viewers per core from CPU per viewer (projected): 1 worker {one['projected_viewers_per_core']:.0f}, "
          f"2 workers {two['projected_viewers_per_core']:.0f} on two cores")


def _report_saturation(saturation: dict[str, Any] | None) -> None:
    if saturation is None:
        print("saturation: not run (--budget 0 or --phases)")
    elif "skipped" in saturation:
        print(f"saturation: SKIPPED: {saturation['skipped']}")
    else:
        s1, s2 = saturation["one_worker"], saturation["two_workers"]
        print(f"saturation (measured, cgroup {saturation['cgroup']}, {s1['budget_cores_each']:g} core per worker): "
              f"1 worker {s1['viewers_at_0_loss']} viewers at 0 % loss ({s1['viewers_per_core']:.0f} per core, "
              f"stopped by {s1['stopped_by']}); 2 workers {s2['viewers_at_0_loss']} "
              f"({s2['viewers_per_core']:.0f} per core, stopped by {s2['stopped_by']}); ratio "
              f"{saturation['ratio']:.2f}x (target >= {TARGET_WORKER_RATIO}x); under 95 % of the budget: "
              f"{s1['viewers_under_budget']} and {s2['viewers_under_budget']}, ratio "
              f"{saturation['ratio_under_budget']:.2f}x")


def _report_projection(projection: dict[str, Any]) -> None:
    print(f"projection (from the measured costs, not measured): {projection['viewers_per_core']:.0f} viewers per "
          f"core, a relay's ingress {projection['relay_ingress_share']:.1%} of its worker, the origin worker "
          f"feeds at most {projection['max_relays_per_origin_worker']} relays: flat up to "
          f"{projection['max_flat_nodes']} nodes of {projection['node_cores']} cores")
    for row in projection["rows"]:
        shape = "flat" if row["flat"] else f"flat stops at {row['viewers']}; a 2-level relay tree (not built)"
        print(f"  {row['nodes']:>4} nodes: {row['two_level_viewers'] if not row['flat'] else row['viewers']:>9,} "
              f"viewers ({shape})")


def _parts(parts: dict[str, Any]) -> str:
    """p50/p99 of each part, and the parts of the tail (mean over the packets at or above the total's p99)."""
    spread = ", ".join(f"{name} {parts[name]['p50']:.2f}/{parts[name]['p99']:.2f}" for name in (*PARTS, "burst"))
    tail = " + ".join(f"{name} {parts['tail'][name]:.2f}" for name in ("socket_wait", "ingress", "in_fanout", "kernel"))
    first, rest = parts["socket_wait_first_of_frame"], parts["socket_wait_later_in_frame"]
    return (f"p50/p99 ms {spread}; tail {parts['tail']['total']:.2f} = {tail} (of the socket wait, working "
            f"{parts['tail']['socket_wait_working']:.2f}; burst {parts['tail']['burst']:.2f}); socket wait p99 "
            f"first of frame {first['p99']:.2f}, later {rest['p99']:.2f}")


def _probes(figures: dict[str, Any]) -> str:
    return ", ".join(f"{p['p50_ms']:.2f}/{p['p99_ms']:.2f}" if p["samples"] else "-"
                     for p in figures["sfu_probe_per_worker"])


def _pairs(pairs: list[list[float]]) -> str:
    return ", ".join(f"{a:.2f}/{b:.2f}" for a, b in pairs)


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    saturation = results.get("saturation") or {}
    for label in ("one_worker", "two_workers"):
        steps = saturation.get(label, {}).get("steps", [])
        left.plot([s["viewers"] for s in steps], [s["loss"] * 100 for s in steps], "o-", label=label)
    left.set_xlabel("viewers")
    left.set_ylabel("loss (%)")
    left.set_title(f"saturation, ratio {saturation.get('ratio', 0):.2f}x")
    left.legend()
    delay = results.get("delay")
    if delay is None:
        fig.tight_layout()
        fig.savefig(path)
        return
    right.bar(["1 worker", "2 workers"], [delay["one_worker"]["delay_p99_ms"], delay["two_workers"]["delay_p99_ms"]])
    right.set_ylabel("p99 publisher -> viewer (ms)")
    right.set_title(f"{delay['one_worker']['viewers']} viewers")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
