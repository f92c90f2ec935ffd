"""Issue 13, finding 10: the OpenAPI document declares checkout's header and the SDP bodies.

Without them generated clients could not send `Idempotency-Key` and fuzzers sent JSON-ish
noise as SDP. Declared headers are also what the route wrapper checks.
"""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient

from tests.factories import Factory


async def _document(client: TestClient) -> dict:
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200
    return await resp.json()


async def test_checkout_declares_its_idempotency_key_header(client: TestClient) -> None:
    op = (await _document(client))["paths"]["/api/v1/checkout/session"]["post"]
    headers = {p["name"]: p for p in op["parameters"] if p["in"] == "header"}
    assert set(headers) == {"Idempotency-Key"}
    key = headers["Idempotency-Key"]
    assert key["required"] is True and key["schema"]["type"] == "string"
    pattern = re.compile(key["schema"]["pattern"])
    assert pattern.search("order-123") and not pattern.search("") and not pattern.search("x" * 201)
    assert not pattern.search("has space")


async def test_sdp_bodies_are_declared_as_application_sdp_with_pattern_and_example(client: TestClient) -> None:
    paths = (await _document(client))["paths"]
    for path in ("/api/v1/livestreams/{id}/publish", "/api/v1/livestreams/{id}/watch"):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        assert list(body["content"]) == ["application/sdp"], path
        media = body["content"]["application/sdp"]
        assert media["schema"]["type"] == "string"
        assert re.search(media["schema"]["pattern"], media["example"]), path
        assert not re.search(media["schema"]["pattern"], '{"sdp": "v=0"}')
        assert "m=video" in media["example"]


async def test_the_declared_header_is_enforced(client: TestClient, factory: Factory) -> None:
    user = await factory.user()
    body = {"addressId": "00000000-0000-0000-0000-000000000000"}
    resp = await client.post("/api/v1/checkout/session", json=body, headers=user.headers)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "validation_error" and error["details"]["fields"] == {"Idempotency-Key": "required"}
    for bad in ("x" * 201, "has space", "é"):
        resp = await client.post("/api/v1/checkout/session", json=body,
                                 headers={**user.headers, "Idempotency-Key": bad})
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["details"]["fields"] == {"Idempotency-Key": "invalid"}
    resp = await client.post("/api/v1/checkout/session", json=body, headers={**user.headers, "Idempotency-Key": "k-1"})
    assert resp.status != 400 or "Idempotency-Key" not in (await resp.json())["error"]["details"].get("fields", {})
