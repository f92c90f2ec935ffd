"""Issue 13, finding 8: a client that leaves mid-body is not a server error.

It used to be logged as an unhandled error and counted as a 500 in /metrics, so an
operator alerting on 5xx was paged by clients on bad networks. Now it is counted under
status 499 (nginx's "client closed request") and logged at info.

The server runs as `serve` runs it (an AppRunner without handler cancellation: the body
read fails with ConnectionResetError) and as aiohttp's test server does (the handler
is cancelled).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from server.app import create_app
from server.config import Settings


@pytest.fixture(params=[False, True], ids=["like-serve", "handler-cancellation"])
async def base_url(request: pytest.FixtureRequest, clean_db: str, settings: Settings) -> AsyncIterator[str]:
    app = create_app(settings, clean_db, run_migrations=False)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=request.param)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def _half_a_body(base_url: str, path: str, headers: str = "") -> None:
    """Send the headers and half of a declared body over a raw socket, then close it."""
    host, port = base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    body = b'{"email": "someone@example.test", "password": "' + b"x" * 2000 + b'"}'
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2]
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # let the handler start reading the body
    writer.close()
    await writer.wait_closed()


async def _metric_lines(http: aiohttp.ClientSession, base_url: str, route: str) -> list[str]:
    text = await (await http.get(f"{base_url}/metrics")).text()
    return [line for line in text.splitlines()
            if line.startswith("shopstream_http_requests_total{") and f'route="{route}"' in line]


@pytest.mark.parametrize("path", ["/api/v1/auth/login", "/api/v1/me/addresses"])
async def test_a_client_leaving_mid_body_is_499_not_500(
    base_url: str, caplog: pytest.LogCaptureFixture, path: str,
) -> None:
    async with aiohttp.ClientSession() as http:
        signup = await http.post(f"{base_url}/api/v1/auth/signup", json={
            "email": "leaver@example.test", "password": "correct horse battery", "name": "Leaver"})
        assert signup.status == 201, await signup.text()
        token = (await signup.json())["accessToken"]
        caplog.set_level(logging.INFO)
        for _ in range(3):
            await _half_a_body(base_url, path, f"Authorization: Bearer {token}\r\n")
        for _ in range(100):  # the server notices the closed socket on its own schedule
            lines = await _metric_lines(http, base_url, path)
            if any('status="499"' in line for line in lines):
                break
            await asyncio.sleep(0.05)
        assert any('status="499"' in line for line in lines), (lines, [(r.getMessage()[:200], r.exc_text) for r in caplog.records])
        assert not any('status="500"' in line for line in lines), lines
        errors = [(r.getMessage(), r.exc_text) for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, errors
        assert any("client closed the connection" in r.getMessage() for r in caplog.records)
        assert (await http.get(f"{base_url}/healthz")).status == 200
