"""Hub behaviour: buy-now and cart through the commerce seam, reactions, figures, slow recipients."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from server import notify
from server.keys import HUB
from signaling.events import decode
from signaling.hub import Hub, HubOptions
from tests.factories import Factory, make_address, make_livestream
from tests.signaling.conftest import ws_client

async def test_cart_and_buy_now_need_a_signed_in_user_and_an_address(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    buyer = await factory.user()
    product = await factory.product(seller)
    livestream_id = await make_livestream(factory, seller)
    anonymous = await ws_client(client, livestream_id)
    c = await ws_client(client, livestream_id, buyer.access_token)
    closing.extend([anonymous, c])
    item = {"productId": product["id"], "variantId": product["variantIds"][0], "qty": 1}
    await anonymous.send("buy:now", **item, ref="a")
    assert (await anonymous.expect("error", ref="a"))["code"] == "unauthenticated"
    await c.send("buy:now", **item, ref="b")
    error = await c.expect("error", ref="b")
    assert error["code"] == "validation_error" and "address" in error["message"]
    await c.send("buy:now", **item)
    assert (await c.expect("error"))["code"] == "validation_error", "buy-now needs a ref to answer"
    await c.send("cart:add", **item, ref="c")
    assert (await c.expect("ack", ref="c"))["cart"]["items"][0]["variantId"] == item["variantId"]


async def test_concurrent_buy_now_over_the_channel_never_oversells(
    client: TestClient, factory: Factory, clean_db: str, closing,
) -> None:
    seller = await factory.seller()
    product = await factory.product(seller, stock=5)
    variant_id = product["variantIds"][0]
    livestream_id = await make_livestream(factory, seller, products=(product["id"],))
    buyers = [await factory.user() for _ in range(12)]
    for buyer in buyers:
        await make_address(factory, buyer)
    clients = [await ws_client(client, livestream_id, b.access_token) for b in buyers]
    closing.extend(clients)

    await asyncio.gather(*(
        c.send("buy:now", productId=product["id"], variantId=variant_id, qty=1, ref="go") for c in clients
    ))
    answers = [await asyncio.wait_for(_first(c, ("ack", "error")), 10) for c in clients]
    acks = [p for kind, p in answers if kind == "ack"]
    errors = [p for kind, p in answers if kind == "error"]
    assert len(acks) == 5 and len(errors) == 7
    assert {e["code"] for e in errors} == {"out_of_stock"}
    assert len({a["checkout"]["paymentIntentId"] for a in acks}) == 5
    conn = await factory.conn()
    assert await conn.fetchval("SELECT stock FROM product_variants WHERE id = $1", variant_id) == 0
    # Real holds: five orders attributed to the live room, and the ledger agrees.
    assert await conn.fetchval("SELECT count(*) FROM orders WHERE livestream_id = $1", livestream_id) == 5
    assert await conn.fetchval(
        "SELECT sum(delta) FROM inventory_events WHERE variant_id = $1", variant_id) == 0
    # Replaying the same ref returns the same session, taking nothing more.
    await clients[0].send("buy:now", productId=product["id"], variantId=variant_id, qty=1, ref="go")
    kind, replay = await asyncio.wait_for(_first(clients[0], ("ack", "error")), 10)
    assert kind == answers[0][0]
    update = await clients[0].expect("stock:update", stock=0, timeout=5)
    assert update["variantId"] == variant_id
    # The cart obeys the same stock: the sold-out variant is refused.
    await clients[0].send("cart:add", productId=product["id"], variantId=variant_id, qty=2, ref="cart")
    assert (await clients[0].expect("error", ref="cart"))["code"] == "out_of_stock"


async def _first(c: Any, kinds: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    while True:
        for event in list(c.inbox.unread):
            if event["type"] in kinds:
                c.inbox.unread.remove(event)
                return event["type"], event["payload"]
        await asyncio.sleep(0.02)


async def test_reactions_are_summed_per_tick_and_state_changes_reach_everyone(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    viewers = [await ws_client(client, livestream_id) for _ in range(3)]
    closing.extend(viewers)
    for _ in range(4):
        await viewers[0].send("reaction:send", kind="heart")
    await viewers[1].send("reaction:send", kind="fire")
    total: dict[str, int] = {}
    async with asyncio.timeout(5):
        while total != {"heart": 4, "fire": 1}:
            counts = (await viewers[2].expect("reaction"))["counts"]
            for kind, n in counts.items():
                total[kind] = total.get(kind, 0) + n
    assert len(viewers[2].inbox.of("reaction")) < 5, "reactions are aggregated"
    await notify.room_event(client.server.app, livestream_id, "stream:state", {"state": "paused"})
    for v in viewers:
        assert await v.expect("stream:state") == {"state": "paused"}
    late = await ws_client(client, livestream_id)
    closing.append(late)
    assert late.welcome["room"]["state"] == "paused"


async def test_viewer_figures_are_written_to_the_livestream(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    studio = await ws_client(client, livestream_id, seller.access_token)  # the seller: not audience
    viewers = [await ws_client(client, livestream_id) for _ in range(3)]
    await viewers[0].expect("viewer:count", count=3)
    assert viewers[2].welcome["room"]["viewerCount"] == 3
    await asyncio.sleep(1.2)
    for v in [studio, *viewers]:
        await v.close()
    hub: Hub = client.server.app[HUB].hub
    conn = await factory.conn()
    async with asyncio.timeout(5):
        while livestream_id in hub.rooms:
            await asyncio.sleep(0.1)
    row = await conn.fetchrow(
        "SELECT peak_viewers, total_viewers, watch_seconds FROM livestreams WHERE id = $1", livestream_id)
    assert row["peak_viewers"] == 3 and row["total_viewers"] == 3
    assert 3 <= row["watch_seconds"] <= 8


class StuckTransport:
    """A recipient whose socket buffer is full: every send would block."""

    kind = "test"

    def __init__(self) -> None:
        self.writable = False
        self.sent: list[str] = []

    def send_text(self, text: str) -> bool:
        if not self.writable:
            return False
        self.sent.append(text)
        return True

    def close(self) -> None:
        pass


async def test_a_slow_recipient_is_skipped_and_its_queue_is_bounded(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    realtime = client.server.app[HUB]
    hub: Hub = realtime.hub
    stuck = StuckTransport()
    slow = await realtime.open(livestream_id, stuck, None)
    fast = await ws_client(client, livestream_id)
    closing.append(fast)
    limit = hub.options.max_pending
    for n in range(limit + 50):
        hub.deliver(livestream_id, "chat:new", {"id": str(n)})
        hub.flush(0.0)
    assert len(slow.chat) == limit and slow.dropped >= 50
    for n in range(limit + 50):
        await fast.expect("chat:new", id=str(n))
    stuck.writable = True
    hub.flush(0.0)
    assert not slow.backlog
    received = [e for text in stuck.sent for e in decode(text)]
    assert received[0]["type"] == "welcome", "the welcome leaves first"
    kept = [e["payload"]["id"] for e in received if e["type"] == "chat:new"]
    assert kept == [str(n) for n in range(50, limit + 50)], "the newest chat is kept, in order"
    assert len(stuck.sent) < limit, "a backlog leaves in batches"
    realtime.close(slow)


async def test_unbatched_mode_sends_each_event_on_its_own(
    client: TestClient, factory: Factory, closing,
) -> None:
    seller = await factory.seller()
    livestream_id = await make_livestream(factory, seller)
    hub: Hub = client.server.app[HUB].hub
    hub.options = HubOptions(batching=False)
    viewer = await ws_client(client, livestream_id)
    closing.append(viewer)
    for n in range(5):
        hub.deliver(livestream_id, "chat:new", {"id": str(n)})
    for n in range(5):
        await viewer.expect("chat:new", id=str(n))
    assert viewer.inbox.messages == len(viewer.inbox.all)
