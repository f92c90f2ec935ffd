"""The lean DataChannel send path against three WebRTC stacks: aiortc, Chromium, libwebrtc.

Each receiver joins a live room over WHEP with an `events` DataChannel in its offer; the
server sends quiet single events, then bursts whose batches span several SCTP DATA
chunks. Every receiver must get every event exactly once and in order, and the server
must have sent through `media.datachannel.LeanSender` (not aiortc's stock path) and
taken the SACKs through its `SackIngress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from aiortc import RTCSessionDescription

from server.keys import HUB
from signaling.events import decode
from signaling.hub import Hub
from signaling.transports import DataChannelTransport
from tests.factories import Factory, make_livestream
from tests.media.peers import local_offer, new_pc

NODE_MODULES = Path(__file__).resolve().parents[2] / ".venv" / "node" / "node_modules"
QUIET, BURSTS, PER_BURST = 5, 6, 40
FILLER = "x" * 300  # chat long enough that a burst's batch spans several DATA chunks

# One viewer in JavaScript, for Chromium (page.evaluate) and for Node with @roamhq/wrtc.
VIEWER_JS = """
async (base, livestreamId, RTCPeerConnectionClass, onMessage) => {
  const pc = new RTCPeerConnectionClass({iceServers: []});
  pc.addTransceiver('video', {direction: 'recvonly'});
  const channel = pc.createDataChannel('events');
  channel.onmessage = (e) => onMessage(e.data);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    setTimeout(resolve, 3000);
  });
  const resp = await fetch(base + '/api/v1/livestreams/' + livestreamId + '/watch', {
    method: 'POST', headers: {'Content-Type': 'application/sdp'}, body: pc.localDescription.sdp,
  });
  if (resp.status !== 201) throw new Error('watch: ' + resp.status + ' ' + await resp.text());
  await pc.setRemoteDescription({type: 'answer', sdp: await resp.text()});
  return pc;
}
"""

NODE_MAIN = """
const {RTCPeerConnection} = require('@roamhq/wrtc');
const viewer = VIEWER;
const [base, id] = process.argv.slice(1);
viewer(base, id, RTCPeerConnection, (data) => process.stdout.write(JSON.stringify(data) + '\\n'))
  .then((pc) => { process.stdin.on('data', () => { pc.close(); process.exit(0); }); })
  .catch((e) => { console.error(String(e)); process.exit(1); });
""".replace("VIEWER", VIEWER_JS.strip())


class Receiver:
    """What one viewer received, as decoded events."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []

    def feed(self, text: str) -> None:
        self.events.extend(decode(text))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e["payload"] for e in self.events if e["type"] == kind]


