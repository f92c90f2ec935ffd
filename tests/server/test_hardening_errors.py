"""The one middleware turns every exception that is not a deliberate error into a logged 500.

The log line and the answer carry the request id, so a user's report finds its trace;
an exception after a streamed response started (nothing more can be sent) is logged and
counted the same way; a bug in a realtime handler answers an `internal_error` event and
logs the session id, and the connection stays usable.
"""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Settings
from server.keys import HUB
from tests.factories import Factory, make_livestream
from tests.signaling.conftest import closing, ws_client  # noqa: F401 - closing is a fixture


class Bug(Exception):
    """An exception no layer knows: what a bug raises."""


async def crash(request: web.Request) -> web.Response:
    raise Bug("a bug")


async def crash_mid_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"partial")
    raise Bug("a bug after the headers went out")


@pytest.fixture
async def buggy(aiohttp_client, clean_db: str, settings: Settings) -> TestClient:  # type: ignore[no-untyped-def]
    app = create_app(settings, clean_db, run_migrations=False)
    app.router.add_get("/test/crash", crash)
    app.router.add_get("/test/crash-mid-stream", crash_mid_stream)
    return await aiohttp_client(app)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("shopstream")]


async def test_an_unknown_exception_is_a_500_with_its_request_id_logged(
    buggy: TestClient, caplog: pytest.LogCaptureFixture,
) -> None:
    resp = await buggy.get("/test/crash", headers={"X-Request-Id": "trace-me-1"})
    assert resp.status == 500
    body = await resp.json()
    assert body["error"] == {"code": "internal_error", "message": "internal server error",
                             "details": {"requestId": "trace-me-1"}}
    assert resp.headers["X-Request-Id"] == "trace-me-1"
    assert any("trace-me-1" in m for m in _errors(caplog)), _errors(caplog)
    metrics = await (await buggy.get("/metrics")).text()
    assert 'route="/test/crash",status="500"' in metrics


async def test_an_exception_after_the_response_started_is_logged_and_counted(
    buggy: TestClient, caplog: pytest.LogCaptureFixture,
) -> None:
    resp = await buggy.get("/test/crash-mid-stream", headers={"X-Request-Id": "trace-me-2"})
    assert resp.status == 200  # the status line went out before the bug
    with pytest.raises(Exception):  # noqa: B017 - the body is cut short, however aiohttp words it
        await resp.read()
    assert any("trace-me-2" in m for m in _errors(caplog)), _errors(caplog)
    metrics = await (await buggy.get("/metrics")).text()
    assert 'route="/test/crash-mid-stream",status="500"' in metrics
    assert (await buggy.get("/healthz")).status == 200


async def test_a_bug_in_a_realtime_handler_is_an_internal_error_event_logged_with_the_session(
    client: TestClient, factory: Factory, caplog: pytest.LogCaptureFixture,
    closing,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    c = await ws_client(client, livestream_id, seller.access_token)
    closing.append(c)
    realtime = client.app[HUB]

    async def buggy_reaction(conn: object, message: object) -> None:
        raise Bug("a bug in a handler")

    # The bug is planted in the one handler table the session dispatches through.
    monkeypatch.setitem(realtime._handlers, "reaction:send", buggy_reaction)
    await c.send("reaction:send", kind="heart", ref="r1")
    error = await c.expect("error", ref="r1")
    assert error["code"] == "internal_error"
    session_id = c.welcome["sessionId"]
    assert any(session_id in m for m in _errors(caplog)), _errors(caplog)
    await c.send("chat:send", message="still here", ref="ok")
    await c.expect("ack", ref="ok")
