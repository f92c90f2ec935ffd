"""The ladder's worker process: decode a source once, encode its lower layers.

Run by :class:`media.ladder.Ladder` as ``python -m media.ladder_worker``; see that module
for the protocol. Codecs are PyAV's (libvpx, libx264), one thread each; payloads are
packetized by aiortc's own packers, as its senders do for pre-encoded data.
"""

from __future__ import annotations

import argparse
import fractions
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import av
from aiortc.codecs import depayload, get_decoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from .codecs import is_keyframe
from .ladder import CPU_REPORT_SECONDS, LADDER_RIDS, RTP_HEADER, SOURCE_RID, layer_sizes

# Encoder bits per pixel per frame: 640x360 at 30 fps gets ~690 kbit/s, 320x180 ~170.
BITS_PER_PIXEL = 0.1
MIN_LAYER_BPS = 40_000
FRAME_RATE = 30
GOP_FRAMES = 150  # a keyframe every 5 s unless a switching viewer asks sooner
VIDEO_TIME_BASE = fractions.Fraction(1, 90000)
KEYFRAME_REQUEST_SECONDS = 1.0  # while waiting for a source keyframe, ask this often



class LadderWorker:
    """Decode the source's frames once; encode and packetize each generated layer."""

    def __init__(self, codec_name: str, payload_type: int, ssrcs: dict[str, int],
                 send: Callable[[bytes], Any]) -> None:
        self.codec = RTCRtpCodecParameters(mimeType=f"video/{codec_name}", clockRate=90000,
                                           payloadType=payload_type)
        self.decoder = get_decoder(self.codec)
        self.decoder.codec.thread_count = 1  # type: ignore[attr-defined]  # its thread time is all of it
        self.ssrcs = ssrcs
        self.send = send
        self._frame: list[RtpPacket] = []
        self._need_keyframe = True
        self._keyframe_asked = -1e9
        self._encoders: dict[str, _LayerEncoder] = {}
        self._source_size: tuple[int, int] | None = None
        self._keyframes: set[str] = set()
        # Each layer's sequence numbers run on when a new source size makes new encoders.
        self._seqs = {rid: random.randrange(0x8000) for rid in ssrcs}
        self._cpu = {"decode": 0.0, **{rid: 0.0 for rid in ssrcs}}
        self._frames = 0
        self._report_start = time.monotonic()

    def control(self, message: dict[str, Any]) -> None:
        """Act on a control message from the SFU."""
        if "keyframe" in message:
            self._keyframes.add(str(message["keyframe"]))

    def on_packet(self, packet: RtpPacket) -> None:
        """Collect a frame's packets; decode and encode it when it is complete."""
        frame = self._frame
        if frame and packet.timestamp != frame[0].timestamp:
            self._decode(frame)
            frame = self._frame = []
        frame.append(packet)
        if packet.marker:
            self._decode(frame)
            self._frame = []

    def _decode(self, packets: list[RtpPacket]) -> None:
        first = packets[0].sequence_number
        packets.sort(key=lambda p: (p.sequence_number - first + 0x8000) & 0xFFFF)
        first = packets[0].sequence_number
        if any(p.sequence_number != (first + i) & 0xFFFF for i, p in enumerate(packets)):
            self._need_keyframe = True  # a packet is missing: wait for the next keyframe
            return
        if self._need_keyframe:
            if not any(is_keyframe(self.codec.name, p.payload) for p in packets):
                now = time.monotonic()
                if now - self._keyframe_asked >= KEYFRAME_REQUEST_SECONDS:
                    self._keyframe_asked = now  # a publisher that answers PLIs sends one
                    self.send(json.dumps({"need_keyframe": True}).encode())
                return
            self._need_keyframe = False
        data = b"".join(depayload(self.codec, p.payload) for p in packets)
        started = time.thread_time()
        try:
            frames = self.decoder.decode(JitterFrame(data=data, timestamp=packets[0].timestamp))
        except Exception:  # noqa: BLE001 (libav raises many kinds): resync at a keyframe
            self._need_keyframe = True
            return
        self._cpu["decode"] += time.thread_time() - started
        for frame in frames:
            self._encode(frame, packets[0].timestamp if frame.pts is None else frame.pts)

    def _encode(self, frame: Any, timestamp: int) -> None:
        size = (frame.width, frame.height)
        if size != self._source_size:
            self._source_size = size
            sizes = layer_sizes(frame.width, frame.height, len(self.ssrcs))
            self._encoders = {rid: _LayerEncoder(self.codec.name, *sizes[rid]) for rid in self.ssrcs}
            self.send(json.dumps({"sizes": {SOURCE_RID: size, **sizes}}).encode())
        self._frames += 1
        for rid, encoder in self._encoders.items():
            started = time.thread_time()
            force = rid in self._keyframes
            self._keyframes.discard(rid)
            payloads = encoder.encode(frame, timestamp, force)
            ssrc = self.ssrcs[rid]
            last = len(payloads) - 1
            for index, payload in enumerate(payloads):
                header = RTP_HEADER.pack(0x80, (0x80 if index == last else 0) | (self.codec.payloadType or 0),
                                         self._seqs[rid], timestamp, ssrc)
                self._seqs[rid] = (self._seqs[rid] + 1) & 0xFFFF
                self.send(header + payload)
            self._cpu[rid] += time.thread_time() - started
        elapsed = time.monotonic() - self._report_start
        if elapsed >= CPU_REPORT_SECONDS:
            report = {name: seconds / elapsed for name, seconds in self._cpu.items()}
            report["fps"] = self._frames / elapsed
            self.send(json.dumps({"cpu": report}).encode())
            self._cpu = dict.fromkeys(self._cpu, 0.0)
            self._frames = 0
            self._report_start = time.monotonic()


