"""H.264 of every profile browsers decode: accepted from publishers, matched for viewers.

Offers are real aiortc offers whose H.264 fmtp is relabelled the way other clients
label theirs (ffmpeg's main/high profile, Firefox's 42e01f-only offer). aiortc's x264
stream is constrained baseline, which a decoder of any of these labels decodes, so the
media really flows end to end under each label.
"""

from __future__ import annotations

import re

import pytest

from media import BadOffer
from media.sdp import plan_publish, plan_watch

from .peers import (
    PatternTrack,
    Viewer,
    accept,
    local_offer,
    new_pc,
    prefer,
    publish,
    running_sfu,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

PROFILES = {  # label -> a profile-level-id as clients write it
    "constrained-baseline": "42e01f",
    "baseline": "42001f",
    "main": "4d001f",
    "constrained-high": "640c1f",
    "high": "64001f",
    "high-ffmpeg": "64000d",
}


def relabel_h264(sdp: str, profile_level_id: str, mode: int | None = None) -> str:
    """Rewrite every H.264 fmtp of ``sdp`` to ``profile_level_id`` (and packetization-mode)."""
    sdp = re.sub(r"profile-level-id=[0-9a-fA-F]{6}", f"profile-level-id={profile_level_id}", sdp)
    if mode is not None:
        sdp = re.sub(r"packetization-mode=\d", f"packetization-mode={mode}", sdp)
    return sdp


def only_h264(sdp: str, profile_level_id: str) -> str:
    """Keep only the video payload types labelled ``profile_level_id`` (and their RTX)."""
    keep = set(re.findall(rf"a=fmtp:(\d+) [^\r\n]*profile-level-id={profile_level_id}", sdp))
    keep |= {rtx for rtx, apt in re.findall(r"a=fmtp:(\d+) apt=(\d+)", sdp) if apt in keep}
    out, in_video = [], False
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            in_video = line.startswith("m=video")
            if in_video:
                fields = line.split(" ")
                line = " ".join(fields[:3] + [pt for pt in fields[3:] if pt in keep])
        elif in_video:
            match = re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+) ", line)
            if match and match.group(1) not in keep:
                continue
        out.append(line)
    return "\r\n".join(out)


def answered_h264(answer: str) -> tuple[str, str]:
    """Return the (payload type, fmtp) of the answer's first H.264 entry."""
    pt = re.search(r"a=rtpmap:(\d+) H264/90000", answer)
    assert pt, answer
    fmtp = re.search(rf"a=fmtp:{pt.group(1)} ([^\r\n]+)", answer)
    assert fmtp, answer
    return pt.group(1), fmtp.group(1)


async def h264_publisher_offer(profile_level_id: str, mode: int | None = None) -> tuple[object, str]:
    pc = new_pc()
    pc.addTransceiver(PatternTrack(), direction="sendonly")
    prefer(pc, "video", "video/H264")
    offer = await local_offer(pc)
    return pc, relabel_h264(only_h264(offer, "42001f"), profile_level_id, mode)


async def viewer_offer(keep: str, relabel: str | None = None) -> tuple[Viewer, str]:
    """Return a decoding aiortc viewer whose offer has only the H.264 entries ``keep``."""
    pc = new_pc()
    viewer = Viewer(pc)
    pc.on("track", viewer.consume)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    prefer(pc, "video", "video/H264")
    offer = only_h264(await local_offer(pc), keep)
    return viewer, relabel_h264(offer, relabel) if relabel else offer


def back_to_aiortc(answer: str, profile_level_id: str, mode: int = 1) -> str:
    """Relabel an answer for the aiortc client, whose codec list knows 42001f/42e01f only."""
    return relabel_h264(answer, profile_level_id, mode)


