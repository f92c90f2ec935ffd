"""Typed application state: every shared object lives under one of these keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from server.auth import Callers, Passwords, RateLimiter, Tokens
    from server.config import Settings
    from server.db import Database
    from server.middleware import HttpMetrics

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
TOKENS: web.AppKey[Tokens] = web.AppKey("tokens")
CALLERS: web.AppKey[Callers] = web.AppKey("callers")
PASSWORDS: web.AppKey[Passwords] = web.AppKey("passwords")
LOGIN_LIMITER: web.AppKey[RateLimiter] = web.AppKey("login_limiter")
METRICS: web.AppKey[HttpMetrics] = web.AppKey("metrics")
# Filled by later subsystems (media SFU, realtime hub, payments); typed as Any here so
# that this module does not import them.
SFU: web.AppKey[Any] = web.AppKey("sfu")  # media.SFU
GATEWAY: web.AppKey[Any] = web.AppKey("media_gateway")  # signaling.whip.MediaGateway
HUB: web.AppKey[Any] = web.AppKey("hub")
PAYMENTS: web.AppKey[Any] = web.AppKey("payments")
SALES: web.AppKey[Any] = web.AppKey("sales")  # commerce.sales.SaleQueue
REDIS: web.AppKey[Any] = web.AppKey("redis")
CLUSTER: web.AppKey[Any] = web.AppKey("cluster")  # signaling.cluster.Cluster (with Redis)

# Per-request state set by the middleware and the route wrapper (server/api.py).
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
IDENTITY: web.RequestKey[Any] = web.RequestKey("identity", object)  # server.auth.Identity
AUTH_ERROR: web.RequestKey[Any] = web.RequestKey("auth_error", object)
BEARER: web.RequestKey[str] = web.RequestKey("bearer", str)
BODY: web.RequestKey[Any] = web.RequestKey("body", object)
QUERY: web.RequestKey[dict[str, Any]] = web.RequestKey("query", dict)
SPEC: web.RequestKey[Any] = web.RequestKey("spec", object)
