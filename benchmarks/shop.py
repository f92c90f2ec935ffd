"""The load test's commerce and realtime clients: setup through the public API, the
events channel over WebSocket, and buy-now (over events, else checkout over HTTP).

Every request has a timeout; failures are raised as :class:`LoadError` with the
server's error code, so the report can count failures by reason.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

API = "/api/v1"
REQUEST_SECONDS = 30.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
WS_SECONDS = 5.0  # one WebSocket send or close
T = TypeVar("T")
PASSWORD = "loadtest-password-1"
ADDRESS = {"line1": "1 Load Street", "city": "Testville", "postalCode": "10115", "country": "DE"}


class LoadError(Exception):
    """A request the server refused or that failed; `code` is the reason in the report."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code


async def within(seconds: float, awaitable: Awaitable[T], what: str) -> T:
    """Await with a deadline; raise LoadError("timeout") naming `what` when it passes.

    This is `asyncio.timeout`, never `asyncio.wait_for`: on Python 3.11 `wait_for`
    swallows a cancellation that arrives just as the awaited future completes, and a
    load task cancelled at the end of the show then runs on forever.
    """
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise LoadError("timeout", f"{what}: no answer within {seconds:g} s") from None


@dataclass
class Account:
    """A user of the load test with a bearer token (and an address for checkout)."""

    email: str
    token: str
    user_id: str
    address_id: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """A small JSON client of the server's HTTP API."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        # No connection limit: every events viewer holds a WebSocket on this session, and
        # aiohttp's default of 100 connections would leave /metrics, the highlight and the
        # buy-nows queued behind them once 100 are open.
        self.http = aiohttp.ClientSession(timeout=HTTP_TIMEOUT, connector=aiohttp.TCPConnector(limit=0))
        self.paths: set[str] = set()

    async def close(self) -> None:
        await self.http.close()

    async def request(self, method: str, path: str, *, expect: tuple[int, ...] = (200, 201),
                      timeout: float = REQUEST_SECONDS, **kwargs: Any) -> Any:
        """Send one request; return the JSON answer or raise LoadError(code)."""
        try:
            async with asyncio.timeout(timeout), self.http.request(method, self.base + path, **kwargs) as resp:
                text = await resp.text()
                if resp.status not in expect:
                    try:
                        code = json.loads(text)["error"]["code"]
                    except (ValueError, KeyError, TypeError):
                        code = f"http_{resp.status}"
                    raise LoadError(code, f"{method} {path} -> {resp.status} {text[:200]}")
                return json.loads(text) if text and resp.content_type == "application/json" else text
        except TimeoutError:
            raise LoadError("timeout", f"{method} {path}: no answer within {timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise LoadError("network", f"{method} {path}: {exc!r}") from None

    async def discover(self) -> set[str]:
        """Learn which routes the server has (from its OpenAPI document)."""
        document = await self.request("GET", f"{API}/openapi.json")
        self.paths = set(document.get("paths", {}))
        return self.paths

    def has(self, path: str) -> bool:
        return path in self.paths

    async def signup(self, label: str, *, address: bool = False) -> Account:
        """Create a user (and an address to ship to)."""
        email = f"{label}-{secrets.token_hex(4)}@loadtest.shopstream.test"
        data = await self.request("POST", f"{API}/auth/signup",
                                  json={"email": email, "password": PASSWORD, "name": label})
        account = Account(email, data["accessToken"], data["user"]["id"])
        if address:
            added = await self.request("POST", f"{API}/me/addresses", json=ADDRESS,
                                       headers=account.headers)
            account.address_id = added["id"]
        return account

    async def login(self, email: str, password: str) -> Account:
        data = await self.request("POST", f"{API}/auth/login", json={"email": email, "password": password})
        return Account(email, data["accessToken"], data["user"]["id"])

    async def become_seller(self, account: Account) -> None:
        data = await self.request("POST", f"{API}/me/seller", json={"displayName": "Loadtest Shop"},
                                  headers=account.headers)
        account.token = data["accessToken"]


@dataclass
class Show:
    """What setup created: the livestream, the drop's product and the people in it."""

    livestream_id: str
    stream_key: str
    seller: Account | None = None
    product_id: str | None = None
    variant_id: str | None = None
    shoppers: list[Account] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def set_up(api: Api, *, livestream_id: str, stream_key: str, drop_units: int) -> Show:
    """Create a seller, the drop's product and a livestream through the API."""
    await api.discover()
    if livestream_id:
        show = Show(livestream_id, stream_key)
        show.notes.append("existing livestream: no drop product was created")
    else:
        if not api.has(f"{API}/seller/livestreams"):
            raise LoadError("setup", "the server has no seller livestream routes: pass "
                                     "--livestream-id and --stream-key (e.g. the demo's)")
        seller = await api.signup("seller")
        await api.become_seller(seller)
        stream = await api.request("POST", f"{API}/seller/livestreams", json={"title": "Load test show"},
                                   headers=seller.headers)
        show = Show(stream["id"], stream["streamKey"], seller=seller)
        if api.has(f"{API}/seller/products") and drop_units > 0:
            product = await api.request(
                "POST", f"{API}/seller/products", headers=seller.headers,
                json={"title": "Flash drop hoodie", "price": 4900, "currency": "EUR", "status": "active"},
            )
            variant = await api.request(
                "POST", f"{API}/seller/products/{product['id']}/variants", headers=seller.headers,
                json={"sku": "DROP-" + secrets.token_hex(3).upper(), "initialStock": drop_units},
            )
            await api.request("POST", f"{API}/seller/livestreams/{show.livestream_id}/products",
                              json={"productId": product["id"]}, headers=seller.headers)
            show.product_id, show.variant_id = product["id"], variant["id"]
        else:
            show.notes.append("no catalog routes: the drop is skipped")
    return show


