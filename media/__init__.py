"""Kein Shopstream: media.

The SFU: rooms of one publisher and many viewers, forwarding encoded RTP (Opus, VP8,
H.264) without decoding it. See :class:`SFU` for the API the server calls.
"""

from .errors import (
    BadOffer,
    MediaError,
    PublisherConflict,
    RoomClosed,
    RoomFull,
    RoomNotFound,
    SessionNotFound,
)
from .room import RoomState, RoomStats
from .session import MediaSession
from .sfu import SFU, IceServer, MediaSettings

__all__ = [
    "SFU",
    "BadOffer",
    "IceServer",
    "MediaError",
    "MediaSession",
    "MediaSettings",
    "PublisherConflict",
    "RoomClosed",
    "RoomFull",
    "RoomNotFound",
    "RoomState",
    "RoomStats",
    "SessionNotFound",
]
