"""PostgreSQL restarted under load: only 503s while it is away, nothing acknowledged lost.

The test runs the app against a PostgreSQL cluster of its own (`pg_cluster.py`), drives
reads and writes (signup, address, cart, checkout with the offline provider, payment
confirmation) from concurrent shoppers that retry a 503 as a client would, and restarts
the cluster twice: a quick stop/start (~0.3 s away) and a long one (~5 s away).
Asserted: no status outside 2xx/4xx/503 (no 500), every 503 is `unavailable` with
`Retry-After`, every write answered 2xx is in the database afterwards, and the same
server answers again within seconds of the database's return.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from commerce.inventory_check import check_inventory
from commerce.outage import database_unavailable
from server.app import create_app
from server.config import Secret
from server.db import Database
from server.keys import HUB
from signaling.events import decode
from tests.checkout.conftest import (
    WEBHOOK_SECRET,
    LocalStripe,
    checkout,
    localstripe_url,
    make_shop,
    signed,
)
from tests.conftest import make_settings
from tests.factories import Factory
from tests.server.pg_cluster import PostgresCluster, binaries
from tests.signaling.conftest import EventsClient, ws_client

pytestmark = pytest.mark.timeout(300)
__all__ = ["localstripe_url"]  # a session fixture of tests/checkout, used here too

CARD_OK = {"cardNumber": "4242 4242 4242 4242", "expMonth": 12, "expYear": 2030, "cvc": "123"}
SHOPPERS = 8
READERS = 3


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (pgserver or /usr/lib/postgresql)")
    pg = PostgresCluster(bin_dir)
    pg.init()
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
async def shop_client(cluster: PostgresCluster, aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[TestClient]:
    conn = await asyncpg.connect(cluster.dsn())
    await conn.execute("CREATE DATABASE shopstream")
    await conn.close()
    settings = make_settings(tmp_path, db_pool_min=2, db_pool_max=10)
    yield await aiohttp_client(create_app(settings, cluster.dsn("shopstream")))


@dataclasses.dataclass
class Record:
    """Every answer seen, and every write the server acknowledged."""

    statuses: collections.Counter[tuple[str, int]] = dataclasses.field(default_factory=collections.Counter)
    bad: list[str] = dataclasses.field(default_factory=list)
    unavailable: int = 0
    users: list[str] = dataclasses.field(default_factory=list)
    addresses: list[str] = dataclasses.field(default_factory=list)
    cart_lines: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (user id, variant id)
    sessions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    paid: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    answered: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (sent at, status)

    def saw(self, name: str, status: int, body: Any, headers: Any, sent: float = 0.0) -> None:
        self.statuses[(name, status)] += 1
        self.answered.append((sent, status))
        if status == 503:
            self.unavailable += 1
            code = body.get("error", {}).get("code") if isinstance(body, dict) else None
            if code != "unavailable" or not headers.get("Retry-After"):
                self.bad.append(f"{name}: 503 without code unavailable and Retry-After: {body}")
        elif status >= 500 or status < 200:
            self.bad.append(f"{name}: {status} {body}")


async def call(client: TestClient, record: Record, name: str, method: str, path: str, *,
               token: str | None = None, json: Any = None, headers: dict[str, str] | None = None,
               deadline: float = 60.0) -> tuple[int, Any]:
    """Send a request, retrying a 503 after its Retry-After as a client would."""
    give_up = time.monotonic() + deadline
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    while True:
        sent = time.monotonic()
        resp = await client.request(method, path, json=json, headers=all_headers)
        body = await resp.json(content_type=None) if resp.content_length != 0 else None
        record.saw(name, resp.status, body, resp.headers, sent)
        if resp.status != 503 or time.monotonic() > give_up:
            return resp.status, body
        await asyncio.sleep(min(float(resp.headers.get("Retry-After", "1")), 0.2))


async def shopper(client: TestClient, record: Record, product: dict[str, Any], stop: asyncio.Event) -> None:
    """Sign up, add an address, fill the cart, check out and pay, again and again."""
    while not stop.is_set():
        email = f"shopper-{uuid.uuid4().hex[:12]}@example.test"
        status, body = await call(client, record, "signup", "POST", "/api/v1/auth/signup",
                                  json={"email": email, "password": "correct horse battery", "name": "Shopper"})
        if status == 409:  # the first try was written but its answer lost: not acknowledged
            continue
        assert status == 201, (status, body)
        user_id, token = body["user"]["id"], body["accessToken"]
        record.users.append(user_id)
        status, body = await call(client, record, "address", "POST", "/api/v1/me/addresses", token=token,
                                  json={"line1": "1 Main St", "city": "Springfield", "postalCode": "12345", "country": "US"})
        assert status == 201, (status, body)
        address_id = body["id"]
        record.addresses.append(address_id)
        item = {"productId": product["id"], "variantId": product["variantIds"][0], "qty": 1}
        status, body = await call(client, record, "cart", "POST", "/api/v1/me/cart/items", token=token, json=item)
        assert status in (200, 201), (status, body)
        record.cart_lines.append((user_id, product["variantIds"][0]))
        key = secrets.token_hex(8)
        status, session = await call(client, record, "checkout", "POST", "/api/v1/checkout/session", token=token,
                                     json={"addressId": address_id, "items": [item]}, headers={"Idempotency-Key": key})
        assert status == 201, (status, session)
        record.sessions.append(session)
        status, body = await call(client, record, "confirm", "POST",
                                  f"/api/v1/payments/{session['paymentIntentId']}/confirm", token=token, json=CARD_OK)
        if status == 409:  # paid by an earlier try whose answer was lost
            continue
        assert status == 200, (status, body)
        record.paid.append(session)


async def reader(client: TestClient, record: Record, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await call(client, record, "read", "GET", "/api/v1/products?limit=5", deadline=0)
        await asyncio.sleep(0.01)


async def chat_while(chatter: EventsClient, tag: str, seconds: float) -> list[str]:
    """Send chat for `seconds`; return each answer: "ack" or the error event's code."""
    answers = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        ref = f"{tag}{n}"
        await chatter.send("chat:send", message=f"{tag} {n}", ref=ref)
        async with asyncio.timeout(30):
            while True:
                event = next((e for e in chatter.inbox.unread if e["payload"].get("ref") == ref
                              and e["type"] in ("ack", "error")), None)
                if event is not None:
                    chatter.inbox.unread.remove(event)
                    answers.append("ack" if event["type"] == "ack" else event["payload"]["code"])
                    break
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
    return answers


