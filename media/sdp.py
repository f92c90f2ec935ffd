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
from collections.abc import Callable
from dataclasses import dataclass, field

from aiortc import RTCDtlsFingerprint
from aiortc import sdp as aiortc_sdp
from aiortc.codecs import is_rtx
from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

from .errors import BadOffer
from .h264 import BROWSER_PROFILES, h264_format
from .simulcast import MAX_LAYERS

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
# The RTCP feedback the SFU acts on (see media.aiortc_hook); the answer drops the rest.
_SUPPORTED_FEEDBACK = (
    RTCRtcpFeedback(type="nack"),
    RTCRtcpFeedback(type="nack", parameter="pli"),
    RTCRtcpFeedback(type="ccm", parameter="fir"),
    RTCRtcpFeedback(type="goog-remb"),
)
# A viewer's answer also keeps transport-cc: the SFU numbers its packets (media.twcc).
_VIEWER_FEEDBACK = (*_SUPPORTED_FEEDBACK, RTCRtcpFeedback(type="transport-cc"))


@dataclass(frozen=True)
class OfferPlan:
    """What an accepted offer contains and which codecs the answer will carry."""

    video_codec: RTCRtpCodecParameters
    audio_codec: RTCRtpCodecParameters | None
    has_datachannel: bool
    # Sections the offerer itself rejected (port 0 without bundle-only): the answer
    # must reject them too, never accept media that nobody will carry.
    rejected_mids: tuple[str, ...] = field(default=())
    # The offerer lets the answerer pick the DTLS role (``a=setup:actpass``).
    dtls_actpass: bool = False
    # A simulcast publisher's video layers (RIDs, as offered; at most MAX_LAYERS).
    simulcast_rids: tuple[str, ...] = ()


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
    _mark_bundle_only(text, description)
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
    already has viewers decoding ``required_video`` (a publisher reconnecting). The
    chosen codec is the offer's own entry (payload type and fmtp), so any H.264 profile
    a browser decodes is taken and forwarded as it is.
    """
    description = parse_offer(text)
    video = _single_section(description, "video", ("sendonly", "sendrecv"), "send")
    audio = _optional_section(description, "audio", ("sendonly", "sendrecv"), "send")
    if required_video is not None:
        video_codec = _first(video, lambda c: _same_format(c, required_video))
        if video_codec is None:
            raise BadOffer(
                f"this room's viewers receive {_describe(required_video)}; "
                "the reconnecting publisher must offer it"
            )
    else:
        video_codec = _first(video, _publishable)
        if video_codec is None:
            raise BadOffer(
                "no supported video codec in the offer (offered: "
                f"{_offered_names(video)}; supported: VP8, H.264 constrained baseline, "
                "baseline, main or high profile with packetization-mode 0 or 1)"
            )
    return OfferPlan(_answered(video_codec), _audio_codec(audio), _has_datachannel(description),
                     _rejected_mids(description), _dtls_actpass(description),
                     _simulcast_rids(video))


def plan_watch(text: str, video_codec: RTCRtpCodecParameters) -> OfferPlan:
    """Check a viewer's offer against the codec its room's publisher sends.

    The answer carries the publisher's exact format under the viewer's payload type
    when the viewer offers that format; otherwise the first offered format that can
    decode the stream (see :mod:`media.h264`), under its own fmtp as RFC 6184 wants
    (the profile of an answered payload type is the offered one).
    """
    description = parse_offer(text)
    video = _single_section(description, "video", ("recvonly", "sendrecv"), "receive")
    audio = _optional_section(description, "audio", ("recvonly", "sendrecv"), "receive")
    exact = _first(video, lambda c: _same_format(c, video_codec))
    if exact is not None:
        answered = copy.deepcopy(video_codec)
        answered.payloadType = exact.payloadType
        answered.rtcpFeedback = _answered(exact, _VIEWER_FEEDBACK).rtcpFeedback
    else:
        decoder = _first(video, lambda c: _decodes(c, video_codec))
        if decoder is None:
            raise BadOffer(
                f"this stream is {_describe(video_codec)}, which the offer cannot decode "
                f"(offered: {_offered_formats(video)})"
            )
        answered = _answered(decoder, _VIEWER_FEEDBACK)
    return OfferPlan(answered, _audio_codec(audio), _has_datachannel(description),
                     _rejected_mids(description), _dtls_actpass(description))


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
    if _rejected(section):
        return None
    direction = section.direction or "sendrecv"
    if direction not in directions:
        raise BadOffer(f"the {kind} section is {direction}, but it must be able to {verb}")
    return section


def _first(
    section: aiortc_sdp.MediaDescription, accept: Callable[[RTCRtpCodecParameters], bool]
) -> RTCRtpCodecParameters | None:
    """Return the first offered (non-RTX) codec that ``accept`` takes, in offer order."""
    for offered in section.rtp.codecs:
        if not is_rtx(offered) and accept(offered):
            return offered
    return None


def _publishable(codec: RTCRtpCodecParameters) -> bool:
    mime = codec.mimeType.lower()
    if mime == "video/vp8":
        return codec.clockRate == 90000
    if mime == "video/h264":
        fmt = h264_format(codec)
        return codec.clockRate == 90000 and fmt is not None and fmt.profile in BROWSER_PROFILES
    return False


def _same_format(codec: RTCRtpCodecParameters, wanted: RTCRtpCodecParameters) -> bool:
    """Return whether ``codec`` names the format of ``wanted`` (H.264: profile and mode)."""
    if codec.mimeType.lower() != wanted.mimeType.lower() or codec.clockRate != wanted.clockRate:
        return False
    if wanted.mimeType.lower() != "video/h264":
        return True
    mine, theirs = h264_format(codec), h264_format(wanted)
    return mine is not None and theirs is not None and mine.same_format(theirs)


def _decodes(codec: RTCRtpCodecParameters, stream: RTCRtpCodecParameters) -> bool:
    """Return whether a receiver of ``codec`` can decode a stream sent as ``stream``."""
    if stream.mimeType.lower() != "video/h264":
        return _same_format(codec, stream)
    if codec.mimeType.lower() != "video/h264" or codec.clockRate != stream.clockRate:
        return False
    receiver, sent = h264_format(codec), h264_format(stream)
    return receiver is not None and sent is not None and receiver.decodes(sent)


def _answered(offered: RTCRtpCodecParameters,
              feedback: tuple[RTCRtcpFeedback, ...] = _SUPPORTED_FEEDBACK) -> RTCRtpCodecParameters:
    """Return a copy of an offered codec with only the RTCP feedback the SFU handles."""
    codec = copy.deepcopy(offered)
    codec.rtcpFeedback = [f for f in offered.rtcpFeedback if f in feedback]
    return codec


def _audio_codec(section: aiortc_sdp.MediaDescription | None) -> RTCRtpCodecParameters | None:
    if section is None:
        return None
    offered = _first(section, lambda c: c.mimeType.lower() in FORWARDED_AUDIO
                     and c.clockRate == 48000)
    if offered is None:
        raise BadOffer(f"the audio section must offer Opus (offered: {_offered_names(section)})")
    return _answered(offered)


def _has_datachannel(description: aiortc_sdp.SessionDescription) -> bool:
    return any(m.kind == "application" and not _rejected(m) for m in description.media)


def _rejected(section: aiortc_sdp.MediaDescription) -> bool:
    """Return whether the offerer rejected a section: port 0 and not bundle-only.

    A ``bundle-only`` section (RFC 8843; webrtcbin's max-bundle, JSEP's max-bundle
    policy) has port 0 too, but it is a live section of the BUNDLE group.
    """
    return section.port == 0 and not getattr(section, "bundle_only", False)


def _dtls_actpass(description: aiortc_sdp.SessionDescription) -> bool:
    return all(m.dtls is not None and m.dtls.role == "auto" for m in description.media)


def _rejected_mids(description: aiortc_sdp.SessionDescription) -> tuple[str, ...]:
    return tuple(
        str(m.rtp.muxId) for m in description.media if _rejected(m) and m.rtp.muxId
    )


def _mark_bundle_only(text: str, description: aiortc_sdp.SessionDescription) -> None:
    """Set what aiortc's parser does not read on each section.

    ``bundle_only`` (RFC 8843), ``rids`` (RFC 8851: id -> direction) and ``simulcast``
    (RFC 8853: the ``a=simulcast`` value, or None).
    """
    sections: list[dict[str, object]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("m="):
            sections.append({"bundle_only": False, "rids": {}, "simulcast": None})
        elif not sections:
            continue
        elif line == "a=bundle-only":
            sections[-1]["bundle_only"] = True
        elif line.startswith("a=rid:"):
            fields = line[len("a=rid:"):].split()
            if len(fields) >= 2:
                sections[-1]["rids"][fields[0]] = fields[1]  # type: ignore[index]
        elif line.startswith("a=simulcast:"):
            sections[-1]["simulcast"] = line[len("a=simulcast:"):].strip()
    for media, extra in zip(description.media, sections):
        for name, value in extra.items():
            setattr(media, name, value)


def _simulcast_rids(section: aiortc_sdp.MediaDescription) -> tuple[str, ...]:
    """Return the RIDs a simulcast publisher sends in ``section`` (RFC 8853), or ()."""
    value = getattr(section, "simulcast", None)
    if not value:
        return ()
    fields = value.split()
    if len(fields) != 2 or fields[0] != "send":
        raise BadOffer(f"a publisher's simulcast must be 'send <rids>', got 'a=simulcast:{value}'")
    offered: dict[str, str] = getattr(section, "rids", {})
    rids: list[str] = []
    for stream in fields[1].split(";"):
        rid = stream.split(",")[0].lstrip("~")  # the first alternative; paused ones too
        if offered.get(rid) != "send":
            raise BadOffer(f"simulcast layer {rid!r} has no 'a=rid:{rid} send' line")
        rids.append(rid)
    if len(rids) > MAX_LAYERS:
        raise BadOffer(f"the offer has {len(rids)} simulcast layers; at most {MAX_LAYERS} are served")
    return tuple(rids)


def _offered_names(section: aiortc_sdp.MediaDescription) -> str:
    names = sorted({c.name for c in section.rtp.codecs if not is_rtx(c)})
    return ", ".join(names) or "none"


def _offered_formats(section: aiortc_sdp.MediaDescription) -> str:
    """Name every offered video format, H.264 ones with profile and mode."""
    names: list[str] = []
    for codec in section.rtp.codecs:
        name = _describe(codec)
        if not is_rtx(codec) and name not in names:
            names.append(name)
    return "; ".join(names) or "none"


def _describe(codec: RTCRtpCodecParameters) -> str:
    if codec.mimeType.lower() == "video/h264":
        fmt = h264_format(codec)
        if fmt is not None:
            return fmt.describe()
        return f"H264 with an unknown profile-level-id {codec.parameters.get('profile-level-id')!r}"
    return codec.name


def reject_sections(answer: str, mids: tuple[str, ...]) -> str:
    """Return ``answer`` with the sections of ``mids`` rejected (port 0, out of BUNDLE).

    aiortc answers every offered section as accepted; a section the offerer itself
    rejected must be rejected in the answer too (RFC 3264 section 6).
    """
    if not mids:
        return answer
    lines = answer.split("\r\n")
    section_start: int | None = None
    for index, line in enumerate(lines):
        if line.startswith("m="):
            section_start = index
        elif section_start is not None and line.startswith("a=mid:") and line[6:] in mids:
            kind, _port, *rest = lines[section_start].split(" ")
            lines[section_start] = " ".join([kind, "0", *rest])
    for index, line in enumerate(lines):
        if line.startswith("a=group:BUNDLE"):
            kept = [item for item in line.split(" ")[1:] if item not in mids]
            lines[index] = " ".join(["a=group:BUNDLE", *kept])
    return "\r\n".join(lines)


def answer_simulcast(answer: str, rids: tuple[str, ...]) -> str:
    """Return ``answer`` with its video section receiving the simulcast layers ``rids``."""
    if not rids:
        return answer
    lines = answer.split("\r\n")
    out: list[str] = []
    in_video = False
    for line in lines:
        if line.startswith("m="):
            if in_video:
                out.extend(_simulcast_lines(rids))
            in_video = line.startswith("m=video")
        elif in_video and line == "":
            out.extend(_simulcast_lines(rids))
            in_video = False
        out.append(line)
    if in_video:
        out.extend(_simulcast_lines(rids))
    return "\r\n".join(out)


def _simulcast_lines(rids: tuple[str, ...]) -> list[str]:
    return [f"a=rid:{rid} recv" for rid in rids] + [f"a=simulcast:recv {';'.join(rids)}"]
