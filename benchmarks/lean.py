"""A lean receiving client for the load generator: real WHEP set-up, media counted at the socket.

A :class:`LeanViewer` joins like any aiortc viewer (offer, WHEP POST, ICE, DTLS, SRTP
keys; receivers replaced by ``media.aiortc_hook.install_receiver`` so nothing decodes),
so the server sees a normal WHEP viewer. Once connected, its ICE socket is taken from
the event loop (``pause_reading``) and a :class:`LeanReceiver` drains every viewer's
socket every few milliseconds with ``recv_into``. SRTP leaves the 12-byte RTP header in
the clear, so the SSRC, sequence number and marker bit are read without decrypting:
loss is the gaps in each SSRC's sequence numbers, a frame is a packet with the marker
bit. Every other datagram (STUN consent, DTLS, SRTCP) is handed to aioice's protocol
as before, so consent checks and RTCP keep working. No SRTP, no ``RtpPacket``, no
jitter buffer and one event-loop wake-up per tick for all viewers instead of one per
datagram.

A viewer made with ``timing=True`` also reads the kernel's arrival time of each
datagram (``SO_TIMESTAMPNS``, so a busy client loop does not add to it) and decrypts
its video packets to know which publisher packet each one is (payloads are forwarded
untouched): with :class:`SendLog` on the publisher, arrival minus send is the delay
the server(s) added. That costs an ``unprotect`` per packet: use a few timing viewers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import struct
import time
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtpPacket

from media.aiortc_hook import CountingSinkBase, ice_host_addresses, install_receiver

LOOPBACK = ["127.0.0.1"]
RTP_FIELDS = struct.Struct("!xBH4xI")  # marker|payload type, sequence number, SSRC
TIMESPEC = struct.Struct("@qq")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python < 3.14 lacks the name
RECEIVE_BUFFER_BYTES = 1 << 20  # what the kernel grants (net.core.rmem_max caps it)


class _Ignore(CountingSinkBase):
    """Sink for the set-up phase: media arriving before the take-over is not counted."""

    def on_rtp(self, packet: Any, codec: Any) -> None:
        pass


class Stream:
    """One SSRC's counters: packets, frames (marker bits) and the extended highest sequence."""

    __slots__ = ("first", "frames", "highest", "kind", "packets")

    def __init__(self, kind: str, seq: int) -> None:
        self.kind = kind
        self.first = self.highest = seq
        self.packets = self.frames = 0

    @property
    def expected(self) -> int:
        return self.highest - self.first + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.packets)


