"""GStreamer webrtcbin (Debian's packages) publishing to and watching from the SFU.

webrtcbin is the client the SFU's defaults used to fail: it offers ``a=setup:actpass``
with an RSA certificate (the SFU took the DTLS client role and offered ECDSA suites
only: "no shared cipher"), and with max-bundle it sends its audio section as
``m=audio 0`` + ``a=bundle-only`` (answered as accepted, then never forwarded). The
peer runs in Debian's /usr/bin/python3 (tests/e2e/gst_peer.py): the venv has no gi.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from media import SFU, BadOffer
from tests.media.peers import publish, running_sfu, wait_for, watch
from tests.media.test_whip_ffmpeg import high_profile_viewer

pytestmark = pytest.mark.timeout(120)

SYSTEM_PYTHON = "/usr/bin/python3"
PEER = Path(__file__).with_name("gst_peer.py")


def _gstreamer_missing() -> str | None:
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
        "gi.require_version('GstSdp', '1.0'); gi.require_version('Nice', '0.1');"
        "from gi.repository import Gst; Gst.init(None);"
        "missing = [n for n in ('webrtcbin', 'nicesrc', 'x264enc', 'opusenc', 'avdec_h264',"
        " 'dtlssrtpenc') if Gst.ElementFactory.find(n) is None]; print(','.join(missing))"
    )
    try:
        result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True,
                                timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SYSTEM_PYTHON} cannot run: {exc}"
    if result.returncode != 0:
        return f"python3-gi / GStreamer missing: {result.stderr.strip()[-300:]}"
    if result.stdout.strip():
        return f"GStreamer elements missing: {result.stdout.strip()}"
    return None


MISSING = _gstreamer_missing()
if MISSING:
    pytest.skip(f"{MISSING} (scripts/test.sh installs Debian's GStreamer packages)",
                allow_module_level=True)


def endpoint_app(sfu: SFU, room_id: str) -> web.Application:
    """POST /whip publishes to ``room_id``, POST /whep watches it; refusals are 400 + reason."""

    async def respond(request: web.Request, kind: str) -> web.Response:
        offer = await request.text()
        try:
            if kind == "whip":
                session = await sfu.publish(room_id, offer, "gstreamer")
            else:
                session = await sfu.watch(room_id, offer)
        except BadOffer as exc:
            return web.Response(status=400, text=exc.message)
        return web.Response(status=201, text=session.answer_sdp, content_type="application/sdp",
                            headers={"Location": f"/{kind}/{session.id}"})

    app = web.Application()
    app.router.add_post("/whip", lambda r: respond(r, "whip"))
    app.router.add_post("/whep", lambda r: respond(r, "whep"))
    return app


@contextlib.asynccontextmanager
async def serving(sfu: SFU, room_id: str) -> AsyncIterator[str]:
    runner = web.AppRunner(endpoint_app(sfu, room_id))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def run_peer(*args: str) -> tuple[asyncio.subprocess.Process, asyncio.Task[dict[str, Any]]]:
    process = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(PEER), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def report() -> dict[str, Any]:
        stdout, stderr = await process.communicate()
        lines = stdout.decode(errors="replace").strip().splitlines()
        if not lines:
            raise AssertionError(f"gst_peer.py printed nothing: {stderr.decode(errors='replace')[-2000:]}")
        return json.loads(lines[-1])

    return process, asyncio.ensure_future(report())


def section(sdp: str, kind: str) -> str:
    parts = re.split(r"\r?\n(?=m=)", sdp)
    return next(p for p in parts if p.startswith(f"m={kind}"))


@pytest.mark.parametrize("profile", ["constrained-baseline", "high"])
async def test_webrtcbin_publisher_reaches_viewers_with_audio(profile: str) -> None:
    async with running_sfu(connect_timeout_seconds=20.0) as sfu, serving(sfu, "gst") as base:
        process, report = await run_peer("publish", f"{base}/whip", "--profile", profile,
                                         "--seconds", "25")
        viewers = []
        try:
            await wait_for(lambda: "gst" in sfu.rooms and sfu.stats("gst")["state"] == "live"
                           or report.done(), timeout=30)
            if report.done():
                raise AssertionError(f"webrtcbin publisher gave up: {report.result()}")
            publisher = sfu.rooms["gst"].publisher
            assert publisher is not None
            # The SFU is the DTLS server for webrtcbin's actpass offer.
            assert "a=setup:passive" in publisher.answer_sdp
            # The bundle-only audio section is accepted and carried, never dropped.
            assert section(publisher.answer_sdp, "audio").split(" ")[1] != "0"
            if profile == "constrained-baseline":
                viewers.append((await watch(sfu, "gst"))[0])
            else:
                viewers.append(await high_profile_viewer(sfu, "gst"))
            await wait_for(lambda: all(len(v.video_frames) >= 20 for v in viewers), timeout=20)
            await wait_for(lambda: all(v.audio_frames >= 20 for v in viewers), timeout=20)
            assert {(w, h) for _, w, h in viewers[0].video_frames} == {(320, 240)}
        finally:
            for viewer in viewers:
                await viewer.close()
            if process.returncode is None:
                process.terminate()
            result = await asyncio.wait_for(report, 30)
            offer = str(result.get("offer", ""))
            # What made this client special, so the test keeps testing it.
            assert "a=setup:actpass" in offer and "a=bundle-only" in offer, offer


async def test_webrtcbin_viewer_decodes_video_and_bundle_only_audio() -> None:
    async with running_sfu(connect_timeout_seconds=20.0) as sfu, serving(sfu, "gst") as base:
        publisher, _ = await publish(sfu, "gst", video_mime="video/H264")
        try:
            await wait_for(lambda: sfu.stats("gst")["state"] == "live", timeout=15)
            _process, report = await run_peer("watch", f"{base}/whep", "--seconds", "15")
            result = await asyncio.wait_for(report, 60)
        finally:
            await publisher.close()
    assert result.get("status") == 201, result.get("error")
    assert "a=bundle-only" in result["offer"] and "a=setup:actpass" in result["offer"]
    assert "a=setup:passive" in result["answer"]
    assert "connected" in result["states"], result["states"]
    assert result["video_frames"] >= 30, result
    assert result["audio_buffers"] >= 30, result
