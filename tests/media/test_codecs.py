"""Keyframe recognition in VP8 and H.264 payloads, and the publisher's codec choice."""

from __future__ import annotations

import pytest

from media.codecs import is_h264_keyframe, is_keyframe, is_vp8_keyframe
from media.sdp import plan_publish

from .test_sdp import _client_offer


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x10, 0x00]), True),  # S=1, PID=0, no extension; P=0
        (bytes([0x10, 0x01]), False),  # interframe
        (bytes([0x00, 0x00]), False),  # not the start of a partition
        (bytes([0x90, 0x80, 0x81, 0x23, 0x00]), True),  # X, I with 15-bit picture id
        (bytes([0x90, 0x80, 0x05, 0x01]), False),  # 7-bit picture id, interframe
        (bytes([0x90, 0xE0, 0x05, 0x07, 0x40, 0x00]), True),  # I, L, T bytes
        (bytes([0x90, 0x80]), False),  # truncated
    ],
)
def test_vp8_keyframes(payload: bytes, expected: bool) -> None:
    assert is_vp8_keyframe(payload) is expected


def _stap_a(*nal_types: int) -> bytes:
    body = b"".join(len(bytes([t, 0, 0])).to_bytes(2, "big") + bytes([t, 0, 0]) for t in nal_types)
    return bytes([24]) + body


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x65, 0x88]), True),  # single IDR slice
        (bytes([0x67, 0x42]), True),  # SPS
        (bytes([0x41, 0x9A]), False),  # non-IDR slice
        (_stap_a(0x67, 0x68), True),  # SPS + PPS aggregated
        (_stap_a(0x68, 0x06), False),  # PPS + SEI
        (bytes([0x7C, 0x85, 0x00]), True),  # FU-A start of an IDR
        (bytes([0x7C, 0x05, 0x00]), False),  # FU-A continuation
        (bytes([0x7C, 0x81, 0x00]), False),  # FU-A start of a non-IDR slice
        (b"", False),
    ],
)
def test_h264_keyframes(payload: bytes, expected: bool) -> None:
    assert is_h264_keyframe(payload) is expected


def test_audio_packets_are_always_a_valid_start() -> None:
    assert is_keyframe("opus", b"\x01\x02")


async def test_publisher_choice_skips_codecs_the_sfu_cannot_forward() -> None:
    offer = await _client_offer()
    # Put VP9 first: the SFU must skip it and take the publisher's next choice.
    lines = offer.splitlines()
    video = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    fields = lines[video].split()
    lines[video] = " ".join(fields[:3] + ["120"] + fields[3:])
    lines.insert(video + 1, "a=rtpmap:120 VP9/90000")
    plan = plan_publish("\r\n".join(lines) + "\r\n")
    assert plan.video_codec.name == "VP8"
