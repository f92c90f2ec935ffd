"""Live chat: content rules, rate limit, slow mode, sanctions, storage and moderation.

A message is acknowledged only after its row is committed, so nothing acknowledged is
lost. Per livestream, `livestreams.chat_settings` holds
`{slowModeSeconds, blockedWords[], blockLinks}`; `chat_sanctions` holds mutes (with an
end) and bans (with or without one). The seller of the livestream and admins are
exempt from the rate limit, slow mode and content rules.

The rate limit and slow mode are counted in Redis when the bus is connected, so they
hold across processes; while Redis is away each process counts on its own.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from commerce.errors import Invalid, NotFound
from signaling.bus import Bus
from signaling.events import CHAT_MAX_CHARS, ProtocolError
from signaling.hub import Participant, Transaction

POST_CONTEXT = """
SELECT l.status, l.chat_settings,
       EXISTS (SELECT 1 FROM chat_sanctions s
               WHERE s.livestream_id = l.id AND s.user_id = $2 AND s.kind = 'ban'
                 AND (s.until IS NULL OR s.until > now())) AS banned,
       (SELECT s.until FROM chat_sanctions s
        WHERE s.livestream_id = l.id AND s.user_id = $2 AND s.kind = 'mute'
          AND s.until > now()) AS muted_until
FROM livestreams l WHERE l.id = $1
"""
INSERT_MESSAGE = """
INSERT INTO chat_messages (livestream_id, user_id, message) VALUES ($1, $2, $3)
RETURNING id, created_at
"""
LIVESTREAM_OWNER = """
SELECT s.user_id FROM livestreams l JOIN sellers s ON s.id = l.seller_id WHERE l.id = $1
"""
SANCTION = """
INSERT INTO chat_sanctions (livestream_id, user_id, kind, until)
VALUES ($1, $2, $3, CASE WHEN $4::int IS NULL THEN NULL ELSE now() + make_interval(secs => $4::int) END)
ON CONFLICT (livestream_id, user_id, kind)
DO UPDATE SET until = EXCLUDED.until, created_at = now()
RETURNING until
"""
LIFT_SANCTION = "DELETE FROM chat_sanctions WHERE livestream_id = $1 AND user_id = $2 AND kind = $3"
DELETE_MESSAGE = """
UPDATE chat_messages SET deleted_at = coalesce(deleted_at, now())
WHERE id = $1 AND livestream_id = $2 RETURNING id
"""

# Links as people type them: a scheme, www., or a name under a common top-level domain.
LINK = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://|www\.)\S+"
    r"|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|net|org|io|co|shop|store|xyz|info|biz|me|app|ly|gg|tv|de|uk|in)\b",
    re.IGNORECASE,
)
MODERATION_ACTIONS = ("mute", "unmute", "ban", "unban", "delete")


@dataclass(frozen=True)
class ChatSettings:
    """A livestream's chat rules (the `chat_settings` jsonb)."""

    slow_mode_seconds: int = 0
    blocked_words: tuple[str, ...] = ()
    block_links: bool = False

    @classmethod
    def from_json(cls, raw: Any) -> ChatSettings:
        data = json.loads(raw) if isinstance(raw, str) else (raw or {})
        words = data.get("blockedWords") or []
        return cls(
            slow_mode_seconds=max(0, int(data.get("slowModeSeconds") or 0)),
            blocked_words=tuple(str(w).lower() for w in words if str(w).strip()),
            block_links=bool(data.get("blockLinks", False)),
        )

    def check(self, message: str, ref: str | None) -> None:
        """Raise ProtocolError if the message breaks a content rule."""
        lowered = message.lower()
        for word in self.blocked_words:
            if re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", lowered):
                raise ProtocolError("blocked_content", "message contains a blocked word", ref)
        if self.block_links and LINK.search(message):
            raise ProtocolError("links_blocked", "links are not allowed in this chat", ref)


class LocalLimits:
    """In-process stand-in for the Redis counters while Redis is away."""

    def __init__(self) -> None:
        self._windows: dict[str, tuple[float, int]] = {}
        self._turns: dict[str, float] = {}

    def hit(self, key: str, limit: int, window: int) -> int:
        now = time.monotonic()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= window:
            start, count = now, 0
        self._windows[key] = (start, count + 1)
        if len(self._windows) > 100_000:
            self._windows.clear()
        return 0 if count + 1 <= limit else max(1, math.ceil(start + window - now))

    def claim(self, key: str, seconds: float) -> int:
        now = time.monotonic()
        until = self._turns.get(key, 0.0)
        if until > now:
            return max(1, math.ceil(until - now))
        self._turns[key] = now + seconds
        if len(self._turns) > 100_000:
            self._turns = {k: v for k, v in self._turns.items() if v > now}
        return 0


