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

import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import fastjsonschema
import jsonschema
from aiohttp import web

from commerce.sellers import require_seller
from server.auth import account_gone
from server.errors import ApiError, forbidden, unauthenticated, validation_error
from server.keys import AUTH_ERROR, BODY, CALLERS, DB, IDENTITY, QUERY, SETTINGS, SPEC
from signaling import bounded_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AUTH_RULES = ("none", "optional", "user", "seller", "admin")
PARSED_QUERIES_KEPT = 1024  # per route

# A body's work is bounded before its schema is consulted: decoding 1 MiB of tiny values
# holds the loop for tens of ms, and our largest valid body (50 checkout items) has ~250.
MAX_BODY_VALUES = 10_000
MAX_BODY_DEPTH = bounded_json.MAX_DEPTH
# Errors reported per body: enough to fix a form, and validation stops looking there.
MAX_BODY_ERRORS = 20
MAX_ERROR_MESSAGE = 200

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
    # Request headers the route reads: name -> {"schema", "required", "description"}.
    # Checked by the wrapper (400 validation_error) and declared in the OpenAPI document.
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)


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


# What a body of another content type looks like, for the OpenAPI document (the route
# reads and checks it itself): clients and fuzzers generate from this.
SDP_OFFER_EXAMPLE = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n"
    "a=mid:0\r\na=sendonly\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n"
    "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n"
)
CONTENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "application/sdp": {
        "type": "string", "pattern": r"^v=0\r?\n",
        "description": "an SDP offer (RFC 8866), complete: no trickle ICE",
        "examples": [SDP_OFFER_EXAMPLE],
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
            is_json = spec.body is not None and spec.request_content_type == "application/json"
            if is_json and (where := _unbounded_array(spec.body)) is not None:
                # Refusing an over-long array must not cost one check per item.
                raise ValueError(f"{path}: body array {where or 'body'} has no maxItems")
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

    Refusing stays cheap however large the body: size limits (maxItems, maxProperties,
    maxLength) are checked first, without looking inside an over-long array, and
    jsonschema's lazy error iterator is stopped after `limit` errors. (Collecting and
    sorting every error of 200,000 bad items took 3.8 s and 411 MiB.)
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self.full = jsonschema.Draft202012Validator(schema)
        self.fast = (
            fastjsonschema.compile(schema, use_default=False, use_formats=True)
            if _keywords(schema) <= FAST_KEYWORDS else None
        )

    def errors(self, data: Any, limit: int = MAX_BODY_ERRORS) -> list[jsonschema.ValidationError]:
        """Return up to `limit` of the body's errors (none: valid), by their place in the body."""
        if self.fast is not None:
            try:
                self.fast(data)
                return []
            except fastjsonschema.JsonSchemaValueException:
                pass
        if (too_large := _size_error(self.full.schema, data, ())) is not None:
            return [too_large]
        found = itertools.islice(self.full.iter_errors(data), limit)
        return sorted(found, key=lambda e: [str(p) for p in e.absolute_path])


def _size_error(schema: Any, value: Any, path: Sequence[str | int]) -> jsonschema.ValidationError | None:
    """Return the first maxItems/maxProperties/maxLength violation, outermost first.

    An array longer than its maxItems is refused without a look at its items.
    """
    if not isinstance(schema, dict):
        return None
    found: tuple[str, int, str] | None = None
    if isinstance(value, list):
        if (n := schema.get("maxItems")) is not None and len(value) > n:
            found = ("maxItems", n, f"has {len(value)} items, more than {n}")
        elif isinstance(items := schema.get("items"), dict):
            for i, item in enumerate(value):
                if (error := _size_error(items, item, (*path, i))) is not None:
                    return error
    elif isinstance(value, dict):
        if (n := schema.get("maxProperties")) is not None and len(value) > n:
            found = ("maxProperties", n, f"has {len(value)} properties, more than {n}")
        else:
            for name, sub in schema.get("properties", {}).items():
                if name in value and (error := _size_error(sub, value[name], (*path, name))) is not None:
                    return error
    elif isinstance(value, str) and (n := schema.get("maxLength")) is not None and len(value) > n:
        found = ("maxLength", n, f"is longer than {n} characters")
    if found is None:
        return None
    keyword, n, message = found
    return jsonschema.ValidationError(message, validator=keyword, validator_value=n, path=list(path))


