"""CORS for the API (REST, WHIP, WHEP): an allow-list of origins, preflights answered.

A storefront served from another origin publishes (WHIP), watches (WHEP) and calls the
REST API with a Bearer token, never with cookies, so no credentials mode is granted.
Only origins listed in ``CORS_ORIGINS`` get CORS headers (``*`` allows any); with the
setting empty (the default) nothing is added and browsers keep the same-origin policy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Only the API: the web client's pages and static files are same-origin by design.
API_PREFIX = "/api/"
ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, If-Match, X-Request-Id"
# WHIP/WHEP clients need Location (the session URL) and ETag; Link carries ICE servers
# and help links; the error headers let a page show why it was refused.
EXPOSE_HEADERS = (
    "Location, Link, ETag, Retry-After, X-Request-Id, X-Error-Code, X-Error-Message"
)
PREFLIGHT_MAX_AGE = "600"


def cors_middlewares(origins: Sequence[str]) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """Return the CORS middleware for ``origins``, or none when the list is empty."""
    if not origins:
        return []
    allowed = frozenset(origin.lower() for origin in origins)
    any_origin = "*" in allowed

    def allows(origin: str) -> bool:
        return any_origin or origin.lower() in allowed

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer preflights of allowed origins and mark their responses readable."""
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith(API_PREFIX) or not allows(origin):
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            unknown = request.match_info.http_exception
            if unknown is not None and unknown.status == 404:
                return await handler(request)  # no CORS grant for a path that does not exist
            return _preflight(request, origin)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised past the error middleware: still readable
            _mark(exc.headers, origin)
            raise
        _mark(response.headers, origin)
        return response

    return [cors]


def _preflight(request: web.Request, origin: str) -> web.StreamResponse:
    response = web.Response(status=204)
    _mark(response.headers, origin)
    response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    return response


def _mark(headers: MutableMapping[str, str], origin: str) -> None:
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    vary = headers.get("Vary")
    if not vary:
        headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        headers["Vary"] = f"{vary}, Origin"
