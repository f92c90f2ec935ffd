"""The `shopstream` command: serve, demo, migrate, seed, loadtest."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from server.config import ConfigError, Secret, Settings
from server.db import EmbeddedPostgres, EmbeddedPostgresError, MigrationError, migrate

log = logging.getLogger("shopstream")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopstream", description="Kein Shopstream live-shopping server")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="data folder (embedded database, uploads); default ./var")
        p.add_argument("--database-url", help="PostgreSQL URL; default: embedded PostgreSQL in the data folder")

    for name, help_text in (("serve", "run the server"), ("demo", "run the server with demo data")):
        p = sub.add_parser(name, help=help_text)
        common(p)
        p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port to listen on (default 8080)")
        p.add_argument("--workers", type=int,
                       help="server processes sharing the port (SHOPSTREAM_WORKERS; default: one per "
                            "core with REDIS_URL, else 1" + ("; demo: 1" if name == "demo" else "") + ")")
        if name == "demo":
            p.add_argument("--access-log", action="store_true",
                           help="print a JSON line per request (as LOG_REQUESTS=1 does)")
            p.add_argument("--no-live", action="store_true", help="do not publish the built-in test card")
    common(sub.add_parser("migrate", help="apply database migrations and exit"))
    common(sub.add_parser("seed", help="load the demo data and exit"))
    common(sub.add_parser(
        "check-inventory",
        help="check stock = sum of inventory events and held + sold <= stocked; exit 1 on a violation",
    ))
    common(sub.add_parser("cluster", help="show the cluster's nodes, rooms and relays (needs REDIS_URL)"))
    # The load test's own flags are parsed by benchmarks.loadtest (imported only when used).
    sub.add_parser("loadtest", help="play a live-shopping event against a running server", add_help=False)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    log_requests = None  # serve: LOG_REQUESTS, on by default (JSON lines for production)
    if args.command == "demo":
        # The demo's terminal is for people: requests are logged only when asked for.
        log_requests = args.access_log or _env_flag("LOG_REQUESTS")
    return Settings.from_env(
        log_requests=log_requests,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        # The demo is one process unless asked: it is for a person trying the product.
        workers=getattr(args, "workers", None) or (1 if args.command == "demo" and not
                                                    os.environ.get("SHOPSTREAM_WORKERS") else None),
        data_dir=Path(args.data_dir) if args.data_dir else None,
        database_url=Secret(args.database_url) if args.database_url else None,
    ).with_jwt_secret_from_data_dir()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


@contextlib.asynccontextmanager
async def database_dsn(settings: Settings) -> AsyncIterator[str]:
    """Yield the DSN to use, running the embedded PostgreSQL for the duration if needed."""
    if settings.database_url is not None:
        yield settings.database_url.get()
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    log.info("starting embedded PostgreSQL in %s (its log: %s)", embedded.pgdata, embedded.log_path)
    dsn = await asyncio.to_thread(embedded.start)
    try:
        yield dsn
    finally:
        log.info("stopping embedded PostgreSQL")
        await asyncio.to_thread(embedded.stop)


async def _supervise(settings: Settings) -> None:
    """Run `settings.worker_count` workers on one port (server/workers.py)."""
    from server.workers import Supervisor

    async with database_dsn(settings) as dsn:
        await migrate(dsn, settings.db_app_role)
        supervisor = Supervisor(settings, dsn)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, supervisor.request_stop)
        print(f"Kein Shopstream: {supervisor.count} workers sharing "
              f"http://{settings.host}:{settings.port} (SO_REUSEPORT)", flush=True)
        await supervisor.run()
        print("shutting down", flush=True)


def _is_supervisor(settings: Settings) -> bool:
    # Workers are started with their index in the environment; the supervisor is not.
    return settings.worker_count > 1 and "SHOPSTREAM_WORKER_INDEX" not in os.environ


async def _serve(settings: Settings, *, demo: bool, live: bool = False) -> None:
    from server.app import create_app

    if _is_supervisor(settings):
        await _supervise(settings)
        return
    if demo:
        print("Kein Shopstream demo: starting (the first start sets up a database, ~10 s)...",
              flush=True)
    async with database_dsn(settings) as dsn:
        await migrate(dsn, settings.db_app_role, quiet=demo)
        if demo:
            from server.demo import seed_demo

            details = await seed_demo(dsn, settings)
        app = create_app(settings, dsn, run_migrations=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        shared = settings.worker_count > 1
        # Workers share the public port (the kernel spreads connections over them) and
        # each also listens on its own port, where relays of other workers reach it.
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=shared or None)
        await site.start()
        if shared:
            await web.TCPSite(runner, settings.host, settings.worker_port).start()
        base = f"http://{settings.host}:{settings.port}"
        if demo:
            _print_demo(base, details, settings)
        else:
            print(f"Kein Shopstream listening on {base}", flush=True)
        publisher = None
        if demo and live:
            from server.demo_live import start_demo_publisher

            publisher = start_demo_publisher(settings, details["livestream"])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("shutting down", flush=True)
        if publisher is not None:
            await publisher.stop()
        await runner.cleanup()


def _print_demo(base: str, details: dict[str, Any], settings: Settings | None = None) -> None:
    """Print the demo's one banner: where to go, how to log in, what is demo-only."""
    stream = details["livestream"]
    lines = [
        f"Kein Shopstream demo listening on {base}",
        f"  shop          {base}/",
        f"  watch         {base}/live/{stream['id']}  ({stream['title']})",
        f"  studio        {base}/studio/{stream['id']}  (log in as the seller)",
        f"  WHIP publish  {base}/api/v1/livestreams/{stream['id']}/publish",
        f"  API docs      {base}/api/v1/openapi.json   health: {base}/readyz",
        "  logins        " + "\n                ".join(
            f"{a['role']:<7} {a['email']}  password: {a['password']}" for a in details["accounts"]
        ),
        f"  stream key    {stream['streamKey']}  (DEMO ONLY: the WHIP bearer; anyone holding it"
        " can publish)",
    ]
    if settings is not None:
        where = "embedded PostgreSQL" if settings.embedded_database else "DATABASE_URL"
        lines.append(f"  data          {settings.data_dir.resolve()}  (database: {where})")
        lines.append("  requests      " + (
            "logged as JSON lines" if settings.log_requests else "not logged (--access-log)"))
    lines.append("Stop with Ctrl-C.")
    print("\n".join(lines), flush=True)


