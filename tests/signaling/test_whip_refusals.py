"""WHIP/WHEP refusals say why: in the body, the status line, headers and the server log.

ffmpeg (and OBS) print neither body nor headers of a failed WHIP request, only the
status line, so the test runs ffmpeg itself and reads what its user would see.
"""

from __future__ import annotations

import asyncio
import logging

import imageio_ffmpeg
import pytest
from aiohttp.test_utils import TestClient

from tests.factories import Factory
from tests.signaling.test_whip_http import SDP, livestream

pytestmark = pytest.mark.timeout(90)

VP9_ONLY = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=video 9 UDP/TLS/RTP/SAVPF 98", "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendonly",
    "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx",
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "a=rtcp-mux",
    "a=rtpmap:98 VP9/90000", "",
])


async def test_refused_offer_names_its_reason_everywhere(
    client: TestClient, factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    with caplog.at_level(logging.WARNING, logger="shopstream.media"):
        resp = await client.post(
            f"/api/v1/livestreams/{stream['id']}/publish", data=VP9_ONLY,
            headers={**SDP, "Authorization": f"Bearer {stream['streamKey']}"},
        )
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["code"] == "bad_offer"
    assert "VP9" in body["error"]["message"]
    assert resp.headers["X-Error-Code"] == "bad_offer"
    assert resp.headers["X-Error-Message"] == body["error"]["message"]
    assert resp.reason.startswith("Bad Request: no supported video codec")
    logged = [r.getMessage() for r in caplog.records if r.name == "shopstream.media"]
    assert any(stream["id"] in line and "bad_offer" in line and "VP9" in line for line in logged)


async def test_wrong_content_type_and_unknown_livestream_are_explained(
    client: TestClient, factory: Factory
) -> None:
    stream = await livestream(factory, await factory.seller())
    resp = await client.post(f"/api/v1/livestreams/{stream['id']}/watch", data="v=0",
                             headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert resp.headers["X-Error-Code"] == "unsupported_media_type"
    assert "application/sdp" in resp.reason
    resp = await client.post("/api/v1/livestreams/nope/watch", data="v=0", headers=SDP)
    assert resp.status == 404
    assert resp.headers["X-Error-Code"] == "not_found"
    assert resp.reason.startswith("Not Found: ")


async def test_ffmpeg_user_sees_why_the_publish_was_refused(client: TestClient, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    url = str(client.make_url(f"/api/v1/livestreams/{stream['id']}/publish"))
    ffmpeg = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "warning",
        "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30",
        "-c:v", "libx264", "-profile:v", "baseline", "-tune", "zerolatency", "-bf", "0",
        "-pix_fmt", "yuv420p", "-t", "3",
        "-authorization", "not-the-stream-key", "-f", "whip", url,
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(ffmpeg.communicate(), 60)
    shown = stderr.decode(errors="replace")
    assert ffmpeg.returncode != 0
    # What ffmpeg prints is the status line: it now carries the reason.
    assert "HTTP error 403 Forbidden: not allowed to publish" in shown, shown[-2000:]