@pytest.mark.parametrize("label", sorted(PROFILES))
@pytest.mark.parametrize("mode", [1, 0])
async def test_publisher_of_any_browser_profile_is_answered_with_its_own_format(
    label: str, mode: int
) -> None:
    profile_level_id = PROFILES[label]
    pc, offer = await h264_publisher_offer(profile_level_id, mode)
    try:
        offered_pt = re.search(r"a=rtpmap:(\d+) H264/90000", offer).group(1)  # type: ignore[union-attr]
        async with running_sfu() as sfu:
            session = await sfu.publish("r", offer, "seller")
            pt, fmtp = answered_h264(session.answer_sdp)
            assert pt == offered_pt
            assert f"profile-level-id={profile_level_id}" in fmtp
            assert f"packetization-mode={mode}" in fmtp
            assert sfu.rooms["r"].video_codec.parameters["profile-level-id"] == profile_level_id
    finally:
        await pc.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("stream", "viewer", "expected"),
    [
        # Same profile: the publisher's exact fmtp, level asymmetry allowed.
        ("42001f", "42001f", "42001f"),
        ("640c1f", "640c34", "640c1f"),
        ("64000d", "64001f", "64000d"),
        # 42001f / 42e01f are one for decoders: the viewer's own label is answered.
        ("42001f", "42e01f", "42e01f"),
        ("42e01f", "42001f", "42001f"),
        # A higher profile decodes a lower one.
        ("42e01f", "4d001f", "4d001f"),
        ("4d001f", "64001f", "64001f"),
        ("640c1f", "64001f", "64001f"),
        # Chromium without a plain High entry offers High 4:4:4 Predictive, which decodes it.
        ("64001f", "f4001f", "f4001f"),
        # Refused: a baseline decoder cannot decode main or high.
        ("4d001f", "42e01f", None),
        ("640c1f", "42e01f", None),
        ("64001f", "4d001f", None),
        # Constrained high forbids B-slices, which main allows.
        ("4d001f", "640c1f", None),
    ],
)
async def test_viewer_formats_that_decode_the_stream(
    stream: str, viewer: str, expected: str | None
) -> None:
    publisher_pc, publisher_offer = await h264_publisher_offer(stream)
    viewer_client, offer = await viewer_offer("42e01f", relabel=viewer)
    try:
        room_codec = plan_publish(publisher_offer).video_codec
        if expected is None:
            with pytest.raises(BadOffer) as refused:
                plan_watch(offer, room_codec)
            # The message names both sides: the stream and what the viewer offered.
            assert stream in refused.value.message and viewer in refused.value.message
            assert "cannot decode" in refused.value.message
        else:
            answered = plan_watch(offer, room_codec).video_codec
            assert answered.parameters["profile-level-id"] == expected
            offered_pt = re.search(r"a=rtpmap:(\d+) H264/90000", offer).group(1)  # type: ignore[union-attr]
            assert str(answered.payloadType) == offered_pt
    finally:
        await publisher_pc.close()  # type: ignore[attr-defined]
        await viewer_client.close()


async def test_packetization_mode_0_viewer_cannot_take_a_mode_1_stream() -> None:
    publisher_pc, publisher_offer = await h264_publisher_offer("42e01f", 1)
    viewer, offer = await viewer_offer("42e01f")
    try:
        room_codec = plan_publish(publisher_offer).video_codec
        with pytest.raises(BadOffer, match="packetization-mode 1.*packetization-mode 0"):
            plan_watch(relabel_h264(offer, "42e01f", 0), room_codec)
        # The other way round works: mode 1 receivers take single NAL units.
        mode0 = plan_publish(relabel_h264(publisher_offer, "42e01f", 0)).video_codec
        assert str(plan_watch(offer, mode0).video_codec.parameters["packetization-mode"]) == "1"
    finally:
        await publisher_pc.close()  # type: ignore[attr-defined]
        await viewer.close()


async def test_firefox_like_viewer_plays_a_42001f_stream() -> None:
    """A viewer offering only 42e01f (as Firefox does) decodes a 42001f publisher."""
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r", video_mime="video/H264")
        viewer, offer = await viewer_offer("42e01f")
        try:
            assert "42001f" not in offer and "42e01f" in offer
            assert sfu.rooms["r"].video_codec.parameters["profile-level-id"] == "42001f"
            session = await sfu.watch("r", offer)
            await accept(viewer.pc, session.answer_sdp)
            await wait_for(lambda: len(viewer.video_frames) >= 10, timeout=20)
            assert {(w, h) for _, w, h in viewer.video_frames} == {(320, 240)}
        finally:
            await viewer.close()
            await publisher.close()


@pytest.mark.parametrize("label", ["main", "high"])
async def test_main_and_high_profile_publishers_reach_high_profile_viewers(label: str) -> None:
    """A publisher labelled main/high is forwarded untouched to a viewer offering high."""
    async with running_sfu() as sfu:
        publisher_pc, offer = await h264_publisher_offer(PROFILES[label])
        session = await sfu.publish("r", offer, "seller")
        await accept(publisher_pc, back_to_aiortc(session.answer_sdp, "42001f"))  # type: ignore[arg-type]
        viewer, viewer_sdp = await viewer_offer("42e01f", relabel="64001f")
        try:
            await wait_for(lambda: sfu.stats("r")["state"] == "live", timeout=15)
            watched = await sfu.watch("r", viewer_sdp)
            assert f"profile-level-id={PROFILES[label]}" in watched.answer_sdp or label == "main"
            await accept(viewer.pc, back_to_aiortc(watched.answer_sdp, "42e01f"))
            await wait_for(lambda: len(viewer.video_frames) >= 10, timeout=20)
        finally:
            await viewer.close()
            await publisher_pc.close()  # type: ignore[attr-defined]