async def _migrate(settings: Settings) -> None:
    async with database_dsn(settings) as dsn:
        applied = await migrate(dsn, settings.db_app_role)
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


async def _seed(settings: Settings) -> None:
    from server.demo import seed_demo

    async with database_dsn(settings) as dsn:
        await migrate(dsn, settings.db_app_role)
        details = await seed_demo(dsn, settings)
        for account in details["accounts"]:
            print(f"{account['role']:<7} {account['email']}  password: {account['password']}")


async def _check_inventory(settings: Settings) -> None:
    import json

    import asyncpg

    from commerce.inventory_check import check_inventory

    async with database_dsn(settings) as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                report = await check_inventory(conn)
        finally:
            await conn.close()
    print(json.dumps(report, indent=2))
    if not report["ok"]:
        raise SystemExit(1)


async def _cluster(settings: Settings) -> None:
    import json

    from signaling.bus import connect
    from signaling.directory import Directory, DirectoryUnavailable, summarize

    if not settings.redis_url:
        raise SystemExit("shopstream cluster needs REDIS_URL (a server alone is its own cluster)")
    redis = connect(settings.redis_url.get())
    try:
        nodes = await Directory(redis, settings.redis_prefix).nodes()
    except DirectoryUnavailable as exc:
        raise SystemExit(f"the room directory (Redis) is unreachable: {exc}") from None
    finally:
        await redis.aclose()
    print(json.dumps({"nodes": [vars(n) for n in nodes], "rooms": summarize(nodes)}, indent=2))


def run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine on uvloop."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro_fn())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadtest"]:
        from benchmarks.loadtest import main as loadtest

        sys.exit(loadtest(argv[1:]))
    args = _parser().parse_args(argv)
    # `demo` talks to a person: warnings only, plus the access log when asked for.
    quiet = args.command == "demo"
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    # The format is the message alone: skip the thread and process names every record
    # would otherwise look up (a third of a record's cost, paid by every access-log line).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    try:
        settings = _settings(args)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    if quiet and settings.log_requests:
        logging.getLogger("shopstream.access").setLevel(logging.INFO)
    commands = {
        "serve": lambda: _serve(settings, demo=False),
        "demo": lambda: _serve(settings, demo=True, live=not args.no_live),
        "migrate": lambda: _migrate(settings),
        "seed": lambda: _seed(settings),
        "check-inventory": lambda: _check_inventory(settings),
        "cluster": lambda: _cluster(settings),
    }
    try:
        run(commands[args.command])
    except MigrationError as exc:
        sys.exit(f"database migration error: {exc}")
    except EmbeddedPostgresError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
