"""Commerce while the SFU forwards: API and checkout latency with and without viewers.

    python -m benchmarks.bench_commerce_fanout [--viewers 100] [--seconds 15] [--rate 40] [--workers 1,2]
        [--viewer-kind lean|aiortc] [--out FILE]

Issue 16, item 6: API and checkout latency must not be hostage to media fan-out. A
server (`python -m server serve --workers N`, for each N of `--workers` in turn: one
process, or a supervisor and N workers sharing the port) on a fresh database. The same
run measures each server twice with the same probe:

- `idle`: no media (the baseline);
- `fanout`: a publisher replaying a pre-encoded 640x360 VP8 clip (~1.5 Mbit/s, plus
  Opus) in a client process of its own, and `--viewers` viewers in another (viewers that
  fall behind do not slow the publisher), while the SFU forwards to all of them. Viewers
  are lean by default (benchmarks/lean.py: a real WHEP join over ICE/DTLS, then packets
  counted from the socket without SRTP, ~3 us per packet, so the client keeps up with
  hundreds); `--viewer-kind aiortc` uses aiortc peers (SRTP and RTP parsing per packet).

The probe, in this process, sends at `--rate` requests/s in total, open loop (a slow
answer does not slow the sending): `GET /api/v1/products/{id}` (cached read),
`GET /api/v1/products?limit=20`, and `POST /api/v1/checkout/session` (a real stock hold
and payment with the offline provider; one in four requests). Prints p50/p99 per request
kind, the fan-out phase's ratio to idle, and with several worker counts the fan-out p99
of each against the first's. Beside them: what each viewer received over the window
(fps, packets/s against the stream's rate, loss per viewer, the client's own socket
drops), the packets the server sent (/metrics), server CPU per worker, and two controls:
each server loop's run-queue wait (schedstat: runnable, but the machine gave it no CPU)
and each worker's event-loop lag (`shopstream_event_loop_lag_seconds`). Writes
benchmarks/results/commerce_fanout-<time>.json (or `--out`). Needs PostgreSQL
(BENCH_DATABASE_URL or TEST_DATABASE_URL; a database is created and dropped), and Redis
for more than one worker (BENCH_REDIS_URL or TEST_REDIS_URL; then every server of the
run uses it, so that only the worker count differs). Every viewer and probe request
opens its own connection or keeps one open: with workers, the kernel (SO_REUSEPORT)
picks the worker per connection, so viewers spread over the workers and are relayed
from the publisher's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks.bench_reads import _free_port, _with_database, drop
from server.auth import Tokens
from server.db import migrate

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_P99_MS = 100.0  # what a buyer tapping "buy now" should wait at most, fan-out or not
KINDS = ("product", "list", "cart", "checkout")
JOINS_AT_ONCE = 8  # lean viewers joining at the same time (WHEP POST, ICE, DTLS)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- media client processes: the publisher in one, the viewers in another ----------------------
# Apart, so that viewers that cannot keep up (one Python process receiving 100+ streams)
# do not make the publisher send in bursts: the server's fan-out load stays the clip's.

async def _connect(http: aiohttp.ClientSession, url: str, pc: Any, headers: dict[str, str]) -> None:
    """Offer (ICE on loopback), POST it to a WHIP/WHEP URL, apply the answer."""
    from aiortc import RTCSessionDescription

    from media.aiortc_hook import ice_host_addresses

    offer = await pc.createOffer()
    with ice_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(offer)
    async with http.post(url, data=pc.localDescription.sdp,
                         headers={"Content-Type": "application/sdp", **headers}) as resp:
        if resp.status != 201:
            raise RuntimeError(f"{url}: {resp.status} {await resp.text()}")
        answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


def _session() -> aiohttp.ClientSession:
    # A new connection per WHIP/WHEP POST: with workers, each lands where the kernel puts it.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def _publish(base: str, livestream_id: str, stream_key: str, inbox: Any, outbox: Any) -> None:
    from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection

    from benchmarks.bench_sfu import ReplayTrack, encode_clip

    clip = encode_clip()
    async with _session() as http:
        publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        publisher.addTransceiver(ReplayTrack(clip), direction="sendonly")
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await _connect(http, f"{base}/api/v1/livestreams/{livestream_id}/publish", publisher,
                       {"Authorization": f"Bearer {stream_key}"})
        outbox.put(("published", None))
        await asyncio.get_running_loop().run_in_executor(None, inbox.get)  # "stop"
        await publisher.close()


def publisher_main(base: str, livestream_id: str, stream_key: str, inbox: Any, outbox: Any) -> None:
    asyncio.run(_publish(base, livestream_id, stream_key, inbox, outbox))


async def _media(base: str, livestream_id: str, viewers: int, inbox: Any, outbox: Any) -> None:
    """aiortc viewers (``--viewer-kind aiortc``): SRTP and RTP parsing per packet, no decoding."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from benchmarks.bench_sfu import CountingSink
    from media.aiortc_hook import install_receiver

    async with _session() as http:
        pcs, sinks = [], []
        for index in range(viewers):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            video, audio = CountingSink(), CountingSink()
            install_receiver(pc.addTransceiver("video", direction="recvonly"), video)
            install_receiver(pc.addTransceiver("audio", direction="recvonly"), audio)
            await _connect(http, f"{base}/api/v1/livestreams/{livestream_id}/watch", pc, {})
            pcs.append(pc)
            sinks.append((video, audio))
            if (index + 1) % 25 == 0 or index + 1 == viewers:
                outbox.put(("progress", f"viewers connected: {index + 1}/{viewers}"))
        deadline = time.monotonic() + 30
        while any(v.frames == 0 for v, _ in sinks) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        outbox.put(("ready", sum(1 for v, _ in sinks if v.frames)))

        def counts() -> list[dict[str, int]]:
            out = []
            for video, audio in sinks:
                v, a = video.snapshot(), audio.snapshot()
                out.append({"packets": v["packets"] + a["packets"], "expected": v["expected"] + a["expected"],
                            "video_packets": v["packets"], "frames": v["frames"], "socket_drops": 0})
            return out

        outbox.put(("result", await _window(inbox, counts)))
        for pc in pcs:
            await pc.close()


