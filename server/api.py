"""Declared routes: one decorator gives a handler its auth rule, its request and response
schemas, and its place in the OpenAPI document, so the document cannot drift from the
routes that exist.

    api = Api()

    @api.route("POST", "/api/v1/me/addresses", auth="user", body=ADDRESS_IN,
               response=ADDRESS, status=201, summary="Add an address")
    async def add_address(request: web.Request) -> web.Response:
        data = request[BODY]          # validated JSON
        user = request[IDENTITY]      # server.auth.Identity
        ...
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import fastjsonschema
import jsonschema
from aiohttp import web

from commerce.sellers import require_seller
from server.errors import ApiError, forbidden, unauthenticated, validation_error
from server.keys import AUTH_ERROR, BODY, DB, IDENTITY, QUERY, SETTINGS, SPEC

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AUTH_RULES = ("none", "optional", "user", "seller", "admin")
PARSED_QUERIES_KEPT = 1024  # per route

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


@dataclass
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: str = "none"
    body: dict[str, Any] | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    response: dict[str, Any] | None = None
    status: int = 200
    request_content_type: str = "application/json"
    response_content_type: str = "application/json"
    tags: tuple[str, ...] = ()
    # Documented error statuses besides the defaults (400/401/403 for the auth rule).
    errors: tuple[int, ...] = ()


def page_of(item: dict[str, Any]) -> dict[str, Any]:
    """Return the schema of a list endpoint's page: `{items, nextCursor}`."""
    return {
        "type": "object",
        "required": ["items", "nextCursor"],
        "properties": {
            "items": {"type": "array", "items": item},
            "nextCursor": {"type": ["string", "null"]},
        },
    }


PAGE_QUERY: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    "cursor": {"type": "string", "maxLength": 200},
}


class Api:
    """Collect declared routes, wrap them with auth and validation, and describe them."""

    def __init__(self) -> None:
        self.specs: list[RouteSpec] = []

    def route(self, method: str, path: str, *, summary: str, **options: Any) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            spec = RouteSpec(method.upper(), path, handler, summary, **options)
            if spec.auth not in AUTH_RULES:
                raise ValueError(f"{path}: unknown auth rule {spec.auth!r}")
            if spec.body is not None:
                jsonschema.Draft202012Validator.check_schema(spec.body)
            self.specs.append(spec)
            return handler

        return decorate

    def include(self, other: Api) -> None:
        self.specs.extend(other.specs)

    def register(self, app: web.Application) -> None:
        for spec in self.specs:
            app.router.add_route(spec.method, spec.path, _wrap(spec), name=_route_name(spec))


# Keywords that mean the same in draft-07 (fastjsonschema) and 2020-12 (jsonschema), or
# where draft-07's reading is only stricter ("format"). Anything else, e.g.
# dependentRequired, which draft-07 would silently ignore, keeps a schema off the fast path.
FAST_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "minProperties", "maxProperties",
    "items", "minItems", "maxItems", "uniqueItems", "minLength", "maxLength", "pattern",
    "format", "minimum", "maximum", "enum", "const", "not",
})


class BodyValidator:
    """Validate request bodies: a compiled check accepts, jsonschema decides the rest.

    fastjsonschema compiles a schema to Python (about 1 us for a checkout body, against
    about 30 us for jsonschema's validator), but knows only draft-07. It is used for
    schemas whose keywords are all in FAST_KEYWORDS, and only to accept: a body it
    refuses is validated again by jsonschema (2020-12), which decides and words the errors.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self.full = jsonschema.Draft202012Validator(schema)
        self.fast = (
            fastjsonschema.compile(schema, use_default=False, use_formats=True)
            if _keywords(schema) <= FAST_KEYWORDS else None
        )

    def errors(self, data: Any) -> list[jsonschema.ValidationError]:
        """Return the body's errors (none: valid), by their place in the body."""
        if self.fast is not None:
            try:
                self.fast(data)
                return []
            except fastjsonschema.JsonSchemaValueException:
                pass
        return sorted(self.full.iter_errors(data), key=lambda e: list(e.absolute_path))