class LeanViewer:
    """A WHEP viewer whose media is counted from its socket, never decrypted (see module)."""

    def __init__(self, url: str, *, timing: bool = False, kinds: tuple[str, ...] = ("video", "audio")) -> None:
        self.url = url
        self.timing = timing
        self.kinds = kinds
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.streams: dict[int, Stream] = {}
        self.pt_kind: dict[int, str] = {}
        self.arrivals: dict[int, int] = {}  # timing: hash(video payload) -> arrival, ns (CLOCK_REALTIME)
        # timing: hash(video payload) -> (SSRC, sequence number) as this viewer got it: the key
        # of the server's own record of that packet (bench_cluster's /trace).
        self.headers: dict[int, tuple[int, int]] = {}
        self.window_arrivals: dict[int, int] = {}  # timing: the arrivals of a measuring window, set aside
        self.sock: socket.socket | None = None
        self.location = ""
        self._dispatch: Any = None
        self._srtp: Any = None
        self._buffer = bytearray(2048)

    async def join(self, http: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        """Offer, post to WHEP (retrying 404 until the room exists), connect, take the socket."""
        for kind in self.kinds:
            install_receiver(self.pc.addTransceiver(kind, direction="recvonly"), _Ignore())
        connected = asyncio.Event()
        self.pc.on("connectionstatechange", lambda: connected.set()
                   if self.pc.connectionState in ("connected", "failed", "closed") else None)
        with ice_host_addresses(LOOPBACK):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        async with asyncio.timeout(timeout):
            while True:
                async with http.post(self.url, data=self.pc.localDescription.sdp,
                                     headers={"Content-Type": "application/sdp"}) as resp:
                    if resp.status == 404:
                        await asyncio.sleep(0.2)
                        continue
                    if resp.status not in (200, 201):
                        raise RuntimeError(f"POST {self.url} -> {resp.status} {(await resp.text())[:200]}")
                    answer, self.location = await resp.text(), resp.headers.get("Location", "")
                    break
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await connected.wait()
        if self.pc.connectionState != "connected":
            raise RuntimeError(f"viewer of {self.url}: ICE/DTLS {self.pc.connectionState}")
        self._take_socket()

    def _take_socket(self) -> None:
        """Stop the event loop reading the nominated ICE socket; read a duplicate of it instead."""
        for transceiver in self.pc.getTransceivers():
            for codec in transceiver._codecs:
                self.pt_kind[codec.payloadType] = transceiver.kind
        dtls = self.pc.getTransceivers()[0].receiver.transport
        pair = dtls.transport._connection._nominated[1]
        transport = pair.protocol.transport
        original = transport.get_extra_info("socket")
        sock = socket.socket(original.family, original.type, fileno=os.dup(original.fileno()))
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        if self.timing:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._srtp = dtls._rx_srtp
        transport.pause_reading()
        protocol, remote = pair.protocol, pair.remote_addr
        self._dispatch = lambda data: protocol.datagram_received(data, remote)
        self.sock = sock

    def drain(self) -> int:
        """Read every queued datagram; count RTP, pass the rest to aioice. Return how many."""
        if self.timing:
            return self._drain_timed()
        sock, buffer, streams, unpack = self.sock, self._buffer, self.streams, RTP_FIELDS.unpack_from
        assert sock is not None
        recv_into = sock.recv_into
        count = 0
        while True:
            try:
                size = recv_into(buffer)
            except BlockingIOError:
                return count
            count += 1
            if size >= 12 and 127 < buffer[0] < 192 and not 192 <= buffer[1] <= 208:
                second, seq, ssrc = unpack(buffer)
                stream = streams.get(ssrc)
                if stream is None:
                    stream = streams[ssrc] = Stream(self.pt_kind.get(second & 0x7F, "?"), seq)
                else:
                    delta = (seq - stream.highest) & 0xFFFF
                    if delta < 0x8000:
                        stream.highest += delta
                stream.packets += 1
                if second & 0x80:
                    stream.frames += 1
            else:
                self._dispatch(bytes(buffer[:size]))

    def _drain_timed(self) -> int:
        """Drain like :meth:`drain`, noting each video packet's kernel arrival time."""
        assert self.sock is not None
        count = 0
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(2048, socket.CMSG_SPACE(TIMESPEC.size))
            except BlockingIOError:
                return count
            count += 1
            if not _is_rtp(data):
                self._dispatch(data)
                continue
            second, seq, ssrc = RTP_FIELDS.unpack_from(data)
            stream = self.streams.get(ssrc)
            if stream is None:
                stream = self.streams[ssrc] = Stream(self.pt_kind.get(second & 0x7F, "?"), seq)
            else:
                delta = (seq - stream.highest) & 0xFFFF
                if delta < 0x8000:
                    stream.highest += delta
            stream.packets += 1
            stream.frames += second >> 7
            if stream.kind != "video":
                continue
            arrived = next((TIMESPEC.unpack(d) for level, kind, d in ancillary
                            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)
            with contextlib.suppress(Exception):
                key = hash(RtpPacket.parse(self._srtp.unprotect(data)).payload)
                if arrived is not None and key not in self.arrivals:
                    self.arrivals[key] = arrived[0] * 1_000_000_000 + arrived[1]
                    self.headers[key] = (ssrc, seq)

    def snapshot(self) -> dict[str, int]:
        """Return packets, expected packets, lost packets and frames, summed over the SSRCs."""
        streams = list(self.streams.values())
        return {
            "packets": sum(s.packets for s in streams), "expected": sum(s.expected for s in streams),
            "lost": sum(s.lost for s in streams),
            "video_packets": sum(s.packets for s in streams if s.kind == "video"),
            "frames": sum(s.frames for s in streams if s.kind == "video"),
            "ssrcs": len(streams),
        }

    def socket_drops(self) -> int:
        """Return the datagrams the kernel dropped at this viewer's full socket (the client's fault)."""
        if self.sock is None:
            return 0
        return udp_socket_drops().get(self.sock.getsockname()[1], 0)

    async def leave(self, http: aiohttp.ClientSession) -> None:
        """DELETE the WHEP session (best effort), close the socket and the peer connection."""
        if self.location:
            base = self.url.split("/", 3)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with asyncio.timeout(5), http.delete(f"{base[0]}//{base[2]}{self.location}"):
                    pass
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await self.pc.close()


class LeanReceiver:
    """Drain many lean viewers' sockets from one task, every ``interval`` seconds.

    One ``epoll`` over all sockets tells which have data; each ready socket is read to
    empty. At ~200 packets/s per viewer a 20 ms tick reads about four datagrams per
    viewer, so the failed ``recv_into`` that ends each drain is spread over them; the
    per-datagram cost is one ``recv_into`` and a header unpack. Reading late does not
    change what is measured: loss is in the sequence numbers, timing in the kernel's
    arrival stamps, and a socket's buffer holds seconds of one viewer's stream.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.viewers: dict[int, LeanViewer] = {}
        self.datagrams = 0
        self._epoll = select.epoll()
        self._task: asyncio.Task[None] | None = None

    def add(self, viewer: LeanViewer) -> None:
        """Start draining a joined viewer's socket."""
        assert viewer.sock is not None, "join the viewer first"
        fd = viewer.sock.fileno()
        self.viewers[fd] = viewer
        self._epoll.register(fd, select.EPOLLIN)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, viewer: LeanViewer) -> None:
        """Stop draining a viewer (before it leaves)."""
        if viewer.sock is not None and self.viewers.pop(viewer.sock.fileno(), None) is not None:
            self._epoll.unregister(viewer.sock.fileno())

    async def _run(self) -> None:
        poll, viewers = self._epoll.poll, self.viewers
        while True:
            for fd, _ in poll(0):
                viewer = viewers.get(fd)
                if viewer is not None:
                    self.datagrams += viewer.drain()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Stop the draining task and release the epoll object."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._epoll.close()


class SendLog:
    """Note when the publisher sends each video payload (CLOCK_REALTIME ns, like SO_TIMESTAMPNS).

    Also when it sent the first packet of each frame (by RTP timestamp): a packet's send
    minus its frame's first is how far into the frame's burst the publisher sent it.
    """

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}
        self.frame_of: dict[int, int] = {}  # hash(payload) -> RTP timestamp of its frame
        self.frame_start: dict[int, int] = {}  # RTP timestamp -> its first packet's send, ns

    def attach(self, pc: RTCPeerConnection, pace_bps: float = 0.0) -> None:
        """Wrap the publisher's DTLS transport(s) of its video sender(s).

        ``pace_bps`` > 0 paces the RTP packets (audio too, with BUNDLE) at that rate, as
        libwebrtc's pacer does (2.5x the target rate): a keyframe's packets are spread out
        instead of sent back to back as aiortc sends them. 0: unpaced.
        """
        for sender in pc.getSenders():
            if sender.kind != "video":
                continue
            transport = sender.transport
            original = transport._send_rtp
            slot = [0.0]

            async def send(data: bytes, original: Any = original, slot: list[float] = slot) -> None:
                if _is_rtp(data):  # aiortc sends its RTCP through here too
                    if pace_bps > 0:
                        now = time.monotonic()
                        start = max(now, slot[0])
                        slot[0] = start + len(data) * 8 / pace_bps
                        if start > now:
                            await asyncio.sleep(start - now)
                    packet = RtpPacket.parse(data)
                    key, now = hash(packet.payload), time.time_ns()
                    if key not in self.sent:
                        self.sent[key] = now
                        self.frame_of[key] = packet.timestamp
                        self.frame_start.setdefault(packet.timestamp, now)
                await original(data)

            transport._send_rtp = send

    def delays_ms(self, viewers: list[LeanViewer]) -> list[float]:
        """Return each timing viewer's per-packet delay from the publisher's send, in ms."""
        sent = self.sent
        return [(arrived - sent[key]) / 1e6 for viewer in viewers
                for key, arrived in viewer.arrivals.items() if key in sent]


def _is_rtp(data: bytes) -> bool:
    """Tell RTP from RTCP (RFC 5761 demultiplexing on the second byte) and from other datagrams."""
    return len(data) >= 12 and 127 < data[0] < 192 and not 192 <= data[1] <= 208


def udp_socket_drops() -> dict[int, int]:
    """Return local port -> datagrams dropped at a full receive buffer, from /proc/net/udp."""
    drops: dict[int, int] = {}
    with contextlib.suppress(OSError), open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            drops[port] = drops.get(port, 0) + int(fields[-1])
    return drops
