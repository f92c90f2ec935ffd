"""The SFU: accept publishers and viewers, own their peer connections and rooms."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from .aiortc_hook import (
    RID_EXTENSIONS,
    IcePolicy,
    IcePolicyPeerConnection,
    answer_dtls_passive,
    dtls_failure,
    ice_host_addresses,
    install_receiver,
    install_sender,
    negotiated_codecs,
    prepare_dtls,
)
from .errors import BadOffer, PublisherConflict, RoomClosed, RoomFull, RoomNotFound, SessionNotFound
from .forwarder import GOP_CACHE_BYTES
from .ladder import LADDER_IDLE_SECONDS, MAX_LADDER_LAYERS
from .layers import QUALITIES
from .room import Room, RoomState, RoomStats
from .sdp import OfferPlan, answer_simulcast, plan_publish, plan_watch, reject_sections
from .session import MediaSession
from .twcc import TWCC_URI

logger = logging.getLogger(__name__)

StateCallback = Callable[[str, str], None]
ViewerCountCallback = Callable[[str, int], None]
RejoinCallback = Callable[[str, str], None]
# How long viewers told to rejoin keep their old session, so the event that tells them
# (it may travel on that session's own DataChannel) gets there before it closes.
REJOIN_CLOSE_DELAY_SECONDS = 3.0


@dataclass(frozen=True)
class IceServer:
    """A STUN or TURN server offered to aiortc's ICE agent."""

    urls: str | Sequence[str]
    username: str | None = None
    credential: str | None = None


@dataclass
class MediaSettings:
    """Settings of the SFU; the server builds them from its configuration."""

    # STUN/TURN servers; empty by default so nothing is ever sent to a public host.
    ice_servers: Sequence[IceServer] = ()
    # Local addresses to gather and advertise; None means every non-loopback one.
    ice_host_addresses: Sequence[str] | None = None
    # Host candidates bind in these inclusive UDP port ranges (empty: any port) and
    # advertise the announced address of their local one ("*": any), for 1:1 NAT.
    ice_port_ranges: Sequence[tuple[int, int]] = ()
    ice_announced_addresses: Sequence[tuple[str, str]] = ()
    max_viewers_per_room: int = 200
    # Bitrate cap sent to publishers as REMB.
    remb_bitrate_bps: int = 2_500_000
    # How long a publisher may be gone before viewers are told (state ``paused``); a
    # reconnect within it is invisible to them.
    publisher_grace_seconds: float = 30.0
    # How long a room without a publisher stays resumable before it ends.
    publisher_idle_timeout_seconds: float = 1800.0
    # At most one PLI per this interval per room, whatever the number of viewers.
    keyframe_interval_ms: int = 500
    # A session that has not connected (ICE + DTLS) by then is closed.
    connect_timeout_seconds: float = 15.0
    # A publisher that sent no media for this long counts as dead (it may be replaced).
    publisher_stale_seconds: float = 3.0
    # Bytes of the current GOP kept per video track, sent to a joining viewer at once so
    # it need not wait for a keyframe (publishers like ffmpeg ignore PLIs); 0 turns it off.
    gop_cache_bytes: int = GOP_CACHE_BYTES
    # Server-side simulcast for single-layer publishers (OBS, ffmpeg): 0 (off), or 1-2
    # lower layers decoded and encoded by a worker process while some viewer needs them,
    # which stops after ``ladder_idle_seconds`` without such a viewer (media/ladder.py).
    ladder_layers: int = 0
    ladder_idle_seconds: float = LADDER_IDLE_SECONDS

    def __post_init__(self) -> None:
        if self.max_viewers_per_room < 0:
            raise ValueError("max_viewers_per_room must be >= 0")
        if self.keyframe_interval_ms < 0 or self.connect_timeout_seconds <= 0:
            raise ValueError("keyframe_interval_ms and connect_timeout_seconds must be positive")
        if not 0 <= self.ladder_layers <= MAX_LADDER_LAYERS or self.ladder_idle_seconds < 0:
            raise ValueError(f"ladder_layers must be 0 to {MAX_LADDER_LAYERS}, "
                             "ladder_idle_seconds >= 0")


