"""Checkout drop: M concurrent buyers race for N units through the HTTP API.

    python -m benchmarks.bench_drop [--users 2000] [--units 100] [--concurrency 100]
                                    [--admin-dsn URL] [--url URL --database-url URL --jwt-secret S]

Without --url it creates a database on the PostgreSQL of --admin-dsn (default
$TEST_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/postgres), starts
`python -m server serve` on 127.0.0.1 in a subprocess against it, and drops the
database afterwards. Users, addresses and the product are written with SQL and the
buyers' access tokens minted with the server's JWT secret (argon2 signups would
dominate the run). Prints attempts/s, p50/p95/p99 latency, successes and oversold,
and a baseline measured in the same run: the bare conditional-UPDATE transaction on
the same database, with the same concurrency. Writes JSON (and a PNG when matplotlib
is installed) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from benchmarks.http1 import Http1Pool
from commerce.inventory_check import check_inventory
from server.auth import Tokens
from server.db import migrate

RESULTS = Path(__file__).resolve().parent / "results"
APP_ROLE = "shopstream_app"
SETTLE_SECONDS = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_database(dsn: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path="/" + name))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Progress:
    """Print a one-line progress report every second while a phase runs."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Progress:
        self._task = asyncio.create_task(self._report())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        print(f"\r  {self.label}: {self.done}/{self.total} done" + " " * 20, flush=True)

    async def _report(self) -> None:
        start = time.perf_counter()
        while True:
            await asyncio.sleep(1)
            rate = self.done / (time.perf_counter() - start)
            print(f"\r  {self.label}: {self.done}/{self.total} ({rate:,.0f}/s)", end="", flush=True)


async def setup_drop(dsn: str, secret: str, users: int, units: int) -> dict[str, Any]:
    """Write a seller, one product with `units` units and `users` buyers with addresses."""
    conn = await asyncpg.connect(dsn)
    try:
        tag = secrets.token_hex(4)
        seller_user = await conn.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id", f"seller-{tag}@bench.test")
        await conn.execute("INSERT INTO profiles (id, name, role) VALUES ($1, 'Seller', 'seller')", seller_user)
        seller = await conn.fetchval(
            "INSERT INTO sellers (user_id, display_name) VALUES ($1, 'Bench shop') RETURNING id", seller_user)
        product = await conn.fetchval(
            """INSERT INTO products (seller_id, title, price, currency, status)
               VALUES ($1, 'Drop item', 2500, 'USD', 'active') RETURNING id""", seller)
        variant = await conn.fetchval(
            """INSERT INTO product_variants (product_id, seller_id, sku, stock)
               VALUES ($1, $2, $3, $4) RETURNING id""", product, seller, f"DROP-{tag}", units)
        await conn.execute(
            "INSERT INTO inventory_events (product_id, variant_id, delta, reason) VALUES ($1, $2, $3, 'initial')",
            product, variant, units)
        rows = await conn.fetch(
            """WITH u AS (
                   INSERT INTO users (email, password_hash)
                   SELECT 'buyer' || g || '-' || $2 || '@bench.test', 'x' FROM generate_series(1, $1) g
                   RETURNING id),
               p AS (INSERT INTO profiles (id, name) SELECT id, 'Buyer' FROM u)
               INSERT INTO addresses (user_id, line1, city, postal_code, country)
               SELECT id, '1 Main St', 'Springfield', '12345', 'US' FROM u RETURNING user_id, id""",
            users, tag)
    finally:
        await conn.close()
    tokens = Tokens(secret, 3600, 3600)
    buyers = [(tokens.access_token(str(r["user_id"]), "user"), str(r["id"])) for r in rows]
    return {"product": str(product), "variant": str(variant), "buyers": buyers}


