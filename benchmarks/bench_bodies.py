"""Large invalid bodies: time to refuse, event-loop stall and memory, before and after.

    python -m benchmarks.bench_bodies [--items 200000] [--concurrency 1,4] [--skip-baseline]

Issue 13, finding 6: a 585 KiB checkout body of 200,000 invalid items (`{}`) took 3.8 s
to refuse, `/healthz` waited as long, and the process kept 411 MiB more.

Each mode runs in its own server process (spawned; fresh memory) on 127.0.0.1 with the
real middleware and one route declared like checkout (`CHECKOUT_IN`, no login, so no
database is needed):
- `now`: the route wrapper of `server.api` (bounded decoder, sizes before items,
  errors capped at 20);
- `baseline`: the pipeline before the fix, kept here verbatim: `json.loads`, every
  jsonschema error collected and sorted, the first 20 worded.
This process sends the bodies (`--concurrency` at once) while polling `/healthz` every
10 ms, and reads the server's RSS from /proc before and after. Figures: time to refuse
(slowest of the concurrent requests), worst `/healthz` latency (the loop stall), RSS
growth and peak RSS growth. Writes benchmarks/results/bodies-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kib(pid: int) -> dict[str, int]:
    """Return the process's current and peak resident memory (KiB) from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss": int(fields["VmRSS"].split()[0]), "hwm": int(fields["VmHWM"].split()[0])}


def _serve(mode: str, port: int) -> None:
    """Run the body-refusing server (in a child process) until killed."""
    import jsonschema
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from server.api import Api, json_response
    from server.auth import Callers, Tokens
    from server.config import Secret, Settings
    from server.errors import ApiError
    from server.keys import BODY, CALLERS, METRICS, SETTINGS, TOKENS
    from server.middleware import HttpMetrics, request_context
    from server.routes.checkout import CHECKOUT_IN

    app = web.Application(middlewares=[request_context], client_max_size=2 * 1024 * 1024)
    app[SETTINGS] = Settings(jwt_secret=Secret("x" * 48), log_requests=False)
    app[TOKENS] = Tokens("x" * 48, 900, 3600)
    app[CALLERS] = Callers()
    app[METRICS] = HttpMetrics(CollectorRegistry())

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    if mode == "now":
        api = Api()

        @api.route("POST", "/checkout", summary="checkout-shaped body", body=CHECKOUT_IN)
        async def accept(request: web.Request) -> web.Response:
            return json_response({"items": len(request[BODY].get("items", []))})

        api.register(app)
    else:
        full = jsonschema.Draft202012Validator(CHECKOUT_IN)

        async def old_pipeline(request: web.Request) -> web.Response:
            # server/api.py before issue 13: decode, collect every error, sort, word 20.
            data = json.loads(await request.read())
            errors = sorted(full.iter_errors(data), key=lambda e: list(e.absolute_path))
            if not errors:
                return json_response({"items": len(data.get("items", []))})
            fields: dict[str, str] = {}
            for error in errors[:20]:
                where = ".".join(str(p) for p in error.absolute_path)
                if error.validator == "additionalProperties":
                    where = ".".join(filter(None, [where, *re.findall(r"'([^']+)'", error.message)[:1]]))
                fields[where or "body"] = error.message
            first = next(iter(fields))
            raise ApiError(400, "validation_error", f"invalid request body: {first}: {fields[first]}",
                           {"fields": fields})

        app.router.add_post("/checkout", old_pipeline)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _wait_up(http: aiohttp.ClientSession, base: str) -> None:
    for _ in range(200):
        try:
            async with http.get(f"{base}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


async def _measure(mode: str, body: bytes, concurrency: list[int]) -> dict[str, Any]:
    port = _free_port()
    server = mp.get_context("spawn").Process(target=_serve, args=(mode, port), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{port}"
    figures: dict[str, Any] = {"mode": mode, "runs": []}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            await _wait_up(http, base)
            assert server.pid is not None
            for n in concurrency:
                before = _rss_kib(server.pid)
                stalls: list[float] = []
                done = asyncio.Event()

                async def poll(done: asyncio.Event, stalls: list[float]) -> None:
                    while not done.is_set():
                        started = time.perf_counter()
                        async with http.get(f"{base}/healthz") as resp:
                            await resp.read()
                        stalls.append(time.perf_counter() - started)
                        await asyncio.sleep(0.01)

                async def refuse() -> tuple[int, float]:
                    started = time.perf_counter()
                    async with http.post(f"{base}/checkout", data=body,
                                         headers={"Content-Type": "application/json"}) as resp:
                        await resp.read()
                        return resp.status, time.perf_counter() - started

                poller = asyncio.create_task(poll(done, stalls))
                results = await asyncio.gather(*(refuse() for _ in range(n)))
                done.set()
                await poller
                after = _rss_kib(server.pid)
                run = {
                    "concurrency": n,
                    "statuses": sorted({status for status, _ in results}),
                    "refuse_s": round(max(elapsed for _, elapsed in results), 4),
                    "healthz_worst_s": round(max(stalls), 4),
                    "rss_growth_mib": round((after["rss"] - before["rss"]) / 1024, 1),
                    "peak_growth_mib": round((after["hwm"] - before["hwm"]) / 1024, 1),
                }
                figures["runs"].append(run)
                print(f"  {mode:8} x{n}: refused {run['statuses']} in {run['refuse_s']:.3f} s, "
                      f"/healthz worst {run['healthz_worst_s']:.3f} s, RSS +{run['rss_growth_mib']} MiB "
                      f"(peak +{run['peak_growth_mib']} MiB)", flush=True)
    finally:
        server.kill()
        server.join()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--skip-baseline", action="store_true", help="measure only the current code")
    args = parser.parse_args()
    body = json.dumps({"addressId": "a", "items": [{}] * args.items}, separators=(",", ":")).encode()
    concurrency = [int(n) for n in args.concurrency.split(",")]
    print(f"body: {len(body) / 1024:.0f} KiB, {args.items} invalid items; concurrency {concurrency}", flush=True)
    report: dict[str, Any] = {"body_kib": round(len(body) / 1024), "items": args.items, "modes": []}
    modes = ["now"] if args.skip_baseline else ["now", "baseline"]
    for mode in modes:
        report["modes"].append(asyncio.run(_measure(mode, body, concurrency)))
    if len(report["modes"]) == 2:
        now, old = report["modes"]
        print("ratio baseline / now:")
        for a, b in zip(old["runs"], now["runs"], strict=True):
            print(f"  x{a['concurrency']}: time to refuse {a['refuse_s'] / max(b['refuse_s'], 1e-4):.0f}x, "
                  f"/healthz worst {a['healthz_worst_s'] / max(b['healthz_worst_s'], 1e-4):.0f}x, "
                  f"RSS growth {a['rss_growth_mib']} vs {b['rss_growth_mib']} MiB")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bodies-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
