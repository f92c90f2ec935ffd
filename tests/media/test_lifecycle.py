"""Publisher and viewer lifecycle: conflicts, pause/resume, limits, cleanup, leaks."""

from __future__ import annotations

import asyncio
import gc
import os

import pytest
from aiortc import RTCPeerConnection

from media import SFU, PublisherConflict, RoomFull, RoomNotFound, SessionNotFound

from .peers import (
    accept,
    local_offer,
    loopback_settings,
    new_pc,
    publish,
    running_sfu,
    wait_for,
    watch,
)

pytestmark = pytest.mark.timeout(120)


async def _publisher_offer() -> str:
    pc = new_pc()
    pc.addTransceiver("video", direction="sendonly")
    try:
        return await local_offer(pc)
    finally:
        await pc.close()


async def test_second_publisher_is_a_conflict() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r", owner="alice")
        try:
            await wait_for(lambda: sfu.stats("r")["state"] == "live")
            with pytest.raises(PublisherConflict):
                await sfu.publish("r", await _publisher_offer(), "mallory")
            with pytest.raises(PublisherConflict):  # the owner's session is alive
                await sfu.publish("r", await _publisher_offer(), "alice")
        finally:
            await publisher.close()


async def test_pause_resume_and_grace_expiry() -> None:
    states: list[tuple[str, str]] = []
    counts: list[int] = []
    sfu = SFU(
        loopback_settings(publisher_grace_seconds=1.5, publisher_idle_timeout_seconds=3.0),
        on_state_change=lambda room, state: states.append((room, state)),
        on_viewer_count=lambda room, count: counts.append(count),
    )
    try:
        first, _ = await publish(sfu, "r", owner="alice")
        viewer, _ = await watch(sfu, "r")
        await wait_for(lambda: len(viewer.video_frames) >= 10)
        await first.close()  # the publisher drops
        await wait_for(lambda: sfu.stats("r")["state"] == "paused")
        seen = len(viewer.video_frames)

        second, _ = await publish(sfu, "r", owner="alice")  # reconnect while paused
        await wait_for(lambda: sfu.stats("r")["state"] == "live")
        await wait_for(lambda: len(viewer.video_frames) >= seen + 10)
        assert {(w, h) for _, w, h in viewer.video_frames} == {(320, 240)}

        await second.close()
        await wait_for(lambda: "r" not in sfu.rooms, timeout=10)  # the idle timeout expires
        assert [s for _, s in states] == ["live", "paused", "live", "paused", "ended"]
        assert counts[0] == 1 and counts[-1] == 0
        assert sfu.sessions == {}
        await wait_for(lambda: viewer.pc.connectionState == "closed", timeout=5)
        await viewer.close()
    finally:
        await sfu.close()


async def test_owner_replaces_dead_publisher_session() -> None:
    async with running_sfu(publisher_stale_seconds=0.5, publisher_grace_seconds=30) as sfu:
        first, first_id = await publish(sfu, "r", owner="alice")
        await wait_for(lambda: sfu.stats("r")["packets_in"] > 20)
        # The client vanishes without closing: stop its media but keep the server's view.
        for transceiver in first.getTransceivers():
            await transceiver.sender.stop()
        await asyncio.sleep(0.8)
        second, second_id = await publish(sfu, "r", owner="alice")
        assert first_id not in sfu.sessions and second_id in sfu.sessions
        await first.close()
        await second.close()


async def test_viewer_limit_close_session_and_close_room() -> None:
    async with running_sfu(max_viewers_per_room=2) as sfu:
        publisher, publisher_id = await publish(sfu, "r")
        (v1, id1), (v2, _) = await watch(sfu, "r"), await watch(sfu, "r")
        with pytest.raises(RoomFull):
            await watch(sfu, "r")
        await sfu.close_session(id1)
        assert sfu.stats("r")["viewers"] == 1
        with pytest.raises(SessionNotFound):
            await sfu.close_session(id1)
        v3, _ = await watch(sfu, "r")  # the freed slot can be used again
        await sfu.close_room("r")
        assert sfu.sessions == {} and sfu.rooms == {}
        with pytest.raises(RoomNotFound):
            sfu.stats("r")
        for client in (v1, v2, v3):
            await client.close()
        await publisher.close()
        assert publisher_id not in sfu.sessions


async def test_ice_failure_cleans_up_the_session() -> None:
    async with running_sfu(connect_timeout_seconds=1.0) as sfu:
        publisher, _ = await publish(sfu, "r")
        pc = new_pc()
        pc.addTransceiver("video", direction="recvonly")
        offer = await local_offer(pc)
        await pc.close()  # the viewer is gone before ICE can run
        session = await sfu.watch("r", offer, None)
        assert sfu.stats("r")["viewers"] == 1
        await wait_for(lambda: session.id not in sfu.sessions, timeout=5)
        assert sfu.stats("r")["viewers"] == 0
        assert session.pc.connectionState == "closed"
        await publisher.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_join_leave_cycles_leak_nothing() -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "r")
        viewer, _ = await watch(sfu, "r")  # a steady viewer keeps the room busy
        await wait_for(lambda: len(viewer.video_frames) >= 5)

        async def cycle() -> None:
            client, session_id = await watch(sfu, "r", audio=True)
            entry = sfu.rooms["r"].viewers[session_id]
            # Both sides are done connecting (closing a peer connection in the middle of
            # aiortc's own connect task makes that task fail, and pytest keeps its log).
            await wait_for(lambda: client.pc.connectionState == "connected"
                           and len(entry.tracks) == 2, timeout=10)
            await sfu.close_session(session_id)
            await client.close()

        await cycle()  # warm up lazily created resources
        gc.collect()
        fds, tasks = _open_fds(), len(asyncio.all_tasks())
        for _ in range(20):
            await asyncio.gather(*(cycle() for _ in range(10)))
        await asyncio.sleep(0.5)
        gc.collect()
        room = sfu.rooms["r"]
        assert len(room.viewers) == 1
        assert all(len(f.viewers) + len(f.waiting) <= 1 for f in room.forwarders.values())
        assert len(sfu.sessions) == 2 and not sfu._timeouts
        assert _open_fds() <= fds + 2
        assert len(asyncio.all_tasks()) <= tasks + 2
        # Memory: no peer connection of a finished cycle survives (2 server + 2 client).
        live = [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)]
        assert len(live) <= 4
        frames = len(viewer.video_frames)
        await wait_for(lambda: len(viewer.video_frames) > frames + 10)  # still forwarding
        await viewer.close()
        await publisher.close()


async def test_dtls_failure_cleans_up_the_session() -> None:
    async with running_sfu(connect_timeout_seconds=30) as sfu:
        publisher, _ = await publish(sfu, "r")
        pc = new_pc()
        pc.addTransceiver("video", direction="recvonly")
        offer = await local_offer(pc)
        # A fingerprint that does not match the client's certificate: ICE succeeds, the
        # DTLS handshake completes, and the peer identity check fails.
        line = next(x for x in offer.splitlines() if x.startswith("a=fingerprint:sha-256 "))
        digest = line.split()[1]
        forged = ("00" if not digest.startswith("00") else "11") + digest[2:]
        session = await sfu.watch("r", offer.replace(digest, forged), None)
        await accept(pc, session.answer_sdp)
        await wait_for(lambda: session.id not in sfu.sessions, timeout=10)  # not the 30 s timeout
        assert sfu.stats("r")["viewers"] == 0
        await pc.close()
        await publisher.close()
