"""Every section the answer accepts carries media; every other one is rejected (port 0).

max-bundle offerers (webrtcbin, JSEP's max-bundle policy) send every section after the
first as ``m=... 0`` + ``a=bundle-only``: such a section is live and must be served. A
port-0 section *without* bundle-only was rejected by the offerer, and the answer must
reject it too (RFC 3264), never claim media that nobody will carry.
"""

from __future__ import annotations

import re

import pytest
from aiortc import AudioStreamTrack

from .peers import (
    PatternTrack,
    accept,
    local_offer,
    new_pc,
    prefer,
    publish,
    running_sfu,
    wait_for,
    watch,
)

pytestmark = pytest.mark.timeout(60)


def sections(sdp: str) -> list[str]:
    return re.split(r"\r\n(?=m=)", sdp)


def bundle_only(sdp: str, kind: str) -> str:
    """Turn the ``kind`` section of an aiortc offer into a max-bundle one (port 0 + bundle-only)."""
    parts = sections(sdp)
    for index, part in enumerate(parts):
        if part.startswith(f"m={kind} "):
            part = re.sub(rf"^m={kind} \d+ ", f"m={kind} 0 ", part)
            part = re.sub(r"\r\na=candidate:[^\r]*", "", part)
            parts[index] = part.replace("\r\na=mid:", "\r\na=bundle-only\r\na=mid:", 1)
    return "\r\n".join(parts)


def rejected(sdp: str, kind: str) -> str:
    """Reject the ``kind`` section of an offer the way an offerer does: port 0, no bundle-only."""
    return "\r\n".join(re.sub(rf"^m={kind} \d+ ", f"m={kind} 0 ", part) for part in sections(sdp))


async def test_bundle_only_audio_of_a_publisher_reaches_viewers() -> None:
    async with running_sfu() as sfu:
        pc = new_pc()
        pc.addTransceiver(PatternTrack(), direction="sendonly")
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        prefer(pc, "video", "video/VP8")
        offer = bundle_only(await local_offer(pc), "audio")
        assert "m=audio 0 " in offer and "a=bundle-only" in offer
        session = await sfu.publish("r", offer, "seller")
        await accept(pc, session.answer_sdp)
        viewer, _ = await watch(sfu, "r")
        try:
            await wait_for(lambda: len(viewer.video_frames) >= 10, timeout=20)
            await wait_for(lambda: viewer.audio_frames >= 20, timeout=20)
        finally:
            await viewer.close()
            await pc.close()


async def test_bundle_only_audio_of_a_viewer_is_served() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        try:
            pc = new_pc()
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            offer = bundle_only(await local_offer(pc), "audio")
            session = await sfu.watch("r", offer)
            audio = next(p for p in sections(session.answer_sdp) if p.startswith("m=audio"))
            assert "a=sendonly" in audio
            assert sfu.rooms["r"].viewers  # the viewer's audio sender was installed
            await pc.close()
        finally:
            await publisher.close()


async def test_section_the_offerer_rejected_is_rejected_in_the_answer() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        try:
            pc = new_pc()
            pc.addTransceiver("video", direction="recvonly")
            pc.addTransceiver("audio", direction="recvonly")
            offer = rejected(await local_offer(pc), "audio")
            await pc.close()
            session = await sfu.watch("r", offer)
            audio = next(p for p in sections(session.answer_sdp) if p.startswith("m=audio"))
            assert audio.startswith("m=audio 0 ")
            bundle = re.search(r"a=group:BUNDLE ([^\r\n]*)", session.answer_sdp)
            assert bundle is not None and bundle.group(1).split() == ["0"]
        finally:
            await publisher.close()
