"""Real publishers and viewers through the SFU: frames arrive, decoded at the right size."""

from __future__ import annotations

import threading

import pytest

from .peers import publish, running_sfu, wait_for, watch

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("video_mime", ["video/VP8", "video/H264"])
async def test_viewers_decode_publisher_frames(video_mime: str) -> None:
    async with running_sfu() as sfu:
        publisher, _ = await publish(sfu, "room-1", video_mime=video_mime, size=(320, 240))
        viewers = [(await watch(sfu, "room-1"))[0] for _ in range(3)]
        try:
            await wait_for(lambda: all(len(v.video_frames) >= 30 for v in viewers), timeout=20)
            await wait_for(lambda: all(v.audio_frames >= 10 for v in viewers), timeout=10)
            for viewer in viewers:
                assert {(w, h) for _, w, h in viewer.video_frames} == {(320, 240)}
            stats = sfu.stats("room-1")
            assert stats["viewers"] == 3
            assert stats["state"] == "live"
            assert stats["packets_out"] > stats["packets_in"] > 0
            # The SFU never decodes: no aiortc decoder thread runs for its receivers
            # (each decoding viewer here has one video and one audio decoder thread).
            decoders = [t for t in threading.enumerate() if t.name.endswith("-decoder")]
            assert len(decoders) == 2 * len(viewers)
        finally:
            for viewer in viewers:
                await viewer.close()
            await publisher.close()
