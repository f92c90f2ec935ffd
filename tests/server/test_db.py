"""Migrations (twice, concurrently, tamper-evident) and row-level security."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest

from server.db import Database, MigrationError, load_migrations, migrate
from tests.conftest import APP_ROLE, _with_database
from tests.factories import Factory


@pytest.fixture
async def empty_dsn(admin_dsn: str):
    name = f"shopstream_mig_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    yield _with_database(admin_dsn, name)
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def test_migrations_apply_once_even_when_run_concurrently(empty_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(empty_dsn, APP_ROLE, quiet=True) for _ in range(4)))
    versions = [m.version for m in load_migrations()]
    # Exactly one runner applied everything; the others found nothing to do.
    assert sorted(len(r) for r in results) == [0, 0, 0, len(versions)]
    assert await migrate(empty_dsn, APP_ROLE, quiet=True) == []
    conn = await asyncpg.connect(empty_dsn)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == versions
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    finally:
        await conn.close()
    expected = {
        "users", "profiles", "refresh_tokens", "addresses", "sellers", "categories", "products",
        "product_variants", "wishlist_items", "carts", "cart_items", "orders", "order_items",
        "livestreams", "live_products", "chat_messages", "inventory_events", "coupons",
        "coupon_redemptions", "payments", "processed_webhook_events", "idempotency_keys",
        "stock_holds",
    }
    assert expected <= tables


async def test_changed_migration_is_refused(empty_dsn: str) -> None:
    await migrate(empty_dsn, APP_ROLE, quiet=True)
    conn = await asyncpg.connect(empty_dsn)
    await conn.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = '0001'")
    await conn.close()
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(empty_dsn, APP_ROLE, quiet=True)


async def test_rls_hides_other_users_rows_from_a_query_without_where(client, factory: Factory, clean_db: str) -> None:
    alice, bob = await factory.user(), await factory.user()
    for user in (alice, bob):
        resp = await client.post(
            "/api/v1/me/addresses",
            json={"line1": f"{user.id} st", "city": "C", "postalCode": "1", "country": "US"},
            headers=user.headers,
        )
        assert resp.status == 201
    db = await Database.connect(clean_db, APP_ROLE, min_size=1, max_size=2)
    try:
        async with db.transaction(alice.id) as conn:
            rows = await conn.fetch("SELECT user_id FROM addresses")  # no WHERE on purpose
            assert [str(r["user_id"]) for r in rows] == [alice.id]
            # Inserting a row for someone else is refused too.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO addresses (user_id, line1, city, postal_code, country) VALUES ($1,'x','y','1','US')",
                    bob.id,
                )
        async with db.transaction(None) as conn:
            assert await conn.fetch("SELECT * FROM addresses") == []
        async with db.transaction(system=True) as conn:
            assert len(await conn.fetch("SELECT * FROM addresses")) == 2
    finally:
        await db.close()


async def test_pooled_connection_carries_nothing_into_the_next_transaction(clean_db: str) -> None:
    """One pooled connection, reused: no caller, no system flag, no open transaction leaks."""
    import uuid

    db = await Database.connect(clean_db, APP_ROLE, min_size=1, max_size=1)
    try:
        caller = str(uuid.uuid4())
        async with db.transaction(caller) as conn:
            first = conn.get_server_pid()
            assert str(await conn.fetchval("SELECT app_user_id()")) == caller
        with pytest.raises(asyncpg.UndefinedTableError):
            async with db.transaction(system=True) as conn:
                await conn.execute("SELECT * FROM no_such_table")
        async with db.transaction(None) as conn:
            assert conn.get_server_pid() == first, "the same connection was reused"
            assert await conn.fetchval("SELECT app_user_id()") is None
            assert await conn.fetchval("SELECT app_is_system()") is False
            assert await conn.fetchval("SELECT current_user") == APP_ROLE
        async with db.pool.acquire() as conn:
            assert not conn.is_in_transaction(), "no transaction left open"
    finally:
        await db.close()


async def test_every_new_connection_runs_the_warm_up_without_jit(clean_db: str) -> None:
    """Connections opened later (the pool growing in a drop) are warmed like the first."""
    from commerce.sales import WARM_UP

    db = await Database.connect(clean_db, APP_ROLE, min_size=1, max_size=3,
                                warm=[*WARM_UP, ("SELECT set_config('test.warmed', $1, false)", ("yes",))])
    try:
        async with db.pool.acquire() as a, db.pool.acquire() as b, db.pool.acquire() as c:
            assert len({conn.get_server_pid() for conn in (a, b, c)}) == 3
            for conn in (a, b, c):
                assert await conn.fetchval("SELECT current_setting('test.warmed', true)") == "yes"
                assert await conn.fetchval("SHOW jit") == "off"
                assert await conn.fetchval("SELECT current_user") == APP_ROLE
    finally:
        await db.close()


async def test_inventory_events_are_append_only_for_the_app_role(factory: Factory, clean_db: str) -> None:
    seller = await factory.seller()
    await factory.product(seller, stock=5)
    db = await Database.connect(clean_db, APP_ROLE, min_size=1, max_size=1)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with db.transaction(system=True) as conn:
                await conn.execute("UPDATE inventory_events SET delta = 100")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with db.transaction(system=True) as conn:
                await conn.execute("DELETE FROM inventory_events")
    finally:
        await db.close()
    owner = await asyncpg.connect(clean_db)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await owner.execute("UPDATE inventory_events SET delta = 100")
    finally:
        await owner.close()


async def test_take_stock_takes_every_line_or_none(factory: Factory, clean_db: str) -> None:
    """take_stock (the last step of place_checkout) gives back the first line when the second is short."""
    seller = await factory.seller()
    product = await factory.product(seller, stock=3, variants=2)
    first, second = sorted(product["variantIds"])
    db = await Database.connect(clean_db, APP_ROLE, min_size=1, max_size=1)
    try:
        take = "SELECT take_stock($1::uuid[], $2::int[])"
        await db.pool.execute(take, [first, second], [1, 2])
        with pytest.raises(asyncpg.PostgresError) as short:
            await db.pool.execute(take, [first, second], [1, 2])  # second has 1 left
        assert short.value.sqlstate == "SS001" and short.value.detail == second
        stocks = dict(await db.pool.fetch(
            "SELECT id::text, stock FROM product_variants WHERE id = ANY($1::uuid[])", [first, second]))
        assert stocks == {first: 2, second: 1}
    finally:
        await db.close()
