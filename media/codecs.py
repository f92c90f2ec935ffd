"""Recognise keyframes in RTP payloads without decoding them.

A viewer joining a stream must start at a keyframe, so the forwarder needs to know
which packet starts one. Only the first bytes of a payload are read.
"""

from __future__ import annotations

# H.264 NAL unit types (RFC 6184).
NAL_IDR = 5
NAL_SPS = 7
NAL_STAP_A = 24
NAL_FU_A = 28


def is_keyframe(codec_name: str, payload: bytes) -> bool:
    """Return whether ``payload`` belongs to a keyframe of the given codec.

    For VP8 only the first packet of a keyframe answers True; for H.264 any packet
    carrying an SPS or the start of an IDR slice does.
    """
    if codec_name == "VP8":
        return is_vp8_keyframe(payload)
    if codec_name == "H264":
        return is_h264_keyframe(payload)
    return True  # audio: every packet is a valid starting point


def is_vp8_keyframe(payload: bytes) -> bool:
    """Return whether a VP8 payload (RFC 7741) starts a keyframe."""
    return _vp8_keyframe_header(payload) is not None


def vp8_keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """Return (width, height) if a VP8 payload starts a keyframe (RFC 6386 9.1)."""
    index = _vp8_keyframe_header(payload)
    if index is None or len(payload) < index + 10 or payload[index + 3: index + 6] != b"\x9d\x01\x2a":
        return None
    width = (payload[index + 6] | payload[index + 7] << 8) & 0x3FFF
    height = (payload[index + 8] | payload[index + 9] << 8) & 0x3FFF
    return width, height


def _vp8_keyframe_header(payload: bytes) -> int | None:
    """Return the offset of the VP8 frame header if ``payload`` starts a keyframe."""
    if len(payload) < 2:
        return None
    descriptor = payload[0]
    # Only the first partition's first packet (S=1, PID=0) holds the frame header.
    if not descriptor & 0x10 or descriptor & 0x07:
        return None
    index = 1
    if descriptor & 0x80:  # X: extended control bits follow
        extension = payload[1]
        index = 2
        if extension & 0x80:  # I: picture id, 7 or 15 bits
            if index >= len(payload):
                return None
            index += 2 if payload[index] & 0x80 else 1
        if extension & 0x40:  # L: TL0PICIDX
            index += 1
        if extension & 0x30:  # T or K: TID/KEYIDX byte
            index += 1
    if index >= len(payload):
        return None
    # P bit of the VP8 frame header: 0 = keyframe
    return None if payload[index] & 0x01 else index


def vp8_temporal(payload: bytes) -> tuple[int, int, int] | None:
    """Return (TID, picture id, picture id bytes) of a VP8 payload that has a TID.

    None if the payload descriptor (RFC 7741 4.2) carries no TID; picture id bytes are
    0 (no picture id; the id is then -1), 1 (7 bits) or 2 (15 bits, M set).
    """
    if len(payload) < 3 or not payload[0] & 0x80 or not payload[1] & 0x20:
        return None
    extension = payload[1]
    index = 2
    picture_id, id_bytes = -1, 0
    if extension & 0x80:  # I: picture id
        if payload[2] & 0x80:
            if len(payload) < 4:
                return None
            picture_id, id_bytes = (payload[2] & 0x7F) << 8 | payload[3], 2
        else:
            picture_id, id_bytes = payload[2], 1
        index += id_bytes
    if extension & 0x40:  # L: TL0PICIDX
        index += 1
    if index >= len(payload):
        return None
    return payload[index] >> 6, picture_id, id_bytes


def vp8_ids(payload: bytes) -> tuple[int, int, int, int] | None:
    """Return where a VP8 payload's picture id and TL0PICIDX are, and their values.

    (picture id offset, picture id, TL0PICIDX offset, TL0PICIDX) in the payload
    descriptor (RFC 7741 4.2): an offset is 0 where the field is absent (a field never
    starts at byte 0); a picture id offset is negated for a 7-bit id (M unset). None if
    the descriptor has neither (no X bit, or neither I nor L).
    """
    if len(payload) < 4 or not payload[0] & 0x80:
        return None
    extension = payload[1]
    if not extension & 0xC0:
        return None
    index = 2
    id_at = picture_id = 0
    if extension & 0x80:  # I: picture id, 15 bits (M set) or 7
        if payload[2] & 0x80:
            id_at, picture_id = 2, (payload[2] & 0x7F) << 8 | payload[3]
            index = 4
        else:
            id_at, picture_id = -2, payload[2]
            index = 3
    if extension & 0x40 and index < len(payload):  # L: TL0PICIDX
        return id_at, picture_id, index, payload[index]
    return id_at, picture_id, 0, 0


def write_vp8_ids(buf: bytearray | memoryview, base: int, id_at: int, picture_id: int,
                  tl0_at: int, tl0: int) -> None:
    """Write a picture id and TL0PICIDX into the VP8 payload descriptor at ``base``.

    ``id_at`` and ``tl0_at`` are where :func:`vp8_ids` found them (0: absent; ``id_at``
    negative: a 7-bit id); the values are taken modulo their field's width.
    """
    if id_at > 0:
        picture_id &= 0x7FFF
        buf[base + 2] = 0x80 | picture_id >> 8
        buf[base + 3] = picture_id & 0xFF
    elif id_at:
        buf[base + 2] = picture_id & 0x7F
    if tl0_at:
        buf[base + tl0_at] = tl0 & 0xFF


def is_h264_keyframe(payload: bytes) -> bool:
    """Return whether an H.264 payload (RFC 6184) carries an SPS or starts an IDR."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (NAL_IDR, NAL_SPS):
        return True
    if nal_type == NAL_STAP_A:
        index = 1
        while index + 2 < len(payload):
            size = (payload[index] << 8) | payload[index + 1]
            if payload[index + 2] & 0x1F in (NAL_IDR, NAL_SPS):
                return True
            index += 2 + size
        return False
    if nal_type == NAL_FU_A and len(payload) > 1:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and fu_header & 0x1F == NAL_IDR
    return False
