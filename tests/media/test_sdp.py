"""Offers the SFU cannot serve raise BadOffer with a clear message, never crash."""

from __future__ import annotations

import re

import pytest

from media import BadOffer, RoomNotFound
from media.sdp import plan_publish

from .peers import local_offer, new_pc, prefer, publish, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(60)


async def _client_offer(*, video: bool = True, audio: bool = True, direction: str = "sendonly",
                        datachannel: bool = False) -> str:
    pc = new_pc()
    if video:
        pc.addTransceiver("video", direction=direction)
    if audio:
        pc.addTransceiver("audio", direction=direction)
    if datachannel:
        pc.createDataChannel("events")
    try:
        return await local_offer(pc)
    finally:
        await pc.close()


def _only_video_codec(sdp: str, name: str) -> str:
    """Rewrite an offer so that its video section offers only ``name`` (e.g. VP9)."""
    out, in_video = [], False
    for line in sdp.splitlines():
        if line.startswith("m="):
            in_video = line.startswith("m=video")
            if in_video:
                line = " ".join(line.split()[:3] + ["96"])
        elif in_video and re.match(r"a=(rtpmap|fmtp|rtcp-fb):", line):
            if line.startswith("a=rtpmap:"):
                out.append(f"a=rtpmap:96 {name}/90000")
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


@pytest.mark.parametrize("text", ["", "hello", "v=0\r\nm=video nonsense\r\n", "v=0\r\n"])
async def test_garbage_is_a_bad_offer(text: str) -> None:
    async with running_sfu() as sfu:
        with pytest.raises(BadOffer):
            await sfu.publish("r", text, "seller")
        assert sfu.rooms == {} and sfu.sessions == {}


@pytest.mark.parametrize("codec", ["VP9", "AV1"])
async def test_unsupported_video_codec_only(codec: str) -> None:
    offer = _only_video_codec(await _client_offer(), codec)
    assert f"{codec}/90000" in offer and "VP8" not in offer
    async with running_sfu() as sfu:
        with pytest.raises(BadOffer, match=f"no supported video codec.*{codec}"):
            await sfu.publish("r", offer, "seller")
        assert sfu.rooms == {}


async def test_offer_without_video_is_refused() -> None:
    offer = await _client_offer(video=False)
    with pytest.raises(BadOffer, match="no video"):
        plan_publish(offer)


async def test_publisher_offer_that_cannot_send_is_refused() -> None:
    offer = await _client_offer(direction="recvonly")
    with pytest.raises(BadOffer, match="recvonly"):
        plan_publish(offer)


async def test_viewer_that_cannot_decode_the_stream_codec_is_refused() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r", video_mime="video/H264")
        try:
            pc = new_pc()
            pc.addTransceiver("video", direction="recvonly")
            prefer(pc, "video", "video/VP8")
            with pytest.raises(BadOffer, match="H264"):
                await sfu.watch("r", await local_offer(pc), None)
            await pc.close()
            assert sfu.stats("r")["viewers"] == 0
        finally:
            await publisher.close()


async def test_watching_a_room_without_publisher() -> None:
    async with running_sfu() as sfu:
        with pytest.raises(RoomNotFound):
            await sfu.watch("nobody-here", await _client_offer(direction="recvonly"), None)


async def test_datachannel_in_offer_reaches_the_session_hook() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        viewer, session_id = await watch(sfu, "r", datachannel=True)
        try:
            session = sfu.sessions[session_id]
            received: list[str] = []
            session.on_datachannel = lambda channel: channel.on("message", received.append)
            await wait_for(lambda: session.datachannels, timeout=10)
            assert session.datachannels[0].label == "events"
            client_channel = viewer.pc.sctp and viewer.channels[0]
            await wait_for(lambda: client_channel.readyState == "open", timeout=5)
            client_channel.send("hello")
            await wait_for(lambda: received == ["hello"], timeout=5)
            # The media still flows with a DataChannel on the same connection.
            await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=10)
        finally:
            await viewer.close()
            await publisher.close()
