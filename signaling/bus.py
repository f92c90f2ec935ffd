"""Carry room events between server processes over Redis pub/sub, and count limits there.

Every process publishes the events it emits to `{prefix}room:{livestream_id}` and
listens on the pattern `{prefix}room:*`. Each message carries the publishing process's
id, so a process skips its own messages: it has already delivered them locally,
without waiting for Redis. Presence messages (`kind: "presence"`) carry a process's
local viewer count of a room, so every process can show the room's total.

Redis going away must not take chat down: a failed publish or a broken subscription
marks the bus disconnected (one warning in the log), events keep flowing to local
recipients, and the listener keeps retrying until Redis answers again, then logs the
recovery and resumes cross-process delivery. Pub/sub keeps nothing for a subscriber
that was away: `lost` is called when the bus goes away, and `resumed` after it has
subscribed again but before it hands over any message, so the hub can first deliver
what its rooms missed from the stored chat (`signaling/catchup.py`). Limits counted
here (`hit`, `claim`) fall back to the caller's in-process counters while Redis is
away (`None` answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("shopstream.realtime.bus")

# (kind, livestream_id, message) for each message from another process.
BusHandler = Callable[[str, str, dict[str, Any]], None]
Resumed = Callable[[], Awaitable[None]]
RESUME_TIMEOUT = 10.0  # seconds the catch-up may hold back live messages at most
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def connect(url: str) -> aioredis.Redis:
    """Open a Redis client that fails fast instead of retrying for seconds."""
    return aioredis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=2.0,
        retry=Retry(NoBackoff(), 0), health_check_interval=0,
    )


class Bus:
    """Publish room messages to other processes and hand theirs to the hub."""

    def __init__(
        self, redis: aioredis.Redis, *, prefix: str, process_id: str, retry_seconds: float = 0.5
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.process_id = process_id
        self.retry_seconds = retry_seconds
        self.connected = False
        self.handler: BusHandler | None = None
        self.lost: Callable[[], None] | None = None
        self.resumed: Resumed | None = None
        self._missed = False  # lost since the last subscription: catch up when back
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._warned = False

    def channel(self, livestream_id: str) -> str:
        return f"{self.prefix}room:{livestream_id}"

    async def start(self, handler: BusHandler, *, wait: float = 2.0,
                    lost: Callable[[], None] | None = None, resumed: Resumed | None = None) -> None:
        """Start listening; wait briefly for the first subscription (never fail on it).

        `lost()` runs when Redis goes away; `await resumed()` once it is back, before
        the first message from it is handed to `handler`.
        """
        self.handler = handler
        self.lost, self.resumed = lost, resumed
        self._task = asyncio.create_task(self._listen(), name="realtime-bus")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def publish(self, kind: str, livestream_id: str, message: dict[str, Any]) -> None:
        """Send a message to the other processes; while disconnected, do nothing."""
        if not self.connected:
            return
        data = json.dumps({"o": self.process_id, "k": kind, "r": livestream_id, **message},
                          separators=(",", ":"), default=str)
        try:
            await self.redis.publish(self.channel(livestream_id), data)
        except _FAILURES as exc:
            self._lost(exc)

    async def hit(self, key: str, limit: int, window: int) -> int | None:
        """Count one attempt in a fixed window shared by all processes.

        Return 0 if allowed, the seconds to wait if over `limit`, None without Redis.
        """
        if not self.connected:
            return None
        full = f"{self.prefix}limit:{key}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(full).expire(full, window, nx=True).pttl(full)
                count, _, ttl_ms = await pipe.execute()
        except _FAILURES as exc:
            self._lost(exc)
            return None
        if count <= limit:
            return 0
        return max(1, math.ceil(max(ttl_ms, 0) / 1000))

    async def claim(self, key: str, seconds: float) -> int | None:
        """Take a per-key turn for `seconds` (slow mode); return 0, the wait, or None."""
        if not self.connected:
            return None
        full = f"{self.prefix}turn:{key}"
        try:
            if await self.redis.set(full, b"1", nx=True, px=max(1, int(seconds * 1000))):
                return 0
            ttl_ms = await self.redis.pttl(full)
        except _FAILURES as exc:
            self._lost(exc)
            return None
        return max(1, math.ceil(max(ttl_ms, 0) / 1000))

    def _lost(self, exc: BaseException) -> None:
        if self.connected or not self._warned:
            log.warning("redis unavailable (%s): delivering room events in this process only", exc)
            self._warned = True
        self.connected = False
        if not self._missed:
            self._missed = True
            if self.lost is not None:
                self.lost()

    async def _listen(self) -> None:
        """Subscribe, hand messages over, and on any failure retry until Redis is back."""
        pattern = f"{self.prefix}room:*"
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(pattern)
                await self.redis.ping()
                if self._warned:
                    log.warning("redis is back: room events travel between processes again")
                    self._warned = False
                self.connected = True
                self._ready.set()
                if self._missed:
                    self._missed = False
                    await self._catch_up()
                while self.connected:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None:
                        # An idle subscription does not notice a dead server: ask.
                        await self.redis.ping()
                        continue
                    self._dispatch(message["data"])
            except _FAILURES as exc:
                self._lost(exc)
            finally:
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()
            await asyncio.sleep(self.retry_seconds)

    async def _catch_up(self) -> None:
        """Let the hub deliver what was missed; messages from Redis wait in the socket."""
        if self.resumed is None:
            return
        try:
            async with asyncio.timeout(RESUME_TIMEOUT):
                await self.resumed()
        except Exception:  # noqa: BLE001 - a failed catch-up must not stop live delivery
            log.exception("catching up after the redis outage failed")

    def _dispatch(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            origin, kind, livestream_id = message["o"], message["k"], message["r"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed bus message")
            return
        if origin == self.process_id or self.handler is None:
            return
        self.handler(kind, livestream_id, message)
