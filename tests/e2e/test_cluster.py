"""One show across nodes: three `shopstream serve` processes, one Redis, one Postgres (#16).

The publisher is on node A; aiortc viewers on nodes B and C get media through relays
(each node subscribes once to A over the internal WHEP endpoint). What is asserted is
what viewers see: decoded frames, one SSRC per track (the one their answer announced)
with continuous sequence numbers, chat from C on A and B, and a PLI from a viewer on C
arriving at the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import APP_ROLE
from tests.e2e.test_crash_recovery import free_port, shopstream_command
from tests.factories import Factory
from tests.media.peers import Viewer, accept, local_offer, new_pc, wait_for
from tests.signaling.conftest import EventsClient, ws_client
from tests.signaling.test_whip_http import SDP, livestream, publish_http

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set")
    return url


class Node:
    """One `shopstream serve` process of the cluster (a node, or a supervisor of workers)."""

    def __init__(self, name: str, dsn: str, redis_url: str, prefix: str, secret: str, data_dir: Path,
                 *, workers: int = 1, extra: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / f"{name}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ, "DATABASE_URL": dsn, "DB_APP_ROLE": APP_ROLE, "REDIS_URL": redis_url,
            "REDIS_PREFIX": prefix, "SHOPSTREAM_HOST": "127.0.0.1", "SHOPSTREAM_PORT": str(self.port),
            "SHOPSTREAM_DATA_DIR": str(data_dir), "JWT_SECRET": secret, "NODE_ID": name,
            "SHOPSTREAM_WORKERS": str(workers), "ICE_HOST_ADDRESSES": "127.0.0.1",
            "PUBLISHER_GRACE_SECONDS": "20", "LOG_REQUESTS": "0", "REALTIME_TICK_MS": "50",
            "PUBLIC_URL": self.url, **(extra or {}),
        }
        if workers > 1:
            self.env["WORKER_PORT_BASE"] = str(free_port())  # + index: likely free on loopback
        for name_ in ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "ICE_SERVERS", "SHOPSTREAM_WORKER_INDEX"):
            self.env.pop(name_, None)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *shopstream_command(), "serve", env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 90
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc.returncode is None, self.log.read_text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                assert time.monotonic() < deadline, "node did not start:\n" + self.log.read_text()[-3000:]
                await asyncio.sleep(0.2)

    async def kill(self) -> None:
        """Kill the node the hard way: no shutdown code runs."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 40)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@contextlib.asynccontextmanager
async def cluster(dsn: str, redis_url: str, tmp_path: Path, names: tuple[str, ...],
                  workers: int = 1, extra: dict[str, str] | None = None) -> AsyncIterator[list[Node]]:
    prefix, secret = f"test-cluster-{secrets.token_hex(4)}:", secrets.token_urlsafe(48)
    nodes = [Node(n, dsn, redis_url, prefix, secret, tmp_path / n, workers=workers, extra=extra)
             for n in names]
    try:
        for node in nodes:  # one at a time: the first applies migrations, the others wait
            await node.start()
        yield nodes
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


