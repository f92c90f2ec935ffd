"""The adaptive tick and event priorities: quiet rooms send at once, commerce never waits
behind chat, and under a 10x overload no event kind is lost or reordered per recipient."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp.test_utils import TestClient

from server.keys import HUB
from signaling.events import decode
from signaling.hub import Hub, HubOptions, Participant
from tests.factories import Factory, make_livestream
from tests.signaling.conftest import EventsClient, dc_client, ws_client


class ThrottledTransport:
    """A recipient behind a thin link: it takes one message per `interval`, refuses the rest.

    This stands in for the network (a full socket buffer or SCTP window), the boundary
    the hub sees through `send_text`.
    """

    kind = "test"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_ok = 0.0
        self.messages = 0
        self.events: list[dict[str, Any]] = []

    def send_text(self, text: str) -> bool:
        now = time.monotonic()
        if now < self.next_ok:
            return False
        self.next_ok = now + self.interval
        self.messages += 1
        self.events.extend(decode(text))
        return True

    def close(self) -> None:
        pass


def _arrivals(c: EventsClient) -> list[tuple[float, dict[str, Any]]]:
    """Record when each event reaches a client (the inbox keeps no times)."""
    seen: list[tuple[float, dict[str, Any]]] = []
    feed = c.inbox.feed

    def timed(text: str) -> None:
        now = time.monotonic()
        seen.extend((now, e) for e in decode(text))
        feed(text)

    c.inbox.feed = timed  # type: ignore[method-assign]
    return seen


async def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
    assert predicate(), what


async def test_a_quiet_room_sends_at_once_and_a_busy_one_waits_for_its_tick(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    hub: Hub = client.server.app[HUB].hub
    viewer = await ws_client(client, livestream_id)
    closing.append(viewer)
    # Long enough that waiting is unmistakable on a loaded machine.
    hub.options = HubOptions(tick_seconds=3.0, hold_seconds=2.0)
    await asyncio.sleep(3.2)  # the welcome's viewer count batch is a tick behind us
    arrivals = _arrivals(viewer)

    t0 = time.monotonic()
    hub.deliver(livestream_id, "chat:new", {"id": "first"})
    await viewer.expect("chat:new", id="first", timeout=1.5)
    assert time.monotonic() - t0 < 1.5, "a quiet room's event does not wait for the tick"
    hub.deliver(livestream_id, "chat:new", {"id": "second"})
    hub.deliver(livestream_id, "chat:new", {"id": "third"})
    await viewer.expect("chat:new", id="third", timeout=10)
    times = {e["payload"]["id"]: t for t, e in arrivals if e["type"] == "chat:new"}
    assert times["second"] - times["first"] >= 1.8, "in a busy room events wait for the hold"
    assert times["second"] == times["third"], "and leave together, as one message"


async def test_commerce_events_and_acks_never_wait_behind_chat(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    buyer = await factory.user()
    livestream_id = await make_livestream(factory, seller)
    realtime = client.server.app[HUB]
    hub: Hub = realtime.hub
    viewer = await ws_client(client, livestream_id, buyer.access_token)
    closing.append(viewer)
    hub.options = HubOptions(tick_seconds=3.0, hold_seconds=5.0)
    await asyncio.sleep(3.2)
    arrivals = _arrivals(viewer)

    hub.deliver(livestream_id, "chat:new", {"id": "c1"})  # quiet room: leaves at once
    await viewer.expect("chat:new", id="c1", timeout=2)
    t0 = time.monotonic()
    hub.deliver(livestream_id, "chat:new", {"id": "c2"})  # busy now: waits for the tick
    hub.deliver(livestream_id, "stock:update", {"productId": "p", "variantId": "v", "stock": 7})
    await viewer.expect("stock:update", stock=7, timeout=2)
    assert time.monotonic() - t0 < 2.0, "stock:update does not wait for the tick"
    order = [e["type"] for _, e in arrivals]
    assert order.index("stock:update") < order.index("chat:new", 1), "urgent events lead their batch"

    (conn,) = [c for c in hub.rooms[livestream_id].connections if c.user_id == buyer.id]
    hub.deliver(livestream_id, "chat:new", {"id": "c3"})
    t1 = time.monotonic()
    conn.send_direct('{"type":"ack","payload":{"ref":"buy-1"}}')
    await viewer.expect("ack", ref="buy-1", timeout=2)
    assert time.monotonic() - t1 < 2.0, "a buy-now ack does not wait for the tick"


async def test_ten_times_overload_loses_and_reorders_no_event_kind(
    client: TestClient, factory: Factory, closing,
) -> None:
    """Offer ten times what the thin recipients can take and far more chat than a batch carries.

    Every recipient must end with: every urgent event (stock updates, acks, seller
    orders) exactly once and in order; chat in order, ending at the newest message, with
    every missing message counted as dropped or shed; reactions summing to what was sent;
    the viewer count at its latest value.
    """
    seller = await factory.seller(name="Sam")
    buyer = await factory.user(name="Bea")
    livestream_id = await make_livestream(factory, seller)
    app = client.server.app
    realtime = app[HUB]
    hub: Hub = realtime.hub
    hub.options = HubOptions(tick_seconds=0.05, max_pending=40, max_room_chat=30)
    buyer_p = Participant(buyer.id, "Bea", "user")
    seller_p = Participant(seller.id, "Sam", "seller")
    # Thin links take one message per 0.5 s while the room offers ~20 batches a second.
    thin = {name: ThrottledTransport(0.5) for name in ("viewer", "buyer", "seller")}
    thin_conns = {
        "viewer": await realtime.open(livestream_id, thin["viewer"], None),
        "buyer": await realtime.open(livestream_id, thin["buyer"], buyer_p),
        "seller": await realtime.open(livestream_id, thin["seller"], seller_p),
    }
    fast = {
        "ws": await ws_client(client, livestream_id),
        "ws-buyer": await ws_client(client, livestream_id, buyer.access_token),
        "dc": await dc_client(app, livestream_id),
        "dc-seller": await dc_client(app, livestream_id, seller_p, publisher=True),
    }
    closing.extend(fast.values())
    room = hub.rooms[livestream_id]
    shed_before = hub.stats["shed"]

    rounds, chats_per_round, reactions_per_round = 60, 10, 5
    chat_id = 0
    for n in range(rounds):
        for _ in range(chats_per_round):
            hub.deliver(livestream_id, "chat:new", {"id": chat_id})
            chat_id += 1
        hub.deliver(livestream_id, "stock:update", {"productId": "p", "variantId": "v", "stock": n})
        hub.deliver(livestream_id, "ack", {"ref": f"a{n}"}, audience=f"user:{buyer.id}")
        if n % 5 == 0:
            hub.deliver(livestream_id, "order:new", {"id": f"o{n}"}, audience="seller")
        for _ in range(reactions_per_round):
            hub.react(room, "heart")
        if n % 10 == 0:  # another process's viewers come and go
            hub._from_bus("presence", livestream_id, {"o": "elsewhere", "n": 100 + n})
        await asyncio.sleep(0.02)
    final_count = room.viewer_count(time.monotonic())
    last_chat = chat_id - 1
    urgent_all = [("stock:update", n) for n in range(rounds)]
    acks = [f"a{n}" for n in range(rounds)]
    orders = [f"o{n}" for n in range(0, rounds, 5)]

    def events_of(name: str) -> list[dict[str, Any]]:
        return thin[name].events if name in thin else fast[name].inbox.all

    def done(name: str) -> bool:
        got = events_of(name)
        counts = [e["payload"]["count"] for e in got if e["type"] == "viewer:count"]
        chat = [e["payload"]["id"] for e in got if e["type"] == "chat:new"]
        return bool(counts) and counts[-1] == final_count and bool(chat) and chat[-1] == last_chat and \
            sum(1 for e in got if e["type"] == "stock:update") >= rounds

    names = [*thin, *fast]
    await _wait_for(lambda: all(done(n) for n in names), 60, "every recipient catches up")
    assert max(t.messages for t in thin.values()) < rounds, "the thin links really were overloaded"

    shed = hub.stats["shed"] - shed_before
    for name in names:
        got = events_of(name)
        kinds = [e["type"] for e in got]
        stock = [e["payload"]["stock"] for e in got if e["type"] == "stock:update"]
        assert [("stock:update", s) for s in stock] == urgent_all, f"{name}: stock updates complete, in order"
        ack_refs = [e["payload"]["ref"] for e in got if e["type"] == "ack"]
        assert ack_refs == (acks if "buyer" in name else []), f"{name}: acks complete, in order, to the buyer only"
        order_ids = [e["payload"]["id"] for e in got if e["type"] == "order:new"]
        assert order_ids == (orders if "seller" in name else []), f"{name}: seller orders complete, in order"
        chat = [e["payload"]["id"] for e in got if e["type"] == "chat:new"]
        assert chat == sorted(set(chat)) and chat[-1] == last_chat, f"{name}: chat in order, newest kept"
        hearts = sum(e["payload"]["counts"].get("heart", 0) for e in got if e["type"] == "reaction")
        assert hearts == rounds * reactions_per_round, f"{name}: reactions coalesced, none lost"
        counts = [e["payload"]["count"] for e in got if e["type"] == "viewer:count"]
        assert counts[-1] == final_count, f"{name}: the viewer count ends at the latest value"
        assert kinds[0] == "welcome"
        if name in thin:
            conn = thin_conns[name]
            missing = chat_id - len(chat)
            assert missing == conn.dropped + shed, f"{name}: every missing chat message was counted"
            assert conn.dropped > 0, f"{name}: the thin link did shed chat"
            assert len(kinds) / thin[name].messages > 5, f"{name}: its backlog left in batches"
    for conn in thin_conns.values():
        realtime.close(conn)
