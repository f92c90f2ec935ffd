"""CORS: a storefront on another origin publishes (WHIP), watches (WHEP) and calls the API.

Two ports on 127.0.0.1 are two origins for the browser: the app under test serves the
API, a second small server serves the storefront page. Raw preflight tests pin the
headers; the Chromium test proves a real browser accepts them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.config import ConfigError, Settings
from tests.conftest import make_settings
from tests.e2e.conftest import playwright_api
from tests.factories import Factory
from tests.signaling.test_whip_http import livestream

OTHER_ORIGIN = "http://127.0.0.1:1"  # never allowed

STOREFRONT = """<!doctype html><meta charset="utf-8"><title>storefront</title>
<video id="video" autoplay muted playsinline></video>
<script>
async function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise(done => pc.addEventListener('icegatheringstatechange',
    () => pc.iceGatheringState === 'complete' && done()));
}
async function negotiate(url, pc, bearer) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const headers = {'Content-Type': 'application/sdp'};
  if (bearer) headers['Authorization'] = 'Bearer ' + bearer;
  const resp = await fetch(url, {method: 'POST', headers, body: pc.localDescription.sdp});
  const body = await resp.text();
  if (resp.status !== 201) throw new Error(resp.status + ' ' + body);
  await pc.setRemoteDescription({type: 'answer', sdp: body});
  return {location: resp.headers.get('Location'), etag: resp.headers.get('ETag')};
}
window.story = async (api, id, streamKey, userToken) => {
  const out = {};
  const me = await fetch(api + '/api/v1/me', {headers: {'Authorization': 'Bearer ' + userToken}});
  out.meStatus = me.status;
  out.requestId = me.headers.get('X-Request-Id');
  const stream = await navigator.mediaDevices.getUserMedia({video: true, audio: true});
  const publisher = new RTCPeerConnection({iceServers: []});
  for (const track of stream.getTracks()) publisher.addTransceiver(track, {direction: 'sendonly'});
  out.whip = await negotiate(api + '/api/v1/livestreams/' + id + '/publish', publisher, streamKey);
  const viewer = new RTCPeerConnection({iceServers: []});
  viewer.addTransceiver('video', {direction: 'recvonly'});
  viewer.addTransceiver('audio', {direction: 'recvonly'});
  viewer.ontrack = e => { if (e.track.kind === 'video') document.getElementById('video').srcObject = new MediaStream([e.track]); };
  // The livestream goes live once the publisher's media arrives: retry WHEP until then.
  for (let attempt = 0; ; attempt++) {
    try { out.whep = await negotiate(api + '/api/v1/livestreams/' + id + '/watch', viewer); break; }
    catch (err) {
      if (attempt > 40) throw err;
      await new Promise(r => setTimeout(r, 250));
    }
  }
  const video = document.getElementById('video');
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline && !(video.videoWidth > 0 && video.getVideoPlaybackQuality().totalVideoFrames > 5)) {
    await new Promise(r => setTimeout(r, 100));
  }
  out.frames = video.getVideoPlaybackQuality().totalVideoFrames;
  out.width = video.videoWidth;
  const left = await fetch(api + out.whep.location, {method: 'DELETE'});
  out.deleteStatus = left.status;
  await fetch(api + out.whip.location, {method: 'DELETE'});
  publisher.close(); viewer.close();
  return out;
};
</script>
"""


@pytest.fixture
async def storefront() -> AsyncIterator[str]:
    """Serve the storefront page on its own port: another origin than the app's."""
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text=STOREFRONT, content_type="text/html"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def settings(tmp_path: Path, storefront: str) -> Settings:
    return make_settings(tmp_path, cors_origins=(storefront,))


def preflight(origin: str, method: str = "POST", headers: str = "content-type, authorization") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers}


async def test_preflight_of_an_allowed_origin_is_answered(client: TestClient, storefront: str) -> None:
    for path in ("/api/v1/livestreams/abc/publish", "/api/v1/livestreams/abc/watch",
                 "/api/v1/sessions/abc", "/api/v1/me/cart/items"):
        resp = await client.options(path, headers=preflight(storefront))
        assert resp.status == 204, path
        assert resp.headers["Access-Control-Allow-Origin"] == storefront
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "content-type" in allowed and "authorization" in allowed
        assert "Origin" in resp.headers["Vary"]


async def test_responses_expose_location_link_and_etag(client: TestClient, storefront: str) -> None:
    resp = await client.get("/api/v1/livestreams", headers={"Origin": storefront})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == storefront
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "link", "etag"} <= exposed
    # Errors are readable too, so a page can show why it was refused.
    bad = await client.post("/api/v1/livestreams/abc/watch", data="hello",
                            headers={"Origin": storefront, "Content-Type": "application/sdp"})
    assert bad.status in (400, 404, 409)
    assert bad.headers["Access-Control-Allow-Origin"] == storefront


async def test_other_origins_get_no_grant(client: TestClient, storefront: str) -> None:
    resp = await client.options("/api/v1/livestreams/abc/watch", headers=preflight(OTHER_ORIGIN))
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert resp.status == 405  # what the route says about OPTIONS, as before
    resp = await client.get("/api/v1/livestreams", headers={"Origin": OTHER_ORIGIN})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    # Pages are not part of the API: no grant even for an allowed origin.
    page = await client.get("/", headers={"Origin": storefront})
    assert "Access-Control-Allow-Origin" not in page.headers


def test_cors_origins_setting() -> None:
    settings = Settings.from_env({"CORS_ORIGINS": "https://shop.example, http://127.0.0.1:8000"})
    assert settings.cors_origins == ("https://shop.example", "http://127.0.0.1:8000")
    assert Settings.from_env({}).cors_origins == ()
    for bad in ("shop.example", "https://shop.example/path", "ftp://x"):
        with pytest.raises(ConfigError, match="CORS_ORIGINS"):
            Settings.from_env({"CORS_ORIGINS": bad})


async def test_storefront_on_another_origin_publishes_watches_and_calls_the_api(
    client: TestClient, factory: Factory, storefront: str, browser: Any, base_url: str
) -> None:
    seller = await factory.seller()
    user = await factory.user()
    stream = await livestream(factory, seller)
    context = await browser.new_context()
    await context.grant_permissions(["camera", "microphone"], origin=storefront)
    try:
        page = await context.new_page()
        errors: list[str] = []
        page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
        await page.goto(storefront + "/")
        out = await page.evaluate(
            "([api, id, key, token]) => window.story(api, id, key, token)",
            [base_url, stream["id"], stream["streamKey"], user.access_token],
        )
    except playwright_api.Error as exc:
        raise AssertionError(f"the cross-origin page failed: {exc}") from None
    finally:
        await context.close()
    assert out["meStatus"] == 200 and out["requestId"]
    assert out["whip"]["location"].startswith("/api/v1/sessions/") and out["whip"]["etag"]
    assert out["whep"]["location"].startswith("/api/v1/sessions/") and out["whep"]["etag"]
    assert out["frames"] > 5 and out["width"] > 0, out
    assert out["deleteStatus"] == 200
    assert not [e for e in errors if "CORS" in e or "Access-Control" in e], errors