async def join_events(client: TestClient, livestream_id: str) -> tuple[list[str], int | None]:
    """Open the events WebSocket; return the events (type, or error:code) until it closes."""
    seen = []
    ws = await client.ws_connect(f"/api/v1/livestreams/{livestream_id}/events")
    async with asyncio.timeout(30):
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            for e in decode(msg.data):
                seen.append(e["type"] + (":" + e["payload"]["code"] if e["type"] == "error" else ""))
            if "welcome" in seen:
                break
    await ws.close()
    return seen, ws.close_code


async def recovery_seconds(client: TestClient, record: Record, since: float) -> float:
    """Seconds from `since` until a read answers 200 again (no retries: the first success)."""
    while True:
        status, _ = await call(client, record, "probe", "GET", "/api/v1/products?limit=1", deadline=0)
        if status == 200:
            return time.monotonic() - since
        assert time.monotonic() - since < 30, "the server did not recover after the database returned"
        await asyncio.sleep(0.02)


async def test_postgres_restart_under_load_answers_503_and_loses_nothing(
    shop_client: TestClient, cluster: PostgresCluster,
) -> None:
    client = shop_client
    conn = await asyncpg.connect(cluster.dsn("shopstream"))
    seller_id = await conn.fetchval(
        """WITH u AS (INSERT INTO users (email, password_hash) VALUES ('seller@example.test', 'x') RETURNING id),
                p AS (INSERT INTO profiles (id, name, role) SELECT id, 'Seller', 'seller' FROM u)
           INSERT INTO sellers (user_id, display_name) SELECT id, 'Shop' FROM u RETURNING id"""
    )
    product_id = await conn.fetchval(
        """INSERT INTO products (seller_id, title, description, price, currency, status)
           VALUES ($1, 'Mug', 'A mug.', 1000, 'USD', 'active') RETURNING id""", seller_id)
    variant_id = await conn.fetchval(
        """INSERT INTO product_variants (product_id, seller_id, sku, color, size, stock)
           VALUES ($1, $2, 'MUG-1', 'Black', 'M', 100000) RETURNING id""", product_id, seller_id)
    await conn.execute(
        "INSERT INTO inventory_events (product_id, variant_id, delta, reason) VALUES ($1, $2, 100000, 'initial')",
        product_id, variant_id)
    livestream_id = str(await conn.fetchval(
        """INSERT INTO livestreams (seller_id, title, status, stream_key, room)
           VALUES ($1, 'Live', 'live', 'key', 'room') RETURNING id""", seller_id))
    await conn.execute("INSERT INTO live_products (livestream_id, product_id, position) VALUES ($1, $2, 0)",
                       livestream_id, product_id)
    await conn.close()
    product = {"id": str(product_id), "variantIds": [str(variant_id)]}
    resp = await client.post("/api/v1/auth/signup", json={
        "email": "chatter@example.test", "password": "correct horse battery", "name": "Chatter"})
    chatter = await ws_client(client, livestream_id, (await resp.json())["accessToken"])

    record = Record()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(shopper(client, record, product, stop)) for _ in range(SHOPPERS)]
    tasks += [asyncio.create_task(reader(client, record, stop)) for _ in range(READERS)]
    try:
        await asyncio.sleep(1.5)  # load running before the first restart
        paid_before = len(record.paid)

        # A quick restart: stop fast and start at once (~0.2-0.5 s away).
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.to_thread(cluster.start)
        back = quick_back = time.monotonic()
        quick = await recovery_seconds(client, record, back)
        await asyncio.sleep(1.5)

        # A long outage: ~5 s away while every shopper keeps trying.
        unavailable_before = record.unavailable
        long_stop = time.monotonic()
        await asyncio.to_thread(cluster.stop, "fast")
        chat_during = await chat_while(chatter, "during", 4.0)
        joined_during = await join_events(client, livestream_id)
        during_long = record.unavailable - unavailable_before
        await asyncio.to_thread(cluster.start)
        back = long_back = time.monotonic()
        long = await recovery_seconds(client, record, back)
        await asyncio.sleep(2.0)  # shoppers finish what the outage delayed
        # The realtime side recovered too: chat is stored and acknowledged again.
        await chatter.send("chat:send", message="after", ref="after")
        await chatter.expect("ack", ref="after", timeout=15)
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures
    assert not record.bad, record.bad[:10]
    assert during_long > 0, "the long outage was answered without any 503: was the database really down?"
    assert len(record.paid) > paid_before, "no payment went through after the restarts"
    late = [sum(1 for sent, status in record.answered if status == 503 and back <= sent < until)
            for back, until in ((quick_back, long_stop), (long_back, time.monotonic()))]
    print(f"\nstatuses: {dict(record.statuses)}\nrecovered {quick:.2f} s after the quick restart, "
          f"{long:.2f} s after the long one; 503s to requests sent after the database was back: "
          f"{late[0]} and {late[1]}; {len(record.paid)} paid checkouts")
    assert quick < 10 and long < 10, (quick, long)
    assert chat_during and set(chat_during) <= {"ack", "unavailable"}, chat_during
    assert "unavailable" in chat_during, chat_during
    # A viewer joining while the database is away hears "unavailable, try again later".
    assert joined_during == (["error:unavailable"], 1013), joined_during
    room = client.server.app[HUB].hub.rooms[livestream_id]
    assert room.local_viewers == 1, "the viewer refused during the outage stayed in the room"

    conn = await asyncpg.connect(cluster.dsn("shopstream"))
    try:
        # Stock changes that happened while the database was away were announced after it.
        stock = await conn.fetchval("SELECT stock FROM product_variants WHERE id = $1", variant_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                while not (chatter.inbox.of("stock:update") and chatter.inbox.of("stock:update")[-1]["stock"] == stock):
                    await asyncio.sleep(0.1)
        updates = chatter.inbox.of("stock:update")
        assert updates and updates[-1]["stock"] == stock, (updates[-3:], stock)
        users = {str(r["id"]) for r in await conn.fetch("SELECT id FROM users WHERE id = ANY($1::uuid[])", record.users)}
        assert users == set(record.users), "an acknowledged signup was lost"
        addresses = await conn.fetchval("SELECT count(*) FROM addresses WHERE id = ANY($1::uuid[])", record.addresses)
        assert addresses == len(record.addresses), "an acknowledged address was lost"
        carts = await conn.fetchval(
            """SELECT count(DISTINCT c.user_id) FROM carts c JOIN cart_items i ON i.cart_id = c.id
               WHERE c.user_id = ANY($1::uuid[])""", [u for u, _ in record.cart_lines])
        assert carts == len({u for u, _ in record.cart_lines}), "an acknowledged cart line was lost"
        order_ids = [o for s in record.sessions for o in s["orderIds"]]
        orders = await conn.fetchval("SELECT count(*) FROM orders WHERE id = ANY($1::uuid[])", order_ids)
        assert orders == len(order_ids), "an acknowledged checkout was lost"
        paid_ids = [o for s in record.paid for o in s["orderIds"]]
        paid = await conn.fetchval(
            "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[]) AND status = 'paid'", paid_ids)
        assert paid == len(paid_ids), "an acknowledged payment was lost"
        async with conn.transaction(isolation="repeatable_read"):
            report = await check_inventory(conn)
        assert report["ok"], report["violations"]
    finally:
        await conn.close()
        await chatter.close()


def test_what_counts_as_a_database_outage() -> None:
    """The classifier behind the 503: connection trouble yes, our own bugs no."""
    assert database_unavailable(asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"))
    assert database_unavailable(asyncpg.CannotConnectNowError("the database system is shutting down"))
    assert database_unavailable(asyncpg.AdminShutdownError("terminating connection due to administrator command"))
    assert database_unavailable(asyncpg.TooManyConnectionsError("sorry, too many clients already"))
    assert database_unavailable(asyncpg.InterfaceError("cannot perform operation: connection is closed"))
    assert database_unavailable(asyncpg.InterfaceError("pool is closing"))
    assert not database_unavailable(asyncpg.InterfaceError("cannot perform operation: another operation is in progress"))
    assert database_unavailable(asyncpg.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress"))
    assert not database_unavailable(asyncpg.InternalClientError("unexpected codec"))
    assert not database_unavailable(asyncpg.UniqueViolationError("duplicate key"))
    assert not database_unavailable(ConnectionRefusedError("not from asyncpg"))
    assert not database_unavailable(KeyError("x"))
    try:
        try:
            raise asyncpg.ConnectionFailureError("lost")
        except asyncpg.PostgresError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert database_unavailable(wrapped)


async def test_connection_refused_from_asyncpg_counts_as_an_outage() -> None:
    """An OSError raised while asyncpg connects (nothing listening) is the database's."""
    with socket.socket() as s:  # a port of 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with pytest.raises(OSError) as raised:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", timeout=5)
    assert database_unavailable(raised.value)


async def test_command_timeout_and_terminated_sessions_count_as_an_outage(cluster: PostgresCluster) -> None:
    """asyncpg's command timeout (a TimeoutError) and a session the server ends are outages."""
    conn = await asyncpg.connect(cluster.dsn())
    other = await asyncpg.connect(cluster.dsn())
    try:
        with pytest.raises(TimeoutError) as raised:
            await conn.execute("SELECT pg_sleep(5)", timeout=0.2)
        assert database_unavailable(raised.value)
        await other.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        with pytest.raises(Exception) as ended:  # which class asyncpg raises here varies
            await conn.fetchval("SELECT 1")
        assert database_unavailable(ended.value), repr(ended.value)
    finally:
        await conn.close()
        await other.close()


async def test_stripe_webhook_during_an_outage_is_503_and_its_retry_pays_the_order(
    cluster: PostgresCluster, aiohttp_client: Any, tmp_path: Path, localstripe_url: str,
) -> None:
    """A payment Stripe took while the database was away is not lost: Stripe retries a 503."""
    conn = await asyncpg.connect(cluster.dsn())
    await conn.execute("CREATE DATABASE shopstream")
    await conn.close()
    settings = make_settings(
        tmp_path, stripe_secret_key=Secret("sk_test_shopstream"), stripe_api_base=localstripe_url,
        stripe_webhook_secret=Secret(WEBHOOK_SECRET), stripe_max_network_retries=1,
    )
    client = await aiohttp_client(create_app(settings, cluster.dsn("shopstream")))
    factory = Factory(client, cluster.dsn("shopstream"))
    try:
        shop = await make_shop(factory)
        resp = await checkout(client, shop.buyer, {"addressId": shop.address_id, "items": [shop.item(2)]}, "w1")
        assert resp.status == 201, await resp.text()
        session = await resp.json()
        stripe = LocalStripe(localstripe_url)
        assert (await stripe.pay(session["paymentIntentId"]))["status"] == "succeeded"
        events = await stripe.events(session["paymentIntentId"])
        succeeded = next(e for e in events if e["type"] == "payment_intent.succeeded")
        await factory.close()  # its connection dies with the server

        await asyncio.to_thread(cluster.stop, "fast")
        body, headers = signed(succeeded)
        resp = await client.post("/api/v1/webhooks/stripe", data=body, headers=headers)
        assert resp.status == 503, await resp.text()
        assert resp.headers["Retry-After"] and (await resp.json())["error"]["code"] == "unavailable"
        await asyncio.to_thread(cluster.start)

        async with asyncio.timeout(30):  # Stripe's retry, once the database is back
            while True:
                body, headers = signed(succeeded)
                resp = await client.post("/api/v1/webhooks/stripe", data=body, headers=headers)
                if resp.status != 503:
                    break
                await asyncio.sleep(0.2)
        assert resp.status == 200, await resp.text()
        order = await client.get(f"/api/v1/me/orders/{session['orderIds'][0]}", headers=shop.buyer.headers)
        assert (await order.json())["status"] == "paid"
    finally:
        await factory.close()


async def test_a_database_host_that_stops_answering_costs_seconds_then_503(tmp_path: Path) -> None:
    """A server that accepts but never answers (a hung host): connecting gives up after the
    connect timeout, and that error is an outage (503), not a request hanging for a minute."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # keep it open, say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # The app's own default connect timeout (asyncpg's would hold the request for 60 s).
    db = await Database.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", "", min_size=0,
                                max_size=1)
    try:
        started = time.monotonic()
        with pytest.raises(Exception) as raised:  # which class asyncpg raises here varies
            async with db.transaction(system=True) as conn:
                await conn.fetchval("SELECT 1")
        assert time.monotonic() - started < 10
        assert database_unavailable(raised.value), repr(raised.value)
    finally:
        await db.close()
        for writer in accepted:
            writer.close()
        server.close()
