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

Crash recovery: the gateway records its `node_id` on each livestream it hosts. On start,
`reconcile()` pauses the livestreams recorded live/paused on this node (or on none) for
which the SFU has no room, so their sellers can publish again at once, and ends those
still without a room after the publisher idle timeout, as for a dropped publisher. Several workers or nodes sharing one database each need their own node id
(today one process serves every room: DEFAULT_NODE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import asyncpg
from aiortc import RTCDataChannel

from commerce import livestreams
from commerce.errors import Forbidden, InvalidState
from media import SFU, MediaSession, SessionNotFound
from signaling.hub import Participant
from signaling.sessions import Realtime
from signaling.transports import attach_datachannel

log = logging.getLogger("shopstream.signaling")

RoomEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]
EVENTS_LABEL = "events"
DEFAULT_NODE = "local"


class Transactions(Protocol):
    """What the gateway needs of the database: transactions (server/db.py)."""

    def transaction(self, user_id: str | None = None, *, system: bool = False) -> Any: ...


class Placement(Protocol):
    """Where rooms live when several workers or nodes serve them (signaling/cluster.py)."""

    async def before_publish(self, livestream_id: str) -> None: ...

    async def before_watch(self, livestream_id: str, path: str = "") -> None: ...

    async def live_elsewhere(self, livestream_id: str) -> bool: ...


class MediaGateway:
    """Admit publishers and viewers to the SFU and keep livestream records in step."""

    def __init__(
        self, sfu: SFU, db: Transactions, room_event: RoomEvent | None = None,
        *, realtime: Realtime | None = None, node_id: str = DEFAULT_NODE,
        placement: Placement | None = None,
    ) -> None:
        self.sfu = sfu
        self.placement = placement
        self.db = db
        self.room_event = room_event
        self.realtime = realtime
        self.node_id = node_id
        self._tasks: set[asyncio.Task[Any]] = set()
        self._orphan_timers: dict[str, asyncio.TimerHandle] = {}
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
        if self.placement is not None:
            await self.placement.before_publish(livestream_id)
        session = await self.sfu.publish(livestream_id, offer_sdp, owner=grant["sellerId"])
        self._serve_events(session, livestream_id, participant, publisher=True)
        return session

    async def watch(
        self, livestream_id: str, offer_sdp: str, *, user_id: str | None,
        participant: Participant | None = None, quality: str = "auto", path: str = "",
    ) -> MediaSession:
        """Join a live (or paused) livestream as a viewer (``quality``: auto, high or low)."""
        async with self.db.transaction(system=True) as conn:
            stream = await livestreams.get_livestream(conn, livestream_id)
        if stream["status"] not in ("live", "paused"):
            raise InvalidState(
                "this livestream is not live" + (" yet" if stream["status"] == "scheduled" else ""),
                status=stream["status"],
            )
        if self.placement is not None:
            await self.placement.before_watch(livestream_id, path)
        session = await self.sfu.watch(livestream_id, offer_sdp, viewer=user_id, quality=quality)
        self._serve_events(session, livestream_id, participant, publisher=False)
        return session

    async def end(self, livestream_id: str) -> None:
        """Close the SFU room of a livestream that was ended through the API."""
        if livestream_id in self.sfu.rooms:
            await self.sfu.close_room(livestream_id)

    async def reconcile(self) -> list[str]:
        """Pause the shows this node hosted but has no room for; end them when idle too long.

        Called on start: after a crash the database still says `live` for shows whose
        SFU rooms died with the process. Returns the ids of the livestreams paused.
        """
        async with self.db.transaction(system=True) as conn:
            orphans = await livestreams.pause_orphans(conn, self.node_id, list(self.sfu.rooms))
        # As for a publisher that dropped: resumable until the idle timeout passes.
        idle = self.sfu.settings.publisher_idle_timeout_seconds
        loop = asyncio.get_running_loop()
        for livestream_id in orphans:
            log.info("livestream %s lost its SFU room: paused for up to %.0f s", livestream_id, idle)
            self._orphan_timers[livestream_id] = loop.call_later(
                idle, self._orphan_idle_expired, livestream_id
            )
            if self.room_event is not None:
                await self.room_event(livestream_id, "stream:state", {"state": "paused"})
        return orphans

    def _orphan_idle_expired(self, livestream_id: str) -> None:
        self._spawn(self._end_orphan(livestream_id))

    async def _end_orphan(self, livestream_id: str) -> None:
        """End a reconciled show whose seller did not publish again within the idle timeout."""
        self._orphan_timers.pop(livestream_id, None)
        if self.placement is not None and await self.placement.live_elsewhere(livestream_id):
            return  # its seller published again on another worker or node
        if livestream_id not in self.sfu.rooms:
            await self._set_state(livestream_id, "ended")

    async def close(self) -> None:
        for timer in self._orphan_timers.values():
            timer.cancel()
        self._orphan_timers.clear()
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
        if getattr(realtime, "set_quality", False) is None:
            realtime.set_quality = self.sfu.set_quality

        def arrived(channel: RTCDataChannel) -> None:
            if channel.label == EVENTS_LABEL:
                self._spawn(attach_datachannel(
                    realtime, livestream_id, channel, participant, publisher=publisher,
                    media_session=None if publisher else session.id,
                ))
                if not publisher:
                    # A viewer's events channel closes when its page goes (SCTP ABORT or
                    # DTLS close): end the media session now rather than when ICE
                    # consent runs out (~30 s), so the SFU's count is right at once.
                    channel.on("close", lambda: self._spawn(self._viewer_left(session)))

        session.on_datachannel = arrived

    async def _viewer_left(self, session: MediaSession) -> None:
        if not session.closed:
            with contextlib.suppress(SessionNotFound):
                await self.sfu.close_session(session.id)

    def _room_state_changed(self, room_id: str, state: str) -> None:
        if state in ("live", "paused", "ended"):
            self._spawn(self._set_state(room_id, state))

    def _viewers_rejoin(self, room_id: str, reason: str) -> None:
        if self.room_event is not None:
            self._spawn(self.room_event(room_id, "stream:renegotiate", {"reason": reason}))

    async def _set_state(self, livestream_id: str, state: str) -> None:
        try:
            async with self.db.transaction(system=True) as conn:
                if state == "live":  # this node hosts the room: reconcile() knows it as ours
                    await livestreams.set_media_node(conn, livestream_id, self.node_id)
                try:
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
