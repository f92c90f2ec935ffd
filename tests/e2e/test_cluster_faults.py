"""Faults of a cluster on loopback (#16 item 5), asserted as viewers see them.

* a relay's node dies: its viewers reconnect to another node and get media there;
* the origin dies: the show is paused (record and events), the seller republishes to
  another node, relays follow it, and viewers recover without rejoining;
* Redis is lost: nodes keep serving the rooms they have, a viewer of a room a node has
  not got is refused with a clear 503, and joins work again once Redis is back.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.e2e.test_cluster import RtpViewer, cluster
from tests.factories import Factory
from tests.media.peers import wait_for
from tests.signaling.test_redis import RedisServer
from tests.signaling.test_whip_http import SDP, livestream, publish_http, status_of

pytestmark = pytest.mark.timeout(300)


async def frames_grow(viewer: RtpViewer, more: int, timeout: float = 60) -> None:
    start = len(viewer.viewer.video_frames)
    await wait_for(lambda: len(viewer.viewer.video_frames) >= start + more, timeout=timeout)


async def until_status(dsn: str, livestream_id: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (current := await status_of(dsn, livestream_id)) != status:
        assert time.monotonic() < deadline, current
        await asyncio.sleep(0.3)


async def test_relay_node_dies_its_viewers_reconnect_elsewhere(
    clean_db: str, redis_url: str, tmp_path: Path,
) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b", "node-c")) as (a, b, c):
        async with aiohttp.ClientSession(base_url=a.url) as http_a:
            factory = Factory(http_a, clean_db)  # type: ignore[arg-type]
            peers: list[Any] = []
            try:
                seller = await factory.seller()
                stream = await livestream(factory, seller)
                publisher, _ = await publish_http(http_a, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                peers.append(publisher)
                on_b = RtpViewer()
                peers.append(on_b)
                await on_b.watch(b.url, stream["id"])
                await frames_grow(on_b, 10)

                await b.kill()
                # The page retries its WHEP POST elsewhere: node C relays the show too.
                again = RtpViewer()
                peers.append(again)
                await again.watch(c.url, stream["id"])
                await frames_grow(again, 20)
                again.assert_continuous()
                assert await status_of(clean_db, stream["id"]) == "live"
            finally:
                for peer in peers:
                    await peer.close()
                await factory.close()


async def test_origin_dies_show_pauses_seller_republishes_elsewhere_viewers_recover(
    clean_db: str, redis_url: str, tmp_path: Path,
) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b", "node-c")) as (a, b, c):
        async with aiohttp.ClientSession(base_url=a.url) as http_a, \
                aiohttp.ClientSession(base_url=b.url) as http_b:
            factory = Factory(http_a, clean_db)  # type: ignore[arg-type]
            peers: list[Any] = []
            try:
                seller = await factory.seller()
                stream = await livestream(factory, seller)
                publisher, _ = await publish_http(http_a, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                peers.append(publisher)
                viewers = [RtpViewer(), RtpViewer()]
                peers.extend(viewers)
                await viewers[0].watch(b.url, stream["id"])
                await viewers[1].watch(c.url, stream["id"])
                for viewer in viewers:
                    await frames_grow(viewer, 10)

                await a.kill()
                await publisher.close()
                # The relays notice the origin is gone: the show is paused for everyone.
                await until_status(clean_db, stream["id"], "paused", timeout=30)

                # The seller's encoder retries; once A's registration has expired, node B
                # takes the show (a 409 until then: A might only be slow).
                deadline = time.monotonic() + 60
                while True:
                    try:
                        publisher, _ = await publish_http(http_b, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                        break
                    except AssertionError:
                        assert time.monotonic() < deadline, "republishing to node B never succeeded"
                        await asyncio.sleep(1)
                peers.append(publisher)
                # Both viewers recover on the sessions they had: no new WHEP request.
                for viewer in viewers:
                    await frames_grow(viewer, 20)
                    viewer.assert_continuous()
                await until_status(clean_db, stream["id"], "live")
                conn = await asyncpg.connect(clean_db)
                try:
                    node = await conn.fetchval("SELECT media_node FROM livestreams WHERE id = $1", stream["id"])
                finally:
                    await conn.close()
                assert node == "node-b"
            finally:
                for peer in peers:
                    await peer.close()
                await factory.close()


async def test_redis_lost_nodes_keep_their_rooms_new_cross_node_joins_get_503(
    clean_db: str, tmp_path: Path,
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    redis = RedisServer()
    redis.start()
    try:
        async with cluster(clean_db, redis.url, tmp_path, ("node-a", "node-b", "node-c")) as (a, b, c):
            async with aiohttp.ClientSession(base_url=a.url) as http_a:
                factory = Factory(http_a, clean_db)  # type: ignore[arg-type]
                peers: list[Any] = []
                try:
                    seller = await factory.seller()
                    stream = await livestream(factory, seller)
                    publisher, _ = await publish_http(http_a, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                    peers.append(publisher)
                    on_b = RtpViewer()
                    peers.append(on_b)
                    await on_b.watch(b.url, stream["id"])
                    await frames_grow(on_b, 10)

                    redis.kill()
                    await asyncio.sleep(3)  # past a heartbeat: every node has noticed
                    # Rooms a node has go on: the relay keeps flowing, new viewers join it.
                    await frames_grow(on_b, 20)
                    second = RtpViewer()
                    peers.append(second)
                    await second.watch(b.url, stream["id"])
                    await frames_grow(second, 10)
                    # Node C has no relay and cannot look the origin up: a clear 503.
                    probe = RtpViewer()
                    peers.append(probe)
                    async with aiohttp.ClientSession() as http:
                        from tests.media.peers import local_offer

                        resp = await http.post(f"{c.url}/api/v1/livestreams/{stream['id']}/watch",
                                               data=await local_offer(probe.pc), headers=SDP)
                        body = await resp.json()
                    assert resp.status == 503, body
                    assert body["error"]["code"] == "cluster_unavailable"

                    redis.start()  # same port, empty: the heartbeats write everything again
                    late = RtpViewer()
                    peers.append(late)
                    deadline = time.monotonic() + 60
                    while True:
                        try:
                            await late.watch(c.url, stream["id"])
                            break
                        except AssertionError:
                            assert time.monotonic() < deadline, "node C never joined after Redis returned"
                            await late.close()
                            late = RtpViewer()
                            peers.append(late)
                            await asyncio.sleep(1)
                    await frames_grow(late, 10)
                    late.assert_continuous(minimum=10)
                    assert on_b.viewer.video_frames  # still the same session
                finally:
                    for peer in peers:
                        await peer.close()
                    await factory.close()
    finally:
        redis.kill()


@pytest.fixture(scope="module")
def redis_url() -> str:
    import os

    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set")
    return url



async def test_a_show_ended_at_its_origin_ends_at_once_on_every_relay(
    clean_db: str, redis_url: str, tmp_path: Path,
) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b")) as (a, b):
        async with aiohttp.ClientSession(base_url=a.url) as http_a:
            factory = Factory(http_a, clean_db)  # type: ignore[arg-type]
            peers: list[Any] = []
            try:
                seller = await factory.seller()
                stream = await livestream(factory, seller)
                publisher, _ = await publish_http(http_a, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                peers.append(publisher)
                on_b = RtpViewer()
                peers.append(on_b)
                await on_b.watch(b.url, stream["id"])
                await frames_grow(on_b, 10)
                resp = await http_a.post(f"/api/v1/seller/livestreams/{stream['id']}/end", headers=seller.headers)
                assert resp.status == 200, await resp.text()
                # Well within the publisher grace (20 s): the relay does not wait it out.
                ended = time.monotonic()
                await wait_for(lambda: on_b.pc.connectionState == "closed", timeout=15)
                assert time.monotonic() - ended < 15
            finally:
                for peer in peers:
                    await peer.close()
                await factory.close()
