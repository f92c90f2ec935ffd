"""A media session: one peer connection of a publisher or a viewer."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Literal

from aiortc import RTCDataChannel, RTCPeerConnection

logger = logging.getLogger(__name__)

Role = Literal["publisher", "viewer"]
DataChannelHandler = Callable[[RTCDataChannel], None]


class MediaSession:
    """One client's peer connection in a room, as the HTTP and realtime layers see it.

    ``pc`` is the underlying ``RTCPeerConnection``. DataChannels the client opens (the
    ``events`` channel) are handed to :attr:`on_datachannel`; channels that arrive
    before a handler is set are kept and handed over when it is set.
    """

    def __init__(self, room_id: str, role: Role, identity: str | None, pc: RTCPeerConnection):
        self.id = uuid.uuid4().hex
        self.room_id = room_id
        self.role: Role = role
        self.identity = identity
        self.pc = pc
        self.answer_sdp = ""
        self.created_at = time.time()
        self.connected = False
        self.closed = False
        self.datachannels: list[RTCDataChannel] = []
        self._on_datachannel: DataChannelHandler | None = None
        self._undelivered: list[RTCDataChannel] = []
        pc.on("datachannel", self._datachannel_arrived)

    @property
    def on_datachannel(self) -> DataChannelHandler | None:
        """Return the handler called with each DataChannel the client opens."""
        return self._on_datachannel

    @on_datachannel.setter
    def on_datachannel(self, handler: DataChannelHandler | None) -> None:
        self._on_datachannel = handler
        if handler is not None:
            pending, self._undelivered = self._undelivered, []
            for channel in pending:
                self._deliver(handler, channel)

    def _datachannel_arrived(self, channel: RTCDataChannel) -> None:
        self.datachannels.append(channel)
        if self._on_datachannel is not None:
            self._deliver(self._on_datachannel, channel)
        else:
            self._undelivered.append(channel)

    def _deliver(self, handler: DataChannelHandler, channel: RTCDataChannel) -> None:
        try:
            handler(channel)
        except Exception:  # a bug in the realtime layer must not break the media session
            logger.exception("on_datachannel handler failed for session %s", self.id)

    def __repr__(self) -> str:
        return f"MediaSession({self.role} {self.id[:8]} room={self.room_id!r})"