class _LayerEncoder:
    """One generated layer: scale, encode (one thread), packetize as aiortc does."""

    def __init__(self, codec_name: str, width: int, height: int) -> None:
        self.width, self.height = width, height
        bitrate = max(int(width * height * FRAME_RATE * BITS_PER_PIXEL), MIN_LAYER_BPS)
        if codec_name == "H264":
            self.context = av.CodecContext.create("libx264", "w")
            self.context.profile = "Baseline"  # constrained baseline: every profile decodes it
            self.context.options = {"preset": "veryfast", "tune": "zerolatency", "threads": "1",
                                    "x264-params": f"keyint={GOP_FRAMES}:scenecut=0"}
            self.packer: Any = H264Encoder()
        else:
            self.context = av.CodecContext.create("libvpx", "w")
            self.context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0",
                                    "threads": "1", "static-thresh": "1",
                                    "maxrate": str(bitrate), "minrate": str(bitrate),
                                    "bufsize": str(bitrate)}
            self.context.gop_size = GOP_FRAMES
            self.packer = Vp8Encoder()
        self.context.width, self.context.height = width, height
        self.context.pix_fmt = "yuv420p"
        self.context.bit_rate = bitrate
        self.context.framerate = fractions.Fraction(FRAME_RATE, 1)
        self.context.time_base = VIDEO_TIME_BASE
        self._pts = 0

    def encode(self, frame: Any, timestamp: int, keyframe: bool) -> list[bytes]:
        """Return the RTP payloads of ``frame`` scaled to this layer."""
        scaled = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        self._pts += 3000  # 30 fps in 90 kHz ticks: the encoder's rate control only
        scaled.pts = self._pts
        scaled.time_base = VIDEO_TIME_BASE
        scaled.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        payloads: list[bytes] = []
        for packet in self.context.encode(scaled):
            packed, _ = self.packer.pack(packet)
            payloads += packed
        return payloads


def _exit_when_parent_goes() -> None:
    """Exit the worker when its stdin (a pipe from the SFU) closes."""
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """Run a ladder worker: source RTP in, generated layers out, on loopback UDP."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--codec", choices=("VP8", "H264"), required=True)
    parser.add_argument("--port", type=int, required=True, help="the SFU's UDP port on 127.0.0.1")
    parser.add_argument("--payload-type", type=int, default=96)
    parser.add_argument("--layer", action="append", default=[], help="RID:SSRC of a generated layer")
    args = parser.parse_args(argv)
    ssrcs = {}
    for spec in args.layer:
        rid, _, ssrc = spec.partition(":")
        if rid not in LADDER_RIDS or not ssrc.isdigit():
            parser.error(f"--layer takes RID:SSRC with a RID among {LADDER_RIDS}, not {spec!r}")
        ssrcs[rid] = int(ssrc)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", args.port))
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    worker = LadderWorker(args.codec, args.payload_type, ssrcs, sock.send)
    sock.send(json.dumps({"hello": os.getpid()}).encode())
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionRefusedError:  # the SFU's socket is gone
            return
        if data[:1] == b"{":
            worker.control(json.loads(data))
        else:
            worker.on_packet(RtpPacket.parse(data))


if __name__ == "__main__":
    main()