async def _aiortc_viewer(base: str, livestream_id: str, receiver: Receiver, stack: contextlib.AsyncExitStack) -> None:
    pc = new_pc()
    stack.push_async_callback(pc.close)
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("events")
    channel.on("message", receiver.feed)
    offer = await local_offer(pc)
    async with aiohttp.ClientSession() as http, http.post(
        f"{base}/api/v1/livestreams/{livestream_id}/watch", data=offer,
        headers={"Content-Type": "application/sdp"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


async def _chromium_viewer(browser: Any, base: str, livestream_id: str, receiver: Receiver,
                           stack: contextlib.AsyncExitStack) -> None:
    context = await browser.new_context(base_url=base)
    stack.push_async_callback(context.close)
    page = await context.new_page()
    await page.expose_function("deliver", receiver.feed)
    await page.goto("/healthz")
    await page.evaluate(
        "async ([base, id]) => { window.pc = await (VIEWER)(base, id, RTCPeerConnection, window.deliver); }"
        .replace("VIEWER", VIEWER_JS.strip()), [base, livestream_id])


async def _node_viewer(base: str, livestream_id: str, receiver: Receiver, stack: contextlib.AsyncExitStack) -> None:
    proc = await asyncio.create_subprocess_exec(
        "node", "-e", NODE_MAIN, base, livestream_id, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
    )

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            receiver.feed(json.loads(line))

    reader = asyncio.create_task(read())

    async def stop() -> None:
        with contextlib.suppress(Exception):  # the process may be gone already
            proc.stdin.write(b"x")  # type: ignore[union-attr]
            await proc.stdin.drain()  # type: ignore[union-attr]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()

    stack.push_async_callback(stop)


async def _publish(base: str, livestream_id: str, stream_key: str, stack: contextlib.AsyncExitStack) -> None:
    """Open the SFU room: a WHIP publisher whose video transceiver has no track."""
    pc = new_pc()
    stack.push_async_callback(pc.close)
    pc.addTransceiver("video", direction="sendonly")
    offer = await local_offer(pc)
    async with aiohttp.ClientSession() as http, http.post(
        f"{base}/api/v1/livestreams/{livestream_id}/publish", data=offer,
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {stream_key}"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))


async def _until(predicate: Any, timeout: float, what: str | Callable[[], str]) -> None:
    """Wait for ``predicate``; ``what`` (or what it returns, at the timeout) explains a failure."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out: {what() if callable(what) else what}") from None


def _sctp_state(transport: DataChannelTransport) -> str:
    """What a stalled viewer's association and lean sender hold (for a failure message)."""
    a = transport.channel.transport
    lean = transport.lean
    return (f"flight {a._flight_size}/cwnd {a._cwnd}, sent {len(a._sent_queue)} "
            f"(retransmit {sum(c._retransmit for c in a._sent_queue)}), outbound {len(a._outbound_queue)}, "
            f"dc queue {len(a._data_channel_queue)}, buffered {transport.channel.bufferedAmount}, "
            f"last sacked {a._last_sacked_tsn}, next tsn {a._local_tsn}, rto {a._rto:.2f}, "
            f"t3 {'ours' if lean is not None and a._t3_handle is not None and a._t3_handle is lean._t3 else a._t3_handle}, "
            f"fast recovery {a._fast_recovery_exit}, lean {lean.stats if lean else None}, "
            f"blocked {lean.blocked if lean else None}, "
            f"ingress {lean.ingress.stats if lean is not None and lean.ingress is not None else None}")


async def test_lean_datachannel_path_is_complete_and_ordered_for_three_webrtc_stacks(
    client: TestClient, factory: Factory, base_url: str, browser: Any,
) -> None:
    if shutil.which("node") is None or not (NODE_MODULES / "@roamhq" / "wrtc").is_dir():
        pytest.skip(f"node with @roamhq/wrtc under {NODE_MODULES} is missing (scripts/test.sh installs it)")
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    conn = await factory.conn()
    stream_key = await conn.fetchval("SELECT stream_key FROM livestreams WHERE id = $1", livestream_id)
    hub: Hub = client.server.app[HUB].hub
    assert hub.options.lean_datachannel, "the lean path is the default"
    receivers = [Receiver("aiortc"), Receiver("chromium"), Receiver("libwebrtc")]

    async with contextlib.AsyncExitStack() as stack:
        await _publish(base_url, livestream_id, stream_key, stack)
        await _aiortc_viewer(base_url, livestream_id, receivers[0], stack)
        await _chromium_viewer(browser, base_url, livestream_id, receivers[1], stack)
        await _node_viewer(base_url, livestream_id, receivers[2], stack)
        await _until(lambda: all(r.of("welcome") for r in receivers), 60, "every viewer's welcome")
        room = hub.rooms[livestream_id]
        transports = [c.transport for c in room.connections if isinstance(c.transport, DataChannelTransport)]
        assert len(transports) >= 3

        seq = chat = 0
        for _ in range(QUIET):  # a quiet room: one small message at a time
            hub.deliver(livestream_id, "stock:update", {"productId": "p", "variantId": "v", "stock": seq})
            seq += 1
            await asyncio.sleep(0.3)
        for _ in range(BURSTS):  # bursts: batches of several kilobytes, several DATA chunks
            for _ in range(PER_BURST):
                hub.deliver(livestream_id, "chat:new", {"id": chat, "message": FILLER})
                chat += 1
                if chat % 4 == 0:
                    hub.deliver(livestream_id, "stock:update", {"productId": "p", "variantId": "v", "stock": seq})
                    seq += 1
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.2)

        def complete(r: Receiver) -> bool:
            stocks, chats = r.of("stock:update"), r.of("chat:new")
            return bool(stocks) and stocks[-1]["stock"] == seq - 1 and bool(chats) and chats[-1]["id"] == chat - 1

        await _until(lambda: all(complete(r) for r in receivers), 60,
                     lambda: "every event at every viewer: " + ", ".join(
                         f"{r.name} {len(r.of('stock:update'))}/{seq} stock, {len(r.of('chat:new'))}/{chat} chat"
                         for r in receivers) + "; associations: " + " | ".join(_sctp_state(t) for t in transports))
        for r in receivers:
            assert [p["stock"] for p in r.of("stock:update")] == list(range(seq)), f"{r.name}: stock in order"
            assert [p["id"] for p in r.of("chat:new")] == list(range(chat)), f"{r.name}: chat complete, in order"
        lean = [t.lean.stats for t in transports if t.lean is not None]
        assert len(lean) == len(transports)
        assert all(s["lean"] > 0 for s in lean), lean
        ingress = [t.lean.ingress.stats for t in transports if t.lean is not None and t.lean.ingress is not None]
        assert len(ingress) == len(transports) and all(s["sacks"] > 0 for s in ingress), ingress
        multi = max(len(json.dumps(e)) for r in receivers for e in r.events if e["type"] == "chat:new")
        assert multi * 4 > 1160, "bursts made batches larger than one DATA chunk"
        assert hub.stats["dropped"] == 0 and hub.stats["shed"] == 0


@contextlib.asynccontextmanager
async def _server_side_viewer(realtime: Any, livestream_id: str, receiver: Receiver) -> AsyncIterator[tuple[Any, Any]]:
    """An aiortc viewer wired straight to an aiortc peer attached to the room: (conn, viewer_pc)."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from signaling.transports import attach_datachannel

    config = RTCConfiguration(iceServers=[])
    viewer_pc, server_pc = RTCPeerConnection(config), RTCPeerConnection(config)
    channel = viewer_pc.createDataChannel("events")
    channel.on("message", receiver.feed)
    attached: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @server_pc.on("datachannel")
    def on_datachannel(server_channel: Any) -> None:
        async def attach() -> None:
            attached.set_result(await attach_datachannel(realtime, livestream_id, server_channel))

        asyncio.ensure_future(attach())

    try:
        await viewer_pc.setLocalDescription(await viewer_pc.createOffer())
        await server_pc.setRemoteDescription(viewer_pc.localDescription)
        await server_pc.setLocalDescription(await server_pc.createAnswer())
        await viewer_pc.setRemoteDescription(server_pc.localDescription)
        conn = await asyncio.wait_for(attached, 30)
        await _until(lambda: bool(receiver.of("welcome")), 30, "welcome")
        yield conn, viewer_pc
    finally:
        await viewer_pc.close()
        await server_pc.close()


async def test_a_viewer_whose_link_goes_dark_is_skipped_then_catches_up_in_order(
    client: TestClient, factory: Factory,
) -> None:
    """Blackhole one aiortc viewer's incoming datagrams while the room keeps talking.

    Its SACKs stop, so the lean path finds the congestion window full and reports
    "would block": the hub keeps the viewer's backlog (chat bounded, urgent kept) and
    skips it. T3 expires through the lean path's lazy timer and aiortc retransmits the
    chunks the lean path had sent; when the link comes back, the SACK that opens the
    window retries the backlog: every stock update arrives once, in order.
    """
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    realtime = client.server.app[HUB]
    hub: Hub = realtime.hub
    hub.options.max_pending = 30
    receiver = Receiver("dark")
    async with _server_side_viewer(realtime, livestream_id, receiver) as (conn, viewer_pc):
        lean = conn.transport.lean
        assert lean is not None
        expired = writable = 0
        t3_expired, on_writable = lean.sctp._t3_expired, lean.on_writable

        def count_expired() -> None:
            nonlocal expired
            expired += 1
            t3_expired()

        def count_writable() -> None:
            nonlocal writable
            writable += 1
            on_writable()

        lean.sctp._t3_expired, lean.on_writable = count_expired, count_writable

        ice = viewer_pc.sctp.transport.transport._connection  # aioice: the viewer's side
        ice.data_received = lambda data, component: None  # the link goes dark
        stock = chat = 0
        for _ in range(40):
            for _ in range(5):
                hub.deliver(livestream_id, "chat:new", {"id": chat, "message": FILLER})
                chat += 1
            hub.deliver(livestream_id, "stock:update", {"productId": "p", "variantId": "v", "stock": stock})
            stock += 1
            await asyncio.sleep(0.05)
        assert lean.stats["window_full"] > 0, lean.stats
        assert conn.backlog > 0 and conn.dropped > 0, "the dark viewer is skipped, its chat bounded"
        assert len(conn.chat) <= hub.options.max_pending
        await _until(lambda: expired > 0, 10, "T3 expires while the link is dark")
        del ice.data_received  # the link is back: the class's method again

        await _until(lambda: receiver.of("stock:update") and receiver.of("stock:update")[-1]["stock"] == stock - 1
                     and receiver.of("chat:new")[-1]["id"] == chat - 1, 60, "the viewer catches up")
        assert [p["stock"] for p in receiver.of("stock:update")] == list(range(stock)), "complete, in order"
        chats = [p["id"] for p in receiver.of("chat:new")]
        assert chats == sorted(set(chats)), "chat in order, no duplicates"
        assert len(chats) + conn.dropped == chat, "every chat message arrived or was counted as dropped"
        assert writable > 0, "a SACK that opened the window retried the backlog"


async def test_lean_path_keeps_aiortc_window_rule_and_one_t3_timer(client: TestClient, factory: Factory) -> None:
    """Quiet single events, then a message larger than aiortc's burst, on one aiortc viewer.

    The lean path must not re-arm T3 per SACK (aiortc's `_t3_start`/`_t3_restart` are
    never called while everything is acknowledged), and a message whose last fragments
    aiortc would hold back goes through aiortc's own path, arriving whole and in order.
    """
    from aiortc import rtcsctptransport as sctp

    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    realtime = client.server.app[HUB]
    hub: Hub = realtime.hub
    receiver = Receiver("aiortc")
    async with _server_side_viewer(realtime, livestream_id, receiver) as (conn, _viewer_pc):
        lean = conn.transport.lean
        assert lean is not None
        association = lean.sctp
        calls: list[str] = []
        for name in ("_t3_start", "_t3_restart"):
            original = getattr(association, name)

            def counted(original: Any = original, name: str = name) -> None:
                calls.append(name)
                original()

            setattr(association, name, counted)
        for seq in range(20):
            hub.deliver(livestream_id, "stock:update", {"productId": "p", "variantId": "v", "stock": seq})
            await asyncio.sleep(0.03)
        await _until(lambda: len(receiver.of("stock:update")) == 20, 10, "the quiet events")
        await _until(lambda: not association._sent_queue, 5, "every chunk acknowledged")
        assert lean.stats["lean"] >= 20 and lean.stats["stock"] == 0, lean.stats
        assert lean.ingress is not None and lean.ingress.stats["sacks"] >= 20, lean.ingress.stats
        assert calls == [], "T3 was not re-armed through aiortc per message or per SACK"

        big = "y" * (5 * sctp.USERDATA_MAX_LENGTH)  # five DATA chunks: more than a burst of four
        hub.deliver(livestream_id, "product:highlighted", {"id": "p", "note": big})
        hub.deliver(livestream_id, "stock:update", {"productId": "p", "variantId": "v", "stock": 20})
        await _until(lambda: len(receiver.of("stock:update")) == 21, 10, "the events after the large one")
        assert lean.stats["stock"] >= 1, lean.stats
        highlighted = receiver.of("product:highlighted")
        assert len(highlighted) == 1 and highlighted[0]["note"] == big, "the large message arrived whole"
        kinds = [e["type"] for e in receiver.events if e["type"] in ("product:highlighted", "stock:update")]
        assert kinds[-2:] == ["product:highlighted", "stock:update"], "in order behind the large message"