async def _window(inbox: Any, counts: Any) -> dict[str, Any]:
    """Wait for "start", count, wait for "stop", count: each viewer's figures over the window."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, inbox.get)  # "start"
    before, cpu0, t0 = counts(), time.process_time(), time.monotonic()
    await loop.run_in_executor(None, inbox.get)  # "stop"
    after, cpu, elapsed = counts(), time.process_time() - cpu0, time.monotonic() - t0
    per_viewer = [{key: a[key] - b[key] for key in a} for b, a in zip(before, after, strict=True)]
    return {"seconds": elapsed, "clientCpu": cpu / elapsed, "perViewer": per_viewer}


async def _lean_media(base: str, livestream_id: str, viewers: int, inbox: Any, outbox: Any) -> None:
    """Lean viewers (benchmarks/lean.py, the default): real ICE/DTLS, packets counted at the socket."""
    from benchmarks.lean import LeanReceiver, LeanViewer, udp_socket_drops

    async with _session() as http:
        receiver = LeanReceiver()
        lean = [LeanViewer(f"{base}/api/v1/livestreams/{livestream_id}/watch") for _ in range(viewers)]
        gate = asyncio.Semaphore(JOINS_AT_ONCE)
        joined = 0

        failures: list[str] = []

        async def join(viewer: LeanViewer) -> None:
            nonlocal joined
            async with gate:
                try:
                    await viewer.join(http, timeout=60.0)
                except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
                    failures.append(repr(exc)[:200])  # reported; the run goes on without it
                    return
                receiver.add(viewer)
            joined += 1
            if joined % 50 == 0 or joined == viewers:
                outbox.put(("progress", f"lean viewers connected: {joined}/{viewers}"))

        started = time.monotonic()
        await asyncio.gather(*(join(v) for v in lean))
        outbox.put(("joined", {"joined": joined, "seconds": round(time.monotonic() - started, 1),
                               "failures": failures[:5], "failed": len(failures)}))
        failed = [v for v in lean if v.sock is None]
        await asyncio.gather(*(v.leave(http) for v in failed))
        lean = [v for v in lean if v.sock is not None]
        deadline = time.monotonic() + 30
        while any(v.snapshot()["frames"] == 0 for v in lean) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        outbox.put(("ready", sum(1 for v in lean if v.snapshot()["frames"])))

        def counts() -> list[dict[str, int]]:
            drops = udp_socket_drops()
            out = []
            for viewer in lean:
                snap = viewer.snapshot()
                out.append({"packets": snap["packets"], "expected": snap["expected"],
                            "video_packets": snap["video_packets"], "frames": snap["frames"],
                            "socket_drops": drops.get(viewer.sock.getsockname()[1], 0) if viewer.sock else 0})
            return out

        outbox.put(("result", await _window(inbox, counts)))
        for viewer in lean:
            receiver.remove(viewer)
        await receiver.close()
        await asyncio.gather(*(v.leave(http) for v in lean))


def media_main(kind: str, base: str, livestream_id: str, viewers: int, inbox: Any, outbox: Any) -> None:
    main = _lean_media if kind == "lean" else _media
    asyncio.run(main(base, livestream_id, viewers, inbox, outbox))


# -- the probe --------------------------------------------------------------------------

async def probe(base: str, product_id: str, variant_id: str, buyers: list[tuple[str, str]], *,
                rate: float, seconds: float, phase: str) -> dict[str, Any]:
    """Send requests open loop at `rate`/s for `seconds`; return latencies per kind."""
    latencies: dict[str, list[float]] = {k: [] for k in KINDS}
    failures: dict[str, int] = dict.fromkeys(KINDS, 0)
    slow: list[float] = []  # when (s into the phase) a request over the target was sent
    tasks: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(n: int) -> None:
            # Half product reads, a quarter checkouts, an eighth list reads, an eighth cart adds.
            kind = "checkout" if n % 4 == 3 else "product" if n % 2 == 0 else "list" if n % 8 == 1 else "cart"
            started = time.perf_counter()
            try:
                if kind == "cart":  # a viewer adding the product to the cart (one line per buyer)
                    token, _ = buyers[(n // 8) % len(buyers)]
                    resp = await http.post(
                        f"{base}/api/v1/me/cart/items",
                        json={"productId": product_id, "variantId": variant_id, "qty": 1},
                        headers={"Authorization": f"Bearer {token}"})
                    ok = resp.status in (200, 201)
                elif kind == "checkout":
                    token, address = buyers[n % len(buyers)]
                    resp = await http.post(
                        f"{base}/api/v1/checkout/session",
                        json={"addressId": address,
                              "items": [{"productId": product_id, "variantId": variant_id, "qty": 1}]},
                        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"{phase}-{n}"})
                    ok = resp.status == 201
                else:
                    path = f"/api/v1/products/{product_id}" if kind == "product" else "/api/v1/products?limit=20"
                    resp = await http.get(base + path)
                    ok = resp.status == 200
                await resp.read()
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies[kind].append((time.perf_counter() - started) * 1000)
                if latencies[kind][-1] > TARGET_P99_MS:
                    slow.append(round(started - start, 1))
            else:
                failures[kind] += 1

        # A control: how late this process's own loop wakes up. When the probe itself is
        # starved of CPU (2 shared cores), its latencies are not the server's.
        lags: list[float] = []
        start = time.perf_counter()
        n = 0
        while (elapsed := time.perf_counter() - start) < seconds:
            while n < elapsed * rate:
                tasks.append(asyncio.create_task(one(n)))
                n += 1
            before = time.perf_counter()
            await asyncio.sleep(0.002)
            lags.append((time.perf_counter() - before - 0.002) * 1000)
        await asyncio.gather(*tasks)
    out: dict[str, Any] = {}
    for kind, values in latencies.items():
        values.sort()
        out[kind] = {
            "count": len(values), "failures": failures[kind],
            "p50Ms": round(_pct(values, 0.5), 2), "p99Ms": round(_pct(values, 0.99), 2),
            "maxMs": round(values[-1], 2) if values else None,
        }
    # One stall shows as a cluster of close times, a slow server as times all over the phase.
    out["overTargetAtS"] = sorted(slow)
    lags.sort()
    out["probeLoopLagMs"] = {"p50": round(_pct(lags, 0.5), 2), "p99": round(_pct(lags, 0.99), 2),
                             "max": round(lags[-1], 2) if lags else None}
    return out


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _packets_out(bases: list[str], livestream_id: str) -> float:
    """Return the packets the server's workers (their own ports) have sent for a room."""
    from benchmarks.report import parse_metrics

    total = 0.0
    async with aiohttp.ClientSession() as http:
        for base in bases:
            async with http.get(base + "/metrics") as resp:
                total += parse_metrics(await resp.text(), livestream_id)["room_packets_out"]
    return total


