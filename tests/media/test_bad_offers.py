"""Offers found by fuzzing (issue #13): each is a 400 with a reason, and leaves nothing behind.

- an a=fmtp line for a payload type without a=rtpmap (was a 500, from any anonymous viewer);
- a BUNDLE group whose first mid names no section (was a 500, and the half-created
  publisher then made every publish to the livestream a 409 until restart);
- a garbage DTLS fingerprint (was a 201; the session died at the connect timeout).
"""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient

from media import BadOffer
from media.sdp import plan_publish
from server.keys import SFU as SFU_KEY
from tests.factories import Factory
from tests.signaling.test_whip_http import SDP, livestream, publish_http, status_of

from .peers import PatternTrack, local_offer, new_pc

pytestmark = pytest.mark.timeout(120)

FINGERPRINT = re.compile(r"^a=fingerprint:.*$", re.MULTILINE)
SHA256 = "sha-256 " + ":".join(["AB"] * 32)
GARBAGE_FINGERPRINTS = (
    "sha-256 not-a-fingerprint",
    "sha-256 " + ":".join(["AB"] * 31),  # one byte short
    "sha-256 " + ":".join(["ZZ"] * 32),  # not hex
    "sha-256 " + "AB" * 32,  # no colons
    "sha-999 " + ":".join(["AB"] * 32),  # no such hash function
    "md5 " + ":".join(["AB"] * 16),  # unknown to aiortc and OpenSSL's DTLS in WebRTC
    "sha-1 " + ":".join(["AB"] * 20),  # well formed, but aiortc cannot verify it
)


async def publisher_offer() -> str:
    pc = new_pc()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    pc.addTransceiver("audio", direction="sendonly")
    try:
        return await local_offer(pc)
    finally:
        await pc.close()


async def viewer_offer() -> str:
    pc = new_pc()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    try:
        return await local_offer(pc)
    finally:
        await pc.close()


def without_rtpmap(offer: str) -> str:
    """Drop the a=rtpmap of the first video payload type, keeping its a=fmtp."""
    video = offer[offer.index("m=video"):]
    pt = re.search(r"^a=fmtp:(\d+) ", video, re.MULTILINE)
    assert pt is not None
    return offer.replace(f"a=rtpmap:{pt.group(1)} ", "a=x-removed:", 1)


def bundle_first_mid(offer: str, mid: str) -> str:
    return re.sub(r"^a=group:BUNDLE \S+", f"a=group:BUNDLE {mid}", offer, count=1, flags=re.MULTILINE)


async def assert_bad_offer(resp, *words: str) -> str:  # type: ignore[no-untyped-def]
    body = await resp.text()
    assert resp.status == 400, body
    error = (await resp.json())["error"]
    assert error["code"] == "bad_offer"
    for word in words:
        assert word in error["message"], error["message"]
    return str(error["message"])


async def test_fmtp_without_rtpmap_is_a_400_for_viewers_and_publishers(
    client: TestClient, factory: Factory
) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    base = f"/api/v1/livestreams/{stream['id']}"
    auth = {"Authorization": f"Bearer {stream['streamKey']}"}
    resp = await client.post(base + "/publish", data=without_rtpmap(await publisher_offer()),
                             headers={**SDP, **auth})
    await assert_bad_offer(resp, "a=fmtp", "a=rtpmap")
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    try:
        # Anonymous: no Authorization header at all.
        resp = await client.post(base + "/watch", data=without_rtpmap(await viewer_offer()), headers=SDP)
        await assert_bad_offer(resp, "a=fmtp", "a=rtpmap")
    finally:
        await publisher.close()


async def test_bad_bundle_offer_is_a_400_and_the_next_publish_succeeds_at_once(
    client: TestClient, factory: Factory, clean_db: str
) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller, status="live")  # the seller pressed "start"
    url = f"/api/v1/livestreams/{stream['id']}/publish"
    headers = {**SDP, "Authorization": f"Bearer {stream['streamKey']}"}
    for mid in ("7", "x"):
        resp = await client.post(url, data=bundle_first_mid(await publisher_offer(), mid), headers=headers)
        await assert_bad_offer(resp, "BUNDLE", mid)
    # The failed offers neither locked the room nor ended the show.
    assert await status_of(clean_db, stream["id"]) == "live"
    assert stream["id"] not in client.app[SFU_KEY].rooms
    publisher, location = await publish_http(client, stream["id"], stream["streamKey"])
    try:
        # A reconnecting publisher's bad offer leaves the paused room open to the next one.
        assert (await client.delete(location)).status == 200
        await publisher.close()
        resp = await client.post(url, data=bundle_first_mid(await publisher_offer(), "9"), headers=headers)
        await assert_bad_offer(resp, "BUNDLE")
        publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
        assert await status_of(clean_db, stream["id"]) in ("live", "paused")
    finally:
        await publisher.close()


async def test_offer_aiortc_refuses_neither_ends_the_show_nor_locks_it(
    client: TestClient, factory: Factory, clean_db: str
) -> None:
    """An offer that passes our checks but fails in aiortc (no rtcp-mux) is undone silently."""
    seller = await factory.seller()
    stream = await livestream(factory, seller, status="live")
    url = f"/api/v1/livestreams/{stream['id']}/publish"
    headers = {**SDP, "Authorization": f"Bearer {stream['streamKey']}"}
    offer = (await publisher_offer()).replace("a=rtcp-mux\r\n", "")
    await assert_bad_offer(await client.post(url, data=offer, headers=headers), "RTCP mux")
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    try:
        assert await status_of(clean_db, stream["id"]) == "live"
    finally:
        await publisher.close()


@pytest.mark.parametrize("fingerprint", GARBAGE_FINGERPRINTS)
async def test_garbage_fingerprint_is_refused(fingerprint: str) -> None:
    offer = FINGERPRINT.sub(f"a=fingerprint:{fingerprint}", await publisher_offer())
    with pytest.raises(BadOffer, match="fingerprint"):
        plan_publish(offer)


async def test_garbage_fingerprint_is_a_400_over_http(client: TestClient, factory: Factory) -> None:
    seller = await factory.seller()
    stream = await livestream(factory, seller)
    base = f"/api/v1/livestreams/{stream['id']}"
    auth = {"Authorization": f"Bearer {stream['streamKey']}"}
    offer = FINGERPRINT.sub("a=fingerprint:sha-256 00:11:garbage", await publisher_offer())
    await assert_bad_offer(await client.post(base + "/publish", data=offer, headers={**SDP, **auth}),
                           "fingerprint")
    publisher, _ = await publish_http(client, stream["id"], stream["streamKey"])
    try:
        offer = FINGERPRINT.sub("a=fingerprint:sha-999 " + ":".join(["AB"] * 32), await viewer_offer())
        await assert_bad_offer(await client.post(base + "/watch", data=offer, headers=SDP), "fingerprint")
    finally:
        await publisher.close()


@pytest.mark.parametrize("fingerprint", (SHA256, SHA256.upper(), "SHA-256 " + SHA256[8:].lower()))
async def test_well_formed_fingerprints_pass(fingerprint: str) -> None:
    offer = FINGERPRINT.sub(f"a=fingerprint:{fingerprint}", await publisher_offer())
    assert plan_publish(offer).video_codec is not None
