"""Commerce while the SFU forwards: API and checkout latency with and without viewers.

    python -m benchmarks.bench_commerce_fanout [--viewers 100] [--seconds 15] [--rate 40]

Issue 16, item 6: API and checkout latency must not be hostage to media fan-out. One
server process (`python -m server serve`, one worker, as configured by default) on a
fresh database. The same run measures it twice with the same probe:

- `idle`: no media (the baseline);
- `fanout`: a publisher replaying a pre-encoded 640x360 VP8 clip (~1.5 Mbit/s, plus
  Opus) and `--viewers` aiortc viewers that count packets without decoding, in a client
  process of their own, while the SFU forwards to all of them.

The probe, in this process, sends at `--rate` requests/s in total, open loop (a slow
answer does not slow the sending): `GET /api/v1/products/{id}` (cached read),
`GET /api/v1/products?limit=20`, and `POST /api/v1/checkout/session` (a real stock hold
and payment with the offline provider; one in four requests). Prints p50/p99 per request
kind, the fan-out phase's ratio to idle, viewer delivery and server CPU; writes
benchmarks/results/commerce_fanout-<time>.json. Needs PostgreSQL (BENCH_DATABASE_URL or
TEST_DATABASE_URL; a database is created and dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
KINDS = ("product", "list", "checkout")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- media client process -----------------------------------------------------------------

async def _media(base: str, livestream_id: str, stream_key: str, viewers: int, inbox: Any, outbox: Any) -> None:
    from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from benchmarks.bench_sfu import CountingSink, ReplayTrack, encode_clip
    from media.aiortc_hook import ice_host_addresses, install_receiver

    async def connect(http: aiohttp.ClientSession, pc: RTCPeerConnection, path: str,
                      headers: dict[str, str]) -> None:
        offer = await pc.createOffer()
        with ice_host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(offer)
        async with http.post(f"{base}/api/v1/livestreams/{livestream_id}/{path}", data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp", **headers}) as resp:
            if resp.status != 201:
                raise RuntimeError(f"{path}: {resp.status} {await resp.text()}")
            answer = await resp.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    clip = encode_clip()
    async with aiohttp.ClientSession() as http:
        publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        publisher.addTransceiver(ReplayTrack(clip), direction="sendonly")
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await connect(http, publisher, "publish", {"Authorization": f"Bearer {stream_key}"})
        await asyncio.sleep(1.0)
        pcs, sinks = [], []
        for index in range(viewers):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            sink = CountingSink()
            install_receiver(pc.addTransceiver("video", direction="recvonly"), sink)
            install_receiver(pc.addTransceiver("audio", direction="recvonly"), CountingSink())
            await connect(http, pc, "watch", {})
            pcs.append(pc)
            sinks.append(sink)
            if (index + 1) % 25 == 0 or index + 1 == viewers:
                outbox.put(("progress", f"viewers connected: {index + 1}/{viewers}"))
        deadline = time.monotonic() + 30
        while any(s.frames == 0 for s in sinks) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        outbox.put(("ready", sum(1 for s in sinks if s.frames)))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, inbox.get)  # "start"
        before = [s.snapshot() for s in sinks]
        await loop.run_in_executor(None, inbox.get)  # "stop"
        after = [s.snapshot() for s in sinks]
        outbox.put(("result", {
            "videoFrames": [a["frames"] - b["frames"] for b, a in zip(before, after, strict=True)],
            "videoPackets": sum(a["packets"] - b["packets"] for b, a in zip(before, after, strict=True)),
        }))
        for pc in pcs:
            await pc.close()
        await publisher.close()


def media_main(base: str, livestream_id: str, stream_key: str, viewers: int, inbox: Any, outbox: Any) -> None:
    asyncio.run(_media(base, livestream_id, stream_key, viewers, inbox, outbox))


# -- the probe --------------------------------------------------------------------------

async def probe(base: str, product_id: str, variant_id: str, buyers: list[tuple[str, str]], *,
                rate: float, seconds: float, phase: str) -> dict[str, Any]:
    """Send requests open loop at `rate`/s for `seconds`; return latencies per kind."""
    latencies: dict[str, list[float]] = {k: [] for k in KINDS}
    failures: dict[str, int] = dict.fromkeys(KINDS, 0)
    tasks: list[asyncio.Task[None]] = []
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(n: int) -> None:
            kind = "checkout" if n % 4 == 3 else ("product" if n % 2 == 0 else "list")
            started = time.perf_counter()
            try:
                if kind == "checkout":
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
    lags.sort()
    out["probeLoopLagMs"] = {"p50": round(_pct(lags, 0.5), 2), "p99": round(_pct(lags, 0.99), 2),
                             "max": round(lags[-1], 2) if lags else None}
    return out


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- setup ------------------------------------------------------------------------------

async def seed(dsn: str, tokens: Tokens, buyers: int) -> dict[str, Any]:
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
        stream_key = "sk_" + secrets.token_urlsafe(24)
        livestream_id = await conn.fetchval(
            """INSERT INTO livestreams (seller_id, title, status, stream_key, room)
               VALUES ($1, 'Fan-out', 'scheduled', $2, $3) RETURNING id""",
            seller_id, stream_key, "room_" + secrets.token_hex(8))
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
        "productId": str(product_id), "variantId": str(variant_id), "livestreamId": str(livestream_id),
        "streamKey": stream_key,
        "buyers": [(tokens.access_token(str(r["user_id"]), "user"), str(r["id"])) for r in rows],
    }


def _start_server(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _ready(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.get(base + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") \
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"bench_fanout_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = _with_database(admin, name)
    jwt_secret = secrets.token_urlsafe(48)
    results: dict[str, Any] = {
        "benchmark": "commerce_fanout", "viewers": args.viewers, "seconds": args.seconds, "rate": args.rate,
        "cores": os.cpu_count(), "loadavgBefore": os.getloadavg(), "targetP99Ms": TARGET_P99_MS, "phases": {},
    }
    try:
        await migrate(dsn, "shopstream_app", quiet=True)
        seeded = await seed(dsn, Tokens(jwt_secret, 3600, 3600), buyers=200)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as data_dir:
            env = {**os.environ, "DATABASE_URL": dsn, "JWT_SECRET": jwt_secret, "SHOPSTREAM_PORT": str(port),
                   "SHOPSTREAM_DATA_DIR": data_dir, "ICE_HOST_ADDRESSES": "127.0.0.1",
                   "MAX_VIEWERS_PER_ROOM": str(max(500, args.viewers + 10))}
            env.pop("REDIS_URL", None)
            server = _start_server(env)
            try:
                await _ready(base)
                probe_args = (base, seeded["productId"], seeded["variantId"], seeded["buyers"])
                log(f"idle: probing {args.seconds:.0f} s at {args.rate:g} req/s ...")
                cpu0, t0 = _cpu_seconds(server.pid), time.perf_counter()
                idle = await probe(*probe_args, rate=args.rate, seconds=args.seconds, phase="idle")
                idle["serverCpu"] = round((_cpu_seconds(server.pid) - cpu0) / (time.perf_counter() - t0), 3)
                results["phases"]["idle"] = idle

                ctx = multiprocessing.get_context("spawn")
                inbox, outbox = ctx.Queue(), ctx.Queue()
                media = ctx.Process(target=media_main, args=(
                    base, seeded["livestreamId"], seeded["streamKey"], args.viewers, inbox, outbox))
                media.start()
                try:
                    loop = asyncio.get_running_loop()
                    while True:
                        kind, value = await loop.run_in_executor(None, outbox.get)
                        if kind == "progress":
                            log(value)
                        elif kind == "ready":
                            log(f"viewers receiving frames: {value}/{args.viewers}")
                            results["viewersReceiving"] = value
                            break
                    log(f"fanout: probing {args.seconds:.0f} s at {args.rate:g} req/s ...")
                    inbox.put("start")
                    cpu0, t0 = _cpu_seconds(server.pid), time.perf_counter()
                    fanout = await probe(*probe_args, rate=args.rate, seconds=args.seconds, phase="fanout")
                    elapsed = time.perf_counter() - t0
                    fanout["serverCpu"] = round((_cpu_seconds(server.pid) - cpu0) / elapsed, 3)
                    inbox.put("stop")
                    kind, media_result = await loop.run_in_executor(None, outbox.get)
                    frames = media_result["videoFrames"]
                    fanout["viewerFps"] = {
                        "min": round(min(frames) / elapsed, 1), "median": round(sorted(frames)[len(frames) // 2] / elapsed, 1),
                    }
                    fanout["forwardedVideoPacketsPerSecond"] = round(media_result["videoPackets"] / elapsed)
                    results["phases"]["fanout"] = fanout
                finally:
                    media.join(timeout=30)
                    if media.is_alive():
                        media.kill()
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        await drop(admin, name)
    results["loadavgAfter"] = os.getloadavg()
    return results


def _summary(results: dict[str, Any]) -> None:
    idle, fanout = results["phases"]["idle"], results["phases"].get("fanout")
    print(f"\n{'request':<10} {'idle p50':>9} {'idle p99':>9} {'fan-out p50':>12} {'fan-out p99':>12} {'p99 ratio':>10}")
    for kind in KINDS:
        a = idle[kind]
        b = fanout[kind] if fanout else {"p50Ms": float("nan"), "p99Ms": float("nan")}
        ratio = b["p99Ms"] / a["p99Ms"] if a["p99Ms"] else float("nan")
        print(f"{kind:<10} {a['p50Ms']:>9} {a['p99Ms']:>9} {b['p50Ms']:>12} {b['p99Ms']:>12} {ratio:>10.2f}")
    print(f"probe loop lag p99 (control): idle {idle['probeLoopLagMs']['p99']} ms"
          + (f", fan-out {fanout['probeLoopLagMs']['p99']} ms" if fanout else ""))
    if fanout:
        worst = max(fanout[k]["p99Ms"] for k in KINDS)
        print(f"server CPU: idle {idle['serverCpu']} cores, fan-out {fanout['serverCpu']} cores; "
              f"{results['viewers']} viewers at {fanout['viewerFps']['median']} fps median "
              f"(min {fanout['viewerFps']['min']}), {fanout['forwardedVideoPacketsPerSecond']} video packets/s out")
        print(f"target: every p99 <= {TARGET_P99_MS:g} ms during fan-out: "
              f"{'met' if worst <= TARGET_P99_MS else 'NOT met'} (worst {worst} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=40.0, help="probe requests per second, all kinds")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    _summary(results)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"commerce_fanout-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