class RtpViewer:
    """A decoding aiortc viewer that also records every RTP packet's SSRC and sequence number."""

    def __init__(self) -> None:
        self.pc = new_pc()
        self.viewer = Viewer(self.pc)
        self.packets: list[tuple[int, int, int]] = []  # (ssrc, payload type, sequence)
        self.pc.on("track", self.viewer.consume)
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.answer = ""
        self.served_by = ""  # the URL that answered (after any redirect)

    async def watch(self, base_url: str, livestream_id: str) -> None:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(f"{base_url}/api/v1/livestreams/{livestream_id}/watch",
                                   data=await local_offer(self.pc), headers=SDP)
            self.answer = await resp.text()
            assert resp.status == 201, self.answer
            self.served_by = str(resp.url)
        await accept(self.pc, self.answer)
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                receiver = transceiver.receiver
                original = receiver._handle_rtp_packet

                async def spy(packet: Any, arrival_time_ms: int, original: Any = original) -> None:
                    self.packets.append((packet.ssrc, packet.payload_type, packet.sequence_number))
                    await original(packet, arrival_time_ms)

                receiver._handle_rtp_packet = spy

    def video_ssrc(self) -> int:
        """Return the video SSRC the answer announced (the first of its video section)."""
        video = self.answer.split("m=video", 1)[1].split("m=audio", 1)[0]
        return int(re.search(r"a=ssrc:(\d+) ", video).group(1))  # type: ignore[union-attr]

    def assert_continuous(self, minimum: int = 20) -> None:
        """Check the video packets: one SSRC, the announced one, sequence numbers without gaps."""
        ssrc = self.video_ssrc()
        media = [(s, pt, seq) for s, pt, seq in self.packets if s == ssrc]
        others = {s for s, _, _ in self.packets} - {ssrc}
        assert len(media) >= minimum, (len(media), len(self.packets))
        # Anything else may only be retransmissions (RTX on its own SSRC), never another stream.
        assert len(others) <= 1, others
        seqs = [seq for _, _, seq in media]
        steps = [(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:])]
        forward = sum(1 for s in steps if s == 1)
        # Loopback under load may reorder or drop a few; a relay that broke the numbering
        # (a jump to another publisher's or hop's numbers) would show as large steps.
        assert all(s == 1 or s < 100 or s > 0xFFFF - 100 for s in steps), steps
        assert forward >= 0.95 * len(steps), (forward, len(steps))

    async def close(self) -> None:
        await self.viewer.close()


