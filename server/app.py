"""The app factory: build the aiohttp application from settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from server.api import Api
from server.auth import Passwords, RateLimiter, Tokens
from server.config import Settings
from server.db import Database, migrate
from server.keys import DB, LOGIN_LIMITER, METRICS, PASSWORDS, SETTINGS, TOKENS
from server.middleware import HttpMetrics, request_context
from server.routes import auth as auth_routes
from server.routes import me as me_routes
from server.routes import ops as ops_routes
from server.routes import web as web_routes

log = logging.getLogger("shopstream")


def build_api() -> Api:
    """Collect every declared route of the server."""
    api = Api()
    for module in (ops_routes, auth_routes, me_routes, web_routes):
        api.include(module.api)
    return api


def create_app(settings: Settings, dsn: str, *, run_migrations: bool = True) -> web.Application:
    """Build the application; `dsn` is the database to use (embedded or external)."""
    if not settings.jwt_secret:
        raise ValueError("settings.jwt_secret is empty: call with_jwt_secret_from_data_dir()")
    app = web.Application(
        middlewares=[request_context], client_max_size=max(settings.max_body_bytes, settings.max_upload_bytes)
    )
    app[SETTINGS] = settings
    app[TOKENS] = Tokens(settings.jwt_secret.get(), settings.access_token_ttl, settings.refresh_token_ttl)
    app[PASSWORDS] = Passwords()
    app[LOGIN_LIMITER] = RateLimiter(settings.login_attempts_per_minute, 60.0)
    app[METRICS] = HttpMetrics(CollectorRegistry())
    api = build_api()
    api.register(app)
    app[ops_routes.OPENAPI] = ops_routes.build_openapi(api)
    web_routes.setup(app)

    async def database(app: web.Application) -> AsyncIterator[None]:
        if run_migrations:
            await migrate(dsn, settings.db_app_role)
        app[DB] = await Database.connect(dsn, settings.db_app_role)
        yield
        await app[DB].close()

    app.cleanup_ctx.append(database)
    return app
