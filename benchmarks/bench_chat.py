"""Chat fan-out: deliveries/s, end-to-end latency and server CPU per delivery.

    python -m benchmarks.bench_chat [--sizes 200,500,1000] [--rate 20] [--seconds 10]

The server runs in a subprocess (`python -m server serve`) on a fresh database;
recipients are WebSocket clients spread over `--workers` client processes; a steady
chat of `--rate` messages/s comes from 20 signed-in senders in this process. Each
message carries its send time, so every recipient measures the end-to-end latency.
The same run measures the server twice: batched (the default tick) and unbatched
(every event sent on its own), the baseline. Server CPU comes from /proc.

Needs PostgreSQL (BENCH_DATABASE_URL or TEST_DATABASE_URL; a database is created and
dropped) and writes benchmarks/results/chat_fanout-<time>.json (+ .png).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from server.auth import Tokens
from server.db import migrate

RESULTS = Path(__file__).resolve().parent / "results"
SENDERS = 20
TARGET_P99_MS = 250
TARGET_PER_CORE = 50_000


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- recipients (client processes) ---------------------------------------------------

def recipient_process(url: str, count: int, pipe: Any) -> None:
    """Hold `count` WebSocket recipients; measure between 'start' and 'stop' commands."""
    import uvloop

    _raise_fd_limit()
    uvloop.run(_recipients(url, count, pipe))


async def _recipients(url: str, count: int, pipe: Any) -> None:
    loop = asyncio.get_running_loop()
    state = {"measuring": False, "deliveries": 0, "messages": 0}
    latencies: list[float] = []

    async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.time()
            value = json.loads(msg.data)
            events = value if isinstance(value, list) else [value]
            if not state["measuring"]:
                continue
            state["messages"] += 1
            for event in events:
                if event["type"] == "chat:new":
                    state["deliveries"] += 1
                    latencies.append(now - float(event["payload"]["message"]))

    # Every open WebSocket holds a connector slot: lift aiohttp's default of 100.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        gate = asyncio.Semaphore(50)

        async def connect() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                return await session.ws_connect(url, max_msg_size=0)

        sockets = await asyncio.gather(*(connect() for _ in range(count)))
        tasks = [asyncio.create_task(reader(ws)) for ws in sockets]
        pipe.send("ready")
        while True:
            command = await loop.run_in_executor(None, pipe.recv)
            if command == "start":
                latencies.clear()
                state.update(measuring=True, deliveries=0, messages=0)
            elif command == "stop":
                state["measuring"] = False
                pipe.send({"deliveries": state["deliveries"], "messages": state["messages"],
                           "latencies": latencies[:]})
            elif command == "close":
                for ws in sockets:
                    await ws.close()
                for task in tasks:
                    task.cancel()
                return


# -- the server ----------------------------------------------------------------------

class ServerProcess:
    def __init__(self, dsn: str, jwt_secret: str, *, batching: bool, data_dir: str) -> None:
        self.port = _free_port()
        env = {
            **os.environ, "DATABASE_URL": dsn, "JWT_SECRET": jwt_secret,
            "SHOPSTREAM_PORT": str(self.port), "SHOPSTREAM_DATA_DIR": data_dir,
            "REALTIME_BATCHING": "true" if batching else "false", "CHAT_RATE_LIMIT": "1000000",
        }
        env.pop("REDIS_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"], env=env, preexec_fn=_raise_fd_limit,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(self.base + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("server did not start")

    def cpu(self) -> float:
        return _cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# -- one measurement -----------------------------------------------------------------

async def measure(server: ServerProcess, livestream_id: str, tokens: list[str], *, recipients: int,
                  workers: int, rate: float, seconds: float) -> dict[str, Any]:
    url = server.base.replace("http", "ws") + f"/api/v1/livestreams/{livestream_id}/events"
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for i in range(workers):
        share = recipients // workers + (1 if i < recipients % workers else 0)
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=recipient_process, args=(url, share, theirs), daemon=True)
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    loop = asyncio.get_running_loop()
    for pipe in pipes:
        assert await loop.run_in_executor(None, pipe.recv) == "ready"
    async with aiohttp.ClientSession() as session:
        senders = [await session.ws_connect(f"{url}?token={t}") for t in tokens]
        drains = [asyncio.create_task(_drain(ws)) for ws in senders]
        await asyncio.sleep(2.0)  # let join traffic and viewer counts settle

        for pipe in pipes:
            pipe.send("start")
        cpu0, t0 = server.cpu(), time.perf_counter()
        sent = await send_chat_at(rate, senders, t0, seconds)
        await asyncio.sleep(1.0)  # the last messages' deliveries
        cpu = server.cpu() - cpu0
        wall = time.perf_counter() - t0
        for pipe in pipes:
            pipe.send("stop")
        parts = [await loop.run_in_executor(None, pipe.recv) for pipe in pipes]
        for pipe in pipes:
            pipe.send("close")
        for ws in senders:
            await ws.close()
        for task in drains:
            task.cancel()
    for proc in procs:
        proc.join(timeout=30)
    latencies = sorted(x for p in parts for x in p["latencies"])
    deliveries = sum(p["deliveries"] for p in parts)
    messages = sum(p["messages"] for p in parts)
    return {
        "recipients": recipients, "sent": sent, "expected": sent * recipients, "deliveries": deliveries,
        "messagesReceived": messages, "seconds": round(wall, 2),
        "deliveriesPerSecond": round(deliveries / wall),
        "p50Ms": round(1000 * _pct(latencies, 0.50), 1), "p99Ms": round(1000 * _pct(latencies, 0.99), 1),
        "serverCpuSeconds": round(cpu, 3),
        "serverCpuPerDeliveryUs": round(1e6 * cpu / max(1, deliveries), 2),
        "deliveriesPerCoreSecond": round(deliveries / cpu) if cpu else None,
    }


async def send_chat_at(rate: float, senders: list[aiohttp.ClientWebSocketResponse], t0: float,
                       seconds: float) -> int:
    """Send chat messages open-loop at `rate` per second from t0 for `seconds`, round-robin
    over `senders`, each stamped with its send time; return how many were sent."""
    sent = 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            ws = senders[sent % len(senders)]
            await ws.send_str(json.dumps({"type": "chat:send", "payload": {"message": f"{time.time():.6f}"}}))
            sent += 1
        await asyncio.sleep(max(0.0, sent / rate - (time.perf_counter() - t0)))
    return sent


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


# -- setup ---------------------------------------------------------------------------

async def seed(dsn: str, tokens: Tokens) -> tuple[str, list[str]]:
    """Insert a seller, a live livestream and the senders; return (livestream id, sender tokens)."""
    conn = await asyncpg.connect(dsn)
    try:
        user_ids = []
        for i in range(SENDERS + 1):
            uid = await conn.fetchval(
                "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id",
                f"bench{i}-{secrets.token_hex(3)}@example.test",
            )
            await conn.execute("INSERT INTO profiles (id, name) VALUES ($1, $2)", uid, f"Sender {i}")
            user_ids.append(str(uid))
        seller_id = await conn.fetchval(
            "INSERT INTO sellers (user_id, display_name) VALUES ($1, 'Bench shop') RETURNING id", user_ids[0])
        livestream_id = await conn.fetchval(
            """INSERT INTO livestreams (seller_id, title, status, stream_key, room)
               VALUES ($1, 'Bench', 'live', $2, $3) RETURNING id""",
            seller_id, secrets.token_urlsafe(16), secrets.token_hex(8))
    finally:
        await conn.close()
    return str(livestream_id), [tokens.access_token(u, "user") for u in user_ids[1:]]


def _with_database(dsn: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path="/" + name))


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") \
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"bench_chat_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = _with_database(admin, name)
    jwt_secret = secrets.token_urlsafe(48)
    results: dict[str, Any] = {
        "benchmark": "chat_fanout", "rate": args.rate, "seconds": args.seconds, "workers": args.workers,
        "cores": os.cpu_count(), "loadavg": os.getloadavg(), "transport": "websocket",
        "runs": {},
    }
    try:
        await migrate(dsn, "shopstream_app", quiet=True)
        livestream_id, tokens = await seed(dsn, Tokens(jwt_secret, 3600, 3600))
        with tempfile.TemporaryDirectory() as data_dir:
            for mode in ("batched", "unbatched"):
                server = ServerProcess(dsn, jwt_secret, batching=mode == "batched", data_dir=data_dir)
                try:
                    await server.ready()
                    for size in args.sizes:
                        print(f"  {mode:>9} {size:>5} recipients: measuring {args.seconds:.0f} s ...", flush=True)
                        run = await measure(server, livestream_id, tokens, recipients=size,
                                            workers=args.workers, rate=args.rate, seconds=args.seconds)
                        results["runs"].setdefault(mode, []).append(run)
                        _print_run(mode, run)
                finally:
                    server.stop()
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
    return results


def _print_run(mode: str, run: dict[str, Any]) -> None:
    print(
        f"  {mode:>9} {run['recipients']:>5}: {run['deliveriesPerSecond']:>7} deliveries/s "
        f"({run['deliveries']}/{run['expected']}), p50 {run['p50Ms']} ms, p99 {run['p99Ms']} ms, "
        f"server CPU {run['serverCpuPerDeliveryUs']} us/delivery "
        f"(~{run['deliveriesPerCoreSecond']} deliveries per core-second)", flush=True,
    )


def _summary(results: dict[str, Any]) -> None:
    print("\nrecipients  mode        deliv/s   p50 ms   p99 ms   CPU us/deliv  deliv/core-s")
    for mode, runs in results["runs"].items():
        for r in runs:
            print(f"{r['recipients']:>10}  {mode:<10} {r['deliveriesPerSecond']:>8} {r['p50Ms']:>8} "
                  f"{r['p99Ms']:>8} {r['serverCpuPerDeliveryUs']:>13} {r['deliveriesPerCoreSecond']:>13}")
    batched = {r["recipients"]: r for r in results["runs"].get("batched", [])}
    for r in results["runs"].get("unbatched", []):
        b = batched.get(r["recipients"])
        if b and b["serverCpuPerDeliveryUs"]:
            ratio = r["serverCpuPerDeliveryUs"] / b["serverCpuPerDeliveryUs"]
            print(f"{r['recipients']:>10}  batched uses {ratio:.2f}x less server CPU per delivery than unbatched")
    top = batched.get(max(batched)) if batched else None
    if top:
        ok = top["p99Ms"] < TARGET_P99_MS and (top["deliveriesPerCoreSecond"] or 0) >= TARGET_PER_CORE
        print(f"target at {top['recipients']} recipients (p99 < {TARGET_P99_MS} ms, >= {TARGET_PER_CORE} "
              f"deliveries/core-s): {'met' if ok else 'NOT met'}")


def _plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, runs in results["runs"].items():
        xs = [r["recipients"] for r in runs]
        ax1.plot(xs, [r["p99Ms"] for r in runs], marker="o", label=f"{mode} p99")
        ax1.plot(xs, [r["p50Ms"] for r in runs], marker=".", linestyle="--", label=f"{mode} p50")
        ax2.plot(xs, [r["serverCpuPerDeliveryUs"] for r in runs], marker="o", label=mode)
    ax1.axhline(TARGET_P99_MS, color="grey", linewidth=0.8)
    ax1.set(xlabel="recipients", ylabel="latency (ms)", title=f"chat at {results['rate']} msg/s")
    ax2.set(xlabel="recipients", ylabel="server CPU per delivery (µs)", title="cost per delivery")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,500,1000", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--rate", type=float, default=20.0, help="chat messages per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--workers", type=int, default=2, help="recipient client processes")
    args = parser.parse_args()
    _raise_fd_limit()
    print(f"chat fan-out: {args.sizes} recipients, {args.rate} msg/s, {args.seconds} s per point", flush=True)
    results = asyncio.run(main_async(args))
    _summary(results)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"chat_fanout-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    _plot(results, path.with_suffix(".png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
