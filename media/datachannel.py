"""Send one message to many aiortc DataChannels cheaply (aiortc 1.16 internals).

aiortc's ``RTCDataChannel.send`` costs a task, two coroutines, a ``DataChunk`` built
field by field, a packet serialised through ``bytes(chunk)``, pyOpenSSL's ``send`` and
``bio_read`` (a buffer allocated per call) and aioice's ``send`` coroutine, per message
and per viewer. For a batch of events that every viewer of a room receives,
:class:`MessageScratch` encodes the message once (its DATA chunk payload, padded), and
:meth:`LeanSender.send` does per viewer only what is per viewer: the DATA chunk header
with the association's TSN and the stream's sequence number, the CRC32C of the packet,
one ``SSL_write`` (the DTLS record) read back from the memory BIO into a reused buffer,
and one non-blocking ``send`` on the nominated ICE socket (connected, as for media).

SCTP stays correct because the chunks are handed to aiortc's own association exactly
as ``RTCSctpTransport._transmit`` would have: appended to ``_sent_queue``, counted in
the flight size, timestamped for RTT, T3 started (lazily: see ``LeanSender.t3_restart``).
Retransmission, fast recovery and congestion control remain aiortc's. The lean path is
taken only when aiortc's path would have sent at once: the association established,
nothing queued ahead (so order is kept), no retransmission or FORWARD-TSN pending, not
in fast recovery. A message longer than one DATA chunk is cut as ``_send`` cuts it (one
packet per fragment). The window rule is aiortc's: a chunk goes out while the flight
size is below the congestion window, at most a burst of four. A full window returns
``False`` ("would block": the hub keeps the backlog, and the SACK that opens the window
calls ``on_writable``); a message whose last fragments aiortc would hold back, and
anything else, returns ``None`` and the caller uses ``RTCDataChannel.send``.

:class:`SackIngress` takes the viewer's SACKs the same way on the way in (see there).

aiortc internals used here (pinned and checked at import):
``RTCSctpTransport``: ``_association_state, _outbound_queue, _data_channel_queue,
_sent_queue, _forward_tsn_chunk, _fast_recovery_exit, _flight_size, _cwnd, _ssthresh,
_partial_bytes_acked, _last_sacked_tsn, _advanced_peer_ack_tsn, _forward_tsn_streams,
_local_tsn, _outbound_stream_seq,
_local_port, _remote_port, _local_verification_tag, _remote_verification_tag,
_remote_max_message_size, _reconfig_queue, _t3_handle, _rto`` and ``_t3_restart(),
_t3_cancel(), _t3_expired(), _flight_size_decrease(),
_update_rto(), _update_advanced_peer_ack_point(), _data_channel_flush(), _transmit(),
_handle_data()``; ``DataChunk``'s bookkeeping attributes (``_abandoned, _acked,
_book_size, _expiry, _in_flight, _max_retransmits, _misses, _retransmit, _sent_count,
_sent_time``); ``RTCDtlsTransport._ssl, _state, _data_receiver`` and its name-mangled
rx counters; pyOpenSSL's ``Connection._ssl, _into_ssl, _from_ssl``; aioice's
``Connection._queue`` through ``media.aiortc_hook``'s datagram hook, whose
``Egress`` gives the connected ICE socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from typing import Any

import aiortc
from aiortc import rtcsctptransport as sctp
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.utils import uint32_gt, uint32_gte
from google_crc32c import extend as crc32c_extend
from google_crc32c import value as crc32c
from OpenSSL.SSL import _ffi as ssl_ffi  # type: ignore[attr-defined]
from OpenSSL.SSL import _lib as ssl_lib  # type: ignore[attr-defined]

from media.aiortc_hook import SUPPORTED_AIORTC, Egress

if not aiortc.__version__.startswith(SUPPORTED_AIORTC):
    raise ImportError(f"media.datachannel is written against aiortc {SUPPORTED_AIORTC}x internals")
_NEEDED = ("_association_state", "_outbound_queue", "_data_channel_queue", "_sent_queue",
           "_flight_size", "_cwnd", "_partial_bytes_acked", "_last_sacked_tsn",
           "_local_tsn", "_outbound_stream_seq", "_t3_handle", "_fast_recovery_exit",
           "_forward_tsn_chunk", "_reconfig_queue", "_rto", "_advanced_peer_ack_tsn",
           "_forward_tsn_streams")
_NEEDED_METHODS = ("_t3_restart", "_t3_cancel", "_t3_expired",
                   "_flight_size_decrease", "_update_rto", "_update_advanced_peer_ack_point",
                   "_data_channel_flush", "_transmit", "_handle_data")
if not all(n in sctp.RTCSctpTransport.__init__.__code__.co_names for n in _NEEDED) \
        or not all(hasattr(sctp.RTCSctpTransport, n) for n in _NEEDED_METHODS):
    raise ImportError("media.datachannel: aiortc's RTCSctpTransport lacks the attributes it uses")

USERDATA_MAX_LENGTH = sctp.USERDATA_MAX_LENGTH
WEBRTC_STRING = sctp.WEBRTC_STRING
ESTABLISHED = sctp.RTCSctpTransport.State.ESTABLISHED
_COMMON = struct.Struct("!HHL")
_DATA_HEADER = struct.Struct("!BBHLHHL")
_CRC = struct.Struct("<L")
_ZERO = b"\x00\x00\x00\x00"
_DATA = sctp.DataChunk.type
_BURST = 4 * USERDATA_MAX_LENGTH  # aiortc's burst limit outside fast recovery
_RECORD_BYTES = 2048  # one DTLS record of an SCTP packet (< 1200 bytes + overhead)


class MessageScratch:
    """One text message, encoded and cut into DATA chunk payloads once for every viewer."""

    __slots__ = ("ahead", "fragments", "text", "user_data")

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
        # Bytes in flight when the last fragment leaves, beyond those before the message.
        self.ahead = len(data) - len(self.fragments[-1][3])


class _SentChunk(sctp.DataChunk):
    """The DATA chunk aiortc keeps for SACKs and retransmission, as `_send` builds it.

    What is the same for every chunk the lean path sends is a class attribute (aiortc's
    later writes, e.g. ``_sent_count += 1`` on a retransmission, land on the instance),
    so building one sets seven attributes instead of sixteen.
    """

    protocol = WEBRTC_STRING
    _abandoned = _acked = _in_flight = _retransmit = False
    _expiry = _max_retransmits = None
    _misses = 0
    _sent_count = 1

    def __init__(self, flags: int, tsn: int, stream_id: int, stream_seq: int, user_data: bytes,
                 sent_time: float) -> None:  # no super().__init__: it parses a body we do not have
        self.flags = flags
        self.tsn = tsn
        self.stream_id = stream_id
        self.stream_seq = stream_seq
        self.user_data = user_data
        self._book_size = len(user_data)
        self._sent_time = sent_time


class LeanSender:
    """Send messages on one open RTCDataChannel without aiortc's per-message machinery."""

    __slots__ = ("_common", "_crc0", "_t3", "_t3_since", "blocked", "channel", "dtls", "egress",
                 "ingress", "on_writable", "sack_ingress", "sctp", "stats")

    # One buffer for every DTLS record read back: everything here is synchronous.
    _record = ssl_ffi.new("char[]", _RECORD_BYTES)
    _record_view = memoryview(ssl_ffi.buffer(_record))

    def __init__(self, channel: Any, *, sack_ingress: bool = True) -> None:
        self.channel = channel
        self.sctp = channel.transport
        self.dtls = self.sctp.transport
        self.egress: Egress | None = None
        self.stats = {"lean": 0, "stock": 0, "window_full": 0, "socket_full": 0}
        self.sack_ingress = sack_ingress
        self.ingress: SackIngress | None = None
        # The packet's common header (ports, the peer's verification tag) and its CRC32C
        # with a zero checksum field: the same for every packet of the association.
        self._common = b""
        self._crc0 = 0
        # The lazy T3 timer (see `_t3_check`): our handle in `_t3_handle`, and since when
        # the oldest outstanding chunk has waited (None: T3 stopped, the handle idles).
        self._t3: asyncio.TimerHandle | None = None
        self._t3_since: float | None = None
        # After a "would block", the SACK that opens the window calls `on_writable` (the
        # hub's retry), so a backlog does not wait for the room's next batch.
        self.blocked = False
        self.on_writable: Callable[[], None] | None = None

    def close(self) -> None:
        """Give back the ICE connection's ingress slot and the duplicated socket."""
        if self.ingress is not None:
            self.ingress.uninstall()
            self.ingress = None
        if self.egress is not None:
            self.egress.close()  # the duplicated socket, if bind made one
            self.egress = None

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
            # A chunk waiting for retransmission: T3 expired (aiortc's handle, or none, is
            # in `_t3_handle` until it resends) or a fast retransmit (in fast recovery, or
            # the SACK that ended it moved the cumulative TSN, so aiortc restarted T3).
            # While our own T3 handle is in place, no chunk can be marked: no scan.
            or (a._sent_queue and (a._t3_handle is None or a._t3_handle is not self._t3)
                and any(c._retransmit for c in a._sent_queue))
        ):
            self.stats["stock"] += 1
            return None
        flight = a._flight_size
        if flight >= a._cwnd:
            # What aiortc would queue: the hub keeps it instead, bounded and by priority.
            self.stats["window_full"] += 1
            self.blocked = True
            return False
        if message.ahead and (flight + message.ahead >= a._cwnd or message.ahead >= _BURST):
            # aiortc sends a chunk while the flight size is below the window (and at most
            # a burst of four at once): this message's last fragments would wait, so
            # aiortc's own path sends it chunk by chunk as SACKs open the window.
            self.stats["stock"] += 1
            return None
        egress = self.egress
        if egress is None or egress.send is None:
            egress = self.egress = Egress(self.dtls)
            # A connected socket (a duplicate under uvloop) and a plain `send`: no
            # address parsing, no transport layer per datagram, as for the media.
            if not egress.bind(raw_socket=True):
                self.egress = None
                self.stats["stock"] += 1
                return None
            if self.sack_ingress:
                ingress = SackIngress(self)
                if ingress.install():
                    self.ingress = ingress

        stream_id = channel.id
        stream_seq = a._outbound_stream_seq.get(stream_id, 0)
        common = self._common
        if not common:  # ports and tags are fixed once the association is established
            common = self._common = _COMMON.pack(a._local_port, a._remote_port, a._remote_verification_tag)
            self._crc0 = crc32c(common + _ZERO)
        ssl = self.dtls._ssl
        ssl_p, from_ssl = ssl._ssl, ssl._from_ssl
        record, view = self._record, self._record_view
        now = time.time()
        sent = a._sent_queue
        for flags, length, padded, piece in message.fragments:
            tsn = a._local_tsn
            header = _DATA_HEADER.pack(_DATA, flags, length, tsn, stream_id, stream_seq, WEBRTC_STRING)
            packet = b"".join((common, _CRC.pack(crc32c_extend(crc32c_extend(self._crc0, header), padded)),
                               header, padded))
            # bytes go to cffi as `char *` without a copy (`ffi.from_buffer` costs ~2 us)
            if ssl_lib.SSL_write(ssl_p, packet, len(packet)) <= 0:
                raise ConnectionError("DTLS refused an SCTP packet")  # aiortc raises too
            chunk = _SentChunk(flags, tsn, stream_id, stream_seq, piece, now)
            a._local_tsn = (tsn + 1) & 0xFFFFFFFF  # sctp.tsn_plus_one
            sent.append(chunk)
            chunk._in_flight = True  # `_flight_size_increase`, inline
            a._flight_size += chunk._book_size
            while (n := ssl_lib.BIO_read(from_ssl, record, _RECORD_BYTES)) > 0:
                try:
                    egress.send(view[:n])
                except OSError:
                    # A full socket buffer, or a refused datagram on the connected
                    # socket (the viewer left): the chunk is in aiortc's sent queue and
                    # T3 retransmits it like a lost packet, so the message counts as
                    # sent (False would send it twice).
                    self.stats["socket_full"] += 1
                if n < _RECORD_BYTES:
                    break  # a memory BIO reads all it holds up to the size asked: none left
        a._outbound_stream_seq[stream_id] = (stream_seq + 1) & 0xFFFF
        if not a._t3_handle:
            self._t3_since = now
            self._t3 = a._t3_handle = asyncio.get_running_loop().call_later(a._rto, self._t3_check)
        elif a._t3_handle is self._t3 and self._t3_since is None:
            self._t3_since = now  # T3 starts: our handle is still armed
        self.stats["lean"] += 1
        return True

    # T3 (RFC 9260 section 6.3.2) without a timer per SACK: aiortc cancels and re-arms
    # its T3 handle on every SACK that acknowledges data (call_later + cancel per batch
    # per viewer). The lean path keeps one handle armed and only notes when T3 was
    # (re)started or stopped; when the handle fires, `_t3_check` re-arms it for the rest
    # of the RTO, or expires T3 through aiortc's own `_t3_expired`. aiortc's own code
    # (`_t3_restart`, `_t3_cancel`, `_t3_expired`) replaces or clears the handle as
    # usual, and from then on T3 is aiortc's until the lean path starts it again.

    def t3_restart(self, now: float) -> None:
        """T3 restarts (the oldest outstanding chunk was acknowledged): what `_t3_restart` does."""
        handle = self.sctp._t3_handle
        if handle is not None and handle is self._t3:
            self._t3_since = now
        else:
            self.sctp._t3_restart()  # aiortc's handle, or none at all: a real timer now

    def t3_stop(self) -> None:
        """Nothing is outstanding: what `_t3_cancel` does (our handle idles until it fires)."""
        handle = self.sctp._t3_handle
        if handle is not None and handle is self._t3:
            self._t3_since = None
        else:
            self.sctp._t3_cancel()

    def _t3_check(self) -> None:
        a = self.sctp
        if a._t3_handle is not self._t3:
            return  # aiortc took T3 over (its handle replaced ours)
        a._t3_handle = self._t3 = None
        if not a._sent_queue:
            self._t3_since = None
            return
        now = time.time()
        since = self._t3_since
        if since is None:
            # aiortc's path sent while our handle idled: T3 runs from that chunk's send.
            since = self._t3_since = a._sent_queue[0]._sent_time or now
        if now - since < a._rto:
            self._t3 = a._t3_handle = asyncio.get_running_loop().call_later(
                since + a._rto - now, self._t3_check)
        else:
            self._t3_since = None
            a._t3_expired()


