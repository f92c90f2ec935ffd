"""Fuzz the event protocol over the WebSocket and the DataChannel: never an internal error.

Hypothesis generates client messages: well-formed ones with real and wrong ids, wrong
types in every field, unknown and server-side event types, random text, deep brackets
(`[` x 5,000), huge texts, binary frames, escaped NUL and lone surrogates. After each
one a probe (an unknown type carrying a fresh `ref`) is sent: messages are answered in
order, so when the probe's `error` arrives the fuzzed message was fully handled. The
assertion: no `internal_error` event, no server error logged, no message that
reached the database only to be refused there (NUL, lone surrogates), and the connection
still answers. The server's per-connection flood limit is raised for the run (a plain
attribute) so that every message reaches its handler rather than `rate_limited`.

Hypothesis is synchronous: it runs in a worker thread and hands each message to the
test's event loop, which keeps serving the app meanwhile.

Default: 1,000 WebSocket cases and 150 over a DataChannel (about a minute on a loaded 2-core machine).
`SHOPSTREAM_FUZZ_LONG=1` runs 50,000 WebSocket cases (and 2,000 DataChannel ones);
`EVENT_FUZZ_EXAMPLES=N` sets the WebSocket count directly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import hypothesis
import pytest
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.test_utils import TestClient
from aiortc.rtcsctptransport import WEBRTC_STRING
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

from server.keys import HUB
from signaling.events import CLIENT_SCHEMAS, MAX_MESSAGE_BYTES, REACTION_KINDS
from signaling.hub import Participant
from tests.factories import Factory, make_address, make_livestream
from tests.signaling.conftest import EventsClient, dc_client, ws_client

LONG = os.environ.get("SHOPSTREAM_FUZZ_LONG") == "1"
WS_EXAMPLES = int(os.environ.get("EVENT_FUZZ_EXAMPLES", "50000" if LONG else "1000"))
DC_EXAMPLES = 2000 if LONG else 150
# pytest-timeout's default (300 s) is for ordinary tests: a long run gets ~0.2 s a case.
FUZZ_TIMEOUT = max(300, int(0.2 * WS_EXAMPLES))

SERVER_TYPES = ["welcome", "chat:new", "error", "ack", "stock:update", "stream:state", "viewer:count"]
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def message_strategy(ids: dict[str, list[str]], tokens: list[str]) -> st.SearchStrategy[str | bytes]:
    """Client messages, mostly nearly right, some plainly broken."""

    def field(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(good, good, JSON_VALUES)

    uuid_like = st.sampled_from(ids["product"] + ids["variant"] + ids["address"]) | st.uuids().map(str)
    payload = st.fixed_dictionaries({}, optional={
        "ref": field(st.text(min_size=1, max_size=70)),
        "message": field(st.text(max_size=600)),
        "kind": field(st.sampled_from(REACTION_KINDS)),
        "productId": field(st.sampled_from(ids["product"]) | uuid_like),
        "variantId": field(st.sampled_from(ids["variant"]) | uuid_like),
        "addressId": field(st.sampled_from(ids["address"]) | uuid_like),
        "qty": field(st.integers(-3, 120)),
        "accessToken": field(st.sampled_from(tokens) | st.text(max_size=200)),
        "extra": JSON_VALUES,
    })
    kinds = st.sampled_from(list(CLIENT_SCHEMAS)) | st.sampled_from(SERVER_TYPES) | st.text(max_size=30)
    envelope = st.fixed_dictionaries(
        {"type": kinds | JSON_VALUES, "payload": payload | JSON_VALUES},
        optional={"extra": JSON_VALUES},
    )
    as_json = envelope.map(lambda m: json.dumps(m, ensure_ascii=False))
    ascii_json = envelope.map(json.dumps)  # escapes everything: \\u0000 and surrogate pairs
    return st.one_of(
        as_json, as_json, as_json, ascii_json,
        JSON_VALUES.map(json.dumps),
        st.text(max_size=200),
        st.integers(1, 5_000).map(lambda n: "[" * n),
        st.integers(1, 2_000).map(lambda n: '{"type":"chat:send","payload":' + '{"a":' * n),
        st.integers(MAX_MESSAGE_BYTES - 10, 60_000).map(lambda n: json.dumps({"type": "chat:send", "payload": {
            "message": "x" * n, "ref": "big"}})),
        st.sampled_from(['{"type":"chat:send","payload":{"message":"a\\u0000b","ref":"nul"}}',
                         '{"type":"chat:send","payload":{"message":"\\ud800","ref":"lone"}}',
                         '{"type":"chat:send","payload":{"message":"\\ud83d\\ude00","ref":"pair"}}',
                         '{"type":"chat:send","payload":{"message":"hi","ref":"\\udfff"}}']),
        st.binary(max_size=300),
    )


class Fuzzer:
    """Send messages on one connection, each followed by a probe; check the answers."""

    def __init__(self, client: EventsClient) -> None:
        self.client = client
        self.probes = itertools.count()
        self.sent = 0

    async def check(self, data: str | bytes) -> None:
        await self.client.send_raw(data)
        ref = f"probe-{next(self.probes)}"
        await self.client.send_raw(json.dumps({"type": "fuzz:probe", "payload": {"ref": ref}}))
        await self.client.expect("error", timeout=20, ref=ref)
        self.sent += 1
        internal = [e for e in self.client.inbox.of("error") if e["code"] == "internal_error"]
        assert not internal, (data[:300], internal)
        self.client.inbox.unread.clear()  # keep the inbox small over thousands of cases


def run_in_thread(loop: asyncio.AbstractEventLoop, examples: int, strategy: st.SearchStrategy[Any],
                  check: Callable[[Any], Awaitable[None]]) -> None:
    """Drive `check` with `examples` generated values from a worker thread."""

    @hypothesis.given(data=strategy)
    @hypothesis.settings(
        max_examples=examples, deadline=None, database=None, derandomize=not LONG,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )
    def run(data: Any) -> None:
        asyncio.run_coroutine_threadsafe(check(data), loop).result(timeout=60)

    run()


async def _room(factory: Factory) -> tuple[str, dict[str, list[str]], list[str], Any]:
    seller = await factory.seller()
    product = await factory.product(seller, variants=2, stock=100_000)
    livestream_id = await make_livestream(factory, seller, products=(product["id"],), highlighted=product["id"])
    viewer = await factory.user(name="Fuzzy")
    ids = {"product": [product["id"]], "variant": product["variantIds"],
           "address": [await make_address(factory, viewer)]}
    ghost = await factory.user()
    conn = await factory.conn()
    await conn.execute("DELETE FROM users WHERE id = $1", ghost.id)
    tokens = [viewer.access_token, seller.access_token, ghost.access_token, viewer.refresh_token, "garbage"]
    return livestream_id, ids, tokens, viewer


def _server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Errors logged, and messages the database refused (bad input must stop before it)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.ERROR or "realtime message failed" in r.getMessage()]


@pytest.mark.timeout(FUZZ_TIMEOUT)
async def test_websocket_event_fuzzing(client: TestClient, factory: Factory, caplog: pytest.LogCaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client.app[HUB], "inbound_per_second", 10**9)
    livestream_id, ids, tokens, viewer = await _room(factory)
    c = await ws_client(client, livestream_id, viewer.access_token)
    fuzzer = Fuzzer(c)
    try:
        await asyncio.to_thread(run_in_thread, asyncio.get_running_loop(), WS_EXAMPLES,
                                message_strategy(ids, tokens), fuzzer.check)
        await c.send("chat:send", message="still here", ref="last")
        await c.expect("ack", ref="last", timeout=20)
    finally:
        await c.close()
    assert fuzzer.sent >= min(WS_EXAMPLES, 500)
    assert not _server_errors(caplog), _server_errors(caplog)[:5]


@pytest.mark.timeout(FUZZ_TIMEOUT)
async def test_datachannel_event_fuzzing(client: TestClient, factory: Factory, loopback_ice: None,
                                         caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client.app[HUB], "inbound_per_second", 10**9)
    livestream_id, ids, tokens, viewer = await _room(factory)
    c = await dc_client(client.app, livestream_id, Participant(viewer.id, "Fuzzy", "user"))
    fuzzer = Fuzzer(c)
    # SCTP messages above the channel's limits are aiortc's business, not the protocol's.
    strategy = message_strategy(ids, tokens).filter(lambda m: len(m) <= 16_000)
    try:
        await asyncio.to_thread(run_in_thread, asyncio.get_running_loop(), DC_EXAMPLES, strategy, fuzzer.check)
        await c.send("chat:send", message="still here", ref="last")
        await c.expect("ack", ref="last", timeout=20)
    finally:
        await c.close()
    assert not _server_errors(caplog), _server_errors(caplog)[:5]


async def test_datachannel_text_that_is_not_utf8_is_an_error_event_not_a_dead_connection(
    client: TestClient, factory: Factory, loopback_ice: None, caplog: pytest.LogCaptureFixture,
) -> None:
    """aiortc decodes DataChannel text itself: invalid UTF-8 used to end the peer's DTLS transport."""
    livestream_id, _, _, viewer = await _room(factory)
    c = await dc_client(client.app, livestream_id, Participant(viewer.id, "Bytes", "user"))
    try:
        channel = c.channel  # type: ignore[attr-defined]
        sctp = channel.transport
        # What a client that sends raw bytes as text puts on the wire (PPID 51, "string").
        sctp._data_channel_queue.append((channel, WEBRTC_STRING, b'{"type":"chat:send","\xff\xfe"}'))
        await sctp._data_channel_flush()
        error = await c.expect("error", timeout=20)
        assert error["code"] == "bad_message", error
        await c.send("chat:send", message="still here", ref="after")
        await c.expect("ack", ref="after", timeout=20)
        assert channel.readyState == "open"
    finally:
        await c.close()
    assert not _server_errors(caplog), _server_errors(caplog)[:5]


