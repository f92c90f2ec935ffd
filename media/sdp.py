"""Check SDP offers and choose the codecs the SFU answers with.

The SFU forwards encoded media, so a viewer can only be served the codec its
publisher sends. These checks run before aiortc sees the offer so that every
offer the SFU cannot serve becomes a :class:`BadOffer` with a message a client
developer can act on, instead of an aiortc exception from deep inside
``setRemoteDescription``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from aiortc import RTCDtlsFingerprint
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
# Digest length in bytes of each fingerprint hash function RFC 8122 names; a value must be
# that many colon-separated hex pairs.
FINGERPRINT_BYTES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
# The ones aiortc 1.16 verifies (rtcdtlstransport.X509_DIGEST_ALGORITHMS); it ignores any
# other, so a section needs at least one of these or its DTLS handshake can never succeed.
VERIFIED_FINGERPRINTS = ("sha-256", "sha-384", "sha-512")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")


@dataclass(frozen=True)
class OfferPlan:
    """What an accepted offer contains and which codecs the answer will carry."""

    video_codec: RTCRtpCodecParameters
    audio_codec: RTCRtpCodecParameters | None
    has_datachannel: bool


def parse_offer(text: str) -> aiortc_sdp.SessionDescription:
    """Parse an SDP offer or raise :class:`BadOffer`.

    Anything aiortc's parser or ``setRemoteDescription`` would trip over (an attribute
    for a payload type without ``a=rtpmap``, a BUNDLE group naming no section, a
    garbage fingerprint) is refused here with a reason.
    """
    if not isinstance(text, str) or not text.strip():
        raise BadOffer("the SDP offer is empty")
    if len(text) > MAX_SDP_BYTES:
        raise BadOffer(f"the SDP offer is larger than {MAX_SDP_BYTES} bytes")
    if not text.lstrip().startswith("v=0"):
        raise BadOffer("the SDP offer must start with 'v=0'")
    try:
        description = aiortc_sdp.SessionDescription.parse(text)
    # aiortc's parser reports malformed lines with whatever its code raises (asserts,
    # ValueError, StopIteration from a lookup, ...): any of them means a bad offer.
    except Exception as exc:
        raise BadOffer(f"the SDP offer cannot be parsed: {_reason(exc)}") from exc
    if not description.media:
        raise BadOffer("the SDP offer has no media sections")
    for media in description.media:
        if media.kind not in ("audio", "video", "application"):
            raise BadOffer(f"the offer has an unsupported {media.kind!r} section")
        ice, dtls = media.ice, media.dtls
        if ice is None or not ice.usernameFragment or not ice.password:
            raise BadOffer(f"the {media.kind} section lacks ICE credentials")
        if dtls is None:  # aiortc drops the DTLS parameters of a section without a=setup
            raise BadOffer(f"the {media.kind} section lacks a valid a=setup")
        if not dtls.fingerprints:
            raise BadOffer(f"the {media.kind} section lacks a DTLS fingerprint")
        _check_fingerprints(media.kind, dtls.fingerprints)
    _check_mids(description)
    return description


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StopIteration):  # aiortc's lookup of an a=fmtp line's codec
        return "an a=fmtp line names a payload type that has no a=rtpmap"
    return str(exc) or type(exc).__name__


def _check_fingerprints(kind: str, fingerprints: list[RTCDtlsFingerprint]) -> None:
    """Refuse a malformed fingerprint, or a section none of whose fingerprints aiortc checks."""
    for fingerprint in fingerprints:
        algorithm = fingerprint.algorithm.lower()
        size = FINGERPRINT_BYTES.get(algorithm)
        if size is None:
            raise BadOffer(
                f"the {kind} section has a fingerprint with unknown hash function "
                f"{fingerprint.algorithm!r} (use sha-256)"
            )
        value = fingerprint.value
        if not _HEX_PAIRS.fullmatch(value) or len(value) != 3 * size - 1:
            raise BadOffer(
                f"the {kind} section's {algorithm} fingerprint must be {size} colon-separated "
                "hex bytes"
            )
    if not any(f.algorithm.lower() in VERIFIED_FINGERPRINTS for f in fingerprints):
        raise BadOffer(
            f"the {kind} section needs a fingerprint with "
            f"{', '.join(VERIFIED_FINGERPRINTS)}"
        )


def _check_mids(description: aiortc_sdp.SessionDescription) -> None:
    """Refuse duplicate mids and a BUNDLE group naming a mid no section has.

    aiortc takes the transport of the group's first mid for every bundled section; when
    no section has that mid the bundled sections get no transport at all.
    """
    mids = [m.rtp.muxId for m in description.media if m.rtp.muxId]
    if len(set(mids)) != len(mids):
        raise BadOffer("the offer's media sections must have distinct a=mid values")
    for group in description.group:
        if group.semantic != "BUNDLE":
            continue
        unknown = [str(item) for item in group.items if str(item) not in mids]
        if unknown:
            raise BadOffer(
                f"the BUNDLE group names mid {unknown[0]!r}, which no media section has"
            )
        if group.items and any(not m.rtp.muxId for m in description.media):
            raise BadOffer("with a BUNDLE group every media section needs an a=mid")


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
