"""A show outlives a crash of its server (issue #13, finding 7).

After `kill -9` the database still says `live` for shows whose SFU rooms died with the
process: nobody could watch them (409) until the seller republished. On start the
server reconciles the shows it hosted: they become `paused`, their sellers can publish
again at once, and those whose seller does not come back end after the publisher
idle timeout. Stock holds follow their usual rules (they expire with their payment).

The first test runs the real `shopstream serve` process and kills it; the second checks
the reconcile rules (node ownership, idle timeout) in-process, where they are quicker to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from server.app import create_app
from tests.checkout.conftest import checkout
from tests.conftest import APP_ROLE, make_settings
from tests.factories import Factory, make_address
from tests.media.peers import wait_for
from tests.signaling.test_whip_http import SDP, livestream, publish_http, status_of, watch_http

pytestmark = pytest.mark.timeout(240)

GRACE_SECONDS = 10.0  # PUBLISHER_GRACE_SECONDS and PUBLISHER_IDLE_TIMEOUT of the server under test
HOLD_TTL_SECONDS = 25


def shopstream_command() -> list[str]:
    """Return the `shopstream` console script of this environment."""
    script = Path(sys.executable).with_name("shopstream")
    if script.exists():
        return [str(script)]
    found = shutil.which("shopstream")
    if found:
        return [found]
    return [sys.executable, "-c", "from server.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`shopstream serve` on 127.0.0.1 against the test database, started and killed at will."""

    def __init__(self, dsn: str, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "server.log"
        self.env = {
            **os.environ, "DATABASE_URL": dsn, "DB_APP_ROLE": APP_ROLE,
            "SHOPSTREAM_HOST": "127.0.0.1", "SHOPSTREAM_PORT": str(self.port),
            "SHOPSTREAM_DATA_DIR": str(data_dir), "JWT_SECRET": secrets.token_urlsafe(48),
            "ICE_HOST_ADDRESSES": "127.0.0.1",
            "PUBLISHER_GRACE_SECONDS": str(GRACE_SECONDS), "PUBLISHER_IDLE_TIMEOUT": str(GRACE_SECONDS), "HOLD_TTL_SECONDS": str(HOLD_TTL_SECONDS),
            "HOLD_SWEEP_SECONDS": "0.5", "LOG_REQUESTS": "0",
        }
        for name in ("REDIS_URL", "STRIPE_SECRET_KEY", "STRIPE_API_BASE", "ICE_SERVERS"):
            self.env.pop(name, None)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *shopstream_command(), "serve", env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc.returncode is None, self.log.read_text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                assert time.monotonic() < deadline, "the server did not start:\n" + self.log.read_text()[-3000:]
                await asyncio.sleep(0.2)

    async def kill(self) -> None:
        """Kill the server the hard way: no shutdown code runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 30)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await asyncio.wait_for(self.proc.wait(), 10)


@pytest.fixture
async def server(clean_db: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    process = ServerProcess(clean_db, tmp_path / "var")
    (tmp_path / "var").mkdir()
    try:
        yield process
    finally:
        await process.stop()


async def hold_status(dsn: str, payment_id: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT h.status FROM stock_holds h JOIN payments p ON p.id = h.payment_id
               WHERE p.provider_intent_id = $1 OR p.id::text = $1""", payment_id,
        )
        return [r["status"] for r in rows]
    finally:
        await conn.close()


