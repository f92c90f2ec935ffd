"""Middleware: request ids, the caller's identity, error JSON, access log and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from server.auth import account_gone
from server.errors import ApiError, error_body, error_response, unauthenticated
from server.keys import (
    AUTH_ERROR,
    BEARER,
    CALLERS,
    DB,
    IDENTITY,
    METRICS,
    REQUEST_ID,
    SETTINGS,
    TOKENS,
)

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
        # How late the event loop runs a callback that is due (sampled by loop_lag_context):
        # every await of a request waits that long for its turn, behind media fan-out too.
        self.loop_lag = Histogram(
            "shopstream_event_loop_lag_seconds", "How late a due callback runs on this process's event loop",
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        # How long each garbage collection held the loop (gc.callbacks, loop_lag_context).
        self.gc_pause = Histogram(
            "shopstream_gc_pause_seconds", "How long a garbage collection of this process took",
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        # `labels()` validates and locks on every call (about 4 us each, twice per
        # request): keep each labelled child. Routes are templates and statuses few, so
        # this stays small.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        children = self._children.get((method, route, status))
        if children is None:
            children = self._children[(method, route, status)] = (
                self.requests.labels(method, route, str(status)), self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)


def _route_of(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if resource is None or info.http_exception is not None:
        return "unmatched"
    return resource.canonical


# nginx's "client closed request": the client left before the answer; not a server error.
CLIENT_CLOSED = 499


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, resolve its bearer token, map errors, log and count it.

    Every exception that is not a deliberate error (ApiError, a domain error, an HTTP
    exception) becomes a logged 500 carrying the request id; a client that left
    mid-request (its connection reset or, under handler cancellation, the handler
    cancelled) is counted as 499 and logged at info.
    """
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    # 32 random hex digits, as uuid4().hex gave, without building a UUID (a third the cost).
    request_id = incoming if incoming and _REQUEST_ID.match(incoming) else os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    _resolve_identity(request)
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        if _client_left(request):
            log.info("client closed the connection during %s %s (request %s)",
                     request.method, request.path, request_id)
            _record(request, CLIENT_CLOSED, started)
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into JSON
        if isinstance(exc, ConnectionResetError) and _client_left(request):
            log.info("client closed the connection during %s %s (request %s)",
                     request.method, request.path, request_id)
            response = web.json_response(
                error_body("client_closed", "the client closed the connection"), status=CLIENT_CLOSED
            )
        else:
            if await _caller_is_gone(request, exc):
                exc = account_gone()
            mapped = error_response(exc)
            if mapped is None:
                log.exception("unhandled error on %s %s (request %s)", request.method, request.path, request_id)
                mapped = web.json_response(
                    error_body("internal_error", "internal server error", {"requestId": request_id}),
                    status=500,
                )
            if _response_started(request):
                # A streamed response (or a WebSocket) already sent its status line: another
                # response cannot follow. Count it; aiohttp closes the connection.
                _record(request, mapped.status, started)
                raise
            response = mapped
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    _record(request, response.status, started)
    return response


def _response_started(request: web.Request) -> bool:
    """Return whether some of the response already went out (headers of a stream, a 101)."""
    writer = request.writer
    return writer is not None and writer.output_size > 0


def _client_left(request: web.Request) -> bool:
    """Return whether the client's connection is gone (closed or closing)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _record(request: web.Request, status: int, started: float) -> None:
    """Count the request in /metrics and write its access-log line."""
    elapsed = time.perf_counter() - started
    route = _route_of(request)
    app = request.app
    app[METRICS].observe(request.method, route, status, elapsed)
    if app[SETTINGS].log_requests and access_log.isEnabledFor(logging.INFO):
        identity = request.get(IDENTITY)
        line = access_line(request.method, route, request.path, status, elapsed, request[REQUEST_ID],
                           identity.user_id if identity else None)
        # Logger.info would look up its caller's file and line (sys._getframe, about
        # two thirds of a log call): the line says where it comes from, so hand the
        # record to the handlers directly; filters and handlers apply as with info().
        access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, line, None, None))


def access_line(method: str, route: str, path: str, status: int, seconds: float,
                request_id: str, user_id: str | None) -> str:
    """Return one request's access-log line: a JSON object, as ``json.dumps`` of it would be.

    Built from the encoder's string escaper (C) around fixed keys: a third of what
    ``json.dumps`` of the dict costs, on a path every request takes.
    """
    user = "null" if user_id is None else _json_string(user_id)
    return (f'{{"method": {_json_string(method)}, "route": {_json_string(route)}, '
            f'"path": {_json_string(path)}, "status": {status}, "ms": {round(seconds * 1000, 2)!r}, '
            f'"requestId": {_json_string(request_id)}, "userId": {user}}}')


_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


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