async def _loop_lag(bases: list[str], metric: str = "shopstream_event_loop_lag_seconds") -> list[dict[float, float]]:
    """Return each server's (worker's) event-loop lag histogram: upper bound (s) -> cumulative count."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    async with aiohttp.ClientSession() as http:
        for base in bases:
            async with http.get(base + "/metrics") as resp:
                text = await resp.text()
            buckets: dict[float, float] = {}
            for family in text_string_to_metric_families(text):
                if family.name == metric:
                    for sample in family.samples:
                        if sample.name.endswith("_bucket"):
                            buckets[float(sample.labels["le"])] = sample.value
            out.append(buckets)
    return out


def _lag_figures(before: list[dict[float, float]], after: list[dict[float, float]]) -> list[dict[str, Any]]:
    """Return, per worker, the loop lag p50/p99 over a phase (bucket upper bounds, ms) and the samples."""
    figures = []
    for a, b in zip(before, after, strict=True):
        if not b:  # a server without the metric
            figures.append({})
            continue
        bounds = sorted(b)
        counts = [b[le] - a.get(le, 0.0) for le in bounds]
        total = counts[-1]

        def bound(q: float, bounds: list[float] = bounds, counts: list[float] = counts,
                  total: float = total) -> float | None:
            """The bucket bound (ms) under which a share q of the samples fell; None past the last bound."""
            le = next((le for le, c in zip(bounds, counts, strict=True) if c >= q * total), math.inf)
            return None if math.isinf(le) else le * 1000

        over = total - counts[bounds.index(0.1)] if 0.1 in bounds else None
        figures.append({"samples": int(total), "p50LeMs": bound(0.5), "p99LeMs": bound(0.99),
                        "over100Ms": int(over) if over is not None else None})
    return figures


def _server_cpu(pid: int) -> list[tuple[float, float]]:
    """Return (CPU seconds, run-queue wait seconds of its main thread) for the server and each worker.

    The wait is how long the event loop's thread was runnable but not running (the kernel's
    schedstat): time the machine, not the server's own work, added to every answer.
    """
    children = sorted(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    return [(_cpu_seconds(p), _runqueue_wait(p)) for p in [pid, *children]]


def _runqueue_wait(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def _cpu_rates(before: list[tuple[float, float]], after: list[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """Return the server's total CPU (cores) and each worker's, and each loop's run-queue wait (ms per s)."""
    rates = [round((b[0] - a[0]) / seconds, 3) for a, b in zip(before, after, strict=True)]
    waits = [round((b[1] - a[1]) / seconds * 1000, 1) for a, b in zip(before, after, strict=True)]
    return {"serverCpu": round(sum(rates), 3), "workerCpu": rates[1:],
            # one process: its own; workers: each worker's (the supervisor only waits)
            "runqueueWaitMsPerS": waits[1:] or waits}


