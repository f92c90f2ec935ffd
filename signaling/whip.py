"""WHIP/WHEP sessions: who may publish or watch a livestream, and what the SFU's room
states mean for the livestream record.

A livestream's SFU room id is the livestream id. Publishing needs the owning seller's
access token or the livestream's stream key (so OBS and ffmpeg can publish); watching
is open to anyone while the livestream is live or paused. The SFU reports room states
(`live`, `paused`, `ended`) through a callback; they are written to the livestream
record and announced to the room as `stream:state`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import asyncpg

from commerce.errors import Forbidden, InvalidState, NotFound
from media import SFU, MediaSession

log = logging.getLogger("shopstream.signaling")

RoomEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]

SELECT_LIVESTREAM = """
SELECT l.id, l.status, l.stream_key, l.seller_id, s.user_id AS seller_user_id
FROM livestreams l JOIN sellers s ON s.id = l.seller_id
WHERE l.id = $1
"""
# The state machine of livestreams.status as the media side drives it.
ALLOWED_FROM = {
    "live": ("scheduled", "paused", "live"),
    "paused": ("live",),
    "ended": ("scheduled", "live", "paused"),
}
SET_STATE = """
UPDATE livestreams
SET status = $2,
    started_at = CASE WHEN $2 = 'live' THEN coalesce(started_at, now()) ELSE started_at END,
    ended_at = CASE WHEN $2 = 'ended' THEN now() ELSE ended_at END
WHERE id = $1 AND status = ANY($3::text[])
RETURNING status
"""


class Transactions(Protocol):
    """What the gateway needs of the database: system transactions (server/db.py)."""

    def transaction(self, user_id: str | None = None, *, system: bool = False) -> Any: ...


class MediaGateway:
    """Admit publishers and viewers to the SFU and keep livestream records in step."""

    def __init__(self, sfu: SFU, db: Transactions, room_event: RoomEvent | None = None) -> None:
        self.sfu = sfu
        self.db = db
        self.room_event = room_event
        self._tasks: set[asyncio.Task[None]] = set()
        sfu.on_state_change = self._room_state_changed

    async def publish(
        self, livestream_id: str, offer_sdp: str, *, bearer: str, user_id: str | None
    ) -> MediaSession:
        """Start (or resume) publishing; the credential is a seller token or the stream key."""
        async with self.db.transaction(system=True) as conn:
            stream = await _livestream(conn, livestream_id)
        by_key = hmac.compare_digest(bearer.encode(), stream["stream_key"].encode())
        by_owner = user_id is not None and user_id == str(stream["seller_user_id"])
        if not (by_key or by_owner):
            raise Forbidden("only the livestream's seller or its stream key may publish")
        if stream["status"] == "ended":
            raise InvalidState("this livestream has ended", state="ended")
        session = await self.sfu.publish(livestream_id, offer_sdp, owner=str(stream["seller_id"]))
        await self._set_state(livestream_id, "live")
        return session

    async def watch(self, livestream_id: str, offer_sdp: str, *, user_id: str | None) -> MediaSession:
        """Join a live (or paused) livestream as a viewer."""
        async with self.db.transaction(system=True) as conn:
            stream = await _livestream(conn, livestream_id)
        if stream["status"] not in ("live", "paused"):
            raise InvalidState(
                "this livestream is not live" + (" yet" if stream["status"] == "scheduled" else ""),
                state=stream["status"],
            )
        return await self.sfu.watch(livestream_id, offer_sdp, viewer=user_id)

    async def end(self, livestream_id: str) -> None:
        """Close the SFU room of a livestream that was ended through the API."""
        if livestream_id in self.sfu.rooms:
            await self.sfu.close_room(livestream_id)

    async def close(self) -> None:
        await self.sfu.close()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _room_state_changed(self, room_id: str, state: str) -> None:
        if state in ("live", "paused", "ended"):
            task = asyncio.ensure_future(self._set_state(room_id, state))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _set_state(self, livestream_id: str, state: str) -> None:
        try:
            async with self.db.transaction(system=True) as conn:
                changed = await conn.fetchval(SET_STATE, livestream_id, state, list(ALLOWED_FROM[state]))
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            log.exception("could not record state %s of livestream %s", state, livestream_id)
            return
        if changed is not None and self.room_event is not None:
            await self.room_event(livestream_id, "stream:state", {"state": state})


async def _livestream(conn: asyncpg.Connection, livestream_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(SELECT_LIVESTREAM, livestream_id)
    if row is None:
        raise NotFound("livestream not found")
    return row
