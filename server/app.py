"""The app factory: build the aiohttp application from settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from commerce.sales import WARM_UP, SaleQueue
from media import SFU, IceServer, MediaSettings
from server import notify
from server.api import Api
from server.auth import Callers, Passwords, RateLimiter, Tokens
from server.config import Settings
from server.cors import cors_middlewares
from server.db import Database, migrate
from server.keys import CALLERS, DB, GATEWAY, HUB, LOGIN_LIMITER, METRICS, PASSWORDS, SALES, SETTINGS, TOKENS
from server.keys import SFU as SFU_KEY
from server.middleware import HttpMetrics, request_context
from server.payments import payments_ctx
from server.read_cache import READ_CACHE, ReadCache, read_cache_context
from server.routes import admin as admin_routes
from server.routes import analytics as analytics_routes
from server.routes import auth as auth_routes
from server.routes import cart as cart_routes
from server.routes import catalog as catalog_routes
from server.routes import checkout as checkout_routes
from server.routes import cluster as cluster_routes
from server.routes import coupons as coupon_routes
from server.routes import inventory as inventory_routes
from server.routes import livestreams as livestream_routes
from server.routes import me as me_routes
from server.routes import media as media_routes
from server.routes import ops as ops_routes
from server.routes import orders as orders_routes
from server.routes import realtime as realtime_routes
from server.routes import seller_products as seller_product_routes
from server.routes import web as web_routes
from server.routes import webhooks as webhooks_routes
from server.routes import wishlist as wishlist_routes
from signaling.whip import DEFAULT_NODE, MediaGateway

ROUTE_MODULES = (
    ops_routes, auth_routes, me_routes, catalog_routes, seller_product_routes, wishlist_routes,
    admin_routes, cart_routes, coupon_routes, livestream_routes, analytics_routes,
    checkout_routes, orders_routes, webhooks_routes, inventory_routes, realtime_routes,
    media_routes, cluster_routes, web_routes,
)


def build_api() -> Api:
    """Collect every declared route of the server."""
    api = Api()
    for module in ROUTE_MODULES:
        api.include(module.api)
    return api


def create_app(settings: Settings, dsn: str, *, run_migrations: bool = True) -> web.Application:
    """Build the application; `dsn` is the database to use (embedded or external)."""
    if not settings.jwt_secret:
        raise ValueError("settings.jwt_secret is empty: call with_jwt_secret_from_data_dir()")
    app = web.Application(
        middlewares=[*cors_middlewares(settings.cors_origins), request_context],
        client_max_size=max(settings.max_body_bytes, settings.max_upload_bytes),
    )
    app[SETTINGS] = settings
    app[TOKENS] = Tokens(settings.jwt_secret.get(), settings.access_token_ttl, settings.refresh_token_ttl)
    app[CALLERS] = Callers()
    app[PASSWORDS] = Passwords()
    app[LOGIN_LIMITER] = RateLimiter(settings.login_attempts_per_minute, 60.0)
    app[METRICS] = HttpMetrics(CollectorRegistry())
    # While Redis is away, other processes' changes go unheard: then a tick at most.
    app[READ_CACHE] = ReadCache(
        max_age=settings.read_cache_seconds, unsynced_max_age=settings.realtime_tick_ms / 1000
    )
    # process_cpu_seconds_total and process_resident_memory_bytes: what the load test plots.
    ProcessCollector(registry=app[METRICS].registry)
    api = build_api()
    api.register(app)
    app[ops_routes.OPENAPI] = ops_routes.build_openapi(api)
    web_routes.setup(app)

    async def database(app: web.Application) -> AsyncIterator[None]:
        if run_migrations:
            await migrate(dsn, settings.db_app_role)
        app[DB] = await Database.connect(
            dsn, settings.db_app_role, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
            warm=WARM_UP,
        )
        app[SALES] = SaleQueue(app[DB].pool)
        yield
        await app[SALES].close()
        await app[DB].close()

    app.cleanup_ctx.append(loop_lag_context)
    app.cleanup_ctx.append(database)
    # Opened in this order, closed in reverse: media sessions end before the hub stops.
    app.cleanup_ctx.append(payments_ctx)  # needs app[DB]
    app.cleanup_ctx.append(realtime_routes.realtime_context)
    app.cleanup_ctx.append(read_cache_context)  # needs app[REDIS] when set
    app.cleanup_ctx.append(media_context)
    app.cleanup_ctx.append(cluster_routes.cluster_context)  # with Redis: needs the gateway
    return app


LOOP_LAG_INTERVAL = 0.05  # seconds between samples: 20 wake-ups a second


async def loop_lag_context(app: web.Application) -> AsyncIterator[None]:
    """Sample the event loop's lag into `shopstream_event_loop_lag_seconds` (see /metrics).

    A task sleeps LOOP_LAG_INTERVAL and records how much later than that it woke: what
    any await of a request (a database answer, the next read of its body) waits for its
    turn on this loop, whether behind media fan-out, other requests or a busy machine.
    Each garbage collection's duration goes to `shopstream_gc_pause_seconds`.
    """
    histogram = app[METRICS].loop_lag

    async def sample() -> None:
        clock = time.perf_counter
        while True:
            before = clock()
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            histogram.observe(max(0.0, clock() - before - LOOP_LAG_INTERVAL))

    pauses = app[METRICS].gc_pause
    started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.observe(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    task = asyncio.get_running_loop().create_task(sample())
    yield
    gc.callbacks.remove(on_gc)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def media_context(app: web.Application) -> AsyncIterator[None]:
    """Run the SFU and its gateway; on shutdown close every peer connection."""
    settings = app[SETTINGS]
    sfu = SFU(MediaSettings(
        ice_servers=[IceServer(urls=url) for url in settings.ice_servers],
        ice_host_addresses=list(settings.ice_host_addresses) or None,
        ice_port_ranges=settings.worker_ice_port_ranges,  # this worker's share
        ice_announced_addresses=settings.ice_announced_pairs,
        max_viewers_per_room=settings.max_viewers_per_room,
        remb_bitrate_bps=settings.remb_bitrate_bps,
        ladder_layers=settings.simulcast_ladder,
        publisher_grace_seconds=settings.publisher_grace_seconds,
        publisher_idle_timeout_seconds=settings.publisher_idle_timeout,
    ))

    async def room_event(livestream_id: str, event_type: str, payload: dict) -> None:
        await notify.room_event(app, livestream_id, event_type, payload)

    app[SFU_KEY] = sfu
    # Each worker/node owns the shows it hosts (reconcile); alone without Redis: "local".
    node_id = settings.cluster_id if settings.redis_url else DEFAULT_NODE
    app[GATEWAY] = MediaGateway(sfu, app[DB], room_event, realtime=app.get(HUB), node_id=node_id)
    app[METRICS].registry.register(media_routes.RoomMetrics(sfu))
    await app[GATEWAY].reconcile()  # shows left "live" by a crash of this server
    yield
    await app[GATEWAY].close()
