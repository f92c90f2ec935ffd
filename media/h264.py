"""Read H.264 formats from SDP and decide which receiver can decode which stream.

An H.264 payload type in SDP (RFC 6184) is described by its ``profile-level-id``
(profile_idc, profile-iop constraint flags, level_idc) and ``packetization-mode``. The
SFU forwards the publisher's stream untouched, so it only has to know whether a viewer's
offered format can decode it:

* Profiles nest: constrained baseline is decodable by main and high decoders, main by
  high, constrained high by high, and all of them by high 4:4:4 predictive. Baseline (``42001f``) and constrained baseline
  (``42e01f``) are treated as one: WebRTC encoders never use the baseline-only tools
  (FMO, ASO), and browsers decode either under either label.
* The level is not a reason to refuse: browsers' decoders take any level, and
  ``level-asymmetry-allowed`` lets each direction have its own (libwebrtc also ignores
  the level when it matches codecs).
* Packetization-mode 1 (STAP-A, FU-A) is a superset of mode 0 (single NAL units): a
  mode-1 receiver decodes a mode-0 stream, not the other way round.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from aiortc.rtcrtpparameters import RTCRtpCodecParameters


class Profile(enum.Enum):
    """The H.264 profiles WebRTC endpoints name in ``profile-level-id``."""

    CONSTRAINED_BASELINE = "constrained baseline"
    BASELINE = "baseline"
    MAIN = "main"
    CONSTRAINED_HIGH = "constrained high"
    HIGH = "high"
    PREDICTIVE_HIGH_444 = "predictive high 4:4:4"


# (profile_idc, profile-iop bit pattern with x as "any"), as in libwebrtc's
# h264_profile_level_id.cc, first match wins.
_PATTERNS: tuple[tuple[int, str, Profile], ...] = (
    (0x42, "x1xx0000", Profile.CONSTRAINED_BASELINE),
    (0x4D, "1xxx0000", Profile.CONSTRAINED_BASELINE),
    (0x58, "11xx0000", Profile.CONSTRAINED_BASELINE),
    (0x42, "x0xx0000", Profile.BASELINE),
    (0x58, "10xx0000", Profile.BASELINE),
    (0x4D, "0x0x0000", Profile.MAIN),
    (0x64, "00000000", Profile.HIGH),
    (0x64, "00001100", Profile.CONSTRAINED_HIGH),
    (0xF4, "00000000", Profile.PREDICTIVE_HIGH_444),
)

# Which stream profiles a decoder of each profile takes (see the module docstring).
_BASELINES = frozenset({Profile.CONSTRAINED_BASELINE, Profile.BASELINE})
DECODES: dict[Profile, frozenset[Profile]] = {
    Profile.CONSTRAINED_BASELINE: _BASELINES,
    Profile.BASELINE: _BASELINES,
    Profile.MAIN: _BASELINES | {Profile.MAIN},
    Profile.CONSTRAINED_HIGH: _BASELINES | {Profile.CONSTRAINED_HIGH},
    Profile.HIGH: _BASELINES | {Profile.MAIN, Profile.CONSTRAINED_HIGH, Profile.HIGH},
    # H.264 A.2.11: a High 4:4:4 Predictive decoder decodes High (and all below) too.
    # Chromium built without the High decoder entry offers f4001f but not 64001f.
    Profile.PREDICTIVE_HIGH_444: frozenset(Profile),
}

# What browsers decode, hence what a publisher may send to a room.
BROWSER_PROFILES = frozenset(DECODES) - {Profile.PREDICTIVE_HIGH_444}

# RFC 6184: without profile-level-id the format is baseline level 1.0, but WebRTC
# endpoints (and aiortc) read a missing one as constrained baseline 3.1.
DEFAULT_PROFILE_LEVEL_ID = "42e01f"


@dataclass(frozen=True)
class H264Format:
    """One H.264 payload format: profile, level and packetization mode."""

    profile: Profile
    level_idc: int
    packetization_mode: int
    profile_level_id: str

    def decodes(self, stream: H264Format) -> bool:
        """Return whether a receiver of this format can decode ``stream``."""
        if stream.profile not in DECODES[self.profile]:
            return False
        return self.packetization_mode == 1 or stream.packetization_mode == 0

    def same_format(self, other: H264Format) -> bool:
        """Return whether both name the same profile and packetization mode."""
        return self.profile is other.profile and self.packetization_mode == other.packetization_mode

    def describe(self) -> str:
        """Return e.g. ``H264 high profile level 3.1, packetization-mode 1 (64001f)``."""
        return (
            f"H264 {self.profile.value} profile level {_level_name(self.level_idc)}, "
            f"packetization-mode {self.packetization_mode} ({self.profile_level_id})"
        )


def h264_format(codec: RTCRtpCodecParameters) -> H264Format | None:
    """Return the format of an H.264 codec entry, or None when it is malformed."""
    raw = str(codec.parameters.get("profile-level-id", DEFAULT_PROFILE_LEVEL_ID)).lower()
    if not re.fullmatch(r"[0-9a-f]{6}", raw):
        return None
    try:
        mode = int(str(codec.parameters.get("packetization-mode", 0)))
    except (TypeError, ValueError):
        return None
    if mode not in (0, 1):  # mode 2 (interleaved) is not used by WebRTC
        return None
    profile_idc, iop, level_idc = int(raw[0:2], 16), int(raw[2:4], 16), int(raw[4:6], 16)
    bits = f"{iop:08b}"
    for idc, pattern, profile in _PATTERNS:
        if idc == profile_idc and all(p in ("x", b) for p, b in zip(pattern, bits)):
            return H264Format(profile, level_idc, mode, raw)
    return None


def _level_name(level_idc: int) -> str:
    return f"{level_idc // 10}.{level_idc % 10}" if level_idc % 10 else str(level_idc // 10)