@pytest.mark.parametrize(("frame", "opcode", "close_code"), [
    (b'{"type":"chat:send","payload":{"message":"\xff\xfe"}}', WSMsgType.TEXT, WSCloseCode.INVALID_TEXT),
    (b"x" * (64 * 1024 + 1), WSMsgType.TEXT, WSCloseCode.MESSAGE_TOO_BIG),
], ids=["invalid-utf8-text", "over-64k"])
async def test_frames_the_websocket_protocol_forbids_close_cleanly(
    client: TestClient, factory: Factory, caplog: pytest.LogCaptureFixture,
    frame: bytes, opcode: WSMsgType, close_code: int,
) -> None:
    # RFC 6455 requires failing the connection (1007, 1009): the client is told why,
    # no internal error is raised or logged, and the room keeps serving.
    livestream_id, _, _, viewer = await _room(factory)
    ws = await client.ws_connect(f"/api/v1/livestreams/{livestream_id}/events?token={viewer.access_token}")
    assert json.loads((await ws.receive(timeout=10)).data)["type"] == "welcome"
    await ws.send_frame(frame, opcode)
    seen = []
    async with asyncio.timeout(10):
        async for msg in ws:
            seen.append(msg)
    assert ws.close_code == close_code, (ws.close_code, seen)
    assert not [m for m in seen if m.type == WSMsgType.TEXT and "internal_error" in m.data]
    again = await ws_client(client, livestream_id, viewer.access_token)
    await again.send("chat:send", message="the room still serves", ref="ok")
    await again.expect("ack", ref="ok")
    await again.close()
    assert not _server_errors(caplog), _server_errors(caplog)[:5]