def _unbounded_array(schema: Any, where: str = "") -> str | None:
    """Return the dotted place of an array schema without maxItems (None: all bounded)."""
    if not isinstance(schema, dict):
        return None
    kinds = schema.get("type")
    if (kinds == "array" or (isinstance(kinds, list) and "array" in kinds)) and "maxItems" not in schema:
        return where
    children: list[tuple[str, Any]] = [(name, sub) for name, sub in schema.get("properties", {}).items()]
    children.append(("[]", schema.get("items")))
    children.append(("*", schema.get("additionalProperties")))
    for name, sub in children:
        if (found := _unbounded_array(sub, f"{where}.{name}" if where else name)) is not None:
            return found
    return None


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
    header_validators = {
        name: jsonschema.Draft202012Validator(param["schema"]) for name, param in spec.headers.items()
    }
    # Parsing and validating a query costs 10-20 us (jsonschema); hot reads repeat the
    # same few query strings thousands of times a second, and the same string always
    # parses the same: remember the valid ones (bounded; errors are never kept).
    parsed_queries: dict[str, dict[str, Any]] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        request[SPEC] = spec
        identity = request.get(IDENTITY)
        if spec.auth == "optional" and request.get(AUTH_ERROR) is not None:
            raise request[AUTH_ERROR]
        if spec.auth not in ("none", "optional") and identity is None:
            raise request.get(AUTH_ERROR) or unauthenticated()
        if identity is not None and spec.auth != "none":
            # A token is only as good as its account: one check here, not one per route.
            if not await request.app[CALLERS].exists(request.app[DB].pool, identity.user_id):
                raise account_gone()
            if spec.auth == "seller" and identity.role not in ("seller", "admin"):
                raise forbidden("seller account required")
            if spec.auth == "admin" and identity.role != "admin":
                raise forbidden("admin role required")
        _check_headers(spec, header_validators, request)
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


def _check_headers(
    spec: RouteSpec, validators: dict[str, jsonschema.Draft202012Validator], request: web.Request
) -> None:
    for name, param in spec.headers.items():
        value = request.headers.get(name)
        about = f" ({param['description']})" if param.get("description") else ""
        if value is None:
            if param.get("required"):
                raise validation_error(f"the {name} header is required{about}", **{name: "required"})
            continue
        if not validators[name].is_valid(value):
            raise validation_error(f"the {name} header is invalid{about}", **{name: "invalid"})


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
    if (where := bounded_json.nul_path(data)) is not None:
        raise ApiError(
            400, "validation_error", f"invalid request body: {where or 'body'}: contains NUL",
            {"fields": {where or "body": "contains NUL"}},
        )


async def _read_json(request: web.Request, validator: BodyValidator) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "expected Content-Type: application/json")
    raw = await read_body(request)
    data = decode_json(raw or b"null")
    errors = validator.errors(data)
    if not errors:
        refuse_nul(data)
        return data
    fields: dict[str, str] = {}
    for error in errors:
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator in ("required", "dependentRequired"):
            missing = error.message.split("'")[1] if "'" in error.message else ""
            where = ".".join(filter(None, [where, missing]))
        if error.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)'", error.message)
            where = ".".join(filter(None, [where, *extra[:1]]))
        # jsonschema's messages quote the instance: a long one must not be echoed whole.
        message = error.message
        fields[where or "body"] = message if len(message) <= MAX_ERROR_MESSAGE else message[:MAX_ERROR_MESSAGE] + "..."
    first = next(iter(fields))
    raise ApiError(
        400, "validation_error", f"invalid request body: {first}: {fields[first]}",
        {"fields": fields},
    )


def decode_json(raw: bytes) -> Any:
    """Decode a JSON request body within the depth and size limits; 400 malformed_json if not."""
    try:
        return bounded_json.loads(raw, max_depth=MAX_BODY_DEPTH, max_values=MAX_BODY_VALUES)
    except bounded_json.Malformed as exc:
        raise ApiError(400, "malformed_json", f"request body is not acceptable JSON: {exc}") from None


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
        params += [
            {"name": name, "in": "header", "required": bool(param.get("required")), "schema": param["schema"],
             **({"description": param["description"]} if param.get("description") else {})}
            for name, param in spec.headers.items()
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
            schema = CONTENT_SCHEMAS.get(spec.request_content_type, {"type": "string"})
            media: dict[str, Any] = {"schema": schema}
            if "examples" in schema:
                media["example"] = schema["examples"][0]
            op["requestBody"] = {"required": True, "content": {spec.request_content_type: media}}
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
