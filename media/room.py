"""A room: one publisher, its viewers, their forwarders, keyframe and RTCP timing."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpReceiverInfo

from .aiortc_hook import ForwardingSender
from .forwarder import TrackForwarder, ViewerTrack
from .session import MediaSession

logger = logging.getLogger(__name__)

RTCP_INTERVAL_SECONDS = 1.0


class RoomState(enum.StrEnum):
    """Lifecycle of a room, as reported through ``on_state_change``."""

    STARTING = "starting"  # a publisher was accepted; no media yet
    LIVE = "live"  # the publisher's media is flowing
    PAUSED = "paused"  # the publisher dropped; waiting out the grace period
    ENDED = "ended"  # closed: every session is gone


@dataclass
class RoomStats:
    """Counters of one room; packet and byte counters only grow."""

    room_id: str
    state: str
    viewers: int
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    drops: int
    keyframe_requests: int
    nacks_served: int
    nacks_missed: int

    def as_dict(self) -> dict[str, int | str]:
        """Return the stats as a plain dict."""
        return asdict(self)


@dataclass
class ViewerEntry:
    """A viewer session and its per-track state."""

    session: MediaSession
    senders: dict[str, ForwardingSender]
    tracks: dict[str, ViewerTrack]


class Room:
    """Own a room's forwarders and the rules between its publisher and viewers."""

    def __init__(
        self,
        room_id: str,
        owner: str | None,
        video_codec: RTCRtpCodecParameters,
        *,
        keyframe_interval: float,
        remb_bitrate_bps: int,
        grace_seconds: float,
        on_state_change: Callable[[Room, RoomState], None],
        on_grace_expired: Callable[[Room], None],
    ) -> None:
        self.id = room_id
        self.owner = owner
        self.video_codec = video_codec
        self.state = RoomState.STARTING
        self.publisher: MediaSession | None = None
        self.viewers: dict[str, ViewerEntry] = {}
        self.forwarders: dict[str, TrackForwarder] = {}
        self.keyframe_requests = 0
        self._keyframe_interval = keyframe_interval
        self._remb_bitrate_bps = remb_bitrate_bps
        self._grace_seconds = grace_seconds
        self._on_state_change = on_state_change
        self._on_grace_expired = on_grace_expired
        self._loop = asyncio.get_running_loop()
        self._last_pli = -1e9
        self._pli_timer: asyncio.TimerHandle | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._senders: dict[ForwardingSender, tuple[ViewerEntry, str]] = {}
        self.forwarder("video", video_codec)
        self._rtcp_task = self._loop.create_task(self._run_rtcp(), name=f"room-rtcp-{room_id}")

    def forwarder(self, kind: str, codec: RTCRtpCodecParameters) -> TrackForwarder:
        """Return the room's forwarder for ``kind``, creating it with ``codec``."""
        if kind not in self.forwarders:
            self.forwarders[kind] = TrackForwarder(
                kind, codec, self.request_keyframe, self._publisher_media
            )
        return self.forwarders[kind]

    # --- publisher ------------------------------------------------------------------------

    def attach_publisher(self, session: MediaSession) -> None:
        """Make ``session`` the room's publisher (first one or a reconnect)."""
        self.publisher = session
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        for forwarder in self.forwarders.values():
            if forwarder.highest_seq is not None:
                forwarder.restart()

    def publisher_alive(self, stale_after: float) -> bool:
        """Return whether the publisher is connected and its media is still flowing."""
        session = self.publisher
        if session is None or session.closed:
            return False
        if session.pc.connectionState in ("failed", "closed"):
            return False
        video = self.forwarders["video"]
        if session.connected and video.last_packet_time:
            return time.monotonic() - video.last_packet_time < stale_after
        return True

    def publisher_lost(self, session: MediaSession) -> None:
        """Pause the room when its publisher goes away; end it after the grace period."""
        if self.publisher is not session or self.state is RoomState.ENDED:
            return
        self.publisher = None
        for forwarder in self.forwarders.values():
            forwarder.receiver = None
        self._set_state(RoomState.PAUSED)
        self._grace_timer = self._loop.call_later(
            self._grace_seconds, self._on_grace_expired, self
        )

    def _publisher_media(self, forwarder: TrackForwarder) -> None:
        if self.state in (RoomState.STARTING, RoomState.PAUSED) and self.publisher is not None:
            self._set_state(RoomState.LIVE)

    # --- viewers --------------------------------------------------------------------------

    def add_viewer(self, session: MediaSession) -> ViewerEntry:
        """Register a viewer session (before it connects, so the limit counts it)."""
        entry = ViewerEntry(session, {}, {})
        self.viewers[session.id] = entry
        return entry

    def watch_sender(self, entry: ViewerEntry, kind: str, sender: ForwardingSender) -> None:
        """Route a viewer's sender lifecycle and feedback to this room."""
        entry.senders[kind] = sender
        self._senders[sender] = (entry, kind)

    def remove_viewer(self, session: MediaSession) -> bool:
        """Forget a viewer; return whether it was there."""
        entry = self.viewers.pop(session.id, None)
        if entry is None:
            return False
        for kind, track in entry.tracks.items():
            self.forwarders[kind].remove_viewer(track)
        for sender in entry.senders.values():
            self._senders.pop(sender, None)
        entry.tracks.clear()
        return True

    # FeedbackHandler, for the viewers' ForwardingSenders.

    def on_sender_started(self, sender: ForwardingSender) -> None:
        """Start forwarding to a viewer track once its DTLS transport is up."""
        found = self._senders.get(sender)
        if found is None:
            return
        entry, kind = found
        forwarder = self.forwarders.get(kind)
        if forwarder is None or kind in entry.tracks:
            return  # e.g. the viewer offered audio and the publisher sends none
        track = ViewerTrack(sender)
        entry.tracks[kind] = track
        forwarder.add_viewer(track)

    def on_sender_stopped(self, sender: ForwardingSender) -> None:
        """Stop forwarding to a viewer track whose sender stopped."""
        found = self._senders.get(sender)
        if found is not None:
            entry, kind = found
            track = entry.tracks.pop(kind, None)
            if track is not None:
                self.forwarders[kind].remove_viewer(track)

    def on_nack(self, sender: ForwardingSender, lost: list[int]) -> None:
        """Answer a viewer's NACK from the track's history."""
        track = self._track_of(sender)
        if track is not None:
            self.forwarders[self._senders[sender][1]].on_nack(track, lost)

    def on_keyframe_request(self, sender: ForwardingSender) -> None:
        """Forward a viewer's PLI/FIR to the publisher, under the room's throttle."""
        if self._senders.get(sender, (None, ""))[1] == "video":
            self.request_keyframe()

    def on_receiver_report(self, sender: ForwardingSender, report: RtcpReceiverInfo) -> None:
        """Keep a viewer's reported loss."""
        track = self._track_of(sender)
        if track is not None:
            track.fraction_lost = report.fraction_lost

    def _track_of(self, sender: ForwardingSender) -> ViewerTrack | None:
        found = self._senders.get(sender)
        return found[0].tracks.get(found[1]) if found else None

    # --- keyframes and RTCP ---------------------------------------------------------------

    def request_keyframe(self) -> None:
        """Send the publisher a PLI, at most one per keyframe interval for the room."""
        now = self._loop.time()
        wait = self._last_pli + self._keyframe_interval - now
        if wait <= 0:
            self._send_pli()
        elif self._pli_timer is None:
            self._pli_timer = self._loop.call_later(wait, self._send_pli)

    def _send_pli(self) -> None:
        self._pli_timer = None
        receiver = self.forwarders["video"].receiver
        if receiver is not None and receiver.send_pli():
            self._last_pli = self._loop.time()
            self.keyframe_requests += 1

    async def _run_rtcp(self) -> None:
        """Send sender reports to viewers and receiver reports + REMB to the publisher."""
        while True:
            # RFC 3550 6.2: randomise the interval to avoid synchronised reports.
            await asyncio.sleep(RTCP_INTERVAL_SECONDS * (0.5 + random.random()))
            for forwarder in self.forwarders.values():
                try:
                    if forwarder.receiver is not None:
                        forwarder.receiver.send_reports(self._remb_bitrate_bps)
                    forwarder.send_sender_reports()
                except (OSError, RuntimeError, ConnectionError):
                    logger.debug("room %s: RTCP send failed", self.id, exc_info=True)

    # --- lifecycle ------------------------------------------------------------------------

    def _set_state(self, state: RoomState) -> None:
        if state is self.state:
            return
        self.state = state
        self._on_state_change(self, state)

    def end(self, *, announce: bool = True) -> None:
        """Mark the room ended and stop its timers (sessions are closed by the SFU).

        ``announce=False`` ends it silently: a room whose first offer failed never went
        on air, and reporting ``ended`` would end the livestream it was created for.
        """
        for timer in (self._pli_timer, self._grace_timer):
            if timer is not None:
                timer.cancel()
        self._pli_timer = self._grace_timer = None
        self._rtcp_task.cancel()
        if announce:
            self._set_state(RoomState.ENDED)
        else:
            self.state = RoomState.ENDED

    async def wait_closed(self) -> None:
        """Wait for the RTCP task to finish after :meth:`end`."""
        await asyncio.gather(self._rtcp_task, return_exceptions=True)

    def stats(self) -> RoomStats:
        """Return the room's counters."""
        stats = RoomStats(
            room_id=self.id, state=self.state.value, viewers=len(self.viewers), packets_in=0,
            bytes_in=0, packets_out=0, bytes_out=0, drops=0,
            keyframe_requests=self.keyframe_requests, nacks_served=0, nacks_missed=0,
        )
        for forwarder in self.forwarders.values():
            counters = forwarder.counters()
            stats.packets_in += forwarder.packets_in
            stats.bytes_in += forwarder.bytes_in
            stats.packets_out += counters.packets_out
            stats.bytes_out += counters.bytes_out
            stats.drops += counters.drops
            stats.nacks_served += counters.nacks_served
            stats.nacks_missed += forwarder.nacks_missed
        return stats
