"""Hot reads: catalog and product reads per second with wrk, against a bare aiohttp handler.

    python -m benchmarks.bench_reads [--seconds 10] [--connections 64] [--rounds 1]

Needs `wrk` (Debian: `apt-get install wrk`) and PostgreSQL (BENCH_DATABASE_URL or
TEST_DATABASE_URL; a database is created, seeded and dropped). One run measures, each
with one server process (one worker) on a fresh port:

- `bare`: a bare aiohttp handler answering the product's JSON (`web.json_response` of
  a dict), the ceiling of one process here: the baseline of every ratio;
- `uncached`: the server with READ_CACHE_SECONDS=0 (every read goes to PostgreSQL, the
  code before the read cache);
- `cached`: the server as configured by default (read cache, access log on);
- `nolog`: the same with LOG_REQUESTS=false (what the access log line costs).

For each server, wrk (one thread, so the load generator keeps to one core of the two)
reads `GET /api/v1/products?limit=20` and `GET /api/v1/products/{id}`, and, cached only,
the same product with a matching `If-None-Match` (304). Prints req/s, p50/p99 and the
ratio to bare; writes benchmarks/results/reads-<time>.json. Target (issue 16, item 7):
>= 10,000 req/s per worker for both reads, p99 <= 20 ms.

It also prints the server process's own CPU per request (user + system time over the
run, from /proc, divided by the requests wrk completed) and what that makes per core-
second: on a shared machine req/s follows whoever else runs, CPU per request much less.
10,000 req/s on a worker's core is 100 us of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

from server.db import migrate

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RPS = 10_000
TARGET_P99_MS = 20.0
PRODUCTS = 200
VARIANTS = 3

BARE_SERVER = textwrap.dedent("""
    import json, sys
    from aiohttp import web
    product = json.loads(sys.argv[2])
    async def handler(request):
        return web.json_response(product)
    app = web.Application()
    app.router.add_get("/bare", handler)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_database(dsn: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path="/" + name))


