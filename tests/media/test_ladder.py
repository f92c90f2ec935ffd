"""The server-side ladder: an ffmpeg WHIP publisher sends one layer, viewers get lower ones.

ffmpeg (imageio-ffmpeg's binary, H.264: its WHIP muxer sends nothing else) publishes
640x360; the SFU, with ``ladder_layers=2``, runs a worker process that encodes 320x180
and 160x90 while a viewer needs them. aiortc viewers decode what they get.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np
import pytest
from aiohttp import web
from aiortc.codecs import CODECS
from aiortc.codecs.h264 import H264Encoder
from aiortc.rtp import RtpPacket

from media import SFU
from media.forwarder import TrackForwarder
from media.ladder import LadderForwarder, layer_sizes
from media.ladder_worker import LadderWorker
from media.layers import SimulcastForwarder
from media.room import Room

from .peers import frames_at, inbound, longest_gap, publish, running_sfu, wait_for, watch
from .test_whip_ffmpeg import ENCODERS, whip_app

pytestmark = pytest.mark.timeout(150)

MAX_GAP_SECONDS = 1.5


@contextlib.asynccontextmanager
async def ffmpeg_publisher(sfu: SFU, room_id: str, size: str = "640x360",
                           seconds: int = 60) -> AsyncIterator[asyncio.subprocess.Process]:
    """Publish ffmpeg's test pattern (H.264 baseline, a keyframe a second) over WHIP."""
    runner = web.AppRunner(whip_app(sfu, room_id))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ffmpeg = await asyncio.create_subprocess_exec(
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", f"testsrc=size={size}:rate=30",
        *ENCODERS["h264-baseline"], "-b:v", "1200k", "-an",
        "-t", str(seconds), "-f", "whip", f"http://127.0.0.1:{port}/whip",
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for(lambda: room_id in sfu.rooms and sfu.stats(room_id)["state"] == "live",
                       timeout=15)
        yield ffmpeg
    finally:
        if ffmpeg.returncode is None:
            ffmpeg.terminate()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ffmpeg.communicate(), 10)
        await runner.cleanup()


