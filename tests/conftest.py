"""Test fixtures: a real PostgreSQL database per test session, a clean state per test.

`TEST_DATABASE_URL` names a server to use (a database is created on it for the run and
dropped afterwards); without it the embedded PostgreSQL of `pgserver` is started in a
temporary folder, as the server itself does by default.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from server.app import create_app
from server.config import Secret, Settings
from server.db import EmbeddedPostgres, migrate
from tests.factories import Factory

APP_ROLE = "shopstream_app"


def _with_database(dsn: str, name: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A DSN with the right to create databases."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="shopstream-test-") as tmp:
        embedded = EmbeddedPostgres(Path(tmp))
        dsn = embedded.start()
        try:
            yield dsn
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
async def database_dsn(admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test session."""
    name = f"shopstream_test_{os.getpid()}_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    dsn = _with_database(admin_dsn, name)
    await migrate(dsn, APP_ROLE, quiet=True)
    yield dsn
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@pytest.fixture
async def clean_db(database_dsn: str) -> str:
    """Empty every table (not the migration record) so each test starts from nothing."""
    conn = await asyncpg.connect(database_dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        )
        await conn.execute(
            "TRUNCATE " + ", ".join(f'"{t["tablename"]}"' for t in tables) + " RESTART IDENTITY CASCADE"
        )
    finally:
        await conn.close()
    return database_dsn


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "var",
        "jwt_secret": Secret(secrets.token_urlsafe(48)),
        "log_requests": False,
        "ice_host_addresses": ("127.0.0.1",),
        "db_app_role": APP_ROLE,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def client(aiohttp_client, clean_db: str, settings: Settings) -> TestClient:  # type: ignore[no-untyped-def]
    """An HTTP client for a running app on a clean database."""
    app = create_app(settings, clean_db, run_migrations=False)
    return await aiohttp_client(app)


@pytest.fixture
async def factory(client: TestClient, clean_db: str) -> AsyncIterator[Factory]:
    f = Factory(client, clean_db)
    yield f
    await f.close()
