"""Checkout fixtures: a shop to buy from, localstripe, and a Stripe-configured client."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from commerce.inventory_check import check_inventory
from server.app import create_app
from server.config import Secret
from tests.conftest import make_settings
from tests.factories import Factory, User, make_address

WEBHOOK_SECRET = "whsec_test_" + "s" * 24


@dataclass
class Shop:
    seller: User
    buyer: User
    address_id: str
    product: dict[str, Any]

    def item(self, qty: int = 1, index: int = 0) -> dict[str, Any]:
        return {"productId": self.product["id"], "variantId": self.product["variantIds"][index], "qty": qty}


async def make_shop(factory: Factory, *, stock: int = 10, variants: int = 1, price: int = 1000) -> Shop:
    seller = await factory.seller()
    buyer = await factory.user()
    product = await factory.product(seller, stock=stock, variants=variants, price=price)
    return Shop(seller, buyer, await make_address(factory, buyer), product)


@pytest.fixture
async def shop(factory: Factory) -> Shop:
    return await make_shop(factory)


async def checkout(client: TestClient, user: User, body: dict[str, Any], key: str) -> aiohttp.ClientResponse:
    return await client.post("/api/v1/checkout/session", json=body,
                             headers={**user.headers, "Idempotency-Key": key})


async def assert_inventory_ok(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read"):
            report = await check_inventory(conn)
    finally:
        await conn.close()
    assert report["ok"], report["violations"]
    return report


async def stock_of(factory: Factory, variant_id: str) -> int:
    conn = await factory.conn()
    return int(await conn.fetchval("SELECT stock FROM product_variants WHERE id = $1", variant_id))


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


# --- localstripe -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """Start localstripe on a free loopback port for the whole session."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("localstripe_server.py"))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())
        url = f"http://127.0.0.1:{port}"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
async def stripe_client(aiohttp_client, clean_db: str, tmp_path: Path, localstripe_url: str) -> TestClient:  # type: ignore[no-untyped-def]
    """A client for an app whose provider is Stripe (localstripe), webhooks pointed at it."""
    settings = make_settings(
        tmp_path, stripe_secret_key=Secret("sk_test_shopstream"), stripe_api_base=localstripe_url,
        stripe_webhook_secret=Secret(WEBHOOK_SECRET), hold_sweep_seconds=0.2,
        stripe_max_network_retries=1,
    )
    client = await aiohttp_client(create_app(settings, clean_db, run_migrations=False))
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            f"{localstripe_url}/_config/webhooks/shopstream",
            data={"url": str(client.make_url("/api/v1/webhooks/stripe")), "secret": WEBHOOK_SECRET},
        )
        assert resp.status == 200, await resp.text()
    return client


@pytest.fixture
async def stripe_factory(stripe_client: TestClient, clean_db: str) -> AsyncIterator[Factory]:
    f = Factory(stripe_client, clean_db)
    yield f
    await f.close()


class LocalStripe:
    """The browser's side of Stripe (what Stripe.js would do), against localstripe."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.headers = {"Authorization": "Bearer sk_test_shopstream"}

    async def _post(self, path: str, data: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            resp = await session.post(self.url + path, data=data, headers=self.headers)
            return await resp.json()

    async def get(self, path: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            resp = await session.get(self.url + path, headers=self.headers)
            return await resp.json()

    async def pay(self, intent_id: str, card: str = "4242424242424242") -> dict[str, Any]:
        """Attach a card to the intent and confirm it; return the intent."""
        pm = await self._post("/v1/payment_methods", {
            "type": "card", "card[number]": card, "card[exp_month]": "12",
            "card[exp_year]": "2030", "card[cvc]": "123",
        })
        await self._post(f"/v1/payment_intents/{intent_id}", {"payment_method": pm["id"]})
        return await self._post(f"/v1/payment_intents/{intent_id}/confirm", {})

    async def events(self, intent_id: str) -> list[dict[str, Any]]:
        listing = await self.get("/v1/events?limit=100")
        return [e for e in listing["data"] if e["data"]["object"].get("id") == intent_id
                or e["data"]["object"].get("payment_intent") == intent_id]


@pytest.fixture
def localstripe(localstripe_url: str) -> LocalStripe:
    return LocalStripe(localstripe_url)


def signed(event: dict[str, Any], secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """Serialize and sign an event as Stripe does (`t=...,v1=HMAC(secret, t.payload)`)."""
    payload = json.dumps(event)
    header = _sign(payload, secret, timestamp)
    return payload.encode(), {"Stripe-Signature": header, "Content-Type": "application/json"}


def _sign(payload: str, secret: str, timestamp: int | None) -> str:
    import hashlib
    import hmac

    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"
