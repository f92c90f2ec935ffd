"""CPU of the server-side simulcast ladder (media/ladder.py), per generated layer.

For each case, a 4-second clip is encoded once with ffmpeg (imageio-ffmpeg's binary,
``testsrc2``, H.264 baseline as ffmpeg's WHIP output sends it, or VP8) and replayed at
30 fps as RTP into a real ladder worker process (``python -m media.ladder_worker``, the
same process the SFU starts). The worker measures its own thread CPU per stage (its
codecs run one thread each, so thread time is all of it): decoding the source once,
and scaling + encoding + packetizing each generated layer. The figures are core-% (CPU
seconds per second of wall time, x100) averaged over the run after a warm-up, with the
worker process's whole CPU (from /proc) as a cross-check and the source decode as the
baseline of the same run: the ratio says what a layer costs next to the decode.

    python -m benchmarks.bench_ladder [--seconds 20] [--codec H264|VP8] [--cases 1280x720:2 640x360:1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from media.ladder import LADDER_RIDS, Ladder, layer_sizes

RESULTS = Path(__file__).resolve().parent / "results"
FPS = 30
WARM_UP_SECONDS = 4.0


def encode_clip(codec: str, size: str, seconds: int = 4) -> list[list[bytes]]:
    """Return a clip's frames as RTP payloads, encoded by ffmpeg as a publisher would."""
    with tempfile.TemporaryDirectory() as folder:
        if codec == "H264":
            path = os.path.join(folder, "clip.h264")
            encoder = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
                       "-profile:v", "baseline", "-bf", "0", "-g", "30", "-b:v", "2500k"]
        else:
            path = os.path.join(folder, "clip.ivf")
            encoder = ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8",
                       "-g", "30", "-b:v", "2500k"]
        subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi",
             "-i", f"testsrc2=size={size}:rate={FPS}", "-t", str(seconds), "-pix_fmt", "yuv420p",
             *encoder, path], check=True,
        )
        packer = H264Encoder() if codec == "H264" else Vp8Encoder()
        frames = []
        with av.open(path) as container:
            for packet in container.demux(video=0):
                if packet.size:
                    packet.pts, packet.time_base = len(frames), Fraction(1, FPS)  # raw H.264 has none
                    frames.append(packer.pack(packet)[0])
        return frames


async def run_case(codec: str, size: str, layers: int, seconds: float) -> dict[str, object]:
    """Replay the clip into a ladder worker for ``seconds``; return its CPU figures."""
    frames = encode_clip(codec, size)
    width, height = (int(v) for v in size.split("x"))
    sizes = layer_sizes(width, height, layers)
    parameters = RTCRtpCodecParameters(mimeType=f"video/{codec}", clockRate=90000, payloadType=96)
    received = dict.fromkeys(LADDER_RIDS[:layers], 0)
    ssrcs = {rid: random.getrandbits(32) for rid in LADDER_RIDS[:layers]}
    by_ssrc = {ssrc: rid for rid, ssrc in ssrcs.items()}

    def on_rtp(packet: RtpPacket) -> None:
        received[by_ssrc[packet.ssrc]] += 1

    ladder = Ladder(parameters, ssrcs, on_rtp)
    await ladder.start()
    assert ladder.process is not None
    reports: list[dict[str, float]] = []
    seq, ts = random.randrange(0x8000), random.getrandbits(32)
    start = time.monotonic()
    cpu_start = None
    try:
        index = 0
        while time.monotonic() - start < seconds:
            for payload_index, payload in enumerate(frames[index % len(frames)]):
                ladder.feed(RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, ssrc=1234,
                                      marker=payload_index == len(frames[index % len(frames)]) - 1,
                                      payload=payload))
                seq = (seq + 1) & 0xFFFF
            ts = (ts + 90000 // FPS) & 0xFFFFFFFF
            index += 1
            await asyncio.sleep(max(start + index / FPS - time.monotonic(), 0))
            elapsed = time.monotonic() - start
            if cpu_start is None and elapsed >= WARM_UP_SECONDS:
                cpu_start = (_process_cpu(ladder.process.pid), time.monotonic())
                ladder.cpu = {}
            if cpu_start is not None and ladder.cpu and (not reports or ladder.cpu is not reports[-1]):
                reports.append(ladder.cpu)
        assert cpu_start is not None, "--seconds must exceed the warm-up"
        process_cpu = (_process_cpu(ladder.process.pid) - cpu_start[0]) / (time.monotonic() - cpu_start[1])
    finally:
        await ladder.stop()
    if not reports:
        raise RuntimeError("the worker sent no CPU report: is it decoding?")

    def mean(name: str) -> float:
        return 100 * sum(report[name] for report in reports) / len(reports)

    decode = mean("decode")
    return {
        "codec": codec, "source": size, "decode_core_pct": round(decode, 1),
        "layers": {rid: {"size": "x".join(map(str, sizes[rid])), "core_pct": round(mean(rid), 1),
                         "ratio_to_decode": round(mean(rid) / decode, 2) if decode else None,
                         "packets": received[rid]}
                   for rid in sizes},
        "fps": round(sum(r["fps"] for r in reports) / len(reports), 1),
        "worker_process_core_pct": round(100 * process_cpu, 1),
        "loadavg": os.getloadavg(),
    }


def _process_cpu(pid: int) -> float:
    """Return a process's user + system CPU seconds so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--codec", choices=("H264", "VP8"), default="H264")
    parser.add_argument("--cases", nargs="+", default=["1280x720:2", "640x360:1"],
                        help="SOURCE_SIZE:LAYERS, e.g. 1280x720:2")
    args = parser.parse_args()
    results = []
    for case in args.cases:
        size, _, layers = case.partition(":")
        result = await run_case(args.codec, size, int(layers or 2), args.seconds)
        results.append(result)
        print(f"{args.codec} source {size}: decode {result['decode_core_pct']} core-% "
              f"at {result['fps']} fps; worker process {result['worker_process_core_pct']} core-%; "
              f"load average {' '.join(f'{v:.2f}' for v in result['loadavg'])}")
        for rid, layer in result["layers"].items():  # type: ignore[union-attr]
            print(f"  layer {rid} {layer['size']}: {layer['core_pct']} core-% "
                  f"({layer['ratio_to_decode']}x the decode), {layer['packets']} packets")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ladder-{args.codec.lower()}-{int(time.time())}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
