"""A relay (media/relay.py): one upstream per room, local fan-out, feedback across the hop.

Two SFUs in one process stand for two workers; the relay subscribes to the origin with
the origin's own WHEP path (`SFU.watch`), as the cluster does over HTTP.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from media import SFU
from media.relay import open_relay
from tests.media.peers import publish, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(120)


def video_ssrc(sdp: str) -> int:
    """Return the first SSRC of the video section (the SFU's sender to this viewer)."""
    video = sdp.split("m=video", 1)[1].split("m=audio", 1)[0]
    return int(re.search(r"a=ssrc:(\d+) ", video).group(1))  # type: ignore[union-attr]


def subscriber(origin: SFU, room_id: str) -> Any:
    async def subscribe(offer: str) -> str:
        session = await origin.watch(room_id, offer, "relay:test")
        return session.answer_sdp

    return subscribe


async def test_one_upstream_feeds_every_local_viewer_and_plis_go_up_throttled() -> None:
    async with running_sfu() as origin, running_sfu(keyframe_interval_ms=1000) as relay:
        publisher, _ = await publish(origin, "show")
        upstream = await open_relay(relay, "show", "origin", subscriber(origin, "show"))
        viewers = [(await watch(relay, "show"))[0] for _ in range(3)]
        try:
            for viewer in viewers:
                await wait_for(lambda v=viewer: len(v.video_frames) >= 10 and v.audio_frames > 0,
                               timeout=30)
            assert len(origin.rooms["show"].viewers) == 1  # the relay: one session for three
            assert relay.rooms["show"].publisher is upstream
            assert relay.rooms["show"].owner is None  # relayed: any publisher may take it over

            # Many PLIs from the relay's viewers: at most one per relay interval goes up.
            await asyncio.sleep(1.2)
            before = origin.rooms["show"].keyframe_requests
            relayed_before = relay.rooms["show"].keyframe_requests
            for _ in range(10):
                for viewer in viewers:
                    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
                    await receiver._send_rtcp_pli(video_ssrc(viewer.pc.remoteDescription.sdp))
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            relayed = relay.rooms["show"].keyframe_requests - relayed_before
            asked = origin.rooms["show"].keyframe_requests - before
            assert 1 <= relayed <= 3, relayed  # ~1.5 s of PLIs under a 1 s throttle
            assert 1 <= asked <= relayed, (asked, relayed)

            # A viewer's NACK is answered from the relay's own history, not the origin's.
            viewer = viewers[0]
            receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
            seqs: list[int] = []
            original = receiver._handle_rtp_packet

            async def spy(packet: Any, arrival_time_ms: int) -> None:
                seqs.append(packet.sequence_number)
                await original(packet, arrival_time_ms)

            receiver._handle_rtp_packet = spy
            await wait_for(lambda: len(seqs) >= 5, timeout=10)
            served_here = relay.rooms["show"].stats().nacks_served
            served_at_origin = origin.rooms["show"].stats().nacks_served
            await receiver._send_rtcp_nack(video_ssrc(viewer.pc.remoteDescription.sdp), seqs[-3:])
            await wait_for(lambda: relay.rooms["show"].stats().nacks_served >= served_here + 3, timeout=10)
            assert origin.rooms["show"].stats().nacks_served == served_at_origin
        finally:
            for viewer in viewers:
                await viewer.close()
            await publisher.close()


async def test_publisher_taking_over_a_relayed_room_keeps_its_viewers() -> None:
    async with running_sfu() as origin, running_sfu() as relay:
        publisher, _ = await publish(origin, "show")
        upstream = await open_relay(relay, "show", "origin", subscriber(origin, "show"))
        viewer, _ = await watch(relay, "show")
        second_publisher = None
        try:
            await wait_for(lambda: len(viewer.video_frames) >= 10, timeout=30)
            # The show moves: its seller publishes to the relay's SFU (the cluster closes
            # the upstream first), and the viewer goes on on the same session.
            await relay.close_session(upstream.id)
            second_publisher, _ = await publish(relay, "show", owner="seller-2")
            count = len(viewer.video_frames)
            await wait_for(lambda: len(viewer.video_frames) >= count + 20, timeout=30)
            assert relay.rooms["show"].owner == "seller-2"
        finally:
            await viewer.close()
            await publisher.close()
            if second_publisher is not None:
                await second_publisher.close()


async def test_a_refused_subscription_leaves_no_room() -> None:
    async with running_sfu() as relay:
        async def refuse(offer: str) -> str:
            raise ConnectionError("origin unreachable")

        with pytest.raises(ConnectionError):
            await open_relay(relay, "show", "origin", refuse)
        assert "show" not in relay.rooms and not relay.sessions


@pytest.mark.parametrize("profile_level_id", ["4d001f", "64001f", "640c1f"])
async def test_a_room_published_in_main_or_high_profile_is_relayed_in_its_own_format(
    profile_level_id: str,
) -> None:
    from tests.media.peers import accept, new_pc
    from tests.media.test_h264_profiles import back_to_aiortc, h264_publisher_offer, viewer_offer

    pc, offer = await h264_publisher_offer(profile_level_id)
    try:
        async with running_sfu() as origin, running_sfu() as relay:
            session = await origin.publish("show", offer, "seller")
            await accept(pc, back_to_aiortc(session.answer_sdp, "42001f"))  # type: ignore[arg-type]
            await open_relay(relay, "show", "origin", subscriber(origin, "show"))
            # The relayed room carries the origin's exact format, so a browser that offers
            # it (and only it) is answered with it.
            codec = relay.rooms["show"].video_codec
            assert codec.mimeType == "video/H264"
            assert codec.parameters["profile-level-id"] == profile_level_id
            viewer, view_offer = await viewer_offer("42001f", relabel=profile_level_id)
            watched = await relay.watch("show", view_offer)
            assert f"profile-level-id={profile_level_id}" in watched.answer_sdp
            await accept(viewer.pc, back_to_aiortc(watched.answer_sdp, "42001f"))
            try:
                await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=30)
            finally:
                await viewer.pc.close()
    finally:
        await pc.close()  # type: ignore[attr-defined]


async def test_a_publisher_taking_over_a_relayed_live_room_is_reported_live() -> None:
    async with running_sfu() as origin, running_sfu() as relay:
        states: list[str] = []
        relay.on_state_change = lambda room_id, state: states.append(state)
        publisher, _ = await publish(origin, "show")
        upstream = await open_relay(relay, "show", "origin", subscriber(origin, "show"))
        viewer, _ = await watch(relay, "show")
        second_publisher = None
        try:
            await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=30)
            assert states == ["live"]  # the relay's media (the cluster keeps it to itself)
            # What the cluster does when the seller publishes here: the relayed room
            # awaits its own publisher, whose first packet is a state change to report.
            await relay.close_session(upstream.id)
            relay.rooms["show"].take_over()
            second_publisher, _ = await publish(relay, "show", owner="seller-2")
            await wait_for(lambda: states[-1:] == ["live"] and len(states) == 2, timeout=30)
            assert relay.rooms["show"].state == "live"
        finally:
            await viewer.close()
            await publisher.close()
            if second_publisher is not None:
                await second_publisher.close()
