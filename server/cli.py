"""The `shopstream` command: serve, demo, migrate, seed, loadtest."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from server.config import ConfigError, Secret, Settings
from server.db import EmbeddedPostgres, migrate

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
        if name == "demo":
            p.add_argument("--no-live", action="store_true", help="do not publish the built-in test card")
    common(sub.add_parser("migrate", help="apply database migrations and exit"))
    common(sub.add_parser("seed", help="load the demo data and exit"))
    common(sub.add_parser(
        "check-inventory",
        help="check stock = sum of inventory events and held + sold <= stocked; exit 1 on a violation",
    ))
    # The load test's own flags are parsed by benchmarks.loadtest (imported only when used).
    sub.add_parser("loadtest", help="play a live-shopping event against a running server", add_help=False)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        data_dir=Path(args.data_dir) if args.data_dir else None,
        database_url=Secret(args.database_url) if args.database_url else None,
    ).with_jwt_secret_from_data_dir()


@contextlib.asynccontextmanager
async def database_dsn(settings: Settings) -> AsyncIterator[str]:
    """Yield the DSN to use, running the embedded PostgreSQL for the duration if needed."""
    if settings.database_url is not None:
        yield settings.database_url.get()
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    log.info("starting embedded PostgreSQL in %s", embedded.pgdata)
    dsn = await asyncio.to_thread(embedded.start)
    try:
        yield dsn
    finally:
        log.info("stopping embedded PostgreSQL")
        await asyncio.to_thread(embedded.stop)


async def _serve(settings: Settings, *, demo: bool, live: bool = False) -> None:
    from server.app import create_app

    async with database_dsn(settings) as dsn:
        await migrate(dsn, settings.db_app_role)
        if demo:
            from server.demo import seed_demo

            details = await seed_demo(dsn, settings)
        app = create_app(settings, dsn, run_migrations=False)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        base = f"http://{settings.host}:{settings.port}"
        print(f"Kein Shopstream listening on {base}", flush=True)
        if demo:
            _print_demo(base, details)
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


def _print_demo(base: str, details: dict[str, Any]) -> None:
    print("\nDemo data:")
    for account in details["accounts"]:
        print(f"  {account['role']:<7} {account['email']}  password: {account['password']}")
    print(f"  livestream: {details['livestream']['title']} ({details['livestream']['id']})")
    print(f"  stream key (WHIP bearer): {details['livestream']['streamKey']}")
    print("\nURLs:")
    print(f"  shop:         {base}/")
    print(f"  watch:        {base}/live/{details['livestream']['id']}")
    print(f"  studio:       {base}/studio/{details['livestream']['id']}")
    print(f"  WHIP publish: {base}/api/v1/livestreams/{details['livestream']['id']}/publish")
    print(f"  API docs:     {base}/api/v1/openapi.json")
    print(f"  health:       {base}/healthz\n", flush=True)


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
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    commands = {
        "serve": lambda: _serve(settings, demo=False),
        "demo": lambda: _serve(settings, demo=True, live=not args.no_live),
        "migrate": lambda: _migrate(settings),
        "seed": lambda: _seed(settings),
        "check-inventory": lambda: _check_inventory(settings),
    }
    run(commands[args.command])


if __name__ == "__main__":
    main()