def _keywords(schema: Any) -> set[str]:
    """Every keyword a schema uses (property names under `properties` are not keywords)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            children = value.values() if key == "properties" and isinstance(value, dict) else [value]
            for child in children:
                found |= _keywords(child)
    elif isinstance(schema, list):
        for item in schema:
            found |= _keywords(item)
    return found


def _route_name(spec: RouteSpec) -> str:
    return spec.method.lower() + "_" + re.sub(r"[^a-z0-9]+", "_", spec.path.lower()).strip("_")


def _wrap(spec: RouteSpec) -> Handler:
    # A body schema for another content type (multipart) only documents the request.
    body_validator = (
        BodyValidator(spec.body)
        if spec.body is not None and spec.request_content_type == "application/json" else None
    )
    query_validators = {name: jsonschema.Draft202012Validator(schema) for name, schema in spec.query.items()}
    # Parsing and validating a query costs 10-20 us (jsonschema); hot reads repeat the
    # same few query strings thousands of times a second, and the same string always
    # parses the same: remember the valid ones (bounded; errors are never kept).
    parsed_queries: dict[str, dict[str, Any]] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        request[SPEC] = spec
        identity = request.get(IDENTITY)
        if spec.auth == "optional" and request.get(AUTH_ERROR) is not None:
            raise request[AUTH_ERROR]
        if spec.auth not in ("none", "optional"):
            if identity is None:
                raise request.get(AUTH_ERROR) or unauthenticated()
            if spec.auth == "seller" and identity.role not in ("seller", "admin"):
                raise forbidden("seller account required")
            if spec.auth == "admin" and identity.role != "admin":
                raise forbidden("admin role required")
        query_string = request.query_string
        parsed = parsed_queries.get(query_string)
        if parsed is None:
            parsed = _parse_query(spec, query_validators, request)
            if len(parsed_queries) >= PARSED_QUERIES_KEPT:
                parsed_queries.clear()
            parsed_queries[query_string] = parsed
        request[QUERY] = dict(parsed)
        if body_validator is not None:
            request[BODY] = await _read_json(request, body_validator)
        return await spec.handler(request)

    return handler


def _parse_query(
    spec: RouteSpec, validators: dict[str, jsonschema.Draft202012Validator], request: web.Request
) -> dict[str, Any]:
    # A misspelt or unsupported parameter would otherwise be ignored silently (a filter
    # that did nothing looks like an empty result): name it instead.
    unknown = sorted(set(request.query) - set(spec.query))
    if unknown:
        raise validation_error(
            f"unknown query parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            **{name: "not a parameter of this endpoint" for name in unknown},
        )
    values: dict[str, Any] = {}
    for name, schema in spec.query.items():
        raw = request.query.get(name)
        if raw is None:
            if "default" in schema:
                values[name] = schema["default"]
            continue
        if "\x00" in raw:
            raise validation_error(f"{name} must not contain NUL", **{name: "contains NUL"})
        kind = schema.get("type")
        value: Any = raw
        if kind == "integer":
            try:
                value = int(raw)
            except ValueError:
                raise validation_error(f"{name} must be an integer", **{name: "not an integer"}) from None
        elif kind == "boolean":
            if raw not in ("true", "false"):
                raise validation_error(f"{name} must be true or false", **{name: "not a boolean"})
            value = raw == "true"
        errors = sorted(validators[name].iter_errors(value), key=str)
        if errors:
            raise validation_error(f"{name}: {errors[0].message}", **{name: errors[0].message})
        values[name] = value
    return values


async def read_body(request: web.Request) -> bytes:
    """Read the raw request body; 413 past `max_body_bytes` (declared or actual)."""
    limit = request.app[SETTINGS].max_body_bytes
    if (request.content_length or 0) > limit:
        raise ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
    raw = await request.read()
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"request body is larger than {limit} bytes")
    return raw


def refuse_nul(data: Any) -> None:
    """Raise a 400 validation_error when any string or key in decoded JSON holds NUL.

    PostgreSQL text cannot hold NUL: every JSON body is refused here, in one place,
    rather than failing in a query as a 500.
    """
    if (where := _nul_path(data)) is not None:
        raise ApiError(
            400, "validation_error", f"invalid request body: {where or 'body'}: contains NUL",
            {"fields": {where or "body": "contains NUL"}},
        )


async def _read_json(request: web.Request, validator: BodyValidator) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "expected Content-Type: application/json")
    raw = await read_body(request)
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed_json", "request body is not valid JSON") from None
    errors = validator.errors(data)
    if not errors:
        refuse_nul(data)
        return data
    fields: dict[str, str] = {}
    for error in errors[:20]:
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator in ("required", "dependentRequired"):
            missing = error.message.split("'")[1] if "'" in error.message else ""
            where = ".".join(filter(None, [where, missing]))
        if error.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)'", error.message)
            where = ".".join(filter(None, [where, *extra[:1]]))
        fields[where or "body"] = error.message
    first = next(iter(fields))
    raise ApiError(
        400, "validation_error", f"invalid request body: {first}: {fields[first]}",
        {"fields": fields},
    )


def _nul_path(data: Any, where: str = "") -> str | None:
    """Return the dotted path of the first string (or key) holding a NUL character."""
    if isinstance(data, str):
        return where if "\x00" in data else None
    if isinstance(data, dict):
        for key, value in data.items():
            path = ".".join(filter(None, [where, str(key)]))
            if "\x00" in key:
                return path
            if (found := _nul_path(value, path)) is not None:
                return found
    if isinstance(data, list):
        for i, value in enumerate(data):
            if (found := _nul_path(value, ".".join(filter(None, [where, str(i)])))) is not None:
                return found
    return None


def path_id(request: web.Request, name: str = "id") -> str:
    """Return a path id in canonical form; a malformed id is simply not found."""
    try:
        return str(uuid.UUID(request.match_info[name]))
    except ValueError:
        raise ApiError(404, "not_found", f"{name} not found") from None


@asynccontextmanager
async def seller_transaction(
    request: web.Request, *, system: bool = False
) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """Open the caller's transaction and yield it with the seller id they act as (403 if none).

    `system=True` runs the work as trusted server work (no RLS) for routes that
    authorize by the seller id themselves.
    """
    user_id, database = request[IDENTITY].user_id, request.app[DB]
    async with database.transaction(system=True) if system else database.transaction(user_id) as conn:
        yield conn, await require_seller(conn, user_id)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


def openapi_document(specs: list[RouteSpec], *, title: str, version: str) -> dict[str, Any]:
    """Build an OpenAPI 3.1 document from the declared routes."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)(?::[^}]*)?}", spec.path)
        ]
        params += [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in spec.query.items()
        ]
        path = re.sub(r"{(\w+):[^}]*}", r"{\1}", spec.path)
        op: dict[str, Any] = {
            "operationId": _route_name(spec),
            "summary": spec.summary,
            "tags": list(spec.tags),
            "parameters": params,
            "responses": {},
        }
        if spec.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {spec.request_content_type: {"schema": spec.body}},
            }
        elif spec.request_content_type != "application/json":
            op["requestBody"] = {
                "required": True,
                "content": {spec.request_content_type: {"schema": {"type": "string"}}},
            }
        ok: dict[str, Any] = {"description": "success"}
        if spec.response is not None:
            ok["content"] = {spec.response_content_type: {"schema": spec.response}}
        op["responses"][str(spec.status)] = ok
        statuses = set(spec.errors) | {400, 404, 413, 415, 429, 503}
        if spec.auth != "none":
            statuses |= {401}
        if spec.auth in ("seller", "admin"):
            statuses |= {403}
        for status in sorted(statuses):
            op["responses"][str(status)] = {
                "description": "error",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            }
        if spec.auth != "none":
            op["security"] = [{"bearer": []}] if spec.auth != "optional" else [{}, {"bearer": []}]
        paths.setdefault(path, {})[spec.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}
        },
    }
