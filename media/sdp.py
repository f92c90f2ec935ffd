"""Check SDP offers and choose the codecs the SFU answers with.

The SFU forwards encoded media, so a viewer can only be served the codec its
publisher sends. These checks run before aiortc sees the offer so that every
offer the SFU cannot serve becomes a :class:`BadOffer` with a message a client
developer can act on, instead of an aiortc exception from deep inside
``setRemoteDescription``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp
from aiortc.codecs import CODECS, is_rtx
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from .errors import BadOffer

# Codecs the SFU forwards; anything else in an offer is ignored, and an offer with
# none of them for a kind it needs is refused.
FORWARDED_VIDEO = ("video/vp8", "video/h264")
FORWARDED_AUDIO = ("audio/opus",)
MAX_SDP_BYTES = 64 * 1024


@dataclass(frozen=True)
class OfferPlan:
    """What an accepted offer contains and which codecs the answer will carry."""

    video_codec: RTCRtpCodecParameters
    audio_codec: RTCRtpCodecParameters | None
    has_datachannel: bool


def parse_offer(text: str) -> aiortc_sdp.SessionDescription:
    """Parse an SDP offer or raise :class:`BadOffer`."""
    if not isinstance(text, str) or not text.strip():
        raise BadOffer("the SDP offer is empty")
    if len(text) > MAX_SDP_BYTES:
        raise BadOffer(f"the SDP offer is larger than {MAX_SDP_BYTES} bytes")
    if not text.lstrip().startswith("v=0"):
        raise BadOffer("the SDP offer must start with 'v=0'")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    # aiortc's parser reports malformed lines with asserts as well as ValueError.
    except (AssertionError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise BadOffer(f"the SDP offer cannot be parsed: {exc}") from exc
    if not description.media:
        raise BadOffer("the SDP offer has no media sections")
    for media in description.media:
        if media.kind not in ("audio", "video", "application"):
            raise BadOffer(f"the offer has an unsupported {media.kind!r} section")
        ice, dtls = media.ice, media.dtls
        if ice is None or not ice.usernameFragment or not ice.password:
            raise BadOffer(f"the {media.kind} section lacks ICE credentials")
        if dtls is None or not dtls.fingerprints:
            raise BadOffer(f"the {media.kind} section lacks a DTLS fingerprint")
    return description


def plan_publish(text: str, required_video: RTCRtpCodecParameters | None = None) -> OfferPlan:
    """Check a publisher's offer and pick the codecs it will send.

    The publisher's own order of preference decides the video codec, unless the room
    already has viewers decoding ``required_video`` (a publisher reconnecting).
    """
    description = parse_offer(text)
    video = _single_section(description, "video", ("sendonly", "sendrecv"), "send")
    audio = _optional_section(description, "audio", ("sendonly", "sendrecv"), "send")
    if required_video is not None:
        video_codec = _match(video, [required_video])
        if video_codec is None:
            raise BadOffer(
                f"this room's viewers receive {_describe(required_video)}; "
                "the reconnecting publisher must offer it"
            )
    else:
        video_codec = _match(video, _local_codecs("video", FORWARDED_VIDEO))
        if video_codec is None:
            raise BadOffer(
                "no supported video codec in the offer (offered: "
                f"{_offered_names(video)}; supported: VP8, H.264 constrained baseline "
                "with packetization-mode=1)"
            )
    return OfferPlan(video_codec, _audio_codec(audio), _has_datachannel(description))


def plan_watch(text: str, video_codec: RTCRtpCodecParameters) -> OfferPlan:
    """Check a viewer's offer against the codec its room's publisher sends."""
    description = parse_offer(text)
    video = _single_section(description, "video", ("recvonly", "sendrecv"), "receive")
    audio = _optional_section(description, "audio", ("recvonly", "sendrecv"), "receive")
    if _match(video, [video_codec]) is None:
        raise BadOffer(
            f"this stream is {_describe(video_codec)}, which the offer cannot receive "
            f"(offered: {_offered_names(video)})"
        )
    return OfferPlan(video_codec, _audio_codec(audio), _has_datachannel(description))


def codec_preferences(codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """Return transceiver preferences that admit ``codec`` (and RTX for video) only."""
    preferences = [
        RTCRtpCodecCapability(
            mimeType=codec.mimeType,
            clockRate=codec.clockRate,
            channels=codec.channels,
            parameters=dict(codec.parameters),
        )
    ]
    if codec.mimeType.lower().startswith("video/"):
        preferences.append(RTCRtpCodecCapability(mimeType="video/rtx", clockRate=90000))
    return preferences


def _single_section(
    description: aiortc_sdp.SessionDescription,
    kind: str,
    directions: tuple[str, ...],
    verb: str,
) -> aiortc_sdp.MediaDescription:
    section = _optional_section(description, kind, directions, verb)
    if section is None:
        raise BadOffer(f"the offer has no video section to {verb}")
    return section


def _optional_section(
    description: aiortc_sdp.SessionDescription,
    kind: str,
    directions: tuple[str, ...],
    verb: str,
) -> aiortc_sdp.MediaDescription | None:
    sections = [m for m in description.media if m.kind == kind]
    if len(sections) > 1:
        raise BadOffer(f"the offer has {len(sections)} {kind} sections; at most one is served")
    if not sections:
        return None
    section = sections[0]
    if section.port == 0:
        return None
    direction = section.direction or "sendrecv"
    if direction not in directions:
        raise BadOffer(f"the {kind} section is {direction}, but it must be able to {verb}")
    return section


def _local_codecs(kind: str, mime_types: tuple[str, ...]) -> list[RTCRtpCodecParameters]:
    return [c for c in CODECS[kind] if c.mimeType.lower() in mime_types]


def _match(
    section: aiortc_sdp.MediaDescription, candidates: list[RTCRtpCodecParameters]
) -> RTCRtpCodecParameters | None:
    """Return the first candidate compatible with an offered codec, in offer order."""
    for offered in section.rtp.codecs:
        if is_rtx(offered):
            continue
        for candidate in candidates:
            if is_codec_compatible(candidate, offered):
                return copy.deepcopy(candidate)
    return None


def _audio_codec(section: aiortc_sdp.MediaDescription | None) -> RTCRtpCodecParameters | None:
    if section is None:
        return None
    codec = _match(section, _local_codecs("audio", FORWARDED_AUDIO))
    if codec is None:
        raise BadOffer(f"the audio section must offer Opus (offered: {_offered_names(section)})")
    return codec


def _has_datachannel(description: aiortc_sdp.SessionDescription) -> bool:
    return any(m.kind == "application" for m in description.media)


def _offered_names(section: aiortc_sdp.MediaDescription) -> str:
    names = sorted({c.name for c in section.rtp.codecs if not is_rtx(c)})
    return ", ".join(names) or "none"


def _describe(codec: RTCRtpCodecParameters) -> str:
    profile = codec.parameters.get("profile-level-id")
    return f"{codec.name} ({profile})" if profile else codec.name
