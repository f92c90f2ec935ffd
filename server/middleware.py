"""Middleware: request ids, the caller's identity, error JSON, access log and metrics."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.auth import account_gone
from server.errors import ApiError, error_body, error_response, unauthenticated
from server.keys import AUTH_ERROR, BEARER, CALLERS, DB, IDENTITY, METRICS, REQUEST_ID, SETTINGS, TOKENS

log = logging.getLogger("shopstream.http")
access_log = logging.getLogger("shopstream.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class HttpMetrics:
    """Prometheus request counters and latency histograms, per route template."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "shopstream_http_requests", "HTTP requests", ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "shopstream_http_request_duration_seconds", "HTTP request latency",
            ["method", "route"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )


def _route_of(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if resource is None or info.http_exception is not None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, resolve its bearer token, map errors, log and count it."""
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    _resolve_identity(request)
    try:
        response = await handler(request)
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into JSON
        if await _caller_is_gone(request, exc):
            exc = account_gone()
        mapped = error_response(exc)
        if mapped is None:
            log.exception("unhandled error on %s %s (request %s)", request.method, request.path, request_id)
            mapped = web.json_response(
                error_body("internal_error", "internal server error", {"requestId": request_id}),
                status=500,
            )
        response = mapped
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    elapsed = time.perf_counter() - started
    route = _route_of(request)
    metrics: HttpMetrics = request.app[METRICS]
    metrics.requests.labels(request.method, route, str(response.status)).inc()
    metrics.latency.labels(request.method, route).observe(elapsed)
    if request.app[SETTINGS].log_requests:
        identity = request.get(IDENTITY)
        access_log.info(json.dumps({
            "method": request.method, "route": route, "path": request.path,
            "status": response.status, "ms": round(elapsed * 1000, 2),
            "requestId": request_id, "userId": identity.user_id if identity else None,
        }))
    return response


async def _caller_is_gone(request: web.Request, exc: Exception) -> bool:
    """Return whether a write failed because the caller's own user row is gone.

    The route wrapper confirms the caller exists, but a confirmation is kept for a few
    seconds: an account deleted meanwhile surfaces here, as the users foreign key.
    (Under RLS PostgreSQL leaves the key out of the message, so the caller is looked up.)
    """
    identity = request.get(IDENTITY)
    if identity is None or not isinstance(exc, asyncpg.ForeignKeyViolationError):
        return False
    if 'table "users"' not in (exc.detail or ""):
        return False
    callers = request.app[CALLERS]
    callers.forget(identity.user_id)
    try:
        return not await callers.exists(request.app[DB].pool, identity.user_id)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False  # cannot tell: the original error stands


def _resolve_identity(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    if not header:
        return
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        request[AUTH_ERROR] = unauthenticated("expected 'Authorization: Bearer <token>'")
        return
    request[BEARER] = token.strip()
    try:
        request[IDENTITY] = request.app[TOKENS].identity(token.strip())
    except ApiError as exc:  # kept: only routes that need a caller refuse it
        request[AUTH_ERROR] = exc