class SFU:
    """Selective forwarding unit: rooms of one publisher and many viewers.

    ``on_state_change(room_id, state)`` is called with ``live`` (the publisher's first
    media packet arrived), ``paused`` (the publisher has been gone for
    ``publisher_grace_seconds``; it may still reconnect) and ``ended`` (the room is
    closed: by the server, or after ``publisher_idle_timeout_seconds`` without a
    publisher). A publisher that never sends media changes no state.
    ``on_viewer_count(room_id, count)`` whenever a room's viewer count changes;
    ``on_viewers_rejoin(room_id, reason)`` when the room's viewers must join again (a
    reconnecting publisher switched codec); their sessions close shortly after.
    Callbacks run on the event loop and must not block.
    """

    def __init__(
        self,
        settings: MediaSettings | None = None,
        *,
        on_state_change: StateCallback | None = None,
        on_viewer_count: ViewerCountCallback | None = None,
        on_viewers_rejoin: RejoinCallback | None = None,
    ) -> None:
        self.settings = settings or MediaSettings()
        self.on_state_change = on_state_change
        self.on_viewer_count = on_viewer_count
        self.on_viewers_rejoin = on_viewers_rejoin
        self.rooms: dict[str, Room] = {}
        self.sessions: dict[str, MediaSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timeouts: dict[str, asyncio.TimerHandle] = {}
        self._closed = False

    # --- public API -----------------------------------------------------------------------

    async def publish(self, room_id: str, offer_sdp: str, owner: str) -> MediaSession:
        """Accept a publisher's offer for ``room_id`` and return its session.

        Raises :class:`BadOffer` or :class:`PublisherConflict`.
        """
        self._check_open()
        room = self.rooms.get(room_id)
        if room is not None:
            if room.owner is not None and room.owner != owner:
                raise PublisherConflict(room_id)
            stale = room.publisher
            if stale is not None:
                if room.publisher_alive(self.settings.publisher_stale_seconds):
                    raise PublisherConflict(room_id)
                await self._close_session(stale, "replaced by a reconnect")
                room.publisher_lost(stale)  # in case it was closed before but still attached
        plan = self._plan_publish(room, offer_sdp)
        created = room is None
        if room is None:
            room = self._new_room(room_id, owner, plan.video_codec)
        elif room.publisher is not None:  # another reconnect won the race while we waited
            raise PublisherConflict(room_id)
        room.owner = owner  # a relayed room (owner None) becomes this publisher's
        pc = self._new_peer_connection()
        session = MediaSession(room_id, "publisher", owner, pc)
        room.attach_publisher(session)
        try:
            video = pc.addTransceiver("video", direction="recvonly")
            install_receiver(video, room.video_forwarder(plan.video_codec, plan.simulcast_rids),
                             plan.simulcast_rids)
            if plan.audio_codec is not None:
                audio = pc.addTransceiver("audio", direction="recvonly")
                install_receiver(audio, room.forwarder("audio", plan.audio_codec))
            await self._answer(session, offer_sdp, plan)
        except BaseException:
            # Undo the room's side first, before any await: a room left with this
            # publisher would refuse every later publish as a conflict.
            if not created:
                room.publisher_lost(session)  # back to paused, its grace period restarted
            await self._discard(session)
            if created:
                await self._end_room(room)  # never live: it ends unreported
            raise
        if room.video_codec != plan.video_codec:
            self._switch_video_codec(room, plan.video_codec)
        return session

    async def watch(
        self, room_id: str, offer_sdp: str, viewer: str | None = None, quality: str = "auto"
    ) -> MediaSession:
        """Accept a viewer's offer for ``room_id`` and return its session.

        ``quality`` (auto, high or low) picks the viewer's layer of a simulcast publisher.

        Raises :class:`BadOffer`, :class:`RoomNotFound`, :class:`RoomClosed` or
        :class:`RoomFull`.
        """
        self._check_open()
        room = self.rooms.get(room_id)
        if room is None:
            raise RoomNotFound(room_id)
        if room.state is RoomState.ENDED:
            raise RoomClosed(room_id)
        if quality not in QUALITIES:
            raise BadOffer(f"quality must be one of {', '.join(QUALITIES)}")
        if len(room.viewers) >= self.settings.max_viewers_per_room:
            raise RoomFull(room_id, self.settings.max_viewers_per_room)
        plan = plan_watch(offer_sdp, room.video_codec)
        pc = self._new_peer_connection()
        session = MediaSession(room_id, "viewer", viewer, pc)
        entry = room.add_viewer(session)  # counted against the limit from now on
        entry.quality = quality
        try:
            video = pc.addTransceiver("video", direction="sendonly")
            room.watch_sender(entry, "video", install_sender(video, room))
            if plan.audio_codec is not None:
                audio = pc.addTransceiver("audio", direction="sendonly")
                room.watch_sender(entry, "audio", install_sender(audio, room))
            await self._answer(session, offer_sdp, plan)
        except BaseException:
            room.remove_viewer(session)
            await self._discard(session)
            raise
        self._viewer_count_changed(room)
        return session

    def set_quality(self, session_id: str, quality: str) -> str | None:
        """Pin a viewer's quality; return the RID of its layer, if known.

        Raises :class:`SessionNotFound`, or ValueError for an unknown quality.
        """
        session = self.sessions.get(session_id)
        room = self.rooms.get(session.room_id) if session is not None else None
        if session is None or room is None or session.role != "viewer":
            raise SessionNotFound(session_id)
        return room.set_quality(session_id, quality)
    def attach_upstream(self, session: MediaSession, video_codec: Any) -> Room:
        """Make a connected-elsewhere session the publisher of its room (see media/relay.py).

        The room is created if needed, with no owner: any owner's publisher may later
        take it over, and its viewers keep their tracks across the change.
        """
        self._check_open()
        room = self.rooms.get(session.room_id)
        if room is None:
            room = self._new_room(session.room_id, None, video_codec)
        room.attach_publisher(session)
        self.sessions[session.id] = session
        session.pc.on("connectionstatechange", lambda: self._connection_changed(session))
        self._timeouts[session.id] = asyncio.get_running_loop().call_later(
            self.settings.connect_timeout_seconds, self._connect_timed_out, session
        )
        return room

    def new_peer_connection(self) -> RTCPeerConnection:
        """Return a peer connection configured as the SFU's own (ICE servers, ports, DTLS)."""
        return self._new_peer_connection()

    async def close_session(self, session_id: str) -> None:
        """Close one session; raises :class:`SessionNotFound`.

        Closing the publisher's session pauses the room (see ``publisher_grace_seconds``).
        """
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        await self._close_session(session, "closed by the client")

    async def close_room(self, room_id: str) -> None:
        """End a room and close every session in it; raises :class:`RoomNotFound`."""
        room = self.rooms.get(room_id)
        if room is None:
            raise RoomNotFound(room_id, f"room {room_id!r} not found")
        await self._end_room(room)

    def stats(self, room_id: str) -> dict[str, int | str]:
        """Return one room's counters as a dict; raises :class:`RoomNotFound`."""
        room = self.rooms.get(room_id)
        if room is None:
            raise RoomNotFound(room_id, f"room {room_id!r} not found")
        return room.stats().as_dict()

    def room_stats(self, room_id: str) -> RoomStats:
        """Return one room's counters as a dataclass; raises :class:`RoomNotFound`."""
        room = self.rooms.get(room_id)
        if room is None:
            raise RoomNotFound(room_id, f"room {room_id!r} not found")
        return room.stats()

    def all_quality_stats(self) -> dict[str, dict[str, Any]]:
        """Return every room's viewer quality figures (see ``Room.quality_stats``)."""
        return {room_id: room.quality_stats() for room_id, room in self.rooms.items()}

    def all_stats(self) -> dict[str, dict[str, int | str]]:
        """Return every room's counters, keyed by room id."""
        return {room_id: room.stats().as_dict() for room_id, room in self.rooms.items()}

    async def close(self) -> None:
        """Shut down: end every room and close every peer connection and task."""
        self._closed = True
        for room in list(self.rooms.values()):
            await self._end_room(room)
        for session in list(self.sessions.values()):
            await self._close_session(session, "shutdown")
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the SFU is closed")

    def _plan_publish(self, room: Room | None, offer_sdp: str) -> OfferPlan:
        """Check a publisher's offer; a reconnect keeps the room's codec while it can.

        Without viewers a reconnecting publisher may use any codec (a seller switching
        from the browser to OBS); with viewers the room's codec is kept if offered, and
        otherwise the publisher's codec wins and the viewers rejoin.
        """
        if room is None or not room.viewers:
            return plan_publish(offer_sdp)
        try:
            return plan_publish(offer_sdp, room.video_codec)
        except BadOffer:
            return plan_publish(offer_sdp)

    def _switch_video_codec(self, room: Room, codec: RTCRtpCodecParameters) -> None:
        viewers = room.switch_video_codec(codec)
        logger.info("room %s: the publisher switched to %s; %d viewers rejoin",
                    room.id, codec.mimeType, len(viewers))
        if viewers:
            self._call(self.on_viewers_rejoin, room.id, "codec_changed")
            self._spawn(self._close_later(viewers, "the publisher switched codec"))

    async def _close_later(self, sessions: list[MediaSession], reason: str) -> None:
        await asyncio.sleep(REJOIN_CLOSE_DELAY_SECONDS)
        for session in sessions:
            await self._close_session(session, reason)

    def _new_room(self, room_id: str, owner: str | None, video_codec: Any) -> Room:
        settings = self.settings
        room = Room(
            room_id, owner, video_codec,
            keyframe_interval=settings.keyframe_interval_ms / 1000,
            remb_bitrate_bps=settings.remb_bitrate_bps,
            grace_seconds=settings.publisher_grace_seconds,
            idle_seconds=settings.publisher_idle_timeout_seconds,
            gop_cache_bytes=settings.gop_cache_bytes,
            ladder_layers=settings.ladder_layers,
            ladder_idle_seconds=settings.ladder_idle_seconds,
            on_state_change=self._room_state_changed,
            on_idle_expired=lambda r: self._spawn(self._end_room(r)),
        )
        self.rooms[room_id] = room
        return room

    def _new_peer_connection(self) -> RTCPeerConnection:
        servers = [
            RTCIceServer(
                urls=s.urls if isinstance(s.urls, str) else list(s.urls),
                username=s.username, credential=s.credential,
            )
            for s in self.settings.ice_servers
        ]
        # Always an explicit list: aiortc's default would contact a public STUN server.
        configuration = RTCConfiguration(iceServers=servers)
        policy = IcePolicy(
            port_ranges=tuple(self.settings.ice_port_ranges),
            announced=tuple(self.settings.ice_announced_addresses),
        )
        pc = (IcePolicyPeerConnection(configuration, policy) if policy
              else RTCPeerConnection(configuration))
        prepare_dtls(pc)
        return pc

    async def _answer(self, session: MediaSession, offer_sdp: str, plan: OfferPlan) -> None:
        pc = session.pc
        chosen = {"video": plan.video_codec}
        if plan.audio_codec is not None:
            chosen["audio"] = plan.audio_codec
        try:
            # A viewer's video may carry transport-wide sequence numbers (media.twcc).
            extensions = (RID_EXTENSIONS if plan.simulcast_rids
                          else (TWCC_URI,) if session.role == "viewer" else ())
            with negotiated_codecs(chosen, extensions):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if plan.dtls_actpass:
                answer_dtls_passive(pc)
            answer = await pc.createAnswer()
        # Both steps only read the offer, and aiortc reports what it cannot apply with
        # whatever its code raises: any of them is the offer's fault, never a 500.
        except Exception as exc:
            if not isinstance(exc, (ValueError, OperationError, InvalidAccessError)):
                logger.info("offer refused by aiortc with %s", type(exc).__name__, exc_info=True)
            raise BadOffer(f"the offer was refused: {exc or type(exc).__name__}") from exc
        try:
            with ice_host_addresses(self.settings.ice_host_addresses):
                await pc.setLocalDescription(answer)
        except (ValueError, KeyError, OperationError, InvalidAccessError, InvalidStateError,
                InternalError) as exc:
            raise BadOffer(f"the offer was refused: {exc or type(exc).__name__}") from exc
        session.answer_sdp = answer_simulcast(
            reject_sections(pc.localDescription.sdp, plan.rejected_mids), plan.simulcast_rids
        )
        self.sessions[session.id] = session
        pc.on("connectionstatechange", lambda: self._connection_changed(session))
        self._timeouts[session.id] = asyncio.get_running_loop().call_later(
            self.settings.connect_timeout_seconds, self._connect_timed_out, session
        )

    def _connection_changed(self, session: MediaSession) -> None:
        state = session.pc.connectionState
        if state == "connected":
            session.connected = True
            timeout = self._timeouts.pop(session.id, None)
            if timeout is not None:
                timeout.cancel()
        elif state in ("failed", "closed") and not session.closed:
            reason = f"connection {state}"
            failure = dtls_failure(session.pc)
            if failure is not None:
                reason += f" ({failure})"
                logger.warning("%r: %s", session, reason)
            self._spawn(self._close_session(session, reason))

    def _connect_timed_out(self, session: MediaSession) -> None:
        self._timeouts.pop(session.id, None)
        if not session.connected and not session.closed:
            self._spawn(self._close_session(session, "ICE/DTLS connect timeout"))

    async def _close_session(self, session: MediaSession, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        logger.info("closing %r: %s", session, reason)
        timeout = self._timeouts.pop(session.id, None)
        if timeout is not None:
            timeout.cancel()
        self.sessions.pop(session.id, None)
        room = self.rooms.get(session.room_id)
        if room is not None:
            if session.role == "publisher":
                room.publisher_lost(session)
                if not room.ever_live and not room.viewers:
                    # It never connected or sent media: nobody saw this room, so it
                    # goes without a trace (no state change) and the next try starts anew.
                    await self._end_room(room)
            elif room.remove_viewer(session):
                self._viewer_count_changed(room)
        await _close_pc(session.pc)

    async def _discard(self, session: MediaSession) -> None:
        """Close a session whose offer/answer failed before it was registered."""
        if session.closed:  # a second pc.close() would wait for the first one forever
            return
        session.closed = True
        self.sessions.pop(session.id, None)
        await _close_pc(session.pc)

    async def _end_room(self, room: Room) -> None:
        """Close a room and its sessions."""
        if self.rooms.get(room.id) is not room:
            return
        del self.rooms[room.id]
        # A room that never went live ends unreported: nobody saw it start (a first
        # offer that failed, a publish that never connected), so its livestream keeps
        # the state it had.
        room.end(report=room.ever_live)
        sessions = [entry.session for entry in room.viewers.values()]
        if room.publisher is not None:
            sessions.append(room.publisher)
        for session in sessions:
            await self._close_session(session, "room closed")
            room.remove_viewer(session)
        await room.wait_closed()
        if sessions:
            self._viewer_count_changed(room)

    def _room_state_changed(self, room: Room, state: RoomState) -> None:
        self._call(self.on_state_change, room.id, state.value)

    def _viewer_count_changed(self, room: Room) -> None:
        self._call(self.on_viewer_count, room.id, len(room.viewers))

    def _call(self, callback: Callable[[str, Any], None] | None, room_id: str, value: Any) -> None:
        if callback is None:
            return
        try:
            callback(room_id, value)
        except Exception:  # a bug in the server's callback must not break the media path
            logger.exception("SFU callback %r failed", callback)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _close_pc(pc: RTCPeerConnection) -> None:
    """Close a peer connection; one a bad offer left half set up may fail to close."""
    try:
        await pc.close()
    # aiortc's close() assumes every transport exists (AttributeError on None otherwise).
    except Exception:
        logger.warning("closing a peer connection failed", exc_info=True)
