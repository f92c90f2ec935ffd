"""Place rooms across workers and nodes: origins in the directory, relays for viewers.

The worker holding a room's publisher is its origin (recorded in the room directory,
signaling/directory.py). A viewer that arrives on another worker or node gets media
through a relay (media/relay.py): this worker subscribes once per room to the origin's
internal WHEP endpoint (`POST /internal/v1/rooms/{id}/relay`, authorised by a grant
derived from JWT_SECRET, the same on every node) and the local forwarder fans out.

* A relay ends `RELAY_LINGER_SECONDS` after its last local viewer left.
* When its upstream drops (the origin died or the publisher moved), the relay's room is
  paused locally and the relay subscribes again as soon as the directory names a live
  origin; its viewers keep their sessions (the forwarder restarts their streams).
  A hop the origin closes is followed at once; a show its still-live origin no longer
  holds has ended, and ends on the relay too (no waiting out the publisher grace).
* A relay's room goes live on its first relayed packet, silently: the origin records
  `live` and `media_node` (after registering, so the directory agrees). A publisher
  that takes a relayed room over starts it as paused (`Room.take_over`), so its own
  first packet is recorded live on this node.
* Without Redis the worker keeps serving the rooms it has; a viewer of a room it has
  not got is refused with 503 `cluster_unavailable`.

The gateway (signaling/whip.py) calls :meth:`Cluster.before_publish`,
:meth:`Cluster.before_watch`; the room states of relayed rooms never reach the
livestream record (only an origin speaks for its show).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp

from media import SFU, MediaSession, PublisherConflict, SessionNotFound
from media.relay import open_relay
from signaling.directory import HEARTBEAT_SECONDS, Directory, DirectoryUnavailable, NodeInfo, Origin

log = logging.getLogger("shopstream.cluster")

RELAY_LINGER_SECONDS = 5.0
RELAY_RETRY_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 3.0
# An upstream counts as lost when no media came for this long and the directory no
# longer names its origin (media alone may pause; the directory alone may lag Redis).
UPSTREAM_STALE_SECONDS = 2.0
RELAY_HEADER = "X-Shopstream-Relay"
RELAY_PATH = "/internal/v1/rooms/{id}/relay"


class ClusterUnavailable(Exception):
    """The room directory cannot be reached, so a room held elsewhere cannot be joined."""


class PublishedElsewhere(PublisherConflict):
    """The room's live publisher is on another worker or node."""

    def __init__(self, room_id: str, node: str) -> None:
        super().__init__(room_id)
        self.args = (f"room {room_id!r} has a live publisher on node {node}",)
        self.node = node


class NodeBusy(Exception):
    """This worker has its share of viewers: watch on a less-loaded node (a 307 to it)."""

    def __init__(self, url: str, node: str) -> None:
        super().__init__(f"this server is at its viewer limit: watch on node {node}")
        self.headers = {"Location": url}
        self.details = {"node": node}


class RelayRefused(Exception):
    """The origin refused or could not be reached for a relay."""


def relay_grant(jwt_secret: str) -> str:
    """Return the shared secret a relay shows its origin (derived, never the JWT key itself)."""
    return hmac.new(jwt_secret.encode(), b"shopstream relay grant v1", hashlib.sha256).hexdigest()


@dataclass
class Relay:
    """A room this worker relays: its upstream session and the origin it came from."""

    room_id: str
    origin: Origin | None = None
    session: MediaSession | None = None
    location: str | None = None  # the upstream session's URL at the origin
    linger: asyncio.TimerHandle | None = None
    resubscribing: bool = False
    origin_lost: bool = False  # its origin died: this node speaks for the show until one is back