async def test_one_show_across_three_nodes(clean_db: str, redis_url: str, tmp_path: Path) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b", "node-c")) as (a, b, c):
        async with aiohttp.ClientSession(base_url=a.url) as http_a:
            factory = Factory(http_a, clean_db)  # type: ignore[arg-type]
            peers: list[Any] = []
            clients: list[EventsClient] = []
            try:
                seller, buyer = await factory.seller(), await factory.user()
                stream = await livestream(factory, seller)
                publisher, _ = await publish_http(http_a, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                peers.append(publisher)
                # The publisher's PLIs, counted where they arrive: its sender's RTCP.
                plis: list[float] = []
                sender = next(t.sender for t in publisher.getTransceivers() if t.kind == "video")
                original = sender._handle_rtcp_packet

                async def count_pli(packet: Any, original: Any = original) -> None:
                    if getattr(packet, "fmt", None) == 1 and type(packet).__name__ == "RtcpPsfbPacket":
                        plis.append(time.monotonic())
                    await original(packet)

                sender._handle_rtcp_packet = count_pli

                viewers = {node.name: RtpViewer() for node in (b, c)}
                peers.extend(v for v in viewers.values())
                for node, viewer in zip((b, c), viewers.values()):
                    await viewer.watch(node.url, stream["id"])
                for viewer in viewers.values():
                    await wait_for(lambda v=viewer: len(v.viewer.video_frames) >= 20, timeout=60)
                    viewer.assert_continuous()

                # A second viewer on C shares C's relay: the origin serves one session per node.
                second = RtpViewer()
                peers.append(second)
                await second.watch(c.url, stream["id"])
                await wait_for(lambda: len(second.viewer.video_frames) >= 10, timeout=60)

                token = (await factory.admin()).access_token

                async def cluster_view() -> dict[str, Any]:
                    async with aiohttp.ClientSession() as http, http.get(
                        f"{a.url}/api/v1/admin/cluster", headers={"Authorization": f"Bearer {token}"},
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                        return dict(await resp.json())

                def room_of(v: dict[str, Any]) -> dict[str, Any]:
                    return next((r for r in v["rooms"] if r["id"] == stream["id"]), {})

                # Registrations are a heartbeat old: wait for the one that has both viewers of C.
                view = await wait_for_async(
                    lambda v: room_of(v).get("relays") == {"node-b": 1, "node-c": 2}, cluster_view)
                assert {n["id"] for n in view["nodes"]} >= {"node-a", "node-b", "node-c"}
                assert room_of(view)["origin"] == "node-a"
                assert room_of(view)["viewers"] == 3  # media viewers over the cluster
                # The operator's view from the command line: the same directory.
                proc = await asyncio.create_subprocess_exec(
                    *shopstream_command(), "cluster", env=a.env, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT)
                output, _ = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 0, output
                listed = json.loads(output)
                assert {"node-a", "node-b", "node-c"} <= {n["id"] for n in listed["nodes"]}
                assert next(r for r in listed["rooms"] if r["id"] == stream["id"])["origin"] == "node-a"
                node_a = next(n for n in view["nodes"] if n["id"] == "node-a")
                assert node_a["viewers"] == 0  # two relay sessions, nobody watching on A itself

                # A PLI from a viewer on C travels C -> A -> the publisher.
                await asyncio.sleep(1.5)  # past the rooms' keyframe throttles
                before = len(plis)
                viewer_c = viewers["node-c"]
                video_sender_ssrc = viewer_c.video_ssrc()
                receiver = next(t.receiver for t in viewer_c.pc.getTransceivers() if t.kind == "video")
                await receiver._send_rtcp_pli(video_sender_ssrc)
                await wait_for(lambda: len(plis) > before, timeout=10)

                # Chat from C reaches viewers on A and B (events cross nodes through Redis).
                async with aiohttp.ClientSession(base_url=b.url) as http_b, \
                        aiohttp.ClientSession(base_url=c.url) as http_c:
                    on_a = await ws_client(http_a, stream["id"])  # type: ignore[arg-type]
                    on_b = await ws_client(http_b, stream["id"])  # type: ignore[arg-type]
                    talker = await ws_client(http_c, stream["id"], buyer.access_token)  # type: ignore[arg-type]
                    clients += [on_a, on_b, talker]
                    await talker.send("chat:send", message="hello from C", ref="c1")
                    await talker.expect("ack", ref="c1", timeout=15)
                    for listener in (on_a, on_b):
                        got = await listener.expect("chat:new", timeout=15)
                        assert got["message"] == "hello from C"
                    # The viewer count is the cluster's: one viewer on each node.
                    for listener in (on_a, on_b, talker):
                        await listener.expect("viewer:count", count=3, timeout=20)
                    # A highlight made through node A's API reaches viewers on B and C.
                    product = await factory.product(seller, stock=3)
                    url = f"/api/v1/seller/livestreams/{stream['id']}"
                    resp = await http_a.post(f"{url}/products", json={"productId": product["id"]},
                                             headers=seller.headers)
                    assert resp.status in (200, 201), await resp.text()
                    resp = await http_a.post(f"{url}/highlight", json={"productId": product["id"]},
                                             headers=seller.headers)
                    assert resp.status == 200, await resp.text()
                    for listener in (on_b, talker):
                        got = await listener.expect("product:highlighted", timeout=15)
                        assert got["id"] == product["id"]

                # The last viewer of B leaves: B's relay ends after its linger.
                await viewers["node-b"].close()
                await wait_for_async(
                    lambda v: room_of(v).get("relays") == {"node-c": 2}, cluster_view, timeout=60)
            finally:
                for client in clients:
                    await client.close()
                for peer in peers:
                    await peer.close()
                await factory.close()


def children(pid: int) -> list[int]:
    """Return the child processes of `pid` (the supervisor's workers)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


async def test_two_workers_share_one_port_and_a_dead_worker_is_restarted(
    clean_db: str, redis_url: str, tmp_path: Path,
) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("host",), workers=2) as (node,):
        assert node.proc is not None
        workers = children(node.proc.pid)
        assert len(workers) == 2
        async with aiohttp.ClientSession(base_url=node.url) as http:
            factory = Factory(http, clean_db)  # type: ignore[arg-type]
            peers: list[Any] = []
            try:
                token = (await factory.admin()).access_token
                auth = {"Authorization": f"Bearer {token}"}

                async def view() -> dict[str, Any]:
                    # A new connection each time: the kernel may hand it to either worker.
                    async with aiohttp.ClientSession() as fresh:
                        async with fresh.get(f"{node.url}/api/v1/admin/cluster", headers=auth) as resp:
                            assert resp.status == 200, await resp.text()
                            return dict(await resp.json())

                await wait_for_async(lambda v: {n["id"] for n in v["nodes"]} == {"host/w0", "host/w1"}, view)
                seller = await factory.seller()
                stream = await livestream(factory, seller)
                publisher, _ = await publish_http(http, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                peers.append(publisher)
                # Viewers on fresh connections land on either worker (the kernel hashes
                # each connection); add them until both workers serve some. All get media.

                def served(v: dict[str, Any]) -> set[str]:
                    room = next((r for r in v["rooms"] if r["id"] == stream["id"]), None)
                    return {room["origin"], *room["relays"]} if room else set()

                viewers: list[RtpViewer] = []
                while len(viewers) < 4 or (len(viewers) < 16 and served(await view()) != {"host/w0", "host/w1"}):
                    viewer = RtpViewer()
                    peers.append(viewer)
                    viewers.append(viewer)
                    await viewer.watch(node.url, stream["id"])
                    await asyncio.sleep(1.0)
                for viewer in viewers:
                    await wait_for(lambda v=viewer: len(v.viewer.video_frames) >= 20, timeout=90)
                    viewer.assert_continuous()
                # One originates, the other relays (registrations are a heartbeat old).
                await wait_for_async(lambda v: served(v) == {"host/w0", "host/w1"}, view, timeout=60)

                # A worker killed hard is started again by the supervisor and re-registers.
                victim = workers[1]
                os.kill(victim, 9)
                deadline = time.monotonic() + 60
                while True:
                    now = children(node.proc.pid)
                    if len(now) == 2 and victim not in now:
                        break
                    assert time.monotonic() < deadline, now
                    await asyncio.sleep(0.2)
                await wait_for_async(lambda v: len(v["nodes"]) == 2, view, timeout=90)
                # SIGTERM to the supervisor stops every worker, and none is restarted.
                pids = children(node.proc.pid)
                await node.stop()
                assert node.proc.returncode == 0, node.log.read_text()[-2000:]
                assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
            finally:
                for peer in peers:
                    await peer.close()
                await factory.close()


async def wait_for_async(predicate: Any, fetch: Any, timeout: float = 30.0) -> Any:
    """Fetch until `predicate(value)` holds; return the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if predicate(value):
            return value
        assert time.monotonic() < deadline, value
        await asyncio.sleep(0.3)


async def test_a_busy_node_redirects_new_viewers_to_a_less_loaded_one(
    clean_db: str, redis_url: str, tmp_path: Path,
) -> None:
    async with cluster(clean_db, redis_url, tmp_path, ("node-a", "node-b"),
                       extra={"MAX_NODE_VIEWERS": "1"}) as (a, b):
        async with aiohttp.ClientSession(base_url=a.url) as http_a:
            factory = Factory(http_a, clean_db)  # type: ignore[arg-type]
            peers: list[Any] = []
            try:
                seller = await factory.seller()
                stream = await livestream(factory, seller)
                publisher, _ = await publish_http(http_a, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                peers.append(publisher)
                first, second = RtpViewer(), RtpViewer()
                peers += [first, second]
                await first.watch(b.url, stream["id"])
                assert first.served_by.startswith(b.url)
                await asyncio.sleep(2.5)  # B learns the other nodes' load from a heartbeat
                # B is at its limit: a 307 sends the WHEP POST (with its offer) to node A.
                await second.watch(b.url, stream["id"])
                assert second.served_by.startswith(a.url), second.served_by
                for viewer in (first, second):
                    await wait_for(lambda v=viewer: len(v.viewer.video_frames) >= 10, timeout=60)
            finally:
                for peer in peers:
                    await peer.close()
                await factory.close()
