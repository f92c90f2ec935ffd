"""HTTP errors and the one place where domain errors become the error JSON.

Every error response is `{"error": {"code", "message", "details"}}` (DESIGN.md).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from commerce import errors as ce
from commerce.outage import RETRY_AFTER_SECONDS, database_unavailable

log = logging.getLogger("shopstream.http")


class ApiError(Exception):
    """An error raised by the HTTP layer itself, with its status and code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


def validation_error(message: str, **fields: str) -> ApiError:
    return ApiError(400, "validation_error", message, {"fields": fields} if fields else {})


def unauthenticated(message: str = "authentication required") -> ApiError:
    return ApiError(401, "unauthenticated", message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str = "not allowed") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str = "not found") -> ApiError:
    return ApiError(404, "not_found", message)


def rate_limited(retry_after: int, message: str = "too many requests") -> ApiError:
    return ApiError(
        429, "rate_limited", message, {"retryAfter": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


# Most specific class first: the first isinstance match wins.
_DOMAIN_STATUS: list[tuple[type[Exception], int, str | None]] = [
    (ce.NotFound, 404, None),
    (ce.Forbidden, 403, None),
    (ce.Invalid, 400, None),
    (ce.Conflict, 409, None),
    (ce.PaymentProviderError, 502, None),
]

_HTTP_CODES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
    413: "payload_too_large", 415: "unsupported_media_type", 429: "rate_limited",
    503: "unavailable",
}


def unavailable(message: str = "temporarily unavailable, try again shortly",
                retry_after: int = RETRY_AFTER_SECONDS) -> ApiError:
    return ApiError(
        503, "unavailable", message, {"retryAfter": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


class _OutageLog:
    """Log a database outage once when it starts, then at most every few seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.last = 0.0
        self.hidden = 0

    def note(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.hidden += 1
            return
        more = f" (and {self.hidden} more since)" if self.hidden else ""
        log.warning("database unavailable: %s: %s; answering 503%s", type(exc).__name__, exc, more)
        self.last, self.hidden = now, 0


_outage_log = _OutageLog()


def register_domain_error(cls: type[Exception], status: int, code: str) -> None:
    """Map another package's error class to a status and code (used for media errors)."""
    if not any(entry[0] is cls for entry in _DOMAIN_STATUS):
        _DOMAIN_STATUS.insert(0, (cls, status, code))


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(exc: BaseException) -> web.Response | None:
    """Turn a known exception into the error JSON response; None for unknown ones."""
    if isinstance(exc, ApiError):
        return web.json_response(
            error_body(exc.code, exc.message, exc.details), status=exc.status, headers=exc.headers
        )
    for cls, status, fixed_code in _DOMAIN_STATUS:
        if isinstance(exc, cls):
            code = fixed_code or getattr(exc, "code", None) or _HTTP_CODES.get(status, "error")
            return web.json_response(
                error_body(code, getattr(exc, "message", str(exc)), getattr(exc, "details", {})),
                status=status, headers=getattr(exc, "headers", None),  # e.g. a 307's Location
            )
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        headers = {}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        message = exc.reason if exc.status != 413 else "request body is too large"
        return web.json_response(
            error_body(_HTTP_CODES.get(exc.status, "http_error"), message),
            status=exc.status, headers=headers,
        )
    if database_unavailable(exc):
        # PostgreSQL restarting or refusing connections: the client retries, and the pool
        # reconnects by itself once the server is back (no 500, no restart).
        _outage_log.note(exc)
        return error_response(unavailable())
    return None