class Cluster:
    """One worker's part in the cluster: its registration, the rooms it originates, its relays."""

    def __init__(
        self, sfu: SFU, directory: Directory, *, node_id: str, url: str, public_url: str,
        jwt_secret: str, max_viewers: int = 0,
    ) -> None:
        self.sfu = sfu
        self.directory = directory
        self.node_id = node_id
        self.url = url
        self.public_url = public_url
        self.grant = relay_grant(jwt_secret)
        self.origin = Origin(node=node_id, url=url, boot=secrets.token_hex(8))
        self.relays: dict[str, Relay] = {}
        self.max_viewers = max_viewers
        self.peers: list[NodeInfo] = []  # the other nodes, as of the last heartbeat
        self.connected = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        # Relayed rooms' states stay here; the origin's reach the gateway as before.
        self._record_state = sfu.on_state_change
        sfu.on_state_change = self._room_state_changed
        sfu.on_viewer_count = self._viewer_count_changed

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register this worker and start its heartbeat."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        with contextlib.suppress(DirectoryUnavailable):
            await self._beat()
        self._heartbeat = asyncio.create_task(self._run_heartbeat(), name="cluster-heartbeat")

    async def stop(self) -> None:
        """Stop beating, drop the relays and this worker's registration."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            # Bounded: shutdown must not wait on a Redis call that does not return.
            await asyncio.wait({self._heartbeat}, timeout=STOP_TIMEOUT_SECONDS)
        for relay in list(self.relays.values()):
            await self._drop_relay(relay)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT_SECONDS)
        with contextlib.suppress(DirectoryUnavailable, TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                for room_id in self.origin_rooms():
                    await self.directory.release(room_id, self.node_id)
                await self.directory.unregister(self.node_id)
        if self._http is not None:
            await self._http.close()

    def origin_rooms(self) -> list[str]:
        """Return the rooms this worker originates (holds the publisher of)."""
        return [room_id for room_id in self.sfu.rooms if room_id not in self.relays]

    def info(self) -> NodeInfo:
        """Return this worker's registration and load."""
        # Relays are viewers of their origin's room, but nobody watching.
        watching = {room_id: sum(1 for entry in room.viewers.values()
                                 if not (entry.session.identity or "").startswith("relay:"))
                    for room_id, room in self.sfu.rooms.items()}
        return NodeInfo(
            id=self.node_id, url=self.url, public_url=self.public_url, boot=self.origin.boot,
            rooms={r: n for r, n in watching.items() if r not in self.relays},
            relays={r: n for r, n in watching.items() if r in self.relays},
            viewers=sum(watching.values()),
        )

    async def _beat(self) -> None:
        await self.directory.register(self.info())
        await self.directory.refresh(self.origin_rooms(), self.origin)
        if self.max_viewers:
            self.peers = [n for n in await self.directory.nodes() if n.id != self.node_id]
        if not self.connected:
            log.info("cluster: node %s registered at %s", self.node_id, self.url)
        self.connected = True
        await self._check_upstreams()

    async def _check_upstreams(self) -> None:
        """Notice relays whose origin died: their rooms pause and follow the show's next origin."""
        now = time.monotonic()
        for relay in list(self.relays.values()):
            room = self.sfu.rooms.get(relay.room_id)
            if room is None or relay.session is None or relay.resubscribing:
                continue
            last = room.forwarders["video"].last_packet_time
            if last and now - last < UPSTREAM_STALE_SECONDS:
                continue
            origin = await self.directory.origin(relay.room_id)
            if origin == relay.origin:
                continue
            if origin is None and relay.origin is not None and await self.directory.alive(relay.origin):
                # Its origin is up but holds the show no more: the show ended there.
                log.info("relay of room %s: the show ended at %s", relay.room_id, relay.origin.node)
                self._spawn(self._drop_relay(relay))
                continue
            log.warning("relay of room %s: origin %s is gone", relay.room_id,
                        relay.origin.node if relay.origin else "?")
            if origin is None:
                relay.origin_lost = True
                # Every node relaying the show says so (the record takes it once): viewers
                # see "paused" and the seller may publish again to any node. A show that
                # already has a new origin only moved: its relays just follow it.
                if self._record_state is not None:
                    self._record_state(relay.room_id, "paused")
            self._spawn(self._resubscribe(relay))

    async def _run_heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._beat()
            except DirectoryUnavailable as exc:
                if self.connected:
                    log.warning("cluster: room directory unreachable (%s); serving local rooms only", exc)
                self.connected = False
            except Exception:  # a bug in one round must not stop the heartbeat for good
                log.exception("cluster: heartbeat failed")

    # --- the gateway's calls --------------------------------------------------------------

    async def before_publish(self, room_id: str) -> None:
        """Make this worker the room's origin; raise PublisherConflict if a live one is elsewhere."""
        try:
            other = await self.directory.claim(room_id, self.origin)
        except DirectoryUnavailable:
            if room_id in self.sfu.rooms and room_id not in self.relays:
                return  # our own room: its publisher may come back while Redis is away
            raise ClusterUnavailable("the room directory (Redis) is unreachable") from None
        if other is not None:
            raise PublishedElsewhere(room_id, other.node)
        relay = self.relays.pop(room_id, None)
        if relay is not None:
            # The publisher came here: this worker's relayed room becomes the origin's
            # room, and its viewers stay (the forwarder restarts their streams).
            self._cancel_linger(relay)
            await self._close_upstream(relay)
            room = self.sfu.rooms.get(room_id)
            if room is not None:
                room.take_over()

    async def before_watch(self, room_id: str, path: str = "") -> None:
        """Make sure the room is here: originated by this worker, or relayed from its origin.

        A worker at `max_viewers` sends the viewer (`path` is its WHEP path) to the
        least-loaded node with room to spare, if any (RFC 9725 allows the redirect).
        """
        if self.max_viewers and self.info().viewers >= self.max_viewers:
            spare = [n for n in self.peers if n.public_url and n.viewers < self.max_viewers]
            if spare:
                target = min(spare, key=lambda n: n.viewers)
                raise NodeBusy(target.public_url.rstrip("/") + path, target.id)
        if room_id in self.sfu.rooms:
            return
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:  # one upstream per room, however many viewers arrive at once
            if room_id in self.sfu.rooms:
                return
            try:
                origin = await self.directory.origin(room_id)
            except DirectoryUnavailable:
                raise ClusterUnavailable(
                    "the room directory (Redis) is unreachable: this server cannot join a show held elsewhere"
                ) from None
            if origin is None or origin.node == self.node_id:
                return  # not live anywhere: the SFU answers not_live
            relay = Relay(room_id)
            self.relays[room_id] = relay
            try:
                await self._subscribe(relay, origin)
            except BaseException:
                self.relays.pop(room_id, None)
                raise
            # Ended unless a viewer arrives (its count cancels this): a relay never
            # outlives its last viewer by more than the linger.
            self._viewer_count_changed(room_id, 0)

    async def live_elsewhere(self, room_id: str) -> bool:
        """Return whether another worker or node is the room's live origin now."""
        try:
            origin = await self.directory.origin(room_id)
        except DirectoryUnavailable:
            return False
        return origin is not None and origin.node != self.node_id

    # --- relays ---------------------------------------------------------------------------

    async def _subscribe(self, relay: Relay, origin: Origin) -> None:
        async def offer_answer(offer: str) -> str:
            assert self._http is not None
            url = origin.url + RELAY_PATH.format(id=relay.room_id)
            try:
                async with self._http.post(url, data=offer.encode(), headers={
                    "Content-Type": "application/sdp", RELAY_HEADER: self.grant,
                    "X-Shopstream-Node": self.node_id,
                }) as resp:
                    body = await resp.text()
                    if resp.status != 201:
                        raise RelayRefused(f"origin {origin.node} answered {resp.status}: {body[:200]}")
                    relay.location = origin.url + resp.headers.get("Location", "")
                    return body
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise RelayRefused(f"origin {origin.node} at {origin.url} unreachable: {exc}") from exc

        session = await open_relay(self.sfu, relay.room_id, origin.node, offer_answer)
        relay.session = session
        relay.origin = origin

        def upstream_changed() -> None:
            # The origin closed the hop (its show ended, or its publisher moved): look
            # for the show at once rather than after the room's grace or a heartbeat.
            if session.pc.connectionState in ("failed", "closed") and relay.session is session \
                    and not relay.resubscribing and self.relays.get(relay.room_id) is relay:
                self._spawn(self._resubscribe(relay))

        session.pc.on("connectionstatechange", upstream_changed)

    async def _close_upstream(self, relay: Relay) -> None:
        session, relay.session = relay.session, None
        if session is not None and not session.closed:
            with contextlib.suppress(SessionNotFound):
                await self.sfu.close_session(session.id)
        location, relay.location = relay.location, None
        if location and self._http is not None:
            # Tell the origin at once rather than when its ICE consent runs out.
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with self._http.delete(location, timeout=aiohttp.ClientTimeout(total=2)):
                    pass

    async def _drop_relay(self, relay: Relay) -> None:
        """End a relayed room here (its last viewer left, or shutdown)."""
        self._cancel_linger(relay)
        await self._close_upstream(relay)
        room = self.sfu.rooms.get(relay.room_id)
        if room is not None and self.relays.get(relay.room_id) is relay:
            await self.sfu.close_room(relay.room_id)
        self.relays.pop(relay.room_id, None)
        log.info("relay of room %s closed", relay.room_id)

    async def _resubscribe(self, relay: Relay) -> None:
        """Follow the room to its (new) origin until it is found or the room ends here."""
        relay.resubscribing = True
        try:
            await self._close_upstream(relay)
            while self.relays.get(relay.room_id) is relay and relay.room_id in self.sfu.rooms:
                try:
                    origin = await self.directory.origin(relay.room_id)
                    if origin is not None and origin.node != self.node_id:
                        await self._subscribe(relay, origin)
                        relay.origin_lost = False
                        log.info("relay of room %s re-subscribed to %s", relay.room_id, origin.node)
                        return
                    if origin is None and relay.origin is not None and not relay.origin_lost \
                            and await self.directory.alive(relay.origin):
                        # Its origin is up but holds the show no more: the show ended
                        # there (or its seller's grace ran out). End it here too, now.
                        log.info("relay of room %s: the show ended at %s", relay.room_id, relay.origin.node)
                        self._spawn(self._drop_relay(relay))
                        return
                # Anything a subscribe raises (the origin refusing, aiortc, Redis) only
                # means: try again next round, until the room's grace runs out.
                except Exception as exc:  # noqa: BLE001
                    log.info("relay of room %s: re-subscribe failed (%s)", relay.room_id, exc)
                await asyncio.sleep(RELAY_RETRY_SECONDS)
        finally:
            relay.resubscribing = False

    def _cancel_linger(self, relay: Relay) -> None:
        if relay.linger is not None:
            relay.linger.cancel()
            relay.linger = None

    # --- SFU callbacks --------------------------------------------------------------------

    def _room_state_changed(self, room_id: str, state: str) -> None:
        relay = self.relays.get(room_id)
        if relay is None:
            if state == "ended":
                self._spawn(self._release(room_id))
            if state == "live":
                # Registered before the record says live: whoever sees the show live
                # finds this node as its origin at once, not a heartbeat later.
                self._spawn(self._register_then_record(room_id, state))
            elif self._record_state is not None:
                self._record_state(room_id, state)
            return
        if state == "paused" and not relay.resubscribing:
            self._spawn(self._resubscribe(relay))
        elif state == "ended":
            self._cancel_linger(relay)
            self.relays.pop(room_id, None)
            if relay.origin_lost and self._record_state is not None:
                # No origin came back within the grace: the show ends, as for a
                # publisher that dropped on its origin.
                self._record_state(room_id, "ended")

    async def _register_then_record(self, room_id: str, state: str) -> None:
        with contextlib.suppress(DirectoryUnavailable, TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                await self.directory.register(self.info())
        if self._record_state is not None:
            self._record_state(room_id, state)

    async def _release(self, room_id: str) -> None:
        with contextlib.suppress(DirectoryUnavailable):
            await self.directory.release(room_id, self.node_id)

    def _viewer_count_changed(self, room_id: str, count: int) -> None:
        relay = self.relays.get(room_id)
        if relay is None:
            return
        if count == 0 and relay.linger is None:
            relay.linger = asyncio.get_running_loop().call_later(
                RELAY_LINGER_SECONDS, lambda: self._spawn(self._drop_relay(relay)))
        elif count > 0:
            self._cancel_linger(relay)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster task failed", exc_info=task.exception())


StateCallback = Callable[[str, str], None]
