"""ICE host candidates in a fixed UDP port range, announced addresses, TURN credentials.

In one process on 127.0.0.1, through the real HTTP API and aiortc peers; the same
settings across network namespaces (NAT, blocked UDP, coturn) are in test_netns.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import socket
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from server.config import Secret, Settings
from tests.conftest import make_settings
from tests.factories import Factory
from tests.media.peers import Viewer, accept, local_offer, new_pc, wait_for
from tests.signaling.test_whip_http import SDP, livestream, publish_http

TURN_SECRET = "turn-secret-for-tests-" + "x" * 16
CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", re.MULTILINE)


def free_udp_range(size: int) -> tuple[int, int]:
    """Return a range of `size` UDP ports on 127.0.0.1 that are all free right now."""
    for _ in range(50):
        # Below Linux's ephemeral range (32768+), where the kernel's own picks never land.
        first = random.randrange(20000, 32000 - size)
        socks = []
        try:
            for port in range(first, first + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return first, first + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port range found")


PORTS = free_udp_range(3)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, ice_port_ranges=(PORTS,),
                         turn_urls=("turn:127.0.0.1:3478?transport=tcp", "turn:127.0.0.1:3478"),
                         turn_secret=Secret(TURN_SECRET), turn_credential_ttl=600)


async def watch_raw(client: TestClient, livestream_id: str) -> tuple[Viewer, object]:
    pc = new_pc()
    viewer = Viewer(pc)
    pc.on("track", viewer.consume)
    pc.addTransceiver("video", direction="recvonly")
    resp = await client.post(f"/api/v1/livestreams/{livestream_id}/watch",
                             data=await local_offer(pc), headers=SDP)
    return viewer, resp


def host_ports(sdp: str) -> set[int]:
    return {int(port) for _, port in CANDIDATE.findall(sdp)}


async def test_candidates_bind_in_the_range_and_exhaustion_is_a_clear_503(
    client: TestClient, factory: Factory,
) -> None:
    """Three ports: the publisher and two viewers fit, the third viewer gets a 503."""
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], seller.access_token)
    viewers: list[Viewer] = []
    try:
        used = host_ports(publisher.remoteDescription.sdp)
        for _ in range(2):
            viewer, resp = await watch_raw(client, stream["id"])
            viewers.append(viewer)
            assert resp.status == 201, await resp.text()
            answer = await resp.text()
            await accept(viewer.pc, answer)
            used |= host_ports(answer)
        assert len(used) == 3 and all(PORTS[0] <= p <= PORTS[1] for p in used), used
        await wait_for(lambda: all(len(v.video_frames) >= 3 for v in viewers), timeout=30)

        late, resp = await watch_raw(client, stream["id"])
        assert resp.status == 503
        error = (await resp.json())["error"]
        assert error["code"] == "media_ports_exhausted"
        assert f"{PORTS[0]}-{PORTS[1]}" in error["message"] and "ICE_PORT_RANGE" in error["message"]
        await late.close()

        # A viewer leaving frees its port for the next one: nothing leaked on the 503.
        await viewers.pop().close()
        deadline = time.monotonic() + 20
        while True:
            again, resp = await watch_raw(client, stream["id"])
            if resp.status == 201 or time.monotonic() > deadline:
                break
            await again.close()
            await wait_for(lambda: True, timeout=0.5)
        viewers.append(again)
        assert resp.status == 201, await resp.text()
    finally:
        for viewer in viewers:
            await viewer.close()
        await publisher.close()


async def test_turn_credentials_in_link_headers_and_for_the_pages(
    client: TestClient, factory: Factory,
) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    publisher, _ = await publish_http(client, stream["id"], seller.access_token)
    viewer, resp = await watch_raw(client, stream["id"])
    try:
        assert resp.status == 201
        links = resp.headers.getall("Link")
        assert len(links) == 2
        pattern = re.compile(r'^<(turn:[^>]+)>; rel="ice-server"; username="([^"]+)"; '
                             r'credential="([^"]+)"; credential-type="password"$')
        parsed = [pattern.match(link) for link in links]
        assert all(parsed), links
        assert [m.group(1) for m in parsed] == ["turn:127.0.0.1:3478?transport=tcp", "turn:127.0.0.1:3478"]
        username, credential = parsed[0].group(2), parsed[0].group(3)
        expiry, _, label = username.partition(":")
        assert abs(int(expiry) - (time.time() + 600)) < 60
        assert label == resp.headers["Location"].rsplit("/", 1)[1]  # minted for this session
        expected = base64.b64encode(hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest())
        assert credential == expected.decode()
    finally:
        await viewer.close()
        await publisher.close()

    body = await (await client.get("/api/v1/ice-servers")).json()
    (server,) = body["iceServers"]
    assert server["urls"] == ["turn:127.0.0.1:3478?transport=tcp", "turn:127.0.0.1:3478"]
    mac = hmac.new(TURN_SECRET.encode(), server["username"].encode(), hashlib.sha1).digest()
    assert server["credential"] == base64.b64encode(mac).decode()
    assert body["expiresAt"] == int(server["username"].split(":")[0])
    assert TURN_SECRET not in str(body)


async def test_announced_address_is_advertised_instead_of_the_bound_one(
    aiohttp_client, clean_db: str, tmp_path: Path,
) -> None:
    from server.app import create_app

    settings = make_settings(tmp_path, ice_announced_addresses=("203.0.113.7",))
    client = await aiohttp_client(create_app(settings, clean_db, run_migrations=False))
    factory = Factory(client, clean_db)
    try:
        seller = await factory.seller()
        stream = await livestream(factory, seller)
        pc = new_pc()
        from tests.media.peers import PatternTrack

        pc.addTransceiver(PatternTrack(), direction="sendonly")
        resp = await client.post(
            f"/api/v1/livestreams/{stream['id']}/publish", data=await local_offer(pc),
            headers={**SDP, "Authorization": f"Bearer {stream['streamKey']}"},
        )
        assert resp.status == 201, await resp.text()
        hosts = {host for host, _ in CANDIDATE.findall(await resp.text())}
        assert hosts == {"203.0.113.7"}
        # Without TURN configured there is no Link header and no ICE server for pages.
        assert "Link" not in resp.headers
        assert (await (await client.get("/api/v1/ice-servers")).json())["iceServers"] == []
        await pc.close()
    finally:
        await factory.close()
