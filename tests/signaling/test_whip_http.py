"""WHIP publish and WHEP watch through the real HTTP API, with real aiortc peers and ffmpeg."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.factories import Factory, User
from tests.media.peers import (
    PatternTrack, Viewer, accept, local_offer, new_pc, prefer, wait_for,
)

SDP = {"Content-Type": "application/sdp"}


async def livestream(factory: Factory, seller: User, status: str = "scheduled") -> dict[str, str]:
    conn = await factory.conn()
    key = "sk_" + secrets.token_urlsafe(16)
    row = await conn.fetchrow(
        """INSERT INTO livestreams (seller_id, title, stream_key, room, status)
           VALUES ($1, 'Show', $2, $3, $4) RETURNING id""",
        seller.seller_id, key, "room_" + secrets.token_hex(6), status,
    )
    return {"id": str(row["id"]), "streamKey": key}


async def status_of(dsn: str, livestream_id: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT status FROM livestreams WHERE id = $1", livestream_id)
    finally:
        await conn.close()


async def wait_for_status(dsn: str, livestream_id: str, status: str, timeout: float = 15.0) -> None:
    """Wait until the livestream record has ``status``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (current := await status_of(dsn, livestream_id)) != status:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"livestream is {current!r}, not {status!r}, after {timeout} s")
        await asyncio.sleep(0.1)


async def publish_http(client: TestClient, livestream_id: str, bearer: str, mime: str = "video/VP8",
                       *, wait_live: bool = True):
    """Publish synthetic media; by default wait until the show is live (its first media)."""
    pc = new_pc()
    pc.addTransceiver(PatternTrack(320, 240), direction="sendonly")
    prefer(pc, "video", mime)
    from aiortc import AudioStreamTrack

    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    resp = await client.post(
        f"/api/v1/livestreams/{livestream_id}/publish", data=await local_offer(pc),
        headers={**SDP, "Authorization": f"Bearer {bearer}"},
    )
    assert resp.status == 201, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/sdp")
    await accept(pc, await resp.text())
    if wait_live:
        await wait_for_live(client, livestream_id)
    return pc, resp.headers["Location"]


