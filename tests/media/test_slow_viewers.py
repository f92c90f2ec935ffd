"""A dead or stuck viewer never delays the others; the SFU also runs under uvloop."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import uvloop

from .peers import publish, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(60)


def _fps(frames: list[tuple[float, int, int]], since: float) -> float:
    recent = [t for t, _, _ in frames if t >= since]
    return len(recent) / (time.monotonic() - since)


async def test_dead_and_stuck_viewers_do_not_delay_healthy_ones() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        healthy, _ = await watch(sfu, "r")
        dead, _ = await watch(sfu, "r")
        stuck, stuck_id = await watch(sfu, "r")
        try:
            await wait_for(lambda: all(len(v.video_frames) >= 10 for v in (healthy, dead, stuck)))
            # Dead: its sockets vanish without DTLS close; the SFU keeps sending into the void.
            connection = dead.pc.getTransceivers()[0].receiver.transport.transport._connection
            for protocol in connection._protocols:
                protocol.transport.close()
            # Stuck: the server-side socket towards it refuses every datagram, as a full
            # kernel buffer would (EAGAIN): the SFU must drop for it alone and count it.
            session = sfu.sessions[stuck_id]
            for transceiver in session.pc.getTransceivers():
                sender = transceiver.sender
                assert sender.egress is not None

                def refuse(data: bytes) -> None:
                    raise BlockingIOError("buffer full")

                sender.egress.send = refuse
                for track in sfu.rooms["r"].viewers[stuck_id].tracks.values():
                    track.send = refuse
            drops_before = sfu.stats("r")["drops"]
            since = time.monotonic()
            await asyncio.sleep(3)
            assert _fps(healthy.video_frames, since) > 25  # the stream runs at 30 fps
            assert sfu.stats("r")["drops"] - drops_before > 60
        finally:
            for client in (healthy, dead, stuck):
                await client.close()
            await publisher.close()


def test_forwarding_under_uvloop() -> None:
    """The server may run on uvloop: packets leave through a duplicated socket there."""

    async def scenario() -> tuple[int, int, int, int]:
        async with running_sfu() as sfu:
            publisher, _ = await publish(sfu, "r")
            viewer, viewer_id = await watch(sfu, "r")
            try:
                await wait_for(lambda: len(viewer.video_frames) >= 20, timeout=15)
                egress = sfu.rooms["r"].viewers[viewer_id].senders["video"].egress
                assert egress is not None and egress._dup is not None  # the raw-socket path
                fds = len(os.listdir("/proc/self/fd"))
                for _ in range(10):  # join/leave cycles must release the duplicates
                    client, session_id = await watch(sfu, "r", audio=True)
                    entry = sfu.rooms["r"].viewers[session_id]
                    await wait_for(lambda e=entry: len(e.tracks) == 2, timeout=10)
                    await sfu.close_session(session_id)
                    await client.close()
                await asyncio.sleep(0.3)
                return (len(viewer.video_frames), sfu.stats("r")["drops"], fds,
                        len(os.listdir("/proc/self/fd")))
            finally:
                await viewer.close()
                await publisher.close()

    frames, drops, fds_before, fds_after = uvloop.run(scenario())
    assert frames >= 20 and drops == 0
    assert fds_after <= fds_before + 2
