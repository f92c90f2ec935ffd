"""Catch up on the chat a process missed while Redis was away.

Redis pub/sub keeps nothing: while the bus is disconnected, chat stored by the other
processes never reaches this process's viewers. Every message is stored before it is
acknowledged, so PostgreSQL has them all. Each room keeps a `ChatLog`: the ids of the
chat it delivered recently and the newest one's timestamp (the database's clock). When
the bus goes away, every room *holds* that timestamp (a room opened during the outage
holds the newest of the chat it opened with). When the bus has subscribed again, and
before it hands over any message from Redis, the hub reads each room's chat since its
held timestamp minus `MARGIN_SECONDS` (commits do not land in `created_at` order), the
newest `CATCH_UP_LIMIT` at most, and delivers those the room has not delivered, oldest
first. Live messages from Redis follow; one the catch-up already delivered is dropped
by its id. So each missed message reaches the room once, and in order.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from signaling.store import chat_message

CATCH_UP_LIMIT = 200  # messages per room; a longer outage delivers the newest of them
MARGIN_SECONDS = 30.0  # how far before the held timestamp to look (and ids to remember)
MAX_REMEMBERED = 5000  # ids a room remembers at most, however busy its chat

MISSED_CHAT = """
SELECT m.id, m.user_id, pr.name, m.message, m.created_at
FROM chat_messages m JOIN profiles pr ON pr.id = m.user_id
WHERE m.livestream_id = $1 AND m.deleted_at IS NULL
  AND ($2::float8 IS NULL OR m.created_at >= to_timestamp($2::float8))
ORDER BY m.created_at DESC, m.id DESC LIMIT $3
"""

class ChatLog:
    """The chat ids one room delivered recently, and what to catch up from after an outage."""

    def __init__(self, margin: float = MARGIN_SECONDS, limit: int = MAX_REMEMBERED) -> None:
        self.margin = margin
        self.limit = limit
        self.newest: float | None = None
        self._ids: dict[str, float] = {}  # insertion order: oldest first
        self.holding = False
        self._held: float | None = None  # the newest timestamp when holding began

    def seed(self, messages: list[dict[str, Any]]) -> None:
        """Remember the chat a room opened with (its viewers got it in `welcome`)."""
        for message in messages:
            self.first_time(message)

    def delivered(self, message_id: str) -> bool:
        return str(message_id) in self._ids

    def first_time(self, message: dict[str, Any]) -> bool:
        """Record a `chat:new` payload; False when this room already delivered it."""
        message_id = str(message.get("id"))
        if message_id in self._ids:
            return False
        ts = float(message.get("ts") or 0.0)
        self._ids[message_id] = ts
        if self.newest is None or ts > self.newest:
            self.newest = ts
        self._prune()
        return True

    def hold(self) -> None:
        """Delivery stops being complete now: keep the point to catch up from (idempotent)."""
        if not self.holding:
            self.holding, self._held = True, self.newest

    def release(self) -> tuple[bool, float | None]:
        """Stop holding; return (was holding, the timestamp to read from, None for all)."""
        if not self.holding:
            return False, None
        self.holding = False
        return True, None if self._held is None else self._held - self.margin

    def _prune(self) -> None:
        floor = self.newest if self.newest is not None else 0.0
        if self.holding and self._held is not None:
            floor = min(floor, self._held)
        floor -= self.margin
        while self._ids:
            oldest_id, oldest_ts = next(iter(self._ids.items()))
            if oldest_ts >= floor and len(self._ids) <= self.limit:
                break
            del self._ids[oldest_id]


async def missed_chat(conn: asyncpg.Connection, livestream_id: str, since: float | None,
                      limit: int = CATCH_UP_LIMIT) -> list[dict[str, Any]]:
    """Return the room's visible chat since `since` (epoch seconds), oldest first, at most `limit`."""
    rows = await conn.fetch(MISSED_CHAT, livestream_id, since, limit)
    return [chat_message(r) for r in reversed(rows)]