async def wait_for_live(client: TestClient, livestream_id: str, timeout: float = 20.0) -> None:
    """Wait until the API reports the livestream live."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get(f"/api/v1/livestreams/{livestream_id}")
        status = (await resp.json()).get("status")
        if status == "live":
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"livestream is {status!r}, not live, after {timeout} s")
        await asyncio.sleep(0.1)


async def watch_http(client: TestClient, livestream_id: str, headers: dict | None = None) -> tuple[Viewer, str]:
    pc = new_pc()
    viewer = Viewer(pc)
    pc.on("track", viewer.consume)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    resp = await client.post(
        f"/api/v1/livestreams/{livestream_id}/watch", data=await local_offer(pc), headers={**SDP, **(headers or {})}
    )
    assert resp.status == 201, await resp.text()
    await accept(pc, await resp.text())
    return viewer, resp.headers["Location"]


@pytest.mark.parametrize("mime", ["video/VP8", "video/H264"])
async def test_seller_publishes_and_viewers_decode(client, factory: Factory, clean_db: str, mime: str) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, location = await publish_http(client, stream["id"], seller.access_token, mime)
    viewers = []
    try:
        assert location.startswith("/api/v1/sessions/")
        # Live with the first media packet, not with the 201.
        await wait_for_status(clean_db, stream["id"], "live")
        user = await factory.user()
        viewers = [await watch_http(client, stream["id"]), await watch_http(client, stream["id"], user.headers)]
        await wait_for(lambda: all(len(v.video_frames) >= 5 for v, _ in viewers), timeout=15)
        for viewer, _ in viewers:
            assert {(w, h) for _, w, h in viewer.video_frames} == {(320, 240)}
        await wait_for(lambda: all(v.audio_frames > 0 for v, _ in viewers), timeout=10)

        metrics = await (await client.get("/metrics")).text()
        assert f'shopstream_room_viewers{{room="{stream["id"]}"}} 2.0' in metrics

        # Leaving: DELETE the session, then it is gone.
        _, viewer_location = viewers[0]
        assert (await client.delete(viewer_location)).status == 200
        assert (await client.delete(viewer_location)).status == 404
        assert (await client.patch(viewer_location, data=b"a=candidate")).status == 405
    finally:
        for viewer, _ in viewers:
            await viewer.close()
        await publisher.close()


async def test_publish_authorization(client, factory: Factory) -> None:
    seller, other_seller, user = await factory.seller(), await factory.seller(), await factory.user()
    stream = await livestream(factory, seller)
    pc = new_pc()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    offer = await local_offer(pc)
    url = f"/api/v1/livestreams/{stream['id']}/publish"
    try:
        resp = await client.post(url, data=offer, headers=SDP)
        assert resp.status == 401
        for bearer in ("sk_wrong", other_seller.access_token, user.access_token):
            resp = await client.post(url, data=offer, headers={**SDP, "Authorization": f"Bearer {bearer}"})
            assert resp.status == 403, bearer
            assert (await resp.json())["error"]["code"] == "forbidden"
        resp = await client.post(
            f"/api/v1/livestreams/{secrets.token_hex(4)}/publish", data=offer,
            headers={**SDP, "Authorization": f"Bearer {stream['streamKey']}"},
        )
        assert resp.status == 404
    finally:
        await pc.close()


async def test_bad_offers_are_4xx(client, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    url = f"/api/v1/livestreams/{stream['id']}/publish"
    auth = {"Authorization": f"Bearer {stream['streamKey']}"}
    resp = await client.post(url, data="v=0", headers={"Content-Type": "application/json", **auth})
    assert resp.status == 415
    for body in (b"not sdp at all", b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ngarbage\r\n", b"\xff\xfe"):
        resp = await client.post(url, data=body, headers={**SDP, **auth})
        assert resp.status == 400, body
        assert (await resp.json())["error"]["code"] in ("bad_offer", "validation_error")
    # Audio only: no video to forward.
    pc = new_pc()
    from aiortc import AudioStreamTrack

    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    try:
        resp = await client.post(url, data=await local_offer(pc), headers={**SDP, **auth})
        assert resp.status == 400
        assert "video" in (await resp.json())["error"]["message"].lower()
    finally:
        await pc.close()
    # The livestream was not started by any of these.
    resp = await client.post(f"/api/v1/livestreams/{stream['id']}/watch", data=b"v=0\r\n", headers=SDP)
    assert resp.status in (400, 409)


async def test_watch_before_live_and_second_publisher(client, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    pc = new_pc()
    pc.addTransceiver("video", direction="recvonly")
    try:
        resp = await client.post(
            f"/api/v1/livestreams/{stream['id']}/watch", data=await local_offer(pc), headers=SDP
        )
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "invalid_state"
    finally:
        await pc.close()
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    try:
        await asyncio.sleep(1.5)  # media flows, so the first publisher is alive
        second = new_pc()
        second.addTransceiver(PatternTrack(), direction="sendonly")
        resp = await client.post(
            f"/api/v1/livestreams/{stream['id']}/publish", data=await local_offer(second),
            headers={**SDP, "Authorization": f"Bearer {seller.access_token}"},
        )
        assert resp.status == 409
        await second.close()
    finally:
        await publisher.close()


async def test_ending_closes_every_session_and_ended_stream_refuses_publish(client, factory: Factory, clean_db: str) -> None:
    from server.keys import GATEWAY

    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    viewer, _ = await watch_http(client, stream["id"])
    try:
        await wait_for(lambda: len(viewer.video_frames) > 0, timeout=15)
        await client.app[GATEWAY].end(stream["id"])
        await wait_for(lambda: viewer.pc.connectionState in ("closed", "failed"), timeout=15)
        await wait_for(lambda: not client.app[GATEWAY].sfu.sessions, timeout=5)
        conn = await asyncpg.connect(clean_db)
        await conn.execute("UPDATE livestreams SET status = 'ended' WHERE id = $1", stream["id"])
        await conn.close()
        pc = new_pc()
        pc.addTransceiver(PatternTrack(), direction="sendonly")
        resp = await client.post(
            f"/api/v1/livestreams/{stream['id']}/publish", data=await local_offer(pc),
            headers={**SDP, "Authorization": f"Bearer {stream['streamKey']}"},
        )
        assert resp.status == 409
        await pc.close()
    finally:
        await viewer.close()
        await publisher.close()


@pytest.fixture
async def live_server(aiohttp_server, clean_db, settings):
    from server.app import create_app

    app = create_app(settings, clean_db, run_migrations=False)
    return await aiohttp_server(app, host="127.0.0.1")


async def test_ffmpeg_publishes_over_whip_with_the_stream_key(live_server, clean_db: str, monkeypatch) -> None:
    """An independent WHIP client (ffmpeg's whip muxer) publishes; an aiortc viewer decodes.

    ffmpeg never answers ICE consent checks: with checks every 0.2 s, aioice alone would
    drop it after about 1.2 s; the publisher must stay up as long as its media flows.
    """
    import aioice.ice
    import imageio_ffmpeg

    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    from aiohttp.test_utils import TestClient as Client

    client = Client(live_server)
    await client.start_server()
    factory = Factory(client, clean_db)
    try:
        seller = await factory.seller()
        stream = await livestream(factory, seller)
        url = f"http://127.0.0.1:{live_server.port}/api/v1/livestreams/{stream['id']}/publish"
        ffmpeg = subprocess.Popen(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
             "-f", "lavfi", "-i", "testsrc=size=320x240:rate=30",
             "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
             "-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-tune", "zerolatency",
             "-g", "30", "-b:v", "500k", "-c:a", "libopus", "-ar", "48000", "-ac", "2",
             "-t", "20", "-f", "whip", "-authorization", stream["streamKey"], url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            await wait_for(lambda: client.app is not None and stream["id"] in _rooms(client), timeout=20)
            await wait_for_live(client, stream["id"])
            viewer, _ = await watch_http(client, stream["id"])
            try:
                await wait_for(lambda: len(viewer.video_frames) >= 10, timeout=20)
                assert {(w, h) for _, w, h in viewer.video_frames} == {(320, 240)}
                # Many consent intervals later the publisher is still there and frames flow.
                await asyncio.sleep(3.0)
                before = len(viewer.video_frames)
                await asyncio.sleep(1.0)
                assert len(viewer.video_frames) > before + 10
                assert ffmpeg.poll() is None, ffmpeg.stderr.read().decode() if ffmpeg.stderr else ""
            finally:
                await viewer.close()
        finally:
            ffmpeg.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                ffmpeg.wait(5)
            if ffmpeg.poll() is None:
                ffmpeg.kill()
    finally:
        await factory.close()
        await client.close()


def _rooms(client) -> set[str]:  # type: ignore[no-untyped-def]
    from server.keys import SFU

    return set(client.app[SFU].rooms)


async def test_events_datachannel_on_whep_session_and_rest_end_closes_media(client, factory: Factory, clean_db: str) -> None:
    """The viewer's 'events' DataChannel speaks the event protocol; ending by REST ends media."""
    import json

    seller = await factory.seller()
    buyer = await factory.user(name="Dana")
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], seller.access_token)
    pc = new_pc()
    viewer = Viewer(pc)
    pc.on("track", viewer.consume)
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("events")
    received: list[dict] = []

    @channel.on("message")
    def on_message(data: str) -> None:
        decoded = json.loads(data)
        received.extend(decoded if isinstance(decoded, list) else [decoded])

    try:
        resp = await client.post(
            f"/api/v1/livestreams/{stream['id']}/watch", data=await local_offer(pc),
            headers={**SDP, **buyer.headers},
        )
        assert resp.status == 201
        await accept(pc, await resp.text())
        await wait_for(lambda: any(e["type"] == "welcome" for e in received), timeout=15)
        welcome = next(e for e in received if e["type"] == "welcome")["payload"]
        assert welcome["identity"]["userId"] == buyer.id
        channel.send(json.dumps({"type": "chat:send", "payload": {"message": "hello from the channel", "ref": "m1"}}))
        await wait_for(lambda: any(e["type"] == "chat:new" for e in received), timeout=10)
        chat = next(e for e in received if e["type"] == "chat:new")["payload"]
        assert chat["message"] == "hello from the channel" and chat["user"]["name"] == "Dana"
        channel.send("{not json")
        await wait_for(lambda: any(e["type"] == "error" for e in received), timeout=10)

        resp = await client.post(f"/api/v1/seller/livestreams/{stream['id']}/end", headers=seller.headers)
        assert resp.status == 200, await resp.text()
        await wait_for(lambda: any(e["type"] == "stream:state" and e["payload"]["state"] == "ended"
                                   for e in received) or pc.connectionState in ("closed", "failed"), timeout=15)
        await wait_for(lambda: stream["id"] not in _rooms(client), timeout=15)
        assert await status_of(clean_db, stream["id"]) == "ended"
    finally:
        await viewer.close()
        await publisher.close()


async def test_viewer_limit_is_503_with_a_clear_error(aiohttp_client, clean_db: str, tmp_path) -> None:
    from server.app import create_app
    from tests.conftest import make_settings

    client = await aiohttp_client(create_app(make_settings(tmp_path, max_viewers_per_room=1), clean_db,
                                             run_migrations=False))
    factory = Factory(client, clean_db)
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    first, _ = await watch_http(client, stream["id"])
    pc = new_pc()
    pc.addTransceiver("video", direction="recvonly")
    try:
        resp = await client.post(f"/api/v1/livestreams/{stream['id']}/watch", data=await local_offer(pc), headers=SDP)
        assert resp.status == 503
        error = (await resp.json())["error"]
        assert error["code"] == "room_full" and "1 viewers" in error["message"]
    finally:
        await pc.close()
        await first.close()
        await publisher.close()
        await factory.close()


async def test_oversized_offer_is_413(client, factory: Factory, settings) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    body = "v=0\r\n" + "a=x\r\n" * (settings.max_body_bytes // 5)
    resp = await client.post(
        f"/api/v1/livestreams/{stream['id']}/publish", data=body,
        headers={**SDP, "Authorization": f"Bearer {stream['streamKey']}"},
    )
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