async def seed(dsn: str) -> str:
    """Insert a seller with PRODUCTS active products of VARIANTS variants; return one product id."""
    conn = await asyncpg.connect(dsn)
    try:
        user_id = await conn.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ('bench-reads@example.test', 'x') RETURNING id")
        await conn.execute("INSERT INTO profiles (id, name) VALUES ($1, 'Bench')", user_id)
        seller_id = await conn.fetchval(
            "INSERT INTO sellers (user_id, display_name) VALUES ($1, 'Bench shop') RETURNING id", user_id)
        product_ids = []
        for i in range(PRODUCTS):
            product_id = await conn.fetchval(
                """INSERT INTO products (seller_id, title, description, price, currency, status)
                   VALUES ($1, $2, $3, $4, 'USD', 'active') RETURNING id""",
                seller_id, f"Bench product {i}", "A product to read, many times over. " * 4, 1000 + i)
            for v in range(VARIANTS):
                await conn.execute(
                    """INSERT INTO product_variants (product_id, seller_id, sku, color, size, stock)
                       VALUES ($1, $2, $3, 'Black', $4, 0)""",
                    product_id, seller_id, f"B-{i}-{v}", str(v))
            product_ids.append(str(product_id))
    finally:
        await conn.close()
    return product_ids[len(product_ids) // 2]


class Server:
    """One server process (ours or the bare handler) on a free port."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @classmethod
    def shopstream(cls, dsn: str, data_dir: str, cache_seconds: str | None, *, log_requests: bool = True) -> Server:
        port = _free_port()
        env = {**os.environ, "DATABASE_URL": dsn, "JWT_SECRET": secrets.token_urlsafe(48),
               "SHOPSTREAM_PORT": str(port), "SHOPSTREAM_DATA_DIR": data_dir}
        env.pop("REDIS_URL", None)
        env.pop("READ_CACHE_SECONDS", None)
        if cache_seconds is not None:
            env["READ_CACHE_SECONDS"] = cache_seconds
        env["LOG_REQUESTS"] = "true" if log_requests else "false"
        return cls([sys.executable, "-m", "server", "serve"], env, port)

    @classmethod
    def bare(cls, product_json: str) -> Server:
        port = _free_port()
        return cls([sys.executable, "-c", BARE_SERVER, str(port), product_json], dict(os.environ), port)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self, path: str) -> None:
        for _ in range(600):
            try:
                with urllib.request.urlopen(self.url(path), timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"server on {self.port} did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return round(float(number) * _UNITS[unit], 3)


def wrk(url: str, *, seconds: float, connections: int, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Run wrk (1 thread) against `url`; return req/s, latency percentiles and errors."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s*(50|75|90|99)%\s+([\d.]+(?:us|ms|s|m))\s*$", out, re.MULTILINE))
    if set(latency) != {"50", "75", "90", "99"}:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    done = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)$", out, re.MULTILINE)
    return {
        "rps": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))),  # type: ignore[union-attr]
        "p50Ms": _ms(latency["50"]), "p90Ms": _ms(latency["90"]), "p99Ms": _ms(latency["99"]),
        "non2xx": int(bad.group(1)) if bad else 0, "socketErrors": errors.group(1) if errors else None,
        "requests": int(done.group(1)) if done else 0,
    }


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time process ``pid`` has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(args: argparse.Namespace, dsn: str, product_id: str) -> dict[str, Any]:
    reads = {"list": "/api/v1/products?limit=20", "product": f"/api/v1/products/{product_id}"}
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        cached = Server.shopstream(dsn, data_dir, None)
        try:
            cached.ready("/readyz")
            with urllib.request.urlopen(cached.url(reads["product"])) as resp:
                product_json, etag = resp.read().decode(), resp.headers["ETag"]
        finally:
            cached.stop()
        servers = [
            ("bare", lambda: Server.bare(product_json), "/bare", {"product": "/bare"}),
            ("uncached", lambda: Server.shopstream(dsn, data_dir, "0"), "/readyz", reads),
            ("cached", lambda: Server.shopstream(dsn, data_dir, None), "/readyz",
             {**reads, "product304": reads["product"]}),
            # The access log (a JSON line per request, on by default) is part of the cost.
            ("nolog", lambda: Server.shopstream(dsn, data_dir, None, log_requests=False), "/readyz", reads),
        ]
        for name, start, ready, paths in servers:
            server = start()
            try:
                server.ready(ready)
                for read, path in paths.items():
                    headers = {"If-None-Match": etag} if read == "product304" else None
                    # Warm-up: connections, prepared statements, the cache.
                    wrk(server.url(path), seconds=1, connections=args.connections, headers=headers)
                    print(f"  {name:>8} {read:<10} {args.seconds:.0f} s ...", end="", flush=True)
                    cpu = cpu_seconds(server.process.pid)
                    run = wrk(server.url(path), seconds=args.seconds, connections=args.connections,
                              headers=headers)
                    cpu = cpu_seconds(server.process.pid) - cpu
                    run["cpuUsPerRequest"] = round(cpu * 1e6 / max(1, run["requests"]), 1)
                    run["perCoreSecond"] = round(run["requests"] / cpu) if cpu else None
                    runs[f"{name}:{read}"] = run
                    print(f" {run['rps']:>7} req/s  p50 {run['p50Ms']:>6} ms  p99 {run['p99Ms']:>6} ms"
                          f"  {run['cpuUsPerRequest']:>6} us CPU/request"
                          + (f"  non-2xx/3xx {run['non2xx']}" if run["non2xx"] else ""), flush=True)
            finally:
                server.stop()
    bare = runs["bare:product"]
    for run in runs.values():
        run["ratioToBare"] = round(run["rps"] / bare["rps"], 3)
        run["cpuRatioToBare"] = round(bare["cpuUsPerRequest"] / max(0.1, run["cpuUsPerRequest"]), 3)
    return runs


def _summary(rounds: list[dict[str, Any]]) -> None:
    print("\nround  server    read        req/s    p50 ms   p99 ms   x bare   CPU us/req  per core-s  x bare")
    for i, runs in enumerate(rounds, 1):
        for key, run in runs.items():
            name, read = key.split(":")
            print(f"{i:>5}  {name:<9} {read:<10} {run['rps']:>7} {run['p50Ms']:>9} {run['p99Ms']:>8} "
                  f"{run['ratioToBare']:>8} {run['cpuUsPerRequest']:>12} {run['perCoreSecond'] or '-':>11} "
                  f"{run['cpuRatioToBare']:>7}")
    for i, runs in enumerate(rounds, 1):
        verdicts = []
        for read in ("list", "product"):
            run = runs[f"cached:{read}"]
            ok = run["rps"] >= TARGET_RPS and run["p99Ms"] <= TARGET_P99_MS
            before = runs[f"uncached:{read}"]["rps"]
            verdicts.append(f"{read} {run['rps']} req/s ({run['rps'] / max(1, before):.1f}x uncached, "
                            f"p99 {run['p99Ms']} ms): {'met' if ok else 'NOT met'}")
        print(f"round {i}: target >= {TARGET_RPS} req/s, p99 <= {TARGET_P99_MS} ms: " + "; ".join(verdicts))


async def setup(admin: str) -> tuple[str, str, str]:
    name = f"bench_reads_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = _with_database(admin, name)
    await migrate(dsn, "shopstream_app", quiet=True)
    return name, dsn, await seed(dsn)


async def drop(admin: str, name: str) -> None:
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole run (a shared machine is noisy)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    admin = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") \
        or "postgresql://postgres@127.0.0.1:5432/postgres"
    name, dsn, product_id = asyncio.run(setup(admin))
    results: dict[str, Any] = {
        "benchmark": "reads", "seconds": args.seconds, "connections": args.connections,
        "cores": os.cpu_count(), "loadavgBefore": os.getloadavg(), "products": PRODUCTS,
        "variantsPerProduct": VARIANTS, "targetRps": TARGET_RPS, "targetP99Ms": TARGET_P99_MS, "rounds": [],
    }
    try:
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds} (load average {os.getloadavg()[0]:.2f})", flush=True)
            results["rounds"].append(measure(args, dsn, product_id))
    finally:
        asyncio.run(drop(admin, name))
    results["loadavgAfter"] = os.getloadavg()
    _summary(results["rounds"])
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"reads-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
