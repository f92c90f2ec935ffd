"""The lean DataChannel path's own cost per message and per SACK, in one process.

    python -m benchmarks.bench_lean_datachannel [--messages 3000] [--rounds 3] [--source DIR]
    python -m benchmarks.bench_lean_datachannel --viewers 100 [--rate 10] [--seconds 8] [--source DIR]

An aiortc viewer and an aiortc peer are connected over loopback in this process; the
peer's `events` channel sends `--messages` messages of ~300 bytes (one DATA chunk each,
1 ms apart, so every one is acknowledged) through `media.datachannel.LeanSender`.
The thread CPU time spent in `LeanSender.send` (and, inside it, in the socket send)
and in `SackIngress.receive` is reported per call: the Python and OpenSSL part of the
path without bench_events' processes and load in between. `--source` imports
`media` from another checkout (e.g. `git archive main | tar -x -C /tmp/main`), to
compare with it on the same machine; alternate the two, the figures vary with load.

With `--viewers N`, N aiortc viewers run in a client process (ICE on 127.0.0.1) and this
process holds the N server-side peers: every `1/--rate` s one ~300-byte message goes to
every viewer through its `LeanSender`, as the hub's fan-out does with a batch. This
process's CPU time over the window, less an idle window's rate measured just before,
divided by messages × viewers, is the lean path's whole cost per batch per viewer: the
send (Python, OpenSSL, the kernel's `send`) and every SACK it brings back (the kernel's
receive, uvloop, aioice, the SACK ingress), without the hub and the server around it.
The fan-out loop's own thread time is reported apart ("send"); the rest is mostly SACKs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def _viewer_process(count: int, pipe: Any) -> None:
    import uvloop

    uvloop.run(_viewers(count, pipe))


async def _viewers(count: int, pipe: Any) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from media.aiortc_hook import ice_host_addresses

    loop = asyncio.get_running_loop()
    received = [0] * count
    peers = []
    for i in range(count):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peers.append(pc)

        def on_message(_: Any, i: int = i) -> None:
            received[i] += 1

        pc.createDataChannel("events").on("message", on_message)
        with ice_host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        pipe.send((pc.localDescription.sdp, pc.localDescription.type))
        sdp, kind = await loop.run_in_executor(None, pipe.recv)
        await pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
    await loop.run_in_executor(None, pipe.recv)  # "report"
    pipe.send(received)
    await loop.run_in_executor(None, pipe.recv)  # "close"
    for pc in peers:
        await pc.close()


async def many_viewers(dc: Any, count: int, rate: float, seconds: float) -> dict[str, float]:
    import multiprocessing as mp

    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from media.aiortc_hook import ice_host_addresses

    loop = asyncio.get_running_loop()
    ours, theirs = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_viewer_process, args=(count, theirs), daemon=True)
    proc.start()
    servers: list[Any] = []
    channels: list[Any] = []
    try:
        for _ in range(count):
            sdp, kind = await loop.run_in_executor(None, ours.recv)
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            servers.append(pc)
            opened: asyncio.Future[Any] = loop.create_future()
            pc.on("datachannel", opened.set_result)
            await pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
            with ice_host_addresses(["127.0.0.1"]):
                await pc.setLocalDescription(await pc.createAnswer())
            ours.send((pc.localDescription.sdp, pc.localDescription.type))
            channels.append(opened)
        channels = [await asyncio.wait_for(c, 60) for c in channels]
        for channel in channels:
            while channel.readyState != "open":
                await asyncio.sleep(0.01)
        senders = [dc.LeanSender(channel) for channel in channels]
        outcome = {True: 0, False: 0, None: 0}
        sent = 0

        async def fan_out(n: int, timed: list[float] | None = None) -> None:
            nonlocal sent
            for i in range(n):
                message = dc.MessageScratch(TEXT + " " * (i % 2))  # a new batch text each time
                t = time.thread_time()
                for lean in senders:
                    outcome[lean.send(message)] += 1
                if timed is not None:
                    timed[0] += time.thread_time() - t
                sent += 1
                await asyncio.sleep(1 / rate)

        await fan_out(int(rate))  # warm up: sockets bound, SACK ingresses installed
        await asyncio.sleep(1.0)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(2.0)
        idle = (time.process_time() - cpu0) / (time.perf_counter() - t0)
        before = dict(outcome)
        timed = [0.0]
        sacks0 = sum(lean.ingress.stats["sacks"] for lean in senders if lean.ingress)
        times0 = os.times()
        cpu0, t0 = time.process_time(), time.perf_counter()
        await fan_out(int(rate * seconds), timed)
        await asyncio.sleep(0.5)  # the last SACKs
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        times = os.times()
        sacks = sum(lean.ingress.stats["sacks"] for lean in senders if lean.ingress) - sacks0
        batches = int(rate * seconds)
        await asyncio.sleep(1.0)
        ours.send("report")
        received = await loop.run_in_executor(None, ours.recv)
        ours.send("close")
        if sum(received) != sent * count or outcome[False] or outcome[None]:
            raise RuntimeError(f"{sum(received)} of {sent * count} messages arrived; sends {outcome}")
        lean_sends = outcome[True] - before[True]
        net = cpu - idle * wall
        for lean in senders:
            lean.close()
        return {
            "perBatchPerViewerUs": 1e6 * net / (batches * count),
            "sendUs": 1e6 * timed[0] / lean_sends,
            "restUs": 1e6 * (net - timed[0]) / lean_sends,
            "sacksPerBatch": sacks / lean_sends,
            "idleCore": idle,
            # user and system (kernel) time, idle not subtracted
            "userUs": 1e6 * (times.user - times0.user) / (batches * count),
            "systemUs": 1e6 * (times.system - times0.system) / (batches * count),
        }
    finally:
        for pc in servers:
            await pc.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", help="a checkout whose `media` package to measure")
    parser.add_argument("--viewers", type=int, default=0, help="N viewers in a client process (see above)")
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second with --viewers")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds with --viewers")
    args = parser.parse_args()
    if args.source:
        sys.path.insert(0, args.source)
    import uvloop

    import media.aiortc_hook  # noqa: F401 - the datagram hook the SACK ingress rides on
    from media import datachannel as dc

    print(f"media.datachannel from {dc.__file__}")
    if args.source:  # `benchmarks` (the viewers' process under spawn) from this checkout
        sys.path.remove(args.source)
    if args.viewers:
        # (the viewers' process imports this checkout's `media`: only this process is measured)
        for n in range(args.rounds):
            load = os.getloadavg()[0]
            r = uvloop.run(many_viewers(dc, args.viewers, args.rate, args.seconds))
            print(f"round {n + 1}: {r['perBatchPerViewerUs']:.1f} us per batch per viewer ({args.viewers} aiortc "
                  f"viewers, {args.rate:g} msg/s): fan-out loop {r['sendUs']:.1f} us, the rest (SACKs: "
                  f"{r['sacksPerBatch']:.2f} per batch) {r['restUs']:.1f} us; user {r['userUs']:.1f} us, kernel "
                  f"{r['systemUs']:.1f} us; idle {r['idleCore']:.3f} core; "
                  f"load {load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
        return
    for n in range(args.rounds):
        r = uvloop.run(one_round(dc, args.messages))
        print(f"round {n + 1}: send {r['sendUs']:.1f} us without the socket call, socket call "
              f"{r['socketUs']:.1f} us, SACK {r['sackUs']:.1f} us ({r['sacks']} SACKs)", flush=True)


if __name__ == "__main__":
    main()