async def run_http(
    url: str, drop: dict[str, Any], concurrency: int, rate: float | None = None, label: str = "HTTP checkouts",
) -> dict[str, Any]:
    """Send one checkout per buyer.

    Closed loop (no `rate`): `concurrency` requests always in flight, each sent when one
    ends. Open loop (`rate`): the i-th request is due at i / rate seconds whatever the
    server does, on at most `concurrency` connections, and its latency counts from when
    it was due, so time spent queued behind a slow server is not hidden.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    item = {"productId": drop["product"], "variantId": drop["variant"], "qty": 1}
    pool = Http1Pool(url, concurrency)
    async with Progress(label, len(drop["buyers"])) as progress:

        async def attempt(i: int, due: float) -> None:
            token, address = drop["buyers"][i]
            status, _ = await pool.post_json(
                "/api/v1/checkout/session", json.dumps({"addressId": address, "items": [item]}).encode(),
                {"Authorization": f"Bearer {token}", "Idempotency-Key": f"drop-{i}"},
            )
            latencies.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1
            progress.done += 1

        started = time.perf_counter()
        if rate:
            # Each attempt is started when it is due. (Creating all of them up front, each
            # sleeping until its time, cost this process ~20 ms of CPU just as the drop
            # began, which the first attempts then counted as the server's latency.)
            tasks = []
            for i in range(len(drop["buyers"])):
                due = started + i / rate
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(attempt(i, due)))
            await asyncio.gather(*tasks)
        else:
            queue = list(range(len(drop["buyers"])))[::-1]

            async def worker() -> None:
                while queue:
                    await attempt(queue.pop(), time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    await pool.close()
    return _summary(latencies, elapsed, successes=statuses.get(201, 0), statuses=statuses)


async def run_bare_sql(dsn: str, attempts: int, units: int, concurrency: int) -> dict[str, Any]:
    """The baseline: BEGIN; conditional UPDATE; COMMIT, on a fresh variant, same concurrency."""
    conn = await asyncpg.connect(dsn)
    variant = await conn.fetchval(
        """INSERT INTO product_variants (product_id, seller_id, sku, stock)
           SELECT product_id, seller_id, 'BASELINE-' || gen_random_uuid(), $1 FROM product_variants LIMIT 1
           RETURNING id""", units)
    await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=min(concurrency, 20), max_size=20)
    latencies: list[float] = []
    successes = 0
    remaining = list(range(attempts))
    async with Progress("bare SQL", attempts) as progress:

        async def worker() -> None:
            nonlocal successes
            while remaining:
                remaining.pop()
                t0 = time.perf_counter()
                async with pool.acquire() as c, c.transaction():
                    got = await c.fetchval(
                        "UPDATE product_variants SET stock = stock - $2 WHERE id = $1 AND stock >= $2 RETURNING stock",
                        variant, 1)
                latencies.append(time.perf_counter() - t0)
                successes += got is not None
                progress.done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    async with pool.acquire() as c:  # put the baseline's variant away: it has no ledger
        await c.execute("DELETE FROM product_variants WHERE id = $1", variant)
    await pool.close()
    return _summary(latencies, elapsed, successes=successes)


def _summary(latencies: list[float], elapsed: float, **extra: Any) -> dict[str, Any]:
    return {
        "attempts": len(latencies), "seconds": round(elapsed, 3),
        "attemptsPerSecond": round(len(latencies) / elapsed, 1),
        "p50Ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p95Ms": round(_percentile(latencies, 0.95) * 1000, 2),
        "p99Ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "meanMs": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0.0,
        **extra,
    }


async def verify(dsn: str, drop: dict[str, Any], units: int, successes: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        stock = await conn.fetchval("SELECT stock FROM product_variants WHERE id = $1", drop["variant"])
        held = await conn.fetchval("SELECT coalesce(sum(qty), 0) FROM stock_holds WHERE variant_id = $1", drop["variant"])
        async with conn.transaction(isolation="repeatable_read"):
            report = await check_inventory(conn)
    finally:
        await conn.close()
    return {"stockLeft": stock, "unitsHeld": int(held), "oversold": max(0, int(held) - units),
            "successesMatchHolds": int(held) == successes, "inventoryOk": report["ok"]}


async def start_server(dsn: str, secret: str, port: int, data_dir: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JWT_SECRET": secret, "LOG_REQUESTS": "0", "SHOPSTREAM_DATA_DIR": data_dir}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--database-url", dsn, "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.terminate()
    raise SystemExit("the server did not become ready")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    owned_db = None
    server = None
    if args.url:
        if not (args.database_url and args.jwt_secret):
            raise SystemExit("--url needs --database-url and --jwt-secret (to write users and mint tokens)")
        dsn, url, secret = args.database_url, args.url.rstrip("/"), args.jwt_secret
    else:
        owned_db = f"bench_drop_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(args.admin_dsn)
        await admin.execute(f'CREATE DATABASE "{owned_db}"')
        await admin.close()
        dsn = _with_database(args.admin_dsn, owned_db)
        await migrate(dsn, APP_ROLE, quiet=True)
        secret = secrets.token_urlsafe(48)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
    tmp = tempfile.TemporaryDirectory(prefix="bench-drop-")
    try:
        print(f"setting up 3 drops (a warm-up and two measured) of {args.users} buyers and "
              f"{args.units} units ...", flush=True)
        # The same drop first, unmeasured: the server has opened its pool connections
        # (each warms the checkout's statements as it opens) and run every code path.
        warm = await setup_drop(dsn, secret, args.users, args.units)
        open_drop = await setup_drop(dsn, secret, args.users, args.units)
        closed_drop = await setup_drop(dsn, secret, args.users, args.units)
        if owned_db:
            server = await start_server(dsn, secret, port, tmp.name)
        print(f"server {url}; warm-up, then the drop at {args.rate:,.0f} attempts/s (open loop), "
              f"then as fast as {args.concurrency} in flight allow (closed loop)", flush=True)
        warmup = await run_http(url, warm, args.concurrency, label="warm-up")
        # Each measured drop starts on a settled server, as a real one would: the previous
        # phase's connections closed and its background work (stock announcements, the
        # database's own writes) done.
        await asyncio.sleep(SETTLE_SECONDS)
        opened = await run_http(url, open_drop, args.concurrency, rate=args.rate, label="drop at a fixed rate")
        await asyncio.sleep(SETTLE_SECONDS)
        closed = await run_http(url, closed_drop, args.concurrency, label="drop, closed loop")
        checks = {
            "open": await verify(dsn, open_drop, args.units, opened["successes"]),
            "closed": await verify(dsn, closed_drop, args.units, closed["successes"]),
        }
        baseline = await run_bare_sql(dsn, args.users, args.units, args.concurrency)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        if owned_db:
            admin = await asyncpg.connect(args.admin_dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{owned_db}" WITH (FORCE)')
            await admin.close()
        tmp.cleanup()
    return {
        "benchmark": "checkout drop", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "users": args.users, "units": args.units, "concurrency": args.concurrency, "rate": args.rate,
        "cpus": os.cpu_count(), "loadAverage": os.getloadavg()[0],
        "warmup": warmup, "openLoop": opened, "closedLoop": closed, "checks": checks, "bareSql": baseline,
        "closedLoopToBareSqlRatio": round(closed["attemptsPerSecond"] / baseline["attemptsPerSecond"], 3),
        "target": {"attemptsPerSecond": 1500, "p95Ms": 50, "oversold": 0},
    }


def target_met(result: dict[str, Any]) -> bool:
    """0 oversold and a clean ledger in both drops; the rate kept up with, p95 < 50 ms."""
    opened, target = result["openLoop"], result["target"]
    clean = all(c["oversold"] == 0 and c["inventoryOk"] for c in result["checks"].values())
    kept_up = opened["attemptsPerSecond"] >= 0.98 * min(result["rate"], target["attemptsPerSecond"])
    return clean and result["rate"] >= target["attemptsPerSecond"] and kept_up and opened["p95Ms"] < target["p95Ms"]


def report(result: dict[str, Any]) -> None:
    print()
    rows = [("warm-up", result["warmup"]), (f"drop at {result['rate']:,.0f}/s", result["openLoop"]),
            (f"drop, {result['concurrency']} in flight", result["closedLoop"]),
            ("bare SQL, same", result["bareSql"])]
    for name, r in rows:
        statuses = f"  statuses {r['statuses']}" if "statuses" in r else ""
        print(f"{name:<22}: {r['attemptsPerSecond']:>8,.0f} attempts/s  p50 {r['p50Ms']} ms  "
              f"p95 {r['p95Ms']} ms  p99 {r['p99Ms']} ms{statuses}")
    print(f"ratio closed-loop HTTP / bare SQL: {result['closedLoopToBareSqlRatio']}")
    for name, c in result["checks"].items():
        print(f"{name} loop: oversold {c['oversold']}  stock left {c['stockLeft']}  "
              f"successes match holds {c['successesMatchHolds']}  inventory ok {c['inventoryOk']}")
    print("target (0 oversold, >= 1500 attempts/s with p95 < 50 ms):", "met" if target_met(result) else "NOT met")


def save(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"bench_drop-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = {"openLoop": f"HTTP at {result['rate']:,.0f}/s", "closedLoop": "HTTP, closed loop",
                 "bareSql": "bare SQL"}
        for metric, offset in (("p50Ms", -0.2), ("p95Ms", 0.0), ("p99Ms", 0.2)):
            ax.bar([i + offset for i in range(len(names))], [result[k][metric] for k in names],
                   width=0.2, label=metric[:3])
        ax.set_xticks(range(len(names)), [f"{n}\n{result[k]['attemptsPerSecond']:,.0f}/s"
                                          for k, n in names.items()])
        ax.set_ylabel("latency (ms)")
        ax.legend()
        ax.set_title(f"Checkout drop: {result['users']} buyers, {result['units']} units")
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"))
    except ImportError:
        pass
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_drop", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=2000, help="buyers, one checkout attempt each")
    parser.add_argument("--units", type=int, default=100, help="units of the dropped variant")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="requests in flight (closed loop); connections (open loop)")
    parser.add_argument("--rate", type=float, default=1500.0, help="attempts/s offered in the open-loop drop")
    parser.add_argument("--admin-dsn", default=os.environ.get(
        "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL where a scratch database is created (when no --url)")
    parser.add_argument("--url", help="benchmark a running server instead of starting one")
    parser.add_argument("--database-url", help="with --url: that server's database (to write users)")
    parser.add_argument("--jwt-secret", help="with --url: that server's JWT secret (to mint tokens)")
    args = parser.parse_args()
    import uvloop

    result = uvloop.run(main_async(args))
    report(result)
    print(f"results: {save(result)}")
    if any(c["oversold"] or not c["inventoryOk"] for c in result["checks"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