async def add_shoppers(api: Api, show: Show, shoppers: int) -> None:
    """Sign up ``shoppers`` users, each with an address to ship the drop to."""
    # Signups hash passwords (argon2): a few at a time keeps the server responsive.
    gate = asyncio.Semaphore(4)

    async def one(index: int) -> Account:
        async with gate:
            return await api.signup(f"shopper{index}", address=True)

    show.shoppers = list(await asyncio.gather(*(one(i) for i in range(shoppers))))


class EventsClient:
    """One connection to ``GET /livestreams/{id}/events``: receive events, send chat and buy-now."""

    def __init__(self, api: Api, livestream_id: str, account: Account | None,
                 on_chat: Callable[[str, float], None]) -> None:
        self.api = api
        self.url = api.base.replace("http", "ws", 1) + f"{API}/livestreams/{livestream_id}/events"
        self.account = account
        self.on_chat = on_chat
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connect_seconds: float | None = None
        self.welcomed = asyncio.Event()
        self.events = 0
        self.errors: list[str] = []
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, timeout: float = 15.0) -> None:
        """Open the WebSocket and wait for `welcome`."""
        started = time.monotonic()
        headers = self.account.headers if self.account else {}
        try:
            async with asyncio.timeout(timeout):
                self.ws = await self.api.http.ws_connect(self.url, headers=headers, heartbeat=20)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LoadError("ws_connect", f"{self.url}: {exc!r}") from None
        self._reader = asyncio.ensure_future(self._read())
        try:
            await within(timeout, self.welcomed.wait(), "events welcome")
        except LoadError:
            raise LoadError("ws_no_welcome", f"{self.url}: no welcome within {timeout:g} s") from None
        self.connect_seconds = time.monotonic() - started

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.monotonic()
            value = json.loads(message.data)
            for event in value if isinstance(value, list) else [value]:
                self._handle(event, now)

    def _handle(self, event: dict[str, Any], now: float) -> None:
        kind, payload = event.get("type"), event.get("payload") or {}
        self.events += 1
        if kind == "welcome":
            self.welcomed.set()
        elif kind == "chat:new":
            self.on_chat(str(payload.get("message", "")), now)
        elif kind in ("ack", "error"):
            future = self._acks.pop(str(payload.get("ref")), None)
            if future is not None and not future.done():
                future.set_result(event)
            elif kind == "error":
                self.errors.append(str(payload.get("code")))

    async def send(self, kind: str, payload: dict[str, Any], *, wait: float | None = None) -> dict[str, Any] | None:
        """Send one client message; with ``wait``, return its `ack`/`error` event."""
        if self.ws is None or self.ws.closed:
            raise LoadError("ws_closed")
        ref = payload.setdefault("ref", uuid.uuid4().hex[:16])
        future: asyncio.Future[dict[str, Any]] | None = None
        if wait is not None:
            future = self._acks[ref] = asyncio.get_running_loop().create_future()
        try:
            await within(WS_SECONDS, self.ws.send_str(json.dumps({"type": kind, "payload": payload})),
                         f"sending {kind}")
            if future is None:
                return None
            return await within(wait, future, f"{kind} ack (ref {ref})")
        except ConnectionError as exc:
            raise LoadError("ws_closed", f"sending {kind}: {exc!r}") from None
        finally:
            self._acks.pop(ref, None)

    async def close(self) -> None:
        """Close the socket (bounded: a server that never answers the close frame is cut)."""
        try:
            if self.ws is not None:
                await within(WS_SECONDS, self.ws.close(), "closing the events socket")
        finally:
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.wait([self._reader], timeout=WS_SECONDS)


async def buy_now(api: Api, events: EventsClient | None, show: Show, account: Account,
                  *, timeout: float = 30.0) -> dict[str, Any]:
    """Press buy-now once: over the events channel if open, else `POST /checkout/session`."""
    assert show.product_id and show.variant_id
    item = {"productId": show.product_id, "variantId": show.variant_id, "qty": 1}
    if events is not None and events.ws is not None and not events.ws.closed:
        answer = await events.send("buy:now", {**item, "addressId": account.address_id}, wait=timeout)
        assert answer is not None
        if answer["type"] == "error":
            raise LoadError(str(answer["payload"].get("code", "error")))
        return answer["payload"]
    return await api.request(
        "POST", f"{API}/checkout/session", headers={**account.headers, "Idempotency-Key": uuid.uuid4().hex},
        json={"addressId": account.address_id, "items": [item], "livestreamId": show.livestream_id},
    )
