"""Kein Shopstream: media.

The SFU: rooms of one publisher and many viewers, forwarding encoded RTP (Opus, VP8,
H.264) without decoding it. The server uses it like this::

    sfu = SFU(MediaSettings(ice_servers=[], ice_host_addresses=["127.0.0.1"]),
              on_state_change=record_state, on_viewer_count=publish_count,
              on_viewers_rejoin=tell_viewers)  # a reconnecting publisher switched codec
    session = await sfu.publish(room_id, offer_sdp, owner)   # WHIP
    session = await sfu.watch(room_id, offer_sdp, viewer)    # WHEP
    answer = session.answer_sdp          # 201 body; Location uses session.id
    session.on_datachannel = handler     # the client's "events" DataChannel
    await sfu.close_session(session.id)  # DELETE /sessions/{id}
    sfu.stats(room_id)                   # counters for Prometheus
    await sfu.close()                    # on shutdown
    await open_relay(sfu, room_id, origin, subscribe)  # media/relay.py: a room's media
                                         # from its origin (another worker), over WHEP

Errors to map to HTTP: BadOffer -> 400/415, PublisherConflict -> 409, RoomFull and
MediaPortsExhausted -> 503, RoomNotFound/RoomClosed/SessionNotFound -> 404.
"""

from .errors import (
    BadOffer,
    MediaError,
    MediaPortsExhausted,
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
    "MediaPortsExhausted",
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
