"""place_checkouts() (sql/migrations/0080) called directly: each sale of a group decided alone.

The HTTP races cannot choose which sales share a group; these tests do, on the real
database, through the SaleQueue's own statement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid

import asyncpg
import pytest

from commerce.sales import PLACE_MANY, Sale, SaleFailed, SaleQueue, read_snapshots
from tests.checkout.conftest import Shop, assert_inventory_ok, make_shop, stock_of
from tests.factories import Factory, make_buyers


def sale(shop: Shop, user: str, address: str, *, key: str | None = None, qty: int = 1) -> Sale:
    payment, order = str(uuid.uuid4()), str(uuid.uuid4())
    price = shop.product["price"]
    return Sale(
        user=user, key=key or f"key-{payment}", hash=f"hash-{payment}", response=json.dumps({"paymentId": payment}),
        payment=payment, provider="offline", amount=price * qty, currency="USD", ttl_seconds=600.0, cart=None,
        intent=f"pi_offline_{payment}", client_secret="secret", coupon=None, livestream=None, address=address,
        order_ids=[order], sellers=[shop.seller.seller_id], subtotals=[price * qty], discounts=[0],
        line_orders=[order], product_ids=[shop.product["id"]], variant_ids=[shop.product["variantIds"][0]],
        qtys=[qty], prices=[price],
    )


async def place(conn: asyncpg.Connection, sales: list[Sale]) -> list[asyncpg.Record]:
    return await conn.fetch(PLACE_MANY, json.dumps([s.as_dict() for s in sales]))


async def test_a_group_keeps_and_refuses_each_sale_on_its_own(factory: Factory, clean_db: str) -> None:
    shop = await make_shop(factory, stock=3)
    buyers = [(user.id, address) for user, address in await make_buyers(factory, 6)]
    stranger = buyers[5][1]
    variant = shop.product["variantIds"][0]
    group = [
        sale(shop, *buyers[0]),
        sale(shop, buyers[1][0], stranger),  # not this buyer's address
        sale(shop, *buyers[2], qty=2),
        sale(shop, *buyers[3]),  # one unit too many
        sale(shop, *buyers[4]),
    ]
    conn = await factory.conn()
    rows = await place(conn, group)

    assert [r["error_state"] for r in rows] == [None, "SS004", None, "SS001", "SS001"]
    assert rows[1]["error_detail"] == stranger and rows[3]["error_detail"] == variant
    kept = [group[0], group[2]]
    for s, r in zip(group, rows, strict=True):
        if s in kept:
            assert (r["replayed"], r["request_hash"], json.loads(r["response"])) == (
                False, s.hash, {"paymentId": s.payment})
            assert r["expires_at"] is not None
    assert await stock_of(factory, variant) == 0
    payments = {str(p) for p in await conn.fetchval("SELECT array_agg(id) FROM payments")}
    assert payments == {s.payment for s in kept}
    assert await conn.fetchval("SELECT sum(qty) FROM stock_holds WHERE status = 'held'") == 3
    assert await conn.fetchval("SELECT count(*) FROM orders") == 2
    assert await conn.fetchval("SELECT count(*) FROM order_items") == 2
    # The refused sales gave their keys back: the same keys can be used again.
    keys = {r["key"] for r in await conn.fetch("SELECT key FROM idempotency_keys")}
    assert keys == {s.key for s in kept}
    order = await conn.fetchrow("SELECT * FROM orders WHERE payment_id = $1", group[0].payment)
    assert json.loads(order["shipping_address"])["city"] and order["total"] == group[0].amount
    await assert_inventory_ok(clean_db)


async def test_keys_already_claimed_are_replays(factory: Factory, clean_db: str) -> None:
    shop = await make_shop(factory, stock=1)
    (user, address), (other, other_address) = [(u.id, a) for u, a in await make_buyers(factory, 2)]
    conn = await factory.conn()
    first = sale(shop, user, address, key="same")
    [row] = await place(conn, [first])
    assert row["error_state"] is None

    # Sold out now, but a replay answers with its stored session whatever the stock.
    again = sale(shop, user, address, key="same")
    twice = [sale(shop, other, other_address, key="twice"), sale(shop, other, other_address, key="twice")]
    rows = await place(conn, [again, *twice])
    assert (rows[0]["replayed"], rows[0]["request_hash"], json.loads(rows[0]["response"])) == (
        True, first.hash, {"paymentId": first.payment})
    # One key twice in a group, its first sale refused: the second is handed back (SS000)
    # for the caller to write alone.
    assert [r["error_state"] for r in rows[1:]] == ["SS001", "SS000"]
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 1
    assert await conn.fetchval("SELECT count(*) FROM payments") == 1
    await assert_inventory_ok(clean_db)


async def test_one_key_twice_in_a_group_is_one_sale(factory: Factory, clean_db: str) -> None:
    shop = await make_shop(factory, stock=5)
    (user, address), = [(u.id, a) for u, a in await make_buyers(factory, 1)]
    conn = await factory.conn()
    first, second = sale(shop, user, address, key="k"), sale(shop, user, address, key="k")
    rows = await place(conn, [first, second])
    assert [r["replayed"] for r in rows] == [False, True]
    assert json.loads(rows[1]["response"]) == {"paymentId": first.payment}
    assert await stock_of(factory, shop.product["variantIds"][0]) == 4
    await assert_inventory_ok(clean_db)


async def test_a_coupon_sale_is_never_grouped(factory: Factory, clean_db: str) -> None:
    shop = await make_shop(factory, stock=5)
    (user, address), = [(u.id, a) for u, a in await make_buyers(factory, 1)]
    conn = await factory.conn()
    with_coupon = dataclasses.replace(sale(shop, user, address), coupon=str(uuid.uuid4()))
    with pytest.raises(asyncpg.RaiseError, match="no sales with a coupon"):
        await place(conn, [with_coupon])
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    assert await stock_of(factory, shop.product["variantIds"][0]) == 5


async def test_a_sale_read_before_a_group_that_left_too_little_is_refused_without_a_write(
    factory: Factory, clean_db: str,
) -> None:
    """The SaleQueue refuses at once a sale that read the stock before a sell-out committed."""
    shop = await make_shop(factory, stock=1)
    buyers = [(u.id, a) for u, a in await make_buyers(factory, 4)]
    variant = shop.product["variantIds"][0]
    conn = await factory.conn()

    async def version() -> dict[str, str]:
        return {variant: await conn.fetchval("SELECT xmin::text FROM product_variants WHERE id = $1", variant)}

    pool = await asyncpg.create_pool(clean_db, min_size=1, max_size=2)
    try:
        queue = SaleQueue(pool)
        before = await version()
        await queue.place(sale(shop, *buyers[0]), before)  # takes the last unit
        late = sale(shop, *buyers[1])
        with pytest.raises(SaleFailed) as refused:
            await queue.place(late, before)
        assert (refused.value.sqlstate, refused.value.detail, queue.refused_early) == ("SS001", variant, 1)
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = $1", late.key) == 0

        # A read of the current version is not refused here: the database decides.
        with pytest.raises(SaleFailed) as from_database:
            await queue.place(sale(shop, *buyers[2]), await version())
        assert from_database.value.sqlstate == "SS001" and queue.refused_early == 1

        # Restocked: a sale that read the new version is not refused early, and buys.
        await conn.execute("UPDATE product_variants SET stock = stock + 1 WHERE id = $1", variant)
        await conn.execute("INSERT INTO inventory_events (product_id, variant_id, delta, reason) "
                           "VALUES ($1, $2, 1, 'restock')", shop.product["id"], variant)
        row = await queue.place(sale(shop, *buyers[3]), await version())
        assert row["replayed"] is False and queue.refused_early == 1
    finally:
        await pool.close()
    assert await stock_of(factory, variant) == 0
    await assert_inventory_ok(clean_db)


async def test_concurrent_reads_are_made_in_one_query_with_the_same_answers(factory: Factory, clean_db: str) -> None:
    """SnapshotReads: reads made together answer what each would have read alone."""
    shop = await make_shop(factory, stock=7, variants=2)
    buyers = [(u.id, a) for u, a in await make_buyers(factory, 3)]
    variants = shop.product["variantIds"]
    conn = await factory.conn()
    await place(conn, [sale(shop, *buyers[0], key="known")])
    reads = [
        (buyers[0][0], "known", None, [variants[0]]),  # a known key
        (buyers[1][0], "new", None, variants),  # two variants
        (buyers[2][0], "new", str(uuid.uuid4()), [variants[1]]),  # no such livestream
        (buyers[2][0], "other", None, [str(uuid.uuid4())]),  # no such variant
    ]
    pool = await asyncpg.create_pool(clean_db, min_size=1, max_size=3)
    try:
        queue = SaleQueue(pool)
        together = await asyncio.gather(*(queue.reads.read(*r) for r in reads * 3))
        assert queue.reads.batches >= 1, "every read was made alone"
        for read, rows in zip(reads * 3, together, strict=True):
            [alone] = await read_snapshots(pool, [read])
            assert sorted(tuple(r)[1:] for r in alone) == sorted(tuple(r)[1:] for r in rows), read

        # One read the database refuses (a NUL in a key) fails alone; the others answer.
        bad = (buyers[1][0], "bad\x00key", None, [variants[0]])
        results = await asyncio.gather(*(queue.reads.read(*r) for r in [*reads, bad, *reads]),
                                       return_exceptions=True)
        assert isinstance(results[len(reads)], asyncpg.PostgresError)
        assert all(isinstance(r, list) and r for i, r in enumerate(results) if i != len(reads))
    finally:
        await pool.close()


async def test_a_group_the_database_refuses_as_a_whole_is_written_sale_by_sale(
    factory: Factory, clean_db: str,
) -> None:
    """One sale breaks the group's statement (a livestream deleted meanwhile): the others still buy."""
    shop = await make_shop(factory, stock=5)
    buyers = [(u.id, a) for u, a in await make_buyers(factory, 2)]
    good = sale(shop, *buyers[0])
    broken = dataclasses.replace(sale(shop, *buyers[1]), livestream=str(uuid.uuid4()))
    pool = await asyncpg.create_pool(clean_db, min_size=1, max_size=2)
    try:
        queue = SaleQueue(pool)
        results = await asyncio.gather(queue.place(good), queue.place(broken), return_exceptions=True)
        assert queue.groups == 1, "the two sales were not tried as one group"
    finally:
        await pool.close()
    assert results[0]["replayed"] is False
    assert isinstance(results[1], asyncpg.ForeignKeyViolationError)
    conn = await factory.conn()
    assert [str(p) for p in await conn.fetchval("SELECT array_agg(id) FROM payments")] == [good.payment]
    assert await stock_of(factory, shop.product["variantIds"][0]) == 4
    await assert_inventory_ok(clean_db)
