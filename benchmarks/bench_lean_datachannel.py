"""The lean DataChannel path's own cost per message and per SACK, in one process.

    python -m benchmarks.bench_lean_datachannel [--messages 3000] [--rounds 3] [--source DIR]

An aiortc viewer and an aiortc peer are connected over loopback in this process; the
peer's `events` channel sends `--messages` messages of ~300 bytes (one DATA chunk each,
1 ms apart, so every one is acknowledged) through `media.datachannel.LeanSender`.
The thread CPU time spent in `LeanSender.send` (and, inside it, in the socket send)
and in `SackIngress.receive` is reported per call: the Python and OpenSSL part of the
path without bench_events' processes and load in between. `--source` imports
`media` from another checkout (e.g. `git archive main | tar -x -C /tmp/main`), to
compare with it on the same machine; alternate the two, the figures vary with load.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

TEXT = '[{"type":"chat:new","payload":{"message":"' + "x" * 250 + '"}}]'


async def one_round(dc: Any, messages: int) -> dict[str, float]:
    from aiortc import RTCConfiguration, RTCPeerConnection

    spent = {"send": 0.0, "socket": 0.0, "sack": 0.0, "sends": 0, "sacks": 0}
    send, receive = dc.LeanSender.send, dc.SackIngress.receive

    def timed_send(self: Any, message: Any) -> Any:
        t = time.thread_time()
        try:
            return send(self, message)
        finally:
            spent["send"] += time.thread_time() - t
            spent["sends"] += 1

    def timed_receive(self: Any, data: bytes, queue: Any) -> bool:
        t = time.thread_time()
        try:
            return receive(self, data, queue)
        finally:
            spent["sack"] += time.thread_time() - t
            spent["sacks"] += 1

    config = RTCConfiguration(iceServers=[])
    viewer, server = RTCPeerConnection(config), RTCPeerConnection(config)
    received: list[str] = []
    viewer.createDataChannel("events").on("message", received.append)
    opened: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    server.on("datachannel", opened.set_result)
    try:
        await viewer.setLocalDescription(await viewer.createOffer())
        await server.setRemoteDescription(viewer.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        await viewer.setRemoteDescription(server.localDescription)
        channel = await asyncio.wait_for(opened, 30)
        while channel.readyState != "open":
            await asyncio.sleep(0.01)
        lean = dc.LeanSender(channel)
        for _ in range(100):  # warm up: the socket bound, the SACK ingress installed
            assert lean.send(dc.MessageScratch(TEXT)), "the lean path did not take the message"
            await asyncio.sleep(0.002)
        egress_send = lean.egress.send

        def timed_socket(data: Any) -> None:
            t = time.thread_time()
            try:
                egress_send(data)
            finally:
                spent["socket"] += time.thread_time() - t

        lean.egress.send = timed_socket
        dc.LeanSender.send, dc.SackIngress.receive = timed_send, timed_receive
        try:
            for i in range(messages):
                message = dc.MessageScratch(TEXT + " " * (i % 2))  # a new batch text each time
                if not lean.send(message):
                    raise RuntimeError(f"the lean path refused message {i}: {lean.stats}")
                await asyncio.sleep(0.001)
            await asyncio.sleep(1.0)
        finally:
            dc.LeanSender.send, dc.SackIngress.receive = send, receive
        if len(received) != messages + 100:
            raise RuntimeError(f"{len(received)} of {messages + 100} messages arrived")
        lean.close()
    finally:
        await viewer.close()
        await server.close()
    return {
        "sendUs": 1e6 * (spent["send"] - spent["socket"]) / spent["sends"],
        "socketUs": 1e6 * spent["socket"] / spent["sends"],
        "sackUs": 1e6 * spent["sack"] / max(1, spent["sacks"]),
        "sacks": spent["sacks"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", help="a checkout whose `media` package to measure")
    args = parser.parse_args()
    if args.source:
        sys.path.insert(0, args.source)
    import uvloop

    import media.aiortc_hook  # noqa: F401 - the datagram hook the SACK ingress rides on
    from media import datachannel as dc

    print(f"media.datachannel from {dc.__file__}")
    for n in range(args.rounds):
        r = uvloop.run(one_round(dc, args.messages))
        print(f"round {n + 1}: send {r['sendUs']:.1f} us without the socket call, socket call "
              f"{r['socketUs']:.1f} us, SACK {r['sackUs']:.1f} us ({r['sacks']} SACKs)", flush=True)


if __name__ == "__main__":
    main()