def alive(pid: int) -> bool:
    """Return whether process ``pid`` still exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_layer_sizes_halve_and_quarter() -> None:
    assert layer_sizes(1280, 720, 2) == {"h": (640, 360), "q": (320, 180)}
    assert layer_sizes(640, 360, 1) == {"h": (320, 180)}
    assert layer_sizes(642, 362, 2) == {"h": (320, 180), "q": (160, 90)}
    with pytest.raises(ValueError):
        layer_sizes(640, 360, 3)


async def test_a_low_viewer_gets_a_generated_layer_and_switches_cleanly() -> None:
    async with running_sfu(ladder_layers=2, ladder_idle_seconds=2.0, connect_timeout_seconds=10.0) as sfu, \
            ffmpeg_publisher(sfu, "ladder"):
        video = sfu.rooms["ladder"].forwarders["video"]
        assert isinstance(video, LadderForwarder)
        full = low = None
        try:
            full, _ = await watch(sfu, "ladder", audio=False)
            await wait_for(lambda: frames_at(full, 640) >= 10, timeout=20)
            await asyncio.sleep(1.0)
            assert video.ladder is None, "the ladder ran with no viewer needing it"

            low, low_id = await watch(sfu, "ladder", audio=False, quality="low")
            await wait_for(lambda: frames_at(low, 160) >= 20, timeout=40)
            ladder = video.ladder
            assert ladder is not None and ladder.running
            pid = ladder.process.pid  # type: ignore[union-attr]
            assert video.viewers_per_layer() == {"f": 1, "h": 0, "q": 1}
            # It starts on the source at once and moves down when the layer exists.
            first_low = next(i for i, (_t, w, _h) in enumerate(low.video_frames) if w == 160)
            assert {(w, h) for _t, w, h in low.video_frames[first_low:]} == {(160, 90)}
            assert longest_gap(low, 0.0) < MAX_GAP_SECONDS
            ssrcs_before, _ = await inbound(low)

            switched = time.monotonic()
            assert sfu.set_quality(low_id, "high") in ("q", "f")
            await wait_for(lambda: frames_at(low, 640, switched) >= 30, timeout=30)
            assert longest_gap(low, switched) < MAX_GAP_SECONDS

            switched = time.monotonic()
            sfu.set_quality(low_id, "low")
            await wait_for(lambda: frames_at(low, 160, switched) >= 30, timeout=30)
            assert longest_gap(low, switched) < MAX_GAP_SECONDS
            ssrcs_after, lost = await inbound(low)
            assert ssrcs_after == ssrcs_before and len(ssrcs_after) == 1
            assert lost < 100, f"{lost} packets counted lost: the sequence numbers jumped"
            assert {w for _t, w, _h in full.video_frames[-10:]} == {640}
            assert video.ladder is ladder and video.ladder_starts == 1
            # The room counts the publisher's packets in, not the worker's.
            stats = sfu.stats("ladder")
            assert stats["packets_in"] == video.layers[video.source_ssrc].packets_in

            # Nobody needs a lower layer any more: the worker stops after the idle time.
            sfu.set_quality(low_id, "high")
            await wait_for(lambda: frames_at(low, 640, time.monotonic() - 0.5) >= 5, timeout=30)
            await wait_for(lambda: video.ladder is None and not alive(pid), timeout=20)
            assert set(video.viewers_per_layer()) == {"f"}
            frames = len(low.video_frames)
            await wait_for(lambda: len(low.video_frames) >= frames + 20, timeout=10)
        finally:
            for viewer in (full, low):
                if viewer is not None:
                    await viewer.close()


async def test_the_worker_goes_with_the_room() -> None:
    async with running_sfu(ladder_layers=1, connect_timeout_seconds=10.0) as sfu, \
            ffmpeg_publisher(sfu, "gone", seconds=30):
        video = sfu.rooms["gone"].forwarders["video"]
        assert isinstance(video, LadderForwarder)
        low, _ = await watch(sfu, "gone", audio=False, quality="low")
        try:
            await wait_for(lambda: frames_at(low, 320) >= 10, timeout=40)
            assert video.ladder is not None
            pid = video.ladder.process.pid  # type: ignore[union-attr]
        finally:
            await low.close()
        await sfu.close_room("gone")
        assert not alive(pid)


async def test_ladder_off_forwards_the_single_layer_as_before() -> None:
    async with running_sfu(connect_timeout_seconds=10.0) as sfu, ffmpeg_publisher(sfu, "plain", seconds=30):
        video = sfu.rooms["plain"].forwarders["video"]
        assert type(video) is TrackForwarder and not isinstance(video, SimulcastForwarder)
        low, _ = await watch(sfu, "plain", audio=False, quality="low")
        try:
            await wait_for(lambda: len(low.video_frames) >= 20, timeout=20)
            assert {(w, h) for _t, w, h in low.video_frames} == {(640, 360)}
            assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_worker(int(p))]
        finally:
            await low.close()


def _is_worker(pid: int) -> bool:
    """Return whether ``pid`` is a ladder worker started by this process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = cmdline.read().split(b"\0")
        with open(f"/proc/{pid}/stat") as stat:
            parent = int(stat.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return parent == os.getpid() and b"media.ladder_worker" in args


async def test_a_vp8_publisher_gets_a_vp8_ladder_and_auto_viewers_use_it() -> None:
    """An aiortc VP8 publisher (640x360): a viewer whose estimate is below the source
    rate moves down to the generated 320x180 layer by itself (auto), like a pinned one."""
    async with running_sfu(ladder_layers=1, connect_timeout_seconds=10.0) as sfu:
        publisher, _ = await publish(sfu, "vp8", audio=False, size=(640, 360))
        viewer = None
        try:
            await wait_for(lambda: "vp8" in sfu.rooms and sfu.stats("vp8")["state"] == "live", timeout=15)
            video = sfu.rooms["vp8"].forwarders["video"]
            assert isinstance(video, LadderForwarder)
            viewer, _ = await watch(sfu, "vp8", audio=False)
            await wait_for(lambda: frames_at(viewer, 640) >= 10, timeout=20)
            await wait_for(lambda: video.ranked()[-1].avg_bps > 0, timeout=10)
            source = video.ranked()[-1]
            track = next(iter(video.policies))
            assert video.ladder is None
            # The viewer's REMB says it carries a third of the source's rate.
            estimate = source.avg_bps / 3
            since = time.monotonic()
            while video.ladder is None or frames_at(viewer, 320, since) < 20:
                assert time.monotonic() - since < 40, "the auto viewer never got the lower layer"
                video.on_remb(track, estimate)
                video.review()
                await asyncio.sleep(0.2)
            assert video.rid_of(track) == "h"
            assert video.viewers_per_layer() == {"f": 0, "h": 1}
        finally:
            if viewer is not None:
                await viewer.close()
            await publisher.close()


async def test_a_dead_worker_sends_its_viewers_back_to_the_source_and_restarts() -> None:
    async with running_sfu(ladder_layers=1, connect_timeout_seconds=10.0) as sfu, \
            ffmpeg_publisher(sfu, "crash", seconds=60):
        video = sfu.rooms["crash"].forwarders["video"]
        assert isinstance(video, LadderForwarder)
        low, _ = await watch(sfu, "crash", audio=False, quality="low")
        try:
            await wait_for(lambda: frames_at(low, 320) >= 10, timeout=40)
            assert video.ladder is not None and video.ladder.process is not None
            ssrcs_before, _ = await inbound(low)
            killed = time.monotonic()
            os.kill(video.ladder.process.pid, signal.SIGKILL)  # the worker this test's SFU started
            # Back on the source at its next keyframe (ffmpeg: one a second)...
            await wait_for(lambda: frames_at(low, 640, killed) >= 10, timeout=20)
            # ...and down again once the ladder restarts after its back-off.
            await wait_for(lambda: video.ladder_starts == 2 and frames_at(low, 320, killed) >= 10,
                           timeout=30)
            ssrcs_after, lost = await inbound(low)
            assert ssrcs_after == ssrcs_before and lost < 100
        finally:
            await low.close()


async def test_a_reconnecting_publisher_switches_between_ladder_and_simulcast() -> None:
    """With the ladder on, a simulcast publisher still gets a plain simulcast forwarder,
    and a single-layer one the ladder's; a reconnect may go either way."""
    codec = CODECS["video"][0]
    room = Room("switch", "seller", codec, keyframe_interval=0.5, remb_bitrate_bps=1_000_000,
                grace_seconds=1.0, idle_seconds=10.0, ladder_layers=1,
                on_state_change=lambda room, state: None, on_idle_expired=lambda room: None)
    try:
        ladder = room.forwarders["video"]
        assert isinstance(ladder, LadderForwarder)
        assert room.video_forwarder(codec) is ladder
        simulcast = room.video_forwarder(codec, ("q", "f"))
        assert type(simulcast) is SimulcastForwarder
        back = room.video_forwarder(codec)
        assert isinstance(back, LadderForwarder) and back is not ladder
        assert room.forwarders["video"] is back
    finally:
        room.end(report=False)
        await room.wait_closed()


def h264_frames(width: int, height: int, count: int) -> list[list[bytes]]:
    """Return ``count`` frames of moving bars encoded by libx264, as RTP payloads."""
    context = av.CodecContext.create("libx264", "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = Fraction(1, 30)
    context.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packer = H264Encoder()
    frames = []
    for index in range(count):
        image = np.roll(np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1)), index * 4, axis=1)
        frame = av.VideoFrame.from_ndarray(np.dstack([image] * 3), format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        for packet in context.encode(frame):
            frames.append(packer.pack(packet)[0])
    return frames


def test_the_worker_keeps_its_numbers_when_the_source_changes_size() -> None:
    """A source that changes resolution (browsers adapt theirs) gets new encoders; the
    layer's sequence numbers run on, and the new sizes are reported."""
    sent: list[bytes] = []
    worker = LadderWorker("H264", 96, {"h": 4321}, sent.append)
    seq = 100
    for number, payloads in enumerate(h264_frames(320, 240, 10) + h264_frames(640, 360, 10)):
        for index, payload in enumerate(payloads):
            worker.on_packet(RtpPacket(payload_type=96, sequence_number=seq, timestamp=number * 3000,
                                       ssrc=99, marker=index == len(payloads) - 1, payload=payload))
            seq += 1
    sizes = [json.loads(data)["sizes"] for data in sent if data[:1] == b"{" and b"sizes" in data]
    assert sizes == [{"f": [320, 240], "h": [160, 120]}, {"f": [640, 360], "h": [320, 180]}]
    packets = [RtpPacket.parse(data) for data in sent if data[:1] != b"{"]
    assert {p.ssrc for p in packets} == {4321} and {p.payload_type for p in packets} == {96}
    seqs = [p.sequence_number for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs)), seqs
    assert len({p.timestamp for p in packets}) >= 18  # a frame out per frame in (x264 zerolatency)
    assert sum(p.marker for p in packets) == len({p.timestamp for p in packets})
