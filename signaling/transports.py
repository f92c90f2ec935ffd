"""The two ways events reach a client: a WebSocket and an RTCDataChannel labelled `events`.

Both implement the hub's `Transport`: `send_text` writes at once or reports that it
would block, and never waits. The hub keeps what could not be written in the
connection's bounded queue and retries on its next tick.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from media.datachannel import LeanSender, MessageScratch
from signaling import events
from signaling.hub import Connection, Participant

if TYPE_CHECKING:
    from aiortc import RTCDataChannel

    from signaling.sessions import Realtime

WEBSOCKET_HIGH_WATER = 256 * 1024  # bytes waiting in the socket buffer before we hold back
DATACHANNEL_HIGH_WATER = 1024 * 1024  # RTCDataChannel.bufferedAmount before we hold back
DATACHANNEL_INBOX = 64  # client messages waiting to be handled on one channel


class _LastFrame:
    """The frame of the last text sent: a room's batch is one string for all its recipients,
    so it is encoded and framed once, not once per recipient."""

    text: str | None = None
    frame: bytes = b""


def _frame_of(text: str) -> bytes:
    if _LastFrame.text is not text:
        _LastFrame.frame = websocket_text_frame(text.encode())
        _LastFrame.text = text
    return _LastFrame.frame


def websocket_text_frame(payload: bytes) -> bytes:
    """Return one unmasked, final text frame (RFC 6455 section 5.2): what a server sends."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class WebSocketTransport:
    """Write text frames straight to an upgraded connection's socket transport.

    aiohttp's `send_str` is a coroutine that may wait for the socket to drain; the hub
    must never wait for one recipient, so frames are written to the asyncio transport
    directly (uncompressed frames, which aiohttp itself also writes synchronously), and
    a full socket buffer counts as "would block".
    """

    kind = "websocket"

    def __init__(self, transport: asyncio.WriteTransport, close: Callable[[], None],
                 high_water: int = WEBSOCKET_HIGH_WATER) -> None:
        self._transport = transport
        self._close = close
        self.high_water = high_water

    def send_text(self, text: str) -> bool:
        transport = self._transport
        if transport.is_closing():
            return True  # gone: nothing to keep for it
        if transport.get_write_buffer_size() > self.high_water:
            return False
        transport.write(_frame_of(text))
        return True

    def close(self) -> None:
        self._close()


class _LastMessage:
    """The DataChannel form of the last text sent (encoded and cut into chunks once)."""

    text: str | None = None
    scratch: MessageScratch | None = None


def _scratch_of(text: str) -> MessageScratch:
    if _LastMessage.text is not text or _LastMessage.scratch is None:
        _LastMessage.scratch = MessageScratch(text)
        _LastMessage.text = text
    return _LastMessage.scratch


class DataChannelTransport:
    """Send on an aiortc RTCDataChannel; its `bufferedAmount` is the backpressure signal.

    With `lean`, a message goes through `media.datachannel.LeanSender` whenever aiortc
    would have sent it at once (one DATA chunk per viewer, the batch encoded once); a
    full congestion window counts as "would block", so the hub keeps the backlog by
    priority instead of aiortc's queue. Anything else takes aiortc's own path, one
    message at a time: while aiortc holds one, the next counts as "would block".
    """

    kind = "datachannel"

    def __init__(self, channel: RTCDataChannel, high_water: int = DATACHANNEL_HIGH_WATER,
                 *, lean: bool = False) -> None:
        self.channel = channel
        self.high_water = high_water
        # The media session this channel belongs to (quality:set acts on it).
        self.media_session: str | None = None
        self.lean = LeanSender(channel) if lean else None

    def send_text(self, text: str) -> bool:
        channel = self.channel
        if channel.readyState != "open":
            return True
        if self.lean is not None:
            sent = self.lean.send(_scratch_of(text))
            if sent is not None:
                return sent
            if channel.bufferedAmount:
                # aiortc is busy (retransmitting, or its queue is not empty) and already
                # holds a message of ours: the hub keeps the rest, bounded and by priority.
                return False
        if channel.bufferedAmount > self.high_water:
            return False
        channel.send(text)
        return True

    def close(self) -> None:
        self.release()
        self.channel.close()

    def release(self) -> None:
        """Hand what the lean path holds (its SACK ingress slot) back to aiortc."""
        if self.lean is not None:
            self.lean.close()


async def attach_datachannel(
    realtime: Realtime, livestream_id: str, channel: RTCDataChannel,
    participant: Participant | None = None, *, publisher: bool = False,
    media_session: str | None = None,
) -> Connection:
    """Serve the event protocol on a peer connection's `events` DataChannel.

    Call it from the SFU when the client's channel arrives (`pc.on("datachannel")`),
    with the participant its watch/publish token proved (`await realtime.identify(token)`)
    or None for an anonymous viewer. Client messages are handled one at a time in
    arrival order; the session ends when the channel closes.
    """
    inbox: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=DATACHANNEL_INBOX)
    conn: Connection | None = None

    @channel.on("message")
    def on_message(data: str | bytes) -> None:
        try:
            inbox.put_nowait(data)
        except asyncio.QueueFull:
            if conn is not None:
                conn.send_direct(events.error("rate_limited", "too many messages on this channel"))

    transport = DataChannelTransport(channel, lean=realtime.hub.options.lean_datachannel)
    if transport.lean is not None:
        transport.lean.on_writable = realtime.hub.serve_soon  # a SACK opened the window
    transport.media_session = media_session
    conn = await realtime.open(livestream_id, transport, participant, publisher=publisher)
    session = conn

    async def pump() -> None:
        while True:
            await realtime.handle(session, await inbox.get())

    task = asyncio.create_task(pump(), name=f"events-dc-{conn.session_id}")

    def on_close() -> None:
        transport.release()
        realtime.close(session)
        task.cancel()

    channel.on("close", on_close)
    if channel.readyState == "closed":
        on_close()
    return conn

