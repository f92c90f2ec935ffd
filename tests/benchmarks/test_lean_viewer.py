"""The load generator's lean viewer (benchmarks/lean.py) against a real SFU over real ICE/DTLS:
it counts what a normal aiortc viewer receives, and reports packets the server did not send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection

from benchmarks.bench_cluster import (
    LOOPBACK,
    ROOM,
    build_app,
    connect,
    delay_rows,
    summarize,
    viewer,
)
from benchmarks.bench_sfu import CountingSink, ReplayTrack, encode_clip
from benchmarks.lean import LeanReceiver, LeanViewer, SendLog
from media import SFU, MediaSettings


@pytest.fixture
async def show() -> AsyncIterator[tuple[str, SFU, SendLog]]:
    """An SFU behind the benchmark's loopback WHIP/WHEP endpoints, with a clip being published."""
    sfu = SFU(MediaSettings(ice_servers=[], ice_host_addresses=LOOPBACK))
    runner = web.AppRunner(build_app(sfu, "origin", None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    publisher.addTransceiver(ReplayTrack(await asyncio.to_thread(encode_clip)), direction="sendonly")
    publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await connect(publisher, f"{base}/publish")
    log = SendLog()
    log.attach(publisher)
    try:
        yield base, sfu, log
    finally:
        await publisher.close()
        await sfu.close()
        await runner.cleanup()


async def _settled(lean: LeanViewer, sink: CountingSink, seconds: float) -> dict[str, Any]:
    """Return both viewers' packet and frame counts over a window of ``seconds``."""
    lean.drain()
    lean0, sink0 = lean.snapshot(), sink.snapshot()
    await asyncio.sleep(seconds)
    lean.drain()
    lean1, sink1 = lean.snapshot(), sink.snapshot()
    return {
        "lean_video": lean1["video_packets"] - lean0["video_packets"],
        "lean_frames": lean1["frames"] - lean0["frames"],
        "lean_lost": lean1["lost"] - lean0["lost"],
        "aiortc_video": sink1["packets"] - sink0["packets"],
        "aiortc_frames": sink1["frames"] - sink0["frames"],
        "aiortc_lost": (sink1["expected"] - sink1["packets"]) - (sink0["expected"] - sink0["packets"]),
    }


async def test_lean_viewer_counts_what_an_aiortc_viewer_receives(show: tuple[str, SFU, SendLog]) -> None:
    base, sfu, log = show
    receiver = LeanReceiver()
    async with aiohttp.ClientSession() as http:
        lean = LeanViewer(f"{base}/watch", timing=True)
        await lean.join(http)
        receiver.add(lean)
        pc, sink = await viewer(f"{base}/watch")
        assert isinstance(sink, CountingSink)
        await asyncio.sleep(1.5)  # both past their first keyframe
        counts = await _settled(lean, sink, 3.0)
        # The same video packets reach both (a few may be in flight at either snapshot).
        assert counts["aiortc_video"] > 300
        assert abs(counts["lean_video"] - counts["aiortc_video"]) <= 0.03 * counts["aiortc_video"], counts
        assert abs(counts["lean_frames"] - counts["aiortc_frames"]) <= 3, counts
        assert counts["lean_lost"] == counts["aiortc_lost"] == 0, counts
        snapshot = lean.snapshot()
        assert snapshot["ssrcs"] == 2 and snapshot["packets"] > snapshot["video_packets"]  # audio too
        # The server sees a normal viewer: consent and RTCP still flow through aioice/aiortc.
        assert pc.connectionState == lean.pc.connectionState == "connected"
        assert len(sfu.rooms[ROOM].viewers) == 2
        # Timing: the publisher's send and the kernel's arrival of the same payloads.
        delays = log.delays_ms([lean])
        assert len(delays) > 300 and all(0 <= d < 1000 for d in delays), delays[:10]
        receiver.remove(lean)
        await lean.leave(http)
        await pc.close()
    await receiver.close()


async def test_lean_viewer_reports_packets_the_server_did_not_send(show: tuple[str, SFU, SendLog]) -> None:
    base, sfu, _ = show
    receiver = LeanReceiver()
    async with aiohttp.ClientSession() as http:
        lean = LeanViewer(f"{base}/watch")
        await lean.join(http)
        receiver.add(lean)
        await asyncio.sleep(1.0)
        forwarder = sfu.rooms[ROOM].forwarders["video"]
        track = next(v for v in forwarder.viewers if v.ssrc in lean.streams)
        dropped = 0
        send = track.send

        def drop_every_seventh(data: Any) -> None:
            nonlocal dropped
            if track.packets % 7 == 3:
                dropped += 1  # "sent" as far as the server knows: only the client can tell
                return
            send(data)

        lost_before = lean.snapshot()["lost"]
        track.send = drop_every_seventh
        await asyncio.sleep(2.0)
        track.send = send
        await asyncio.sleep(1.0)  # later packets show the last gaps
        lean.drain()
        lost = lean.snapshot()["lost"] - lost_before
        assert dropped > 40
        assert lost == dropped, (lost, dropped)
        assert lean.socket_drops() == 0  # the client kept up: the loss is the server's
        receiver.remove(lean)
        await lean.leave(http)
    await receiver.close()


async def test_trace_splits_each_packets_delay_into_parts_that_add_up(show: tuple[str, SFU, SendLog]) -> None:
    """bench_cluster's /trace: the server's stamps of a timed viewer's packets, joined with the
    publisher's send and the viewer's kernel arrival, split each delay into its parts."""
    base, _, log = show
    receiver = LeanReceiver()
    async with aiohttp.ClientSession() as http:
        lean = LeanViewer(f"{base}/watch", timing=True)
        await lean.join(http)
        receiver.add(lean)
        await asyncio.sleep(1.0)
        video = [ssrc for ssrc, stream in lean.streams.items() if stream.kind == "video"]
        async with http.post(f"{base}/trace", json={"ssrcs": video}) as resp:
            assert (await resp.json())["traced"] == 1
        async with http.get(f"{base}/trace") as resp:
            await resp.json()
        lean.arrivals.clear()
        await asyncio.sleep(2.0)
        async with http.get(f"{base}/trace") as resp:
            trace = await resp.json()
        lean.drain()
        rows = delay_rows(log, [lean], trace)
        assert len(rows) > 100, len(rows)
        for total, wait, working, ingress, fanout, kernel, burst in rows:
            assert abs(total - (wait + ingress + fanout + kernel)) < 1e-3
            assert 0 <= working <= wait + 1e-6 and ingress >= 0 and fanout >= 0 and burst >= 0
            assert 0 <= kernel < 50  # loopback: the send is the arrival, give or take a busy core
        figures = summarize(rows)
        assert figures["packets"] == len(rows) and figures["total"]["p50"] <= figures["total"]["p99"]
        tail = figures["tail"]
        assert abs(tail["total"] - sum(tail[k] for k in ("socket_wait", "ingress", "in_fanout", "kernel"))) < 1e-3
        receiver.remove(lean)
        await lean.leave(http)
    await receiver.close()