def delivery(media_result: dict[str, Any]) -> dict[str, Any]:
    """Summarise what each viewer received over the window: loss, packet rate, fps.

    Loss is a viewer's gaps in the sequence numbers of its SSRCs (video and audio) over
    the packets expected in the window; the client's own socket drops (its buffer full
    because it read too late) are counted apart, so a slow load generator is not read as
    a slow server. Packets per second against the expected rate shows whether fan-out ran
    at the stream's full rate.
    """
    seconds, viewers = media_result["seconds"], media_result["perViewer"]
    losses = sorted(max(0, v["expected"] - v["packets"]) / v["expected"] if v["expected"] else 1.0
                    for v in viewers)
    rates = sorted(v["packets"] / seconds for v in viewers)
    expected = sorted(v["expected"] / seconds for v in viewers)
    fps = sorted(v["frames"] / seconds for v in viewers)
    packets, wanted = sum(v["packets"] for v in viewers), sum(v["expected"] for v in viewers)
    return {
        "viewers": len(viewers), "seconds": round(seconds, 2),
        "lossPercent": {"mean": round(100 * (1 - packets / wanted), 3) if wanted else None,
                        "median": round(100 * _pct(losses, 0.5), 3), "p99": round(100 * _pct(losses, 0.99), 3),
                        "max": round(100 * losses[-1], 3) if losses else None},
        "viewersWithLoss": sum(1 for loss in losses if loss > 0),
        "viewersWithoutPackets": sum(1 for v in viewers if v["packets"] == 0),
        "clientSocketDrops": sum(v["socket_drops"] for v in viewers),
        "packetsPerViewerSecond": {"min": round(rates[0], 1) if rates else None,
                                   "median": round(_pct(rates, 0.5), 1)},
        "expectedPerViewerSecond": round(_pct(expected, 0.5), 1),
        "fps": {"min": round(fps[0], 1) if fps else None, "median": round(_pct(fps, 0.5), 1)},
        "receivedPacketsPerSecond": round(packets / seconds),
        "clientCpu": round(media_result["clientCpu"], 3),
    }


