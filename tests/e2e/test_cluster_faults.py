"""Faults of a cluster on loopback (#16 item 5), asserted as viewers see them.

* a relay's node dies: its viewers reconnect to another node and get media there;
* the origin dies: the show is paused (record and events), the seller republishes to
  another node, relays follow it, and viewers recover without rejoining;
* Redis is lost: nodes keep serving the rooms they have, a viewer of a room a node has
  not got is refused with a clear 503, and joins work again once Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.e2e.test_cluster import RtpViewer, cluster
from tests.factories import Factory
from tests.media.peers import local_offer, wait_for
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


@dataclass
class Show:
    """A seller live on a node, and every peer the test opened (closed at the end)."""

    dsn: str
    http: aiohttp.ClientSession
    factory: Factory
    seller: Any = None
    stream: dict[str, Any] = field(default_factory=dict)
    publisher: Any = None
    peers: list[Any] = field(default_factory=list)

    async def publish(self, http: aiohttp.ClientSession | None = None) -> None:
        """Publish the show through ``http`` (its node); AssertionError when refused."""
        self.publisher, _ = await publish_http(  # type: ignore[arg-type]
            http or self.http, self.stream["id"], self.stream["streamKey"])
        self.peers.append(self.publisher)

    async def viewer(self, node_url: str, frames: int = 10) -> RtpViewer:
        """Return a viewer watching on ``node_url`` once it has decoded ``frames`` frames."""
        viewer = RtpViewer()
        self.peers.append(viewer)
        await viewer.watch(node_url, self.stream["id"])
        if frames:
            await frames_grow(viewer, frames)
        return viewer


@contextlib.asynccontextmanager
async def live_show(dsn: str, origin_url: str) -> AsyncIterator[Show]:
    """A seller's show published on ``origin_url``; every peer closes at the end."""
    async with aiohttp.ClientSession(base_url=origin_url) as http:
        show = Show(dsn, http, Factory(http, dsn))  # type: ignore[arg-type]
        try:
            show.seller = await show.factory.seller()
            show.stream = await livestream(show.factory, show.seller)
            await show.publish()
            yield show
        finally:
            for peer in show.peers:
                await peer.close()
            await show.factory.close()


async def test_relay_node_dies_its_viewers_reconnect_elsewhere(
    clean_db: str, redis_url: str, tmp_path: Path,
) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b", "node-c")) as (a, b, c), \
            live_show(clean_db, a.url) as show:
        await show.viewer(b.url)

        await b.kill()
        # The page retries its WHEP POST elsewhere: node C relays the show too.
        again = await show.viewer(c.url, frames=20)
        again.assert_continuous()
        assert await status_of(clean_db, show.stream["id"]) == "live"


async def test_origin_dies_show_pauses_seller_republishes_elsewhere_viewers_recover(
    clean_db: str, redis_url: str, tmp_path: Path,
) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b", "node-c")) as (a, b, c), \
            live_show(clean_db, a.url) as show, aiohttp.ClientSession(base_url=b.url) as http_b:
        viewers = [await show.viewer(b.url), await show.viewer(c.url)]

        await a.kill()
        await show.publisher.close()
        # The relays notice the origin is gone: the show is paused for everyone.
        await until_status(clean_db, show.stream["id"], "paused", timeout=30)

        # The seller's encoder retries; once A's registration has expired, node B
        # takes the show (a 409 until then: A might only be slow).
        deadline = time.monotonic() + 60
        while True:
            try:
                await show.publish(http_b)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "republishing to node B never succeeded"
                await asyncio.sleep(1)
        # Both viewers recover on the sessions they had: no new WHEP request.
        for viewer in viewers:
            await frames_grow(viewer, 20)
            viewer.assert_continuous()
        await until_status(clean_db, show.stream["id"], "live")
        conn = await asyncpg.connect(clean_db)
        try:
            node = await conn.fetchval("SELECT media_node FROM livestreams WHERE id = $1", show.stream["id"])
        finally:
            await conn.close()
        assert node == "node-b"


async def test_redis_lost_nodes_keep_their_rooms_new_cross_node_joins_get_503(
    clean_db: str, tmp_path: Path,
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    redis = RedisServer()
    redis.start()
    try:
        async with cluster(clean_db, redis.url, tmp_path, ("node-a", "node-b", "node-c")) as (a, b, c), \
                live_show(clean_db, a.url) as show:
            on_b = await show.viewer(b.url)

            redis.kill()
            await asyncio.sleep(3)  # past a heartbeat: every node has noticed
            # Rooms a node has go on: the relay keeps flowing, new viewers join it.
            await frames_grow(on_b, 20)
            await show.viewer(b.url)
            # Node C has no relay and cannot look the origin up: a clear 503.
            probe = RtpViewer()
            show.peers.append(probe)
            async with aiohttp.ClientSession() as http:
                resp = await http.post(f"{c.url}/api/v1/livestreams/{show.stream['id']}/watch",
                                       data=await local_offer(probe.pc), headers=SDP)
                body = await resp.json()
            assert resp.status == 503, body
            assert body["error"]["code"] == "cluster_unavailable"

            redis.start()  # same port, empty: the heartbeats write everything again
            deadline = time.monotonic() + 60
            while True:
                late = RtpViewer()
                show.peers.append(late)
                try:
                    await late.watch(c.url, show.stream["id"])
                    break
                except AssertionError:
                    assert time.monotonic() < deadline, "node C never joined after Redis returned"
                    await late.close()
                    await asyncio.sleep(1)
            await frames_grow(late, 10)
            late.assert_continuous(minimum=10)
            assert on_b.viewer.video_frames  # still the same session
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
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b")) as (a, b), \
            live_show(clean_db, a.url) as show:
        on_b = await show.viewer(b.url)
        resp = await show.http.post(f"/api/v1/seller/livestreams/{show.stream['id']}/end",
                                    headers=show.seller.headers)
        assert resp.status == 200, await resp.text()
        # Well within the publisher grace (20 s): the relay does not wait it out.
        ended = time.monotonic()
        await wait_for(lambda: on_b.pc.connectionState == "closed", timeout=15)
        assert time.monotonic() - ended < 15