_SACK = struct.Struct("!BBHLLHH")  # chunk type, flags, length, cumulative TSN, a_rwnd, gaps, dups
_SACK_TYPE = sctp.SackChunk.type
_DTLS_APPLICATION_DATA = 23  # TLS record content type: the first byte of the record
_PLAIN_BYTES = 2048


class SackIngress:
    """Take a viewer's SCTP SACKs straight from aioice's datagram callback.

    Every DATA chunk the lean path sends comes back as a SACK (aiortc peers acknowledge
    each packet, browsers every second one): through aiortc that is a queue, the DTLS
    task, pyOpenSSL's ``recv`` and ``bio_read`` (an exception when there is nothing to
    write), ``parse_packet`` and three coroutines, about twice the cost of the send.
    Here a DTLS application-data record is decrypted with one ``SSL_read`` into a reused
    buffer; a packet holding exactly one SACK without gap blocks or duplicates is applied
    to the association as ``RTCSctpTransport._receive_sack_chunk`` does (RTO sample,
    flight size, congestion window, T3, advanced peer ack point), and aiortc's flush
    and transmit coroutines run only when something waits for the window. Any other
    plaintext goes to aiortc's ``_handle_data`` (a task, in arrival order); records
    that are not application data (handshake, alerts) and datagrams that arrive while
    earlier ones are still queued keep aiortc's own path.

    It rides on ``media.aiortc_hook``'s datagram hook (the connection's
    ``_shopstream_ingress`` slot), which viewers' connections leave free.
    """

    _plain = ssl_ffi.new("char[]", _PLAIN_BYTES)
    _plain_view = memoryview(ssl_ffi.buffer(_plain))

    def __init__(self, sender: LeanSender) -> None:
        self.sender = sender
        self.dtls = sender.dtls
        self.sctp = sender.sctp
        self.stats = {"sacks": 0, "to_aiortc": 0}
        # A SACK's common header (the peer's port, ours, our verification tag) and its
        # CRC32C with a zero checksum field: the same for every packet of the association.
        self._prefix = b""
        self._crc0 = 0

    def receive(self, data: bytes, queue: Any) -> bool:
        """Apply ``data`` if it carries SCTP for this association; False: aiortc's path."""
        dtls = self.dtls
        if not data or data[0] != _DTLS_APPLICATION_DATA or not queue.empty() \
                or dtls._state is not DtlsState.CONNECTED:
            return False
        ssl = dtls._ssl
        size = len(data)
        dtls._RTCDtlsTransport__rx_bytes += size  # type: ignore[attr-defined]
        dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
        ssl_lib.BIO_write(ssl._into_ssl, data, size)
        plain, view = self._plain, self._plain_view
        n = ssl_lib.SSL_read(ssl._ssl, plain, _PLAIN_BYTES)
        if n > 0 and size == 13 + (data[11] << 8 | data[12]):
            # The common case: the datagram is one application-data record (its header's
            # length covers the rest), now read whole. Nothing else can follow in it, and
            # reading application data makes OpenSSL write nothing: one SSL_read, no
            # second one to find the buffer empty, no error queue, no output to send.
            packet = bytes(view[:n])
            if not self._sack(packet):
                self._to_aiortc(packet)
            return True
        while n > 0:  # several records in the datagram
            packet = bytes(view[:n])
            if not self._sack(packet):
                self._to_aiortc(packet)
            n = ssl_lib.SSL_read(ssl._ssl, plain, _PLAIN_BYTES)
        ssl_lib.ERR_clear_error()  # SSL_read's "want read" (or a bad record, dropped as aiortc does)
        self._flush_dtls_output()
        return True

    def _to_aiortc(self, packet: bytes) -> None:
        self.stats["to_aiortc"] += 1
        receiver = self.dtls._data_receiver
        if receiver is not None:
            # A task, as aiortc's DTLS task would await it: nothing in between.
            asyncio.ensure_future(receiver._handle_data(packet))

    def _flush_dtls_output(self) -> None:
        """Send what OpenSSL wrote while reading (what aiortc's `_write_ssl` does)."""
        ssl = self.dtls._ssl
        record, view = LeanSender._record, LeanSender._record_view
        egress = self.sender.egress
        while (n := ssl_lib.BIO_read(ssl._from_ssl, record, _RECORD_BYTES)) > 0:
            if egress is not None and egress.send is not None:
                with contextlib.suppress(OSError):  # as a lost datagram: DTLS/SCTP recover
                    egress.send(view[:n])
            if n < _RECORD_BYTES:
                break

    def _sack(self, packet: bytes) -> bool:
        """Apply a packet that is one plain SACK; False if it is anything else."""
        a = self.sctp
        prefix = self._prefix
        if not prefix:  # ports and our verification tag are fixed once established
            if a._association_state is not ESTABLISHED:
                return False
            prefix = self._prefix = _COMMON.pack(a._remote_port, a._local_port, a._local_verification_tag)
            self._crc0 = crc32c(prefix + _ZERO)
        if len(packet) != 12 + 16 or not packet.startswith(prefix) or a._association_state is not ESTABLISHED:
            return False
        kind, _, length, cumulative_tsn, _, gaps, dups = _SACK.unpack_from(packet, 12)
        if kind != _SACK_TYPE or length != 16 or gaps or dups \
                or _CRC.unpack_from(packet, 8)[0] != crc32c_extend(self._crc0, packet[12:]):
            return False
        self.stats["sacks"] += 1
        # From here, RTCSctpTransport._receive_sack_chunk without gap blocks (aiortc's
        # uint32_gt/gte and _flight_size_decrease inlined).
        last = a._last_sacked_tsn
        if last != cumulative_tsn and (last - cumulative_tsn) & 0xFFFFFFFF < 0x80000000:
            return True  # older than the last SACK: ignored, as aiortc does
        received_time = time.time()
        a._last_sacked_tsn = cumulative_tsn
        cwnd_fully_utilized = a._flight_size >= a._cwnd
        done = done_bytes = 0
        sent = a._sent_queue
        while sent and (cumulative_tsn - sent[0].tsn) & 0xFFFFFFFF < 0x80000000:
            chunk = sent.popleft()
            done += 1
            if not chunk._acked:
                done_bytes += chunk._book_size
            if chunk._in_flight:
                chunk._in_flight = False
                a._flight_size -= chunk._book_size
            if done == 1 and chunk._sent_count == 1:
                a._update_rto(received_time - chunk._sent_time)
        if a._fast_recovery_exit is None:
            if done and cwnd_fully_utilized:
                if a._cwnd <= a._ssthresh:
                    a._cwnd += min(done_bytes, USERDATA_MAX_LENGTH)  # slow start
                else:
                    a._partial_bytes_acked += done_bytes  # congestion avoidance
                    if a._partial_bytes_acked >= a._cwnd:
                        a._partial_bytes_acked -= a._cwnd
                        a._cwnd += USERDATA_MAX_LENGTH
        elif uint32_gte(cumulative_tsn, a._fast_recovery_exit):
            a._fast_recovery_exit = None
        sender = self.sender
        if sender.blocked and a._flight_size < a._cwnd:
            sender.blocked = False
            if sender.on_writable is not None:
                sender.on_writable()
        if not sent:
            sender.t3_stop()
        elif done:
            sender.t3_restart(received_time)
        # `_update_advanced_peer_ack_point`: its first step inline; the rest (abandoned
        # chunks, FORWARD TSN) only when there is something for it to do.
        if uint32_gt(cumulative_tsn, a._advanced_peer_ack_tsn):
            a._advanced_peer_ack_tsn = cumulative_tsn
        if (a._advanced_peer_ack_tsn != cumulative_tsn or a._forward_tsn_streams
                or a._outbound_queue or (sent and sent[0]._abandoned)):
            a._update_advanced_peer_ack_point()
        if a._data_channel_queue or a._outbound_queue or a._forward_tsn_chunk is not None \
                or a._reconfig_queue:
            asyncio.ensure_future(self._resume(a))
        else:
            for c in sent:
                if c._retransmit:
                    asyncio.ensure_future(self._resume(a))
                    break
        return True

    @staticmethod
    async def _resume(a: Any) -> None:
        # What `_receive_sack_chunk` awaits last: the window opened, let queued data go.
        await a._data_channel_flush()
        await a._transmit()

    def install(self) -> bool:
        """Take the slot on the viewer's ICE connection; False if it is taken."""
        connection = self.dtls.transport._connection
        if getattr(connection, "_shopstream_ingress", None) is not None:
            return False
        connection._shopstream_ingress = self
        return True

    def uninstall(self) -> None:
        connection = self.dtls.transport._connection
        if getattr(connection, "_shopstream_ingress", None) is self:
            connection._shopstream_ingress = None