# -- setup ------------------------------------------------------------------------------

async def seed(dsn: str, tokens: Tokens, buyers: int, livestreams: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        seller_user = await conn.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ('fanout-seller@example.test', 'x') RETURNING id")
        await conn.execute("INSERT INTO profiles (id, name) VALUES ($1, 'Seller')", seller_user)
        seller_id = await conn.fetchval(
            "INSERT INTO sellers (user_id, display_name) VALUES ($1, 'Fan-out shop') RETURNING id", seller_user)
        product_ids = []
        for i in range(40):
            product_ids.append(await conn.fetchval(
                """INSERT INTO products (seller_id, title, description, price, currency, status)
                   VALUES ($1, $2, 'On air.', 1500, 'USD', 'active') RETURNING id""", seller_id, f"Item {i}"))
        product_id = product_ids[0]
        variant_id = await conn.fetchval(
            """INSERT INTO product_variants (product_id, seller_id, sku, stock)
               VALUES ($1, $2, 'FANOUT-1', 1000000) RETURNING id""", product_id, seller_id)
        await conn.execute(
            "INSERT INTO inventory_events (product_id, variant_id, delta, reason) VALUES ($1, $2, 1000000, 'initial')",
            product_id, variant_id)
        shows = []  # one per server of the run: a show ends when its publisher leaves
        for _ in range(livestreams):
            stream_key = "sk_" + secrets.token_urlsafe(24)
            livestream_id = await conn.fetchval(
                """INSERT INTO livestreams (seller_id, title, status, stream_key, room)
                   VALUES ($1, 'Fan-out', 'scheduled', $2, $3) RETURNING id""",
                seller_id, stream_key, "room_" + secrets.token_hex(8))
            shows.append((str(livestream_id), stream_key))
        rows = await conn.fetch(
            """WITH u AS (
                   INSERT INTO users (email, password_hash)
                   SELECT 'fanout' || g || '@example.test', 'x' FROM generate_series(1, $1) g RETURNING id),
               p AS (INSERT INTO profiles (id, name) SELECT id, 'Buyer' FROM u)
               INSERT INTO addresses (user_id, line1, city, postal_code, country)
               SELECT id, '1 Main St', 'Springfield', '12345', 'US' FROM u RETURNING user_id, id""", buyers)
    finally:
        await conn.close()
    return {
        "productId": str(product_id), "variantId": str(variant_id), "shows": shows,
        "buyers": [(tokens.access_token(str(r["user_id"]), "user"), str(r["id"])) for r in rows],
    }


def _start_server(env: dict[str, str], workers: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "server", "serve", "--workers", str(workers)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _ready(bases: list[str]) -> None:
    """Wait until every base URL (the port, or each worker's private port) is ready."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            ready = 0
            for base in bases:
                try:
                    async with http.get(base + "/readyz") as resp:
                        ready += resp.status == 200
                except aiohttp.ClientError:
                    pass
            if ready == len(bases):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def _next(outbox: Any, process: Any) -> tuple[str, Any]:
    """Return the next message of a client process; fail (not hang) if the process died."""
    import queue

    loop = asyncio.get_running_loop()
    while True:
        try:
            return await loop.run_in_executor(None, lambda: outbox.get(timeout=1.0))
        except queue.Empty:
            if not process.is_alive():
                raise RuntimeError(f"the viewers' process exited ({process.exitcode})") from None


async def measure(args: argparse.Namespace, env: dict[str, str], index: int, workers: int,
                  seeded: dict[str, Any], show: tuple[str, str]) -> dict[str, Any]:
    """Start the server with `workers` workers; probe it idle, then during fan-out.

    `index` (the server's place in the run) keeps its checkouts' idempotency keys its own:
    a repeated worker count must hold stock again, not replay the earlier sessions.
    """
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {"workers": workers, "loadavgBefore": os.getloadavg(), "phases": {}}
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**env, "SHOPSTREAM_PORT": str(port), "SHOPSTREAM_DATA_DIR": data_dir}
        private = []
        if workers > 1:
            env["WORKER_PORT_BASE"] = str(_free_port())  # + index: likely free on loopback
            private = [f"http://127.0.0.1:{int(env['WORKER_PORT_BASE']) + i}" for i in range(workers)]
        server = _start_server(env, workers)
        try:
            await _ready([base, *private])
            probe_args = (base, seeded["productId"], seeded["variantId"], seeded["buyers"])
            log(f"{workers} worker(s), idle: probing {args.seconds:.0f} s at {args.rate:g} req/s ...")
            lag0 = await _loop_lag(private or [base])
            cpu0, t0 = _server_cpu(server.pid), time.perf_counter()
            idle = await probe(*probe_args, rate=args.rate, seconds=args.seconds, phase=f"{index}-w{workers}-idle")
            idle.update(_cpu_rates(cpu0, _server_cpu(server.pid), time.perf_counter() - t0))
            idle["loopLag"] = _lag_figures(lag0, await _loop_lag(private or [base]))
            result["phases"]["idle"] = idle

            ctx = multiprocessing.get_context("spawn")
            loop = asyncio.get_running_loop()
            to_publisher, from_publisher = ctx.Queue(), ctx.Queue()
            publisher = ctx.Process(target=publisher_main, args=(base, *show, to_publisher, from_publisher))
            publisher.start()
            inbox, outbox = ctx.Queue(), ctx.Queue()
            media = ctx.Process(target=media_main, args=(args.viewer_kind, base, show[0], args.viewers, inbox, outbox))
            try:
                await loop.run_in_executor(None, from_publisher.get)  # "published"
                await asyncio.sleep(1.0)
                media.start()
                while True:
                    kind, value = await _next(outbox, media)
                    if kind == "progress":
                        log(value)
                    elif kind == "joined":
                        result["joins"] = value
                        log(f"lean viewers joined: {value['joined']}/{args.viewers} in {value['seconds']} s"
                            + (f"; {value['failed']} failed, e.g. {value['failures'][0]}" if value["failed"] else ""))
                    elif kind == "ready":
                        log(f"viewers receiving frames: {value}/{args.viewers}")
                        result["viewersReceiving"] = value
                        break
                log(f"{workers} worker(s), fanout: probing {args.seconds:.0f} s at {args.rate:g} req/s ...")
                inbox.put("start")
                sent0 = await _packets_out(private or [base], show[0])
                lag0 = await _loop_lag(private or [base])
                gc0 = await _loop_lag(private or [base], "shopstream_gc_pause_seconds")
                cpu0, t0 = _server_cpu(server.pid), time.perf_counter()
                fanout = await probe(*probe_args, rate=args.rate, seconds=args.seconds, phase=f"{index}-w{workers}-fanout")
                elapsed = time.perf_counter() - t0
                fanout.update(_cpu_rates(cpu0, _server_cpu(server.pid), elapsed))
                fanout["loopLag"] = _lag_figures(lag0, await _loop_lag(private or [base]))
                # Garbage collections during the phase: their count, p99 and how many took over 100 ms.
                fanout["gcPauses"] = _lag_figures(gc0, await _loop_lag(private or [base], "shopstream_gc_pause_seconds"))
                # What the server sent (to viewers and relays), whether or not the viewers kept up.
                fanout["serverPacketsOutPerSecond"] = round(
                    (await _packets_out(private or [base], show[0]) - sent0) / elapsed)
                inbox.put("stop")
                kind, media_result = await _next(outbox, media)
                fanout["delivery"] = delivery(media_result)
                result["phases"]["fanout"] = fanout
            finally:
                to_publisher.put("stop")
                for process in (media, publisher):
                    if process.pid is not None:
                        process.join(timeout=30)
                    if process.is_alive():
                        process.kill()
        finally:
            server.terminate()
            server.wait(timeout=30)
    result["loadavgAfter"] = os.getloadavg()
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") \
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url = os.environ.get("BENCH_REDIS_URL") or os.environ.get("TEST_REDIS_URL") or ""
    if max(args.workers) > 1 and not redis_url:
        raise SystemExit("more than one worker needs Redis: set BENCH_REDIS_URL (or TEST_REDIS_URL)")
    name = f"bench_fanout_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = _with_database(admin, name)
    jwt_secret = secrets.token_urlsafe(48)
    results: dict[str, Any] = {
        "benchmark": "commerce_fanout", "viewers": args.viewers, "viewerKind": args.viewer_kind, "seconds": args.seconds, "rate": args.rate,
        "workers": args.workers, "redis": bool(redis_url), "cores": os.cpu_count(),
        "loadavgBefore": os.getloadavg(), "targetP99Ms": TARGET_P99_MS, "runs": [],
    }
    try:
        await migrate(dsn, "shopstream_app", quiet=True)
        seeded = await seed(dsn, Tokens(jwt_secret, 3600, 3600), buyers=200, livestreams=len(args.workers))
        env = {**os.environ, "DATABASE_URL": dsn, "JWT_SECRET": jwt_secret, "ICE_HOST_ADDRESSES": "127.0.0.1",
               "LOG_REQUESTS": "0", "MAX_VIEWERS_PER_ROOM": str(max(500, args.viewers + 10))}
        for variable in ("REDIS_URL", "SHOPSTREAM_WORKERS", "SHOPSTREAM_WORKER_INDEX", "WORKER_PORT_BASE"):
            env.pop(variable, None)
        if redis_url:
            env.update(REDIS_URL=redis_url, REDIS_PREFIX=f"{name}:")
        for index, (workers, show) in enumerate(zip(args.workers, seeded["shows"], strict=True)):
            results["runs"].append(await measure(args, env, index, workers, seeded, show))
    finally:
        await drop(admin, name)
    results["loadavgAfter"] = os.getloadavg()
    return results


def _summary(results: dict[str, Any]) -> None:
    first = None
    for run in results["runs"]:
        idle, fanout = run["phases"]["idle"], run["phases"].get("fanout")
        print(f"\n{run['workers']} worker(s), load average {run['loadavgBefore'][0]:.1f} -> {run['loadavgAfter'][0]:.1f}")
        print(f"{'request':<10} {'idle p50':>9} {'idle p99':>9} {'fan-out p50':>12} {'fan-out p99':>12} {'p99 ratio':>10}"
              + (f" {'vs ' + str(first['workers']) + 'w p99':>12}" if first else ""))
        for kind in KINDS:
            a = idle[kind]
            b = fanout[kind] if fanout else {"p50Ms": float("nan"), "p99Ms": float("nan")}
            ratio = b["p99Ms"] / a["p99Ms"] if a["p99Ms"] else float("nan")
            versus = ""
            if first and fanout and first["phases"].get("fanout"):
                versus = f" {b['p99Ms'] / first['phases']['fanout'][kind]['p99Ms']:>12.2f}"
            print(f"{kind:<10} {a['p50Ms']:>9} {a['p99Ms']:>9} {b['p50Ms']:>12} {b['p99Ms']:>12} {ratio:>10.2f}{versus}")
        print(f"probe loop lag p99 (control): idle {idle['probeLoopLagMs']['p99']} ms"
              + (f", fan-out {fanout['probeLoopLagMs']['p99']} ms" if fanout else ""))
        if fanout:
            worst = max(fanout[k]["p99Ms"] for k in KINDS)
            late = fanout["overTargetAtS"]
            if late:
                print(f"requests over {TARGET_P99_MS:g} ms during fan-out: {len(late)}, sent at "
                      f"{late[0]}-{late[-1]} s into the phase")
            split = f" (workers {', '.join(str(c) for c in fanout['workerCpu'])})" if fanout["workerCpu"] else ""
            d = fanout["delivery"]
            print(f"server CPU: idle {idle['serverCpu']} cores, fan-out {fanout['serverCpu']} cores{split}; "
                  f"{fanout['serverPacketsOutPerSecond']} packets/s sent by the server")
            print(f"server loop waiting for a CPU (control, ms per s): idle {idle['runqueueWaitMsPerS']}, "
                  f"fan-out {fanout['runqueueWaitMsPerS']}")
            if all(fanout["loopLag"]):
                def ms(value: float | None) -> str:
                    return ">5000" if value is None else f"{value:g}"

                print("server event-loop lag per worker, p50 / p99 (bucket bounds, ms): idle "
                      + ", ".join(f"{ms(w['p50LeMs'])} / {ms(w['p99LeMs'])}" for w in idle["loopLag"])
                      + "; fan-out " + ", ".join(f"{ms(w['p50LeMs'])} / {ms(w['p99LeMs'])} ({w['over100Ms']} of "
                                                  f"{w['samples']} samples over 100 ms)" for w in fanout["loopLag"]))
                if all(fanout.get("gcPauses") or [{}]):
                    print("server garbage collections during fan-out per worker: "
                          + ", ".join(f"{w['samples']}, p99 {ms(w['p99LeMs'])} ms, {w['over100Ms']} over 100 ms"
                                      for w in fanout["gcPauses"]))
            print(f"viewers ({results['viewerKind']}): {d['viewers']} at {d['fps']['median']} fps median "
                  f"(min {d['fps']['min']}), {d['packetsPerViewerSecond']['median']} packets/s each "
                  f"(min {d['packetsPerViewerSecond']['min']}, stream {d['expectedPerViewerSecond']}); "
                  f"loss per viewer mean {d['lossPercent']['mean']} % / p99 {d['lossPercent']['p99']} % / "
                  f"max {d['lossPercent']['max']} %, {d['viewersWithLoss']} viewers with any loss, "
                  f"client socket drops {d['clientSocketDrops']}, client CPU {d['clientCpu']} cores")
            print(f"target: every p99 <= {TARGET_P99_MS:g} ms during fan-out: "
                  f"{'met' if worst <= TARGET_P99_MS else 'NOT met'} (worst {worst} ms)")
        first = first or run
    if len(results["runs"]) > 1:
        base = results["runs"][0]
        print(f"\nfan-out p99 of each run against the first ({base['workers']} worker(s)):")
        for run in results["runs"][1:]:
            if run["phases"].get("fanout") and base["phases"].get("fanout"):
                ratios = ", ".join(f"{k} {run['phases']['fanout'][k]['p99Ms'] / base['phases']['fanout'][k]['p99Ms']:.2f}"
                                   for k in KINDS if base["phases"]["fanout"][k]["p99Ms"])
                print(f"  {run['workers']} worker(s): p99 / {base['workers']}w p99 = {ratios} (under 1: faster)")


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: worker counts separated by commas, e.g. 1,2") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every worker count must be at least 1")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=40.0, help="probe requests per second, all kinds")
    parser.add_argument("--workers", type=_worker_counts, default=[1],
                        help="worker counts to measure in turn, e.g. 1,2 (more than 1 needs Redis)")
    parser.add_argument("--viewer-kind", choices=("lean", "aiortc"), default="lean",
                        help="lean: benchmarks/lean.py (counted at the socket, ~3 us/packet); "
                             "aiortc: SRTP + RTP parsing per packet (~20 us/packet)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default benchmarks/results/commerce_fanout-<time>.json)")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    _summary(results)
    path = args.out or RESULTS / f"commerce_fanout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
