"""Fixtures for the realtime tests: a real Redis, event clients over WebSocket and DataChannel.

Every test session uses its own Redis key/channel prefix, so parallel runs sharing one
Redis server never see each other's rooms.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from aiortc import RTCConfiguration, RTCPeerConnection

from server.config import Secret, Settings
from server.keys import HUB
from signaling.events import decode
from signaling.hub import Participant
from signaling.transports import attach_datachannel
from tests.conftest import make_settings

RUN_PREFIX = f"test-{secrets.token_hex(4)}:"


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set")
    return url


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    """Settings with Redis (a prefix per test) and a short tick, so tests run quickly."""
    return make_settings(
        tmp_path, redis_url=Secret(redis_url), redis_prefix=f"{RUN_PREFIX}{secrets.token_hex(3)}:",
        realtime_tick_ms=50,
    )


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Gather ICE candidates on 127.0.0.1 only (aioice leaves loopback out by default)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


class Inbox:
    """Events a client received, in order; `expect` waits for the next matching one."""

    def __init__(self) -> None:
        self.unread: list[dict[str, Any]] = []
        self.all: list[dict[str, Any]] = []
        self.messages = 0
        self._arrived = asyncio.Event()

    def feed(self, text: str) -> None:
        self.messages += 1
        events = decode(text)
        self.unread.extend(events)
        self.all.extend(events)
        self._arrived.set()

    async def expect(self, kind: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Return (and consume) the first unread event of `kind` whose payload has `fields`."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.unread:
                    payload = event["payload"]
                    if event["type"] == kind and all(payload.get(k) == v for k, v in fields.items()):
                        self.unread.remove(event)
                        return payload
                self._arrived.clear()
                await self._arrived.wait()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e["payload"] for e in self.all if e["type"] == kind]


class EventsClient:
    """A client of the events protocol over the WebSocket or the DataChannel."""

    def __init__(self, send: Any, inbox: Inbox, closer: Any) -> None:
        self._send = send
        self.inbox = inbox
        self._closer = closer

    async def send(self, kind: str, /, **payload: Any) -> None:
        await self._send(json.dumps({"type": kind, "payload": payload}))

    async def send_raw(self, data: str | bytes) -> None:
        await self._send(data)

    async def expect(self, kind: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        return await self.inbox.expect(kind, timeout, **fields)

    async def close(self) -> None:
        await self._closer()


async def ws_client(client: TestClient, livestream_id: str, token: str | None = None) -> EventsClient:
    """Open the events WebSocket and return a client whose welcome has arrived."""
    path = f"/api/v1/livestreams/{livestream_id}/events" + (f"?token={token}" if token else "")
    ws = await client.ws_connect(path)
    inbox = Inbox()

    async def read() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                inbox.feed(msg.data)

    reader = asyncio.create_task(read())

    async def send(data: str | bytes) -> None:
        if isinstance(data, bytes):
            await ws.send_bytes(data)
        else:
            await ws.send_str(data)

    async def close() -> None:
        await ws.close()
        reader.cancel()

    c = EventsClient(send, inbox, close)
    c.welcome = await inbox.expect("welcome")  # type: ignore[attr-defined]
    return c


async def dc_client(
    app: Any, livestream_id: str, participant: Participant | None = None, *, publisher: bool = False,
) -> EventsClient:
    """Connect two real aiortc peers in-process; the server side's `events` channel joins the hub."""
    config = RTCConfiguration(iceServers=[])
    client_pc, server_pc = RTCPeerConnection(config), RTCPeerConnection(config)
    channel = client_pc.createDataChannel("events")
    inbox = Inbox()
    channel.on("message", inbox.feed)
    attached: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @server_pc.on("datachannel")
    def on_datachannel(server_channel: Any) -> None:
        async def attach() -> None:
            try:
                attached.set_result(await attach_datachannel(
                    app[HUB], livestream_id, server_channel, participant, publisher=publisher))
            except Exception as exc:  # noqa: BLE001 - handed to the awaiting test
                attached.set_exception(exc)

        asyncio.ensure_future(attach())

    await client_pc.setLocalDescription(await client_pc.createOffer())
    await server_pc.setRemoteDescription(client_pc.localDescription)
    await server_pc.setLocalDescription(await server_pc.createAnswer())
    await client_pc.setRemoteDescription(server_pc.localDescription)
    await asyncio.wait_for(attached, 20)

    async def send(data: str | bytes) -> None:
        channel.send(data)

    async def close() -> None:
        await client_pc.close()
        await server_pc.close()

    c = EventsClient(send, inbox, close)
    c.channel = channel  # type: ignore[attr-defined]
    c.welcome = await inbox.expect("welcome", timeout=20)  # type: ignore[attr-defined]
    return c


@pytest.fixture
async def closing() -> AsyncIterator[list[EventsClient]]:
    """Collect clients to close at the end of a test."""
    clients: list[EventsClient] = []
    yield clients
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
