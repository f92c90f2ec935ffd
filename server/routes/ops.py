"""Operations: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from server.api import Api, json_response, openapi_document
from server.errors import ApiError
from server.keys import DB, METRICS

api = Api()

STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}


@api.route("GET", "/healthz", summary="Liveness: the process answers", tags=("ops",), response=STATUS)
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@api.route(
    "GET", "/readyz", summary="Readiness: the database answers", tags=("ops",), response=STATUS,
)
async def readyz(request: web.Request) -> web.Response:
    if not await request.app[DB].ping():
        raise ApiError(503, "unavailable", "database is not reachable")
    return json_response({"status": "ready"})


@api.route(
    "GET", "/metrics", summary="Prometheus metrics", tags=("ops",),
    response={"type": "string"}, response_content_type="text/plain",
)
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@api.route(
    "GET", "/api/v1/openapi.json", summary="This API's OpenAPI 3.1 document", tags=("ops",),
    response={"type": "object"},
)
async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


OPENAPI: web.AppKey[dict] = web.AppKey("openapi")


def build_openapi(app_api: Api) -> dict:
    return openapi_document(app_api.specs, title="Kein Shopstream API", version="1.0.0")
