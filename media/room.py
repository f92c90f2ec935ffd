"""A room: one publisher, its viewers, their forwarders, keyframe and RTCP timing."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpReceiverInfo

from .aiortc_hook import ForwardingSender
from .forwarder import TrackForwarder, ViewerTrack
from .ladder import LADDER_IDLE_SECONDS, LadderForwarder
from .layers import QUALITIES, LayerPolicy, SimulcastForwarder
from .session import MediaSession

logger = logging.getLogger(__name__)

RTCP_INTERVAL_SECONDS = 1.0


class RoomState(enum.StrEnum):
    """Lifecycle of a room, as reported through ``on_state_change``."""

    STARTING = "starting"  # a publisher was accepted; no media yet (not reported)
    LIVE = "live"  # the publisher's media is flowing
    PAUSED = "paused"  # the publisher has been gone for the grace period; it may resume
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
    # The quality the viewer asked for (simulcast rooms): auto, high or low.
    quality: str = "auto"


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
        idle_seconds: float,
        gop_cache_bytes: int = 0,
        ladder_layers: int = 0,
        ladder_idle_seconds: float = LADDER_IDLE_SECONDS,
        on_state_change: Callable[[Room, RoomState], None],
        on_idle_expired: Callable[[Room], None],
    ) -> None:
        self.id = room_id
        self.owner = owner
        self.video_codec = video_codec
        self.state = RoomState.STARTING
        self.publisher: MediaSession | None = None
        self.viewers: dict[str, ViewerEntry] = {}
        self.forwarders: dict[str, TrackForwarder | SimulcastForwarder] = {}
        self.keyframe_requests = 0
        self._keyframe_interval = keyframe_interval
        self._remb_bitrate_bps = remb_bitrate_bps
        self._grace_seconds = grace_seconds
        self._idle_seconds = idle_seconds
        self._gop_cache_bytes = gop_cache_bytes
        # A single-layer publisher's video gets this many generated lower layers (see
        # media/ladder.py) while viewers need them; 0: forwarded as it comes.
        self._ladder_layers = ladder_layers
        self._ladder_idle_seconds = ladder_idle_seconds
        self._on_state_change = on_state_change
        self._on_idle_expired = on_idle_expired
        self._loop = asyncio.get_running_loop()
        # Keyframe requests are throttled per publisher SSRC (None: the single layer).
        self._last_pli: dict[int | None, float] = {}
        self._pli_timers: dict[int | None, asyncio.TimerHandle] = {}
        self._grace_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._senders: dict[ForwardingSender, tuple[ViewerEntry, str]] = {}
        self.forwarder("video", video_codec)
        self._rtcp_task = self._loop.create_task(self._run_rtcp(), name=f"room-rtcp-{room_id}")

    def video_forwarder(
        self, codec: RTCRtpCodecParameters, simulcast_rids: tuple[str, ...] | list[str] = ()
    ) -> TrackForwarder | SimulcastForwarder:
        """Return the video forwarder for a publisher that sends simulcast or not.

        A reconnecting publisher that changes between the two gets the other kind of
        forwarder; the viewers move over and continue their numbers.
        """
        old = self.forwarders.get("video")
        if not simulcast_rids and self._ladder_layers:
            return self._ladder_forwarder(codec)
        if isinstance(old, LadderForwarder):  # a ladder room's publisher now sends simulcast
            self._retire_layered(old, codec)
            old = self.forwarders.get("video")
        if simulcast_rids and not isinstance(old, SimulcastForwarder):
            new = SimulcastForwarder(
                codec, self.request_keyframe, self._publisher_media,
                gop_cache_bytes=self._gop_cache_bytes,
            )
            if isinstance(old, TrackForwarder):
                new.take_viewers(old)
            self.forwarders["video"] = new
        elif not simulcast_rids and isinstance(old, SimulcastForwarder):
            self._retire_layered(old, codec)
        return self.forwarders["video"]

    def _retire_layered(self, old: SimulcastForwarder, codec: RTCRtpCodecParameters) -> None:
        """Replace a layered video forwarder by a single-layer one; its viewers move over."""
        old.restart()
        del self.forwarders["video"]
        single = TrackForwarder(
            "video", codec, self.request_keyframe, self._publisher_media,
            gop_cache_bytes=self._gop_cache_bytes,
        )
        self.forwarders["video"] = single
        for viewer in old.unplaced:
            viewer.layer = None
            single.add_viewer(viewer)
        old.unplaced = []
        single.retired = old.counters()
        if isinstance(old, LadderForwarder):
            old.close_soon()

    def _ladder_forwarder(self, codec: RTCRtpCodecParameters) -> LadderForwarder:
        """Return the video forwarder of a single-layer publisher with the ladder on."""
        old = self.forwarders.get("video")
        if isinstance(old, LadderForwarder):
            return old
        if isinstance(old, SimulcastForwarder):
            self._retire_layered(old, codec)
            old = self.forwarders["video"]
        new = LadderForwarder(
            codec, self.request_keyframe, self._publisher_media,
            gop_cache_bytes=self._gop_cache_bytes, ladder_layers=self._ladder_layers,
            idle_seconds=self._ladder_idle_seconds,
        )
        if isinstance(old, TrackForwarder):
            new.take_viewers(old)
        self.forwarders["video"] = new
        return new

    def forwarder(self, kind: str, codec: RTCRtpCodecParameters) -> TrackForwarder | SimulcastForwarder:
        """Return the room's forwarder for ``kind``, creating it with ``codec``."""
        if kind == "video" and self._ladder_layers:
            return self._ladder_forwarder(codec)
        if kind not in self.forwarders:
            self.forwarders[kind] = TrackForwarder(
                kind, codec, self.request_keyframe, self._publisher_media,
                gop_cache_bytes=self._gop_cache_bytes,
            )
        return self.forwarders[kind]

    # --- publisher ------------------------------------------------------------------------

    def attach_publisher(self, session: MediaSession) -> None:
        """Make ``session`` the room's publisher (first one or a reconnect)."""
        self.publisher = session
        self._cancel_publisher_timers()
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
        """Wait for the publisher to come back: pause after the grace period, end when idle.

        The grace period only decides when viewers are told the publisher is gone (a
        reconnect within it is invisible to them); the show itself stays resumable until
        the idle timeout. A room that never had media stays ``STARTING``: a publisher
        that never connected changes nothing anyone can see.
        """
        if self.publisher is not session or self.state is RoomState.ENDED:
            return
        self.publisher = None
        for forwarder in self.forwarders.values():
            forwarder.receiver = None
        self._cancel_publisher_timers()
        if self.state is RoomState.LIVE:
            self._grace_timer = self._loop.call_later(
                self._grace_seconds, self._set_state, RoomState.PAUSED
            )
        self._idle_timer = self._loop.call_later(self._idle_seconds, self._on_idle_expired, self)

    def take_over(self) -> None:
        """Make a relayed room wait for its own publisher, whose first packet reports ``live``.

        A relay's media made the room live here without a word to anyone (only the
        origin speaks for its show); the publisher that takes the room over must be
        reported, so until its first packet the room counts as paused, silently.
        """
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        if self.state is RoomState.LIVE:
            self.state = RoomState.PAUSED

    @property
    def ever_live(self) -> bool:
        """Return whether a publisher's media ever reached this room."""
        return self.state is not RoomState.STARTING

    def switch_video_codec(self, codec: RTCRtpCodecParameters) -> list[MediaSession]:
        """Take a reconnecting publisher's other video codec; return the viewers to rejoin.

        Viewers negotiated the old codec and cannot decode the new one: they stop
        receiving video at once and must join again (the SFU tells them and closes their
        sessions).
        """
        self.video_codec = codec
        video = self.forwarders["video"]
        stale = list(self.viewers.values())
        for entry in stale:
            track = entry.tracks.pop("video", None)
            if track is not None:
                video.remove_viewer(track)
        video.switch_codec(codec)
        return [entry.session for entry in stale]

    def _cancel_publisher_timers(self) -> None:
        for timer in (self._grace_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._grace_timer = self._idle_timer = None

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
        if isinstance(forwarder, SimulcastForwarder):
            forwarder.add_viewer(track, LayerPolicy(entry.quality))
        else:
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
            video = self.forwarders["video"]
            track = self._track_of(sender)
            if isinstance(video, SimulcastForwarder):
                ssrc = video.ssrc_of(track) if track is not None else None
                if ssrc is not None:
                    video.request_keyframe(ssrc)
            else:
                self.request_keyframe()

    def set_quality(self, session_id: str, quality: str) -> str | None:
        """Pin a viewer's quality (auto/high/low); return the layer it is on, if known.

        Raises ValueError for an unknown quality or viewer.
        """
        if quality not in QUALITIES:
            raise ValueError(f"quality must be one of {', '.join(QUALITIES)}")
        entry = self.viewers.get(session_id)
        if entry is None:
            raise ValueError(f"no viewer session {session_id!r} in this room")
        entry.quality = quality
        video = self.forwarders.get("video")
        track = entry.tracks.get("video")
        if isinstance(video, SimulcastForwarder) and track is not None:
            video.set_quality(track, quality)
            return video.rid_of(track)
        return None

    def on_receiver_report(self, sender: ForwardingSender, report: RtcpReceiverInfo) -> None:
        """Keep a viewer's reported loss."""
        track = self._track_of(sender)
        if track is not None:
            track.fraction_lost = report.fraction_lost
            video = self.forwarders.get("video")
            if isinstance(video, SimulcastForwarder) and self._senders[sender][1] == "video":
                sent = track.sr_sent.get(report.lsr) if report.lsr else None
                rtt = time.monotonic() - sent - report.dlsr / 65536 if sent is not None else None
                if rtt is not None:
                    track.rtt = rtt
                video.on_receiver_report(track, report.fraction_lost / 256, rtt, report.lsr)

    def on_remb(self, sender: ForwardingSender, bitrate_bps: int) -> None:
        """Take a viewer's REMB (its receive-side estimate) into its layer choice."""
        track = self._track_of(sender)
        video = self.forwarders.get("video")
        if track is not None and isinstance(video, SimulcastForwarder):
            video.on_remb(track, bitrate_bps)

    def on_transport_feedback(self, sender: ForwardingSender, fci: bytes) -> None:
        """Take a viewer's transport-cc feedback (media.twcc) into its layer choice."""
        track = self._track_of(sender)
        video = self.forwarders.get("video")
        if track is not None and isinstance(video, SimulcastForwarder):
            video.on_transport_feedback(track, fci)

    def _track_of(self, sender: ForwardingSender) -> ViewerTrack | None:
        found = self._senders.get(sender)
        return found[0].tracks.get(found[1]) if found else None

    # --- keyframes and RTCP ---------------------------------------------------------------

    def request_keyframe(self, ssrc: int | None = None) -> None:
        """Send the publisher a PLI, at most one per keyframe interval (per simulcast layer)."""
        now = self._loop.time()
        wait = self._last_pli.get(ssrc, -1e9) + self._keyframe_interval - now
        if wait <= 0:
            self._send_pli(ssrc)
        elif ssrc not in self._pli_timers:
            self._pli_timers[ssrc] = self._loop.call_later(wait, self._send_pli, ssrc)

    def _send_pli(self, ssrc: int | None = None) -> None:
        self._pli_timers.pop(ssrc, None)
        receiver = self.forwarders["video"].receiver
        if receiver is not None and receiver.send_pli(ssrc):
            self._last_pli[ssrc] = self._loop.time()
            self.keyframe_requests += 1

    async def _run_rtcp(self) -> None:
        """Send sender reports to viewers and receiver reports + REMB to the publisher."""
        while True:
            # RFC 3550 6.2: randomise the interval to avoid synchronised reports.
            await asyncio.sleep(RTCP_INTERVAL_SECONDS * (0.5 + random.random()))
            for forwarder in self.forwarders.values():
                try:
                    if forwarder.receiver is not None:
                        remb = self._remb_bitrate_bps
                        if isinstance(forwarder, SimulcastForwarder):
                            remb = forwarder.needed_bps(remb)
                        forwarder.receiver.send_reports(remb)
                    forwarder.send_sender_reports()
                except (OSError, RuntimeError, ConnectionError):
                    logger.debug("room %s: RTCP send failed", self.id, exc_info=True)

    # --- lifecycle ------------------------------------------------------------------------

    def _set_state(self, state: RoomState) -> None:
        if state is self.state:
            return
        self.state = state
        self._on_state_change(self, state)

    def end(self, *, report: bool = True) -> None:
        """Mark the room ended and stop its timers (sessions are closed by the SFU).

        ``report=False`` ends it without a state change callback (a room that never
        went live ends without anyone having seen it start).
        """
        self._cancel_publisher_timers()
        for timer in self._pli_timers.values():
            timer.cancel()
        self._pli_timers.clear()
        self._rtcp_task.cancel()
        if report:
            self._set_state(RoomState.ENDED)
        else:
            self.state = RoomState.ENDED

    async def wait_closed(self) -> None:
        """Wait for the RTCP task to finish after :meth:`end`."""
        await asyncio.gather(self._rtcp_task, return_exceptions=True)
        video = self.forwarders.get("video")
        if isinstance(video, LadderForwarder):
            await video.close()

    def quality_stats(self) -> dict[str, Any]:
        """Return what the viewers get: viewers per layer, their loss and bandwidth estimates.

        ``layers`` counts the viewers per simulcast RID (empty for a single-layer
        publisher); ``loss`` is the mean fraction lost the viewers last reported (0-1);
        ``estimates_bps`` the viewers' current bandwidth estimates, where known.
        """
        video = self.forwarders.get("video")
        tracks = [entry.tracks["video"] for entry in self.viewers.values() if "video" in entry.tracks]
        layers: dict[str, int] = {}
        estimates: list[float] = []
        if isinstance(video, SimulcastForwarder):
            layers = video.viewers_per_layer()
            estimates = [policy.estimate_bps for policy in video.policies.values()
                         if policy.estimate_bps is not None]
        loss = sum(track.fraction_lost for track in tracks) / 256 / len(tracks) if tracks else 0.0
        return {"layers": layers, "loss": loss, "estimates_bps": estimates}

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
