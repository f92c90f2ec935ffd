"""A publisher or a group of viewers, run inside a namespace by test_netns.py.

    python -m tests.deploy.netns_peer publish BASE_URL LIVESTREAM_ID STREAM_KEY
    python -m tests.deploy.netns_peer watch BASE_URL LIVESTREAM_ID --viewers 20 --frames 10 [--turn]

Each prints one JSON line: the publisher when it is live (then runs until SIGTERM), the
viewers when every one decoded `--frames` frames or the timeout passed (exit 1 then).
ICE gathers on the namespace's own address; the ICE server list is always explicit:
empty, or with --turn the one the server hands out at /api/v1/ice-servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

import aiohttp
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from tests.media.peers import PatternTrack, Viewer

SDP = {"Content-Type": "application/sdp"}


async def _offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def publish(base: str, livestream_id: str, key: str) -> int:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver(PatternTrack(320, 240), direction="sendonly")
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{base}/api/v1/livestreams/{livestream_id}/publish",
                               data=await _offer(pc), headers={**SDP, "Authorization": f"Bearer {key}"})
        answer = await resp.text()
        if resp.status != 201:
            print(json.dumps({"status": resp.status, "body": answer}), flush=True)
            return 1
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"status": 201}), flush=True)
        await stop.wait()
    await pc.close()
    return 0


def _nominated_type(pc: RTCPeerConnection) -> str | None:
    # Which local candidate ICE chose: "relay" means the media went through TURN.
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        pair = connection._nominated.get(1)
        if pair is not None:
            return str(pair.local_candidate.type)
    return None


async def watch(base: str, livestream_id: str, viewers: int, frames: int, turn: bool,
                timeout: float) -> int:
    async with aiohttp.ClientSession() as http:
        servers: list[RTCIceServer] = []
        if turn:
            body = await (await http.get(f"{base}/api/v1/ice-servers")).json()
            servers = [RTCIceServer(urls=s["urls"], username=s["username"], credential=s["credential"])
                       for s in body["iceServers"]]
            if not servers:
                print(json.dumps({"error": "the server offered no TURN server"}), flush=True)
                return 1

        async def one() -> tuple[Viewer, dict[str, Any]]:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
            viewer = Viewer(pc)
            pc.on("track", viewer.consume)
            pc.addTransceiver("video", direction="recvonly")
            resp = await http.post(f"{base}/api/v1/livestreams/{livestream_id}/watch",
                                   data=await _offer(pc), headers=SDP)
            answer = await resp.text()
            info = {"status": resp.status, "links": len(resp.headers.getall("Link", [])),
                    "answer": answer if resp.status == 201 else answer[:500],
                    "location": resp.headers.get("Location")}
            if resp.status == 201:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            return viewer, info

        started = time.monotonic()
        joined = await asyncio.gather(*(one() for _ in range(viewers)))
        deadline = started + timeout
        while time.monotonic() < deadline:
            if all(len(v.video_frames) >= frames for v, _ in joined):
                break
            await asyncio.sleep(0.2)
        report = [
            {**info, "frames": len(v.video_frames), "nominated": _nominated_type(v.pc),
             "seconds": round(v.video_frames[frames - 1][0] - started, 2)
             if len(v.video_frames) >= frames else None}
            for v, info in joined
        ]
        for viewer, info in joined:
            await viewer.close()
            if info["location"]:
                await http.delete(base + info["location"])
    print(json.dumps({"viewers": report}), flush=True)
    return 0 if all(r["frames"] >= frames for r in report) else 1


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish")
    p.add_argument("base")
    p.add_argument("livestream_id")
    p.add_argument("key")
    w = sub.add_parser("watch")
    w.add_argument("base")
    w.add_argument("livestream_id")
    w.add_argument("--viewers", type=int, default=1)
    w.add_argument("--frames", type=int, default=10)
    w.add_argument("--turn", action="store_true")
    w.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    if args.command == "publish":
        return asyncio.run(publish(args.base, args.livestream_id, args.key))
    return asyncio.run(watch(args.base, args.livestream_id, args.viewers, args.frames, args.turn,
                             args.timeout))


if __name__ == "__main__":
    sys.exit(main())
