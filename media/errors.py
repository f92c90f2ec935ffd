"""Errors raised by the SFU.

The tree, so that the HTTP layer can map it in one place::

    MediaError                 base of everything the SFU raises on purpose
    ├── BadOffer               unparsable SDP, unsupported codec, no video (-> 4xx)
    ├── PublisherConflict      the room already has a live publisher (-> 409)
    ├── RoomFull               the per-room viewer limit is reached (-> 503)
    ├── RoomNotFound           no room (or no publisher yet) with that id (-> 404)
    │   └── RoomClosed         the room existed but has ended (-> 404/410)
    ├── SessionNotFound        no session with that id (-> 404)
    └── MediaPortsExhausted    every UDP port of ICE_PORT_RANGE is taken (-> 503)

Each error carries a human-readable message and the ids the caller may need.
"""

from __future__ import annotations


class MediaError(Exception):
    """Base class of every error the SFU raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadOffer(MediaError):
    """The SDP offer cannot be served: unparsable, unsupported codecs or no video."""


class PublisherConflict(MediaError):
    """The room already has a publisher that is alive."""

    def __init__(self, room_id: str) -> None:
        super().__init__(f"room {room_id!r} already has a live publisher")
        self.room_id = room_id


class RoomFull(MediaError):
    """The room reached its viewer limit."""

    def __init__(self, room_id: str, limit: int) -> None:
        super().__init__(f"room {room_id!r} is full ({limit} viewers)")
        self.room_id = room_id
        self.limit = limit


class RoomNotFound(MediaError):
    """No room with this id is being published."""

    def __init__(self, room_id: str, message: str | None = None) -> None:
        super().__init__(message or f"room {room_id!r} has no publisher")
        self.room_id = room_id


class RoomClosed(RoomNotFound):
    """The room existed but has been closed."""

    def __init__(self, room_id: str) -> None:
        super().__init__(room_id, f"room {room_id!r} is closed")


class SessionNotFound(MediaError):
    """No media session with this id exists (any more)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"media session {session_id!r} not found")
        self.session_id = session_id


class MediaPortsExhausted(MediaError):
    """No UDP port is free in the configured ICE port range for a new session."""

    def __init__(self, address: str, ranges: str) -> None:
        super().__init__(
            f"no free UDP port for media on {address} in the ICE port range {ranges}: "
            "every port is taken by a session (widen ICE_PORT_RANGE or add a server)"
        )
        self.address = address