async def check_inventory(server: ServerProcess) -> tuple[int, str]:
    """Run `shopstream check-inventory` against the server's database; return code and output."""
    proc = await asyncio.create_subprocess_exec(
        *shopstream_command(), "check-inventory", env=server.env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


async def test_kill_9_mid_show_then_restart(server: ServerProcess, clean_db: str) -> None:
    await server.start()
    async with aiohttp.ClientSession(base_url=server.url) as http:
        factory = Factory(http, clean_db)  # type: ignore[arg-type]  # same calls as a TestClient
        publishers: list[Any] = []
        viewers: list[Any] = []
        try:
            seller, buyer = await factory.seller(), await factory.user()
            product = await factory.product(seller, stock=5)
            address = await make_address(factory, buyer)
            returning = await livestream(factory, seller)  # its seller publishes again
            gone = await livestream(factory, seller)  # its seller does not come back
            for stream in (returning, gone):
                publisher, _ = await publish_http(http, stream["id"], stream["streamKey"])  # type: ignore[arg-type]
                publishers.append(publisher)
            viewer, _ = await watch_http(http, returning["id"])  # type: ignore[arg-type]
            viewers.append(viewer)
            await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=30)

            resp = await checkout(http, buyer, {"addressId": address, "items": [  # type: ignore[arg-type]
                {"productId": product["id"], "variantId": product["variantIds"][0], "qty": 2}]}, "crash-1")
            assert resp.status == 201, await resp.text()
            payment = (await resp.json())["paymentIntentId"]
            assert await factory.ledger(product["variantIds"][0]) == (3, 3)

            await server.kill()
            for peer in publishers + viewers:
                await peer.close()
            publishers.clear()
            viewers.clear()
            # Nothing ran at the kill: the shows are still recorded live.
            assert {await status_of(clean_db, s["id"]) for s in (returning, gone)} == {"live"}

            await server.start()
            assert await status_of(clean_db, returning["id"]) == "paused"
            assert await status_of(clean_db, gone["id"]) == "paused"
            listed = await (await http.get(f"/api/v1/livestreams/{gone['id']}")).json()
            assert listed["status"] == "paused"

            # The seller publishes again at once, and viewers get frames.
            publisher, _ = await publish_http(http, returning["id"], returning["streamKey"])  # type: ignore[arg-type]
            publishers.append(publisher)
            viewer, _ = await watch_http(http, returning["id"])  # type: ignore[arg-type]
            viewers.append(viewer)
            await wait_for(lambda: len(viewer.video_frames) >= 5, timeout=30)
            assert await status_of(clean_db, returning["id"]) == "live"

            # A show whose seller did not come back ends after the idle timeout.
            deadline = time.monotonic() + GRACE_SECONDS + 30
            while await status_of(clean_db, gone["id"]) != "ended":
                assert time.monotonic() < deadline, "the orphaned show did not end"
                await asyncio.sleep(0.5)
            resp = await http.post(f"/api/v1/livestreams/{gone['id']}/watch", data="v=0\r\n", headers=SDP)
            assert resp.status == 409
            assert await status_of(clean_db, returning["id"]) == "live"

            # The hold survived the crash and is released by its expiry, as always.
            deadline = time.monotonic() + HOLD_TTL_SECONDS + 30
            while await hold_status(clean_db, payment) != ["released"]:
                assert time.monotonic() < deadline, await hold_status(clean_db, payment)
                await asyncio.sleep(0.5)
            assert await factory.ledger(product["variantIds"][0]) == (5, 5)
            code, output = await check_inventory(server)
            assert code == 0, output
        finally:
            for peer in publishers + viewers:
                await peer.close()
            await factory.close()


async def insert_stream(conn: asyncpg.Connection, seller_id: str, status: str, node: str | None) -> dict[str, str]:
    key = "sk_" + secrets.token_urlsafe(16)
    row = await conn.fetchrow(
        """INSERT INTO livestreams (seller_id, title, stream_key, room, status, media_node)
           VALUES ($1, 'Show', $2, $3, $4, $5) RETURNING id""",
        seller_id, key, "room_" + secrets.token_hex(6), status, node,
    )
    return {"id": str(row["id"]), "streamKey": key}


async def test_reconcile_pauses_only_this_nodes_shows_and_ends_them_when_idle(
    aiohttp_client, client, factory: Factory, clean_db: str, tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    seller = await factory.seller()
    conn = await factory.conn()
    ours = await insert_stream(conn, seller.seller_id, "live", "local")
    unclaimed = await insert_stream(conn, seller.seller_id, "paused", None)  # started, never published
    elsewhere = await insert_stream(conn, seller.seller_id, "live", "node-b")  # another node's room
    scheduled = await insert_stream(conn, seller.seller_id, "scheduled", None)
    ended = await insert_stream(conn, seller.seller_id, "ended", "local")

    # A server starting on this database (as after a crash: it has no rooms).
    settings = make_settings(tmp_path / "restarted", publisher_grace_seconds=3.0,
                             publisher_idle_timeout=3.0)
    restarted = await aiohttp_client(create_app(settings, clean_db, run_migrations=False))
    expected = {ours["id"]: "paused", unclaimed["id"]: "paused", elsewhere["id"]: "live",
                scheduled["id"]: "scheduled", ended["id"]: "ended"}
    assert {i: await status_of(clean_db, i) for i in expected} == expected

    publisher, _ = await publish_http(restarted, ours["id"], ours["streamKey"])
    try:
        assert await status_of(clean_db, ours["id"]) == "live"
        node = await conn.fetchval("SELECT media_node FROM livestreams WHERE id = $1", ours["id"])
        assert node == "local"
        deadline = time.monotonic() + 30
        while await status_of(clean_db, unclaimed["id"]) != "ended":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert await status_of(clean_db, ours["id"]) == "live"  # it has its room again
        assert await status_of(clean_db, elsewhere["id"]) == "live"
    finally:
        await publisher.close()
