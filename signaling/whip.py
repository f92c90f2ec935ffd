"""WHIP/WHEP sessions: who may publish or watch a livestream, what the SFU's room states
mean for the livestream record, and the `events` DataChannel of each session.

A livestream's SFU room id is the livestream id. Publishing needs the owning seller's
access token or the livestream's stream key (so OBS and ffmpeg can publish); watching
is open to anyone while the livestream is live or paused. The SFU reports room states
(`live`, `paused`, `ended`) through a callback; they are written to the livestream
record and announced to the room as `stream:state`. A publish is not a state change:
the show goes live when the publisher's first media packet arrives, so a publish that
gets its 201 and never connects leaves the livestream as it was.

When a reconnecting publisher switches codec while viewers watch (a seller moving from
the browser to OBS), the viewers' sessions cannot carry the new codec: the room gets
`stream:renegotiate {"reason": "codec_changed"}`, and a client answers it by watching
again (a new WHEP session); the old sessions close a few seconds later.

A client that opens a DataChannel labelled `events` in its offer speaks the event
protocol on it (signaling/transports.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import asyncpg
from aiortc import RTCDataChannel

from commerce import livestreams
from commerce.errors import Forbidden, InvalidState
from media import SFU, MediaSession
from signaling.hub import Participant
from signaling.sessions import Realtime
from signaling.transports import attach_datachannel

log = logging.getLogger("shopstream.signaling")

RoomEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]
EVENTS_LABEL = "events"


class Transactions(Protocol):
    """What the gateway needs of the database: transactions (server/db.py)."""

    def transaction(self, user_id: str | None = None, *, system: bool = False) -> Any: ...


class MediaGateway:
    """Admit publishers and viewers to the SFU and keep livestream records in step."""

    def __init__(
        self, sfu: SFU, db: Transactions, room_event: RoomEvent | None = None,
        *, realtime: Realtime | None = None,
    ) -> None:
        self.sfu = sfu
        self.db = db
        self.room_event = room_event
        self.realtime = realtime
        self._tasks: set[asyncio.Task[Any]] = set()
        sfu.on_state_change = self._room_state_changed
        sfu.on_viewers_rejoin = self._viewers_rejoin

    async def publish(
        self, livestream_id: str, offer_sdp: str, *, bearer: str, user_id: str | None,
        participant: Participant | None = None,
    ) -> MediaSession:
        """Start (or resume) publishing; the credential is a seller token or the stream key."""
        async with self.db.transaction(system=True) as conn:
            try:
                grant = await livestreams.check_publish_grant(conn, livestream_id, stream_key=bearer)
            except Forbidden:
                grant = await livestreams.check_publish_grant(conn, livestream_id, user_id=user_id)
        session = await self.sfu.publish(livestream_id, offer_sdp, owner=grant["sellerId"])
        self._serve_events(session, livestream_id, participant, publisher=True)
        return session

    async def watch(
        self, livestream_id: str, offer_sdp: str, *, user_id: str | None,
        participant: Participant | None = None,
    ) -> MediaSession:
        """Join a live (or paused) livestream as a viewer."""
        async with self.db.transaction(system=True) as conn:
            stream = await livestreams.get_livestream(conn, livestream_id)
        if stream["status"] not in ("live", "paused"):
            raise InvalidState(
                "this livestream is not live" + (" yet" if stream["status"] == "scheduled" else ""),
                status=stream["status"],
            )
        session = await self.sfu.watch(livestream_id, offer_sdp, viewer=user_id)
        self._serve_events(session, livestream_id, participant, publisher=False)
        return session

    async def end(self, livestream_id: str) -> None:
        """Close the SFU room of a livestream that was ended through the API."""
        if livestream_id in self.sfu.rooms:
            await self.sfu.close_room(livestream_id)

    async def close(self) -> None:
        await self.sfu.close()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _serve_events(
        self, session: MediaSession, livestream_id: str, participant: Participant | None,
        *, publisher: bool,
    ) -> None:
        realtime = self.realtime
        if realtime is None:
            return

        def arrived(channel: RTCDataChannel) -> None:
            if channel.label == EVENTS_LABEL:
                self._spawn(attach_datachannel(
                    realtime, livestream_id, channel, participant, publisher=publisher
                ))

        session.on_datachannel = arrived

    def _room_state_changed(self, room_id: str, state: str) -> None:
        if state in ("live", "paused", "ended"):
            self._spawn(self._set_state(room_id, state))

    def _viewers_rejoin(self, room_id: str, reason: str) -> None:
        if self.room_event is not None:
            self._spawn(self.room_event(room_id, "stream:renegotiate", {"reason": reason}))

    async def _set_state(self, livestream_id: str, state: str) -> None:
        try:
            async with self.db.transaction(system=True) as conn:
                await livestreams.set_state(conn, livestream_id, state)
        except InvalidState:
            return  # already there (the seller pressed start first), or already ended
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            log.exception("could not record state %s of livestream %s", state, livestream_id)
            return
        if self.room_event is not None:
            await self.room_event(livestream_id, "stream:state", {"state": state})

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("media gateway task failed", exc_info=task.exception())
