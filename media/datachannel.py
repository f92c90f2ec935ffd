"""Send one message to many aiortc DataChannels cheaply (aiortc 1.16 internals).

aiortc's ``RTCDataChannel.send`` costs a task, two coroutines, a ``DataChunk`` built
field by field, a packet serialised through ``bytes(chunk)``, pyOpenSSL's ``send`` and
``bio_read`` (a buffer allocated per call) and aioice's ``send`` coroutine, per message
and per viewer. For a batch of events that every viewer of a room receives,
:class:`MessageScratch` encodes the message once (its DATA chunk payload, padded), and
:meth:`LeanSender.send` does per viewer only what is per viewer: the DATA chunk header
with the association's TSN and the stream's sequence number, the CRC32C of the packet,
one ``SSL_write`` (the DTLS record) read back from the memory BIO into a reused buffer,
and one non-blocking ``sendto`` on the nominated ICE socket.

SCTP stays correct because the chunk is handed to aiortc's own association exactly as
``RTCSctpTransport._transmit`` would have: appended to ``_sent_queue``, counted in the
flight size, timestamped for RTT, T3 started. SACKs, retransmission, fast recovery and
congestion control remain aiortc's. The lean path is taken only when aiortc's path
would have sent at once: the association established, nothing queued ahead (so order
is kept), no retransmission or FORWARD-TSN pending, not in fast recovery, and the
message fits the congestion window and one DATA chunk. Anything else returns ``None``
and the caller uses ``RTCDataChannel.send`` (which queues, and which the caller bounds
by ``bufferedAmount``).

aiortc internals read here (pinned and checked at import):
``RTCSctpTransport._association_state, _outbound_queue, _data_channel_queue,
_sent_queue, _forward_tsn_chunk, _fast_recovery_exit, _flight_size, _cwnd,
_local_tsn, _outbound_stream_seq, _local_port, _remote_port,
_remote_verification_tag, _remote_max_message_size, _t3_handle, _t3_start(),
_flight_size_increase()``, ``DataChunk``'s bookkeeping attributes (``_abandoned,
_acked, _book_size, _expiry, _in_flight, _max_retransmits, _misses, _retransmit,
_sent_count, _sent_time``), ``RTCDtlsTransport._ssl, _state`` and pyOpenSSL's
``Connection._ssl`` / ``_from_ssl``; the ICE socket comes from
``media.aiortc_hook.Egress``.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import aiortc
from aiortc import rtcsctptransport as sctp
from aiortc.rtcdtlstransport import State as DtlsState
from google_crc32c import value as crc32c
from OpenSSL.SSL import _ffi as ssl_ffi  # type: ignore[attr-defined]
from OpenSSL.SSL import _lib as ssl_lib  # type: ignore[attr-defined]

from media.aiortc_hook import SUPPORTED_AIORTC, Egress

if not aiortc.__version__.startswith(SUPPORTED_AIORTC):
    raise ImportError(f"media.datachannel is written against aiortc {SUPPORTED_AIORTC}x internals")
_NEEDED = ("_association_state", "_outbound_queue", "_data_channel_queue", "_sent_queue",
           "_flight_size", "_cwnd", "_local_tsn", "_outbound_stream_seq", "_t3_handle")
if not all(hasattr(sctp.RTCSctpTransport, n) or n in sctp.RTCSctpTransport.__init__.__code__.co_names
           for n in _NEEDED) or not hasattr(sctp.RTCSctpTransport, "_t3_start") \
        or not hasattr(sctp.RTCSctpTransport, "_flight_size_increase"):
    raise ImportError("media.datachannel: aiortc's RTCSctpTransport lacks the attributes it uses")

USERDATA_MAX_LENGTH = sctp.USERDATA_MAX_LENGTH
WEBRTC_STRING = sctp.WEBRTC_STRING
ESTABLISHED = sctp.RTCSctpTransport.State.ESTABLISHED
_COMMON = struct.Struct("!HHL")
_DATA_HEADER = struct.Struct("!BBHLHHL")
_CRC = struct.Struct("<L")
_ZERO = b"\x00\x00\x00\x00"
_DATA = sctp.DataChunk.type
_RECORD_BYTES = 2048  # one DTLS record of an SCTP packet (< 1200 bytes + overhead)


class MessageScratch:
    """One text message, encoded and cut into DATA chunk payloads once for every viewer."""

    __slots__ = ("text", "user_data", "fragments")

    def __init__(self, text: str) -> None:
        self.text = text
        self.user_data = data = text.encode()
        # (flags, chunk length, padded payload, payload) per fragment, as `_send` cuts them.
        self.fragments: list[tuple[int, int, bytes, bytes]] = []
        count = max(1, -(-len(data) // USERDATA_MAX_LENGTH))
        for i in range(count):
            piece = data[i * USERDATA_MAX_LENGTH:(i + 1) * USERDATA_MAX_LENGTH]
            flags = (sctp.SCTP_DATA_FIRST_FRAG if i == 0 else 0) | (sctp.SCTP_DATA_LAST_FRAG if i == count - 1 else 0)
            length = 16 + len(piece)
            self.fragments.append((flags, length, piece + b"\x00" * (-length % 4), piece))


class LeanSender:
    """Send messages on one open RTCDataChannel without aiortc's per-message machinery."""

    __slots__ = ("channel", "sctp", "dtls", "egress", "stats")

    # One buffer for every DTLS record read back: everything here is synchronous.
    _record = ssl_ffi.new("char[]", _RECORD_BYTES)
    _record_view = memoryview(ssl_ffi.buffer(_record))

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.sctp = channel.transport
        self.dtls = self.sctp.transport
        self.egress: Egress | None = None
        self.stats = {"lean": 0, "stock": 0, "window_full": 0, "socket_full": 0}

    def send(self, message: MessageScratch) -> bool | None:
        """Send at once (True); False when the congestion window is full; None: use aiortc.

        None means aiortc's own path must take the message (not established yet, data
        already queued in aiortc, a retransmission pending, a size the peer refuses):
        it queues behind what is there, so the order holds.
        """
        a = self.sctp
        channel = self.channel
        size = len(message.user_data)
        if (
            a._association_state is not ESTABLISHED
            or channel.readyState != "open" or channel.id is None
            or self.dtls._state is not DtlsState.CONNECTED
            or (a._remote_max_message_size and size > a._remote_max_message_size)
            or a._outbound_queue or a._data_channel_queue or a._forward_tsn_chunk is not None
            or a._fast_recovery_exit is not None
            or any(c._retransmit for c in a._sent_queue)
        ):
            self.stats["stock"] += 1
            return None
        if a._flight_size + size > a._cwnd and a._flight_size:
            # What aiortc would queue: the hub keeps it instead, bounded and by priority.
            self.stats["window_full"] += 1
            return False
        egress = self.egress
        if egress is None or egress.send is None:
            egress = self.egress = Egress(self.dtls)
            if not egress.bind():
                self.egress = None
                self.stats["stock"] += 1
                return None

        stream_id = channel.id
        stream_seq = a._outbound_stream_seq.get(stream_id, 0)
        common = _COMMON.pack(a._local_port, a._remote_port, a._remote_verification_tag)
        ssl = self.dtls._ssl
        record, view = self._record, self._record_view
        now = time.time()
        for flags, length, padded, piece in message.fragments:
            tsn = a._local_tsn
            packet = b"".join((common, _ZERO, _DATA_HEADER.pack(
                _DATA, flags, length, tsn, stream_id, stream_seq, WEBRTC_STRING), padded))
            packet = packet[:8] + _CRC.pack(crc32c(packet)) + packet[12:]
            if ssl_lib.SSL_write(ssl._ssl, ssl_ffi.from_buffer(packet), len(packet)) <= 0:
                raise ConnectionError("DTLS refused an SCTP packet")  # aiortc raises too
            # The chunk aiortc keeps for SACKs and retransmission, as `_send` builds it.
            chunk = sctp.DataChunk()
            chunk.flags = flags
            chunk.tsn = tsn
            chunk.stream_id = stream_id
            chunk.stream_seq = stream_seq
            chunk.protocol = WEBRTC_STRING
            chunk.user_data = piece
            chunk._abandoned = chunk._acked = chunk._in_flight = chunk._retransmit = False
            chunk._book_size = len(piece)
            chunk._expiry = chunk._max_retransmits = None
            chunk._misses = 0
            chunk._sent_count = 1
            chunk._sent_time = now
            a._local_tsn = sctp.tsn_plus_one(tsn)
            a._sent_queue.append(chunk)
            a._flight_size_increase(chunk)
            while (n := ssl_lib.BIO_read(ssl._from_ssl, record, _RECORD_BYTES)) > 0:
                try:
                    egress.send(view[:n])
                except BlockingIOError:
                    # The chunk is in aiortc's sent queue: T3 retransmits it like a lost
                    # packet, so the message counts as sent (False would send it twice).
                    self.stats["socket_full"] += 1
        a._outbound_stream_seq[stream_id] = (stream_seq + 1) & 0xFFFF
        if not a._t3_handle:
            a._t3_start()
        self.stats["lean"] += 1
        return True
