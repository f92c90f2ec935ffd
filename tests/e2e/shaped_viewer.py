"""A WHEP viewer for the shaped-link tests: run inside a network namespace by the test.

Usage: python -m tests.e2e.shaped_viewer URL. Posts an offer to URL, decodes the video
and prints one JSON line per decoded frame ({"t": monotonic time, "w": width}) until
killed; the test reads them (the namespace shares the host's monotonic clock).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError


async def main(url: str) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # nothing leaves the namespace
    pc.addTransceiver("video", direction="recvonly")
    done = asyncio.Event()

    @pc.on("track")
    def on_track(track) -> None:  # type: ignore[no-untyped-def]
        async def read() -> None:
            try:
                while True:
                    frame = await track.recv()
                    print(json.dumps({"t": time.monotonic(), "w": frame.width}), flush=True)
            except MediaStreamError:
                done.set()

        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http, http.post(
        url, data=pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
    ) as resp:
        answer = await resp.text()
        if resp.status != 201:
            print(json.dumps({"error": f"{resp.status} {answer}"}), flush=True)
            return
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    try:
        await done.wait()
    finally:
        await pc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
