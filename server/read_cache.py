"""Hot reads: the serialized JSON of public catalog and livestream reads, kept in memory.

When a show starts or a product is highlighted, thousands of viewers ask for the same
product, product page and livestream at once. Each answer is loaded once, serialized
once, and served as bytes with an `ETag` until something changes:

    cache = ReadCache(max_age=0.1)
    entry = await cache.get("product:<id>", load)     # load() -> (data, tags)
    cache.changed({"product:<id>", "variant:<id>"})   # drop, here and in other processes

Every entry carries tags naming what it shows (`product:<id>`, `variant:<id>`,
`livestream:<id>`, and `products` / `livestreams` for list pages, whose membership any
product or livestream change may alter). `changed(tags)` drops the entries that carry
any of them, in this process at once and in every other process through Redis pub/sub
(`{prefix}cache:room:catalog`, the realtime bus's code with its own prefix). Changes are
announced after their transaction commits, from `server/notify.py`.

Every write path of stock (checkout holds, buy-now, seller deltas, released holds,
cancels and refunds) announces its change, so a cached read shows new stock at once in
this process and a Redis round trip later in the others. Three bounds cover what an
announcement could miss: an entry is served at most `max_age` seconds after its load
began (READ_CACHE_SECONDS, default 1 s, for what no write path announces: viewer
figures, a direct SQL fix; past half of it the next request refreshes it in the
background while the entry is still served); while Redis is configured but away, and
other processes' announcements cannot arrive, at most `unsynced_max_age` (one realtime
tick, 100 ms), so stale stock is never shown longer than a tick; and a load that
overlaps an announcement for one of its tags is answered but not kept. Concurrent
misses share one load, so a cold key costs the database one query however many
viewers ask at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from server.keys import REDIS, SETTINGS
from signaling.bus import Bus

log = logging.getLogger("shopstream.read_cache")

# (data, tags): the JSON to serve and what it shows.
Loader = Callable[[], Awaitable[tuple[Any, Iterable[str]]]]

# A CDN may keep an anonymous answer for a second and serve it a little longer while it
# refetches; an answer that depends on the caller stays in their browser, revalidated.
PUBLIC = "public, max-age=1, stale-while-revalidate=5"
PRIVATE = "private, no-cache"
CONTENT_TYPE = "application/json; charset=utf-8"  # what web.json_response sends
CHANNEL = "catalog"
PRODUCTS, LIVESTREAMS = "products", "livestreams"
MAX_TAG_MARKS = 50_000


@dataclass(slots=True, frozen=True)
class Entry:
    """One cached answer: the bytes, their ETag, what they show, and when their load began."""

    body: bytes
    etag: str
    tags: frozenset[str]
    loaded_at: float


def product_tags(products: Iterable[dict[str, Any]]) -> set[str]:
    """Return the tags of product JSON: each product and each of its variants."""
    tags: set[str] = set()
    for product in products:
        tags.add(f"product:{product['id']}")
        tags.update(f"variant:{v['id']}" for v in product.get("variants", ()))
    return tags


def encode(data: Any) -> bytes:
    """Serialize exactly as `server.api.json_response` does."""
    return json.dumps(data, separators=(",", ":"), default=str).encode()


class ReadCache:
    """Serve loaded JSON as bytes until its tags change or it is `max_age` seconds old."""

    def __init__(self, *, max_age: float = 1.0, unsynced_max_age: float = 0.1, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.unsynced_max_age = min(unsynced_max_age, max_age)
        self.max_entries = max_entries
        self.clock = clock
        self.stats = {"hits": 0, "misses": 0, "loads": 0, "discarded": 0, "invalidated": 0}
        self._entries: dict[str, Entry] = {}
        self._by_tag: dict[str, set[str]] = {}
        self._loading: dict[str, tuple[asyncio.Task[Entry], int]] = {}
        # Invalidation sequence: a load started at seq s whose tags were marked after s
        # (or before a reset of the marks, `_floor`) may hold what changed: not kept.
        self._seq = 0
        self._marks: dict[str, int] = {}
        self._floor = 0
        self.bus: Bus | None = None
        self._publishing: set[str] = set()
        self._publisher: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.max_age > 0

    async def get(self, key: str, load: Loader) -> Entry:
        """Return the entry for `key`, loading it (once, whoever else waits) when needed."""
        entry = self._entries.get(key)
        if entry is not None:
            bus = self.bus
            max_age = self.max_age if bus is None or bus.connected else self.unsynced_max_age
            age = self.clock() - entry.loaded_at
            if age < max_age:
                self.stats["hits"] += 1
                if age >= max_age / 2 and key not in self._loading:
                    self._start(key, load)
                return entry
        self.stats["misses"] += 1
        loading = self._loading.get(key)
        # Join a load only if nothing changed since it began: it may predate the change.
        task = loading[0] if loading is not None and loading[1] == self._seq else self._start(key, load)
        return await asyncio.shield(task)

    def invalidate(self, tags: Iterable[str]) -> int:
        """Drop every entry carrying one of `tags` in this process; return how many."""
        self._seq += 1
        dropped = 0
        for tag in tags:
            self._marks[tag] = self._seq
            for key in self._by_tag.pop(tag, ()):
                if self._drop(key):
                    dropped += 1
        if len(self._marks) > MAX_TAG_MARKS:
            self._marks.clear()
            self._floor = self._seq
        self.stats["invalidated"] += dropped
        return dropped

    def clear(self) -> None:
        """Drop everything (after missing announcements from other processes)."""
        self._seq += 1
        self._floor = self._seq
        self._marks.clear()
        self._entries.clear()
        self._by_tag.clear()

    def changed(self, tags: Iterable[str]) -> None:
        """Announce a committed change: invalidate here now, and in other processes soon."""
        tags = set(tags)
        if not tags:
            return
        self.invalidate(tags)
        if self.bus is not None:
            self._publishing |= tags
            if self._publisher is None or self._publisher.done():
                self._publisher = asyncio.create_task(self._publish(), name="read-cache-publish")

    # -- loading ---------------------------------------------------------------------

    def _start(self, key: str, load: Loader) -> asyncio.Task[Entry]:
        started_seq = self._seq
        task = asyncio.create_task(self._load(key, load, started_seq), name=f"read-cache-load:{key}")
        self._loading[key] = (task, started_seq)
        task.add_done_callback(lambda t: self._loaded(key, t))
        return task

    def _loaded(self, key: str, task: asyncio.Task[Entry]) -> None:
        loading = self._loading.get(key)
        if loading is not None and loading[0] is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved here: a background refresh may have no waiter

    async def _load(self, key: str, load: Loader, started_seq: int) -> Entry:
        loaded_at = self.clock()
        self.stats["loads"] += 1
        data, tags = await load()
        body = encode(data)
        entry = Entry(body, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"',
                      frozenset(tags), loaded_at)
        marks = self._marks
        if self._floor > started_seq or any(marks.get(t, 0) > started_seq for t in entry.tags):
            self.stats["discarded"] += 1  # answered, but a change overlapped the load
            return entry
        current = self._entries.get(key)
        if current is not None and current.loaded_at > loaded_at:
            return entry  # a later load already stored
        self._store(key, entry)
        return entry

    def _store(self, key: str, entry: Entry) -> None:
        self._drop(key)
        while len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))  # the oldest stored
        self._entries[key] = entry
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(key)

    def _drop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        for tag in entry.tags:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]
        return True

    # -- other processes -------------------------------------------------------------

    async def _publish(self) -> None:
        while self._publishing and self.bus is not None:
            tags = sorted(self._publishing)
            self._publishing.clear()
            await self.bus.publish("invalidate", CHANNEL, {"tags": tags})

    def _from_bus(self, kind: str, channel: str, message: dict[str, Any]) -> None:
        if kind == "invalidate" and isinstance(message.get("tags"), list):
            self.invalidate(str(t) for t in message["tags"])

    async def _resumed(self) -> None:
        # Announcements made while Redis was away are lost: nothing here can be trusted.
        self.clear()

    async def start_bus(self, bus: Bus) -> None:
        self.bus = bus
        await bus.start(self._from_bus, lost=self.clear, resumed=self._resumed)

    async def stop(self) -> None:
        if self.bus is not None:
            await self.bus.stop()
        for task, _ in list(self._loading.values()):
            task.cancel()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher


READ_CACHE: web.AppKey[ReadCache] = web.AppKey("read_cache", ReadCache)


async def read_cache_context(app: web.Application) -> AsyncIterator[None]:
    """Keep the app's read cache, listening to other processes' changes when Redis is set."""
    settings = app[SETTINGS]
    cache = app[READ_CACHE]
    redis = app.get(REDIS)
    if redis is not None and cache.enabled:
        process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        await cache.start_bus(Bus(redis, prefix=f"{settings.redis_prefix}cache:", process_id=process_id))
    yield
    await cache.stop()


# -- HTTP ------------------------------------------------------------------------------

def _etag_matches(header: str, etag: str) -> bool:
    """Apply If-None-Match (RFC 9110 13.1.2): weak comparison, `*` matches any."""
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == opaque for candidate in header.split(","))


def respond(request: web.Request, entry: Entry, *, shared: bool, vary: bool = False) -> web.Response:
    """Answer with the cached bytes, or 304 when the caller already holds them."""
    headers = {"ETag": entry.etag, "Cache-Control": PUBLIC if shared else PRIVATE}
    if vary:
        headers["Vary"] = "Authorization"
    inm = request.headers.get("If-None-Match")
    if inm is not None and _etag_matches(inm, entry.etag):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = CONTENT_TYPE
    return web.Response(body=entry.body, headers=headers)


def changed(app: web.Application, tags: Iterable[str]) -> None:
    """Announce committed changes to the app's read cache (no-op without one)."""
    cache = app.get(READ_CACHE)
    if cache is not None:
        cache.changed(tags)