class Limits:
    """Fixed-window limits and turns, counted in Redis when possible, else locally."""

    def __init__(self, bus: Bus | None) -> None:
        self.bus = bus
        self.local = LocalLimits()

    async def hit(self, key: str, limit: int, window: int) -> int:
        wait = await self.bus.hit(key, limit, window) if self.bus is not None else None
        return self.local.hit(key, limit, window) if wait is None else wait

    async def claim(self, key: str, seconds: float) -> int:
        wait = await self.bus.claim(key, seconds) if self.bus is not None else None
        return self.local.claim(key, seconds) if wait is None else wait


class Chat:
    """Check, store and moderate chat messages."""

    def __init__(self, transaction: Transaction, limits: Limits, *,
                 rate_limit: int = 5, rate_window: int = 10) -> None:
        self.transaction = transaction
        self.limits = limits
        self.rate_limit = rate_limit
        self.rate_window = rate_window

    async def post(self, livestream_id: str, author: Participant, message: str, *,
                   privileged: bool, ref: str | None = None) -> dict[str, Any]:
        """Store a message and return its `chat:new` payload, or raise ProtocolError."""
        text = message.strip()
        if not text:
            raise ProtocolError("validation_error", "message is empty", ref, field="message")
        if len(text) > CHAT_MAX_CHARS:
            raise ProtocolError("validation_error", f"message is longer than {CHAT_MAX_CHARS} characters", ref)
        async with self.transaction(system=True) as db:
            context = await db.fetchrow(POST_CONTEXT, livestream_id, author.user_id)
        if context is None:
            raise ProtocolError("not_found", "livestream not found", ref)
        if context["status"] == "ended":
            raise ProtocolError("chat_closed", "this livestream has ended", ref)
        if context["banned"]:
            raise ProtocolError("banned", "you are banned from this chat", ref)
        if context["muted_until"] is not None:
            until: datetime = context["muted_until"]
            raise ProtocolError("muted", "you are muted", ref, until=until.isoformat())
        settings = ChatSettings.from_json(context["chat_settings"])
        if not privileged:
            settings.check(text, ref)
            wait = await self.limits.hit(f"chat:{author.user_id}", self.rate_limit, self.rate_window)
            if wait:
                raise ProtocolError(
                    "rate_limited", f"too many messages: wait {wait} s", ref, retryAfter=wait
                )
            if settings.slow_mode_seconds:
                wait = await self.limits.claim(
                    f"slow:{livestream_id}:{author.user_id}", settings.slow_mode_seconds
                )
                if wait:
                    raise ProtocolError(
                        "slow_mode", f"slow mode: one message every {settings.slow_mode_seconds} s",
                        ref, retryAfter=wait,
                    )
        async with self.transaction(system=True) as db:
            row = await db.fetchrow(INSERT_MESSAGE, livestream_id, author.user_id, text)
        return {
            "id": str(row["id"]), "user": {"id": author.user_id, "name": author.name},
            "message": text, "ts": row["created_at"].timestamp(),
        }


async def livestream_owner(db: asyncpg.Connection, livestream_id: str) -> str | None:
    """Return the user id of the seller who owns a livestream, or None."""
    owner = await db.fetchval(LIVESTREAM_OWNER, livestream_id)
    return str(owner) if owner is not None else None


async def moderate(
    db: asyncpg.Connection, livestream_id: str, action: str, *,
    user_id: str | None = None, message_id: str | None = None, seconds: int | None = None,
) -> dict[str, Any]:
    """Apply a moderation action in a livestream's chat and return what was done."""
    if action == "delete":
        if message_id is None:
            raise Invalid("delete needs messageId", fields={"messageId": "required"})
        deleted = await db.fetchval(DELETE_MESSAGE, message_id, livestream_id)
        if deleted is None:
            raise NotFound("message not found")
        return {"action": action, "messageId": message_id}
    if user_id is None:
        raise Invalid(f"{action} needs userId", fields={"userId": "required"})
    kind = "mute" if action in ("mute", "unmute") else "ban"
    if action in ("unmute", "unban"):
        await db.execute(LIFT_SANCTION, livestream_id, user_id, kind)
        return {"action": action, "userId": user_id, "until": None}
    if action == "mute" and seconds is None:
        raise Invalid("mute needs seconds", fields={"seconds": "required"})
    try:
        until = await db.fetchval(SANCTION, livestream_id, user_id, kind, seconds)
    except asyncpg.ForeignKeyViolationError:
        raise NotFound("user not found") from None
    return {"action": action, "userId": user_id, "until": until.isoformat() if until else None}
