"""The room hub: who is in which livestream room, and fan-out of events to them.

Batching: an event is encoded once when emitted and appended to its room's outbox.
Every tick (`tick_seconds`, 100 ms by default) the hub joins each room's outbox into
ONE message and hands that same string to every recipient, so the cost per recipient
is one send per tick however fast the chat runs (aiortc's SCTP costs 0.2-0.3 ms per
message, measured here). Reactions are summed per tick; the viewer count goes out when
it changes, at most once a second. With `batching=False` every event is sent on its
own as it happens: the baseline the benchmark compares against.

Sending never waits: a transport's `send_text` either writes at once or says it would
block. A recipient that would block keeps its messages in a bounded queue that is
retried every tick; when the queue is full the oldest message is dropped and counted.

Across processes the bus (`signaling/bus.py`) carries emitted events and each
process's viewer count; events that come from the bus are delivered like local ones.
When the bus comes back after Redis was away, each room first gets the chat it missed
from the database (`signaling/catchup.py`), each message once and in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from commerce.errors import NotFound
from commerce.outage import database_unavailable
from signaling import catchup, store
from signaling.bus import Bus
from signaling.events import batch, event

log = logging.getLogger("shopstream.realtime")

# `transaction(system=True)` from server.db.Database, given by the composition root.
Transaction = Callable[..., contextlib.AbstractAsyncContextManager[asyncpg.Connection]]
PRESENCE_TTL = 12.0  # seconds a remote process's viewer count stays valid
PRESENCE_HEARTBEAT = 5.0


class Transport(Protocol):
    """One client's channel: a WebSocket or an RTCDataChannel labelled `events`."""

    kind: str

    def send_text(self, text: str) -> bool:
        """Write at once and return True, or write nothing and return False (would block)."""

    def close(self) -> None:
        """Close the channel (the hub calls `leave` from the transport's close path)."""


@dataclass(frozen=True)
class Participant:
    """Who is behind a connection: a signed-in user (anonymous viewers have none)."""

    user_id: str
    name: str
    role: str

    def as_json(self) -> dict[str, str]:
        return {"userId": self.user_id, "name": self.name, "role": self.role}


@dataclass
class HubOptions:
    tick_seconds: float = 0.1
    batching: bool = True
    max_pending: int = 256  # messages queued for one slow recipient
    recent_chat: int = 50
    figures_seconds: float = 10.0  # how often viewer figures are written


class Connection:
    """One recipient in one room: its transport, identity and bounded outgoing queue."""

    __slots__ = (
        "session_id", "transport", "participant", "room", "publisher", "seller", "ready",
        "closed", "pending", "direct", "dropped", "counted_until", "_hub",
    )

    def __init__(self, hub: Hub, room: Room, transport: Transport,
                 participant: Participant | None, publisher: bool) -> None:
        self.session_id = secrets.token_hex(8)
        self.transport = transport
        self.participant = participant
        self.room = room
        self.publisher = publisher
        self.seller = room.is_owner(participant)
        self.ready = False  # nothing goes out before the welcome
        self.closed = False
        self.pending: collections.deque[str] = collections.deque()
        self.direct: list[str] = []  # events for this connection only (ack, error)
        self.dropped = 0
        self.counted_until = time.monotonic()
        self._hub = hub

    @property
    def user_id(self) -> str | None:
        return self.participant.user_id if self.participant else None

    def set_participant(self, participant: Participant) -> None:
        self.participant = participant
        self.seller = self.room.is_owner(participant)

    def send_direct(self, fragment: str) -> None:
        """Queue an event for this connection alone; it leaves with the next tick."""
        if self._hub.options.batching:
            self.direct.append(fragment)
            self._hub.attention.add(self)
        else:
            self.push(fragment)

    def push(self, text: str) -> None:
        """Send a message now if the transport takes it, else queue it (bounded)."""
        if self.closed:
            return
        if self.ready and not self.pending and self.transport.send_text(text):
            self._hub.stats["messages"] += 1
            return
        if len(self.pending) >= self._hub.options.max_pending:
            self.pending.popleft()
            self.dropped += 1
            self._hub.stats["dropped"] += 1
        self.pending.append(text)
        self._hub.attention.add(self)

    def retry(self) -> bool:
        """Send queued messages while the transport takes them; True when none are left."""
        while self.pending and self.ready and not self.closed:
            if not self.transport.send_text(self.pending[0]):
                return False
            self.pending.popleft()
            self._hub.stats["messages"] += 1
        return not self.pending or self.closed


class Room:
    """One livestream's recipients and live state in this process."""

    def __init__(self, info: store.RoomInfo) -> None:
        self.livestream_id = info.livestream_id
        self.owner_user_id = info.owner_user_id
        self.state = info.state
        self.highlighted = info.highlighted_product
        self.connections: set[Connection] = set()
        self.outbox: list[str] = []
        self.seller_outbox: list[str] = []
        self.reactions: collections.Counter[str] = collections.Counter()
        self.local_reactions: collections.Counter[str] = collections.Counter()
        self.remote_viewers: dict[str, tuple[int, float]] = {}
        self.sent_count, self.sent_count_at = -1, 0.0
        self.published_count, self.published_at = -1, 0.0
        # Viewer figures not yet written to the livestream row.
        self.peak, self.joined, self.watch_seconds = 0, 0, 0.0
        self.chat = catchup.ChatLog()  # what it delivered, for the catch-up after an outage

    def is_owner(self, participant: Participant | None) -> bool:
        return participant is not None and (
            participant.user_id == self.owner_user_id or participant.role == "admin"
        )

    @property
    def local_viewers(self) -> int:
        return sum(1 for c in self.connections if not c.publisher)

    def viewer_count(self, now: float) -> int:
        remote = sum(n for n, seen in self.remote_viewers.values() if now - seen < PRESENCE_TTL)
        return self.local_viewers + remote

    def apply(self, kind: str, payload: dict[str, Any]) -> None:
        """Keep the snapshot that `welcome` carries in step with the events."""
        if kind == "stream:state":
            self.state = payload.get("state", self.state)
        elif kind == "product:highlighted":
            self.highlighted = payload
        elif kind == "stock:update" and self.highlighted is not None:
            if self.highlighted.get("id") == payload.get("productId"):
                for variant in self.highlighted.get("variants", []):
                    if variant.get("id") == payload.get("variantId"):
                        variant["stock"] = payload.get("stock")


class Hub:
    """Rooms, connections, the batching tick, and the seam to other processes."""

    def __init__(self, transaction: Transaction, *, options: HubOptions | None = None,
                 bus: Bus | None = None) -> None:
        self.transaction = transaction
        self.options = options or HubOptions()
        self.bus = bus
        self.rooms: dict[str, Room] = {}
        self.attention: set[Connection] = set()
        self.stats: collections.Counter[str] = collections.Counter()
        self._task: asyncio.Task[None] | None = None
        # Variants whose stock changed and the one task that reads and announces them.
        self._stock_pending: set[str] = set()
        self._stock_task: asyncio.Task[None] | None = None
        self._next_housekeeping = 0.0
        self._next_figures = 0.0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self.bus is not None:
            await self.bus.start(self._from_bus, lost=self._bus_lost, resumed=self._catch_up)
        self._task = asyncio.create_task(self._run(), name="realtime-hub")

    async def stop(self) -> None:
        """Stop ticking, close every connection, write the viewer figures."""
        for task in (self._task, self._stock_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for room in list(self.rooms.values()):
            for conn in list(room.connections):
                conn.transport.close()
                self.leave(conn)
        await self._write_figures()
        if self.bus is not None:
            await self.bus.stop()

    # -- joining and leaving -----------------------------------------------------------

    async def join(self, livestream_id: str, transport: Transport,
                   participant: Participant | None, *, publisher: bool = False) -> Connection:
        """Add a recipient to a room and send it the `welcome` snapshot."""
        room = self.rooms.get(livestream_id)
        new_room = room is None
        if room is None:
            async with self.transaction(system=True) as db:
                info = await store.room_info(db, livestream_id)
            if info is None:
                raise NotFound("livestream not found")
            room = self.rooms.setdefault(livestream_id, Room(info))
        # The seller's own studio (and an admin moderating) are not audience: they count
        # neither as viewers nor in the watch figures, whatever transport they use.
        publisher = publisher or room.is_owner(participant)
        conn = Connection(self, room, transport, participant, publisher)
        room.connections.add(conn)
        if not publisher:
            room.joined += 1
        try:
            async with self.transaction(system=True) as db:
                recent = await store.recent_chat(db, livestream_id, self.options.recent_chat)
        except BaseException:
            self.leave(conn)  # the database is away: no welcome, and no ghost viewer left behind
            if not publisher:
                room.joined -= 1
            raise
        if new_room:
            room.chat.seed(recent)
            if self.bus is not None and not self.bus.connected:
                room.chat.hold()  # opened during an outage: catch up from what it opened with
        welcome = event("welcome", {
            "sessionId": conn.session_id,
            "identity": participant.as_json() if participant else None,
            "room": {
                "livestreamId": livestream_id, "state": room.state,
                "highlightedProduct": room.highlighted,
                "viewerCount": room.viewer_count(time.monotonic()), "recentChat": recent,
            },
        })
        conn.pending.appendleft(welcome)
        conn.ready = True
        conn.retry()
        return conn

    def leave(self, conn: Connection) -> None:
        """Remove a recipient (idempotent); its watch time counts for the room."""
        if conn.closed:
            return
        conn.closed = True
        room = conn.room
        room.connections.discard(conn)
        self.attention.discard(conn)
        if not conn.publisher:
            room.watch_seconds += time.monotonic() - conn.counted_until

    # -- emitting ----------------------------------------------------------------------

    async def emit(self, livestream_id: str, event_type: str, payload: dict[str, Any],
                   *, audience: str = "all") -> None:
        """Send an event to a room in every process (audience: all, seller, user:<id>)."""
        self.deliver(livestream_id, event_type, payload, audience)
        if self.bus is not None:
            await self.bus.publish("event", livestream_id, {"t": event_type, "p": payload, "a": audience})

    def deliver(self, livestream_id: str, event_type: str, payload: dict[str, Any],
                audience: str = "all") -> None:
        """Send an event to the room's recipients in this process."""
        room = self.rooms.get(livestream_id)
        if room is None:
            return
        if event_type == "chat:new" and not room.chat.first_time(payload):
            return  # already delivered (by the catch-up after an outage, or in welcome)
        room.apply(event_type, payload)
        fragment = event(event_type, payload)
        if audience.startswith("user:"):
            user_id = audience[5:]
            for conn in room.connections:
                if conn.user_id == user_id:
                    conn.send_direct(fragment)
        elif self.options.batching:
            (room.seller_outbox if audience == "seller" else room.outbox).append(fragment)
        else:
            for conn in list(room.connections):
                if audience == "all" or conn.seller:
                    conn.push(fragment)
            self.stats["deliveries"] += len(room.connections)

    def react(self, room: Room, kind: str) -> None:
        """Count a reaction; the room gets the sums once per tick."""
        room.local_reactions[kind] += 1
        if self.options.batching:
            room.reactions[kind] += 1
        else:
            self.deliver(room.livestream_id, "reaction", {"counts": {kind: 1}})

    def stock_changed(self, variant_ids: Iterable[str]) -> None:
        """Emit `stock:update` to every live room that shows one of these variants.

        The caller does not wait: one task reads the stock of every variant changed
        since its last read (one query for a whole drop's worth of sales) and emits, at
        once after a quiet spell, then at most once per tick while changes keep coming.
        """
        self._stock_pending.update(str(v) for v in variant_ids)
        if self._stock_pending and (self._stock_task is None or self._stock_task.done()):
            self._stock_task = asyncio.create_task(self._announce_stock(), name="realtime-stock")

    async def _announce_stock(self) -> None:
        while self._stock_pending:
            ids = sorted(self._stock_pending)
            self._stock_pending.clear()
            try:
                async with self.transaction(system=True) as db:
                    rows = await store.live_stock(db, ids)
                for row in rows:
                    await self.emit(str(row["livestream_id"]), "stock:update", {
                        "productId": str(row["product_id"]), "variantId": str(row["variant_id"]),
                        "stock": row["stock"],
                    })
            except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError) as exc:
                log.warning("stock:update for %d variants failed: %s", len(ids), exc)
                if database_unavailable(exc):
                    # Announce them once the database is back, or rooms keep showing old stock.
                    self._stock_pending.update(ids)
                    await asyncio.sleep(1.0)
            # Rooms hear events once per tick: read no more often than that.
            await asyncio.sleep(self.options.tick_seconds)

    def _bus_lost(self) -> None:
        for room in self.rooms.values():
            room.chat.hold()

    async def _catch_up(self) -> None:
        """Deliver to each room what it missed while Redis was away (before live messages).

        The chat stored meanwhile, then the room's state and highlighted product as the
        database has them now, when they differ from what the room last heard.
        """
        # Release every room first: one the bus's time limit cuts off must not stay held.
        held_rooms = []
        for room in list(self.rooms.values()):
            held, since = room.chat.release()
            if held:
                held_rooms.append((room, since))
        for room, since in held_rooms:
            try:
                async with self.transaction(system=True) as db:
                    missed = await catchup.missed_chat(db, room.livestream_id, since)
                    info = await store.room_info(db, room.livestream_id)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("could not catch up on the chat of %s: %s", room.livestream_id, exc)
                continue
            fresh = [m for m in missed if not room.chat.delivered(m["id"])]
            for message in fresh:
                self.deliver(room.livestream_id, "chat:new", message)
            if info is not None and info.state != room.state:
                self.deliver(room.livestream_id, "stream:state", {"state": info.state})
            highlighted = info.highlighted_product if info is not None else None
            if highlighted is not None and (room.highlighted or {}).get("id") != highlighted.get("id"):
                self.deliver(room.livestream_id, "product:highlighted", highlighted)
            if fresh:
                self.stats["caught_up"] += len(fresh)
                log.info("caught up %d chat messages in %s after the redis outage",
                         len(fresh), room.livestream_id)

    def _from_bus(self, kind: str, livestream_id: str, message: dict[str, Any]) -> None:
        room = self.rooms.get(livestream_id)
        if room is None:
            return
        if kind == "event":
            self.deliver(livestream_id, message["t"], message["p"], message.get("a", "all"))
        elif kind == "presence":
            room.remote_viewers[message["o"]] = (int(message["n"]), time.monotonic())
        elif kind == "reactions":
            for name, count in message["c"].items():
                if self.options.batching:
                    room.reactions[name] += int(count)
                else:
                    self.deliver(livestream_id, "reaction", {"counts": {name: int(count)}})

    # -- the tick ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick_seconds)
            now = time.monotonic()
            try:
                self.flush(now)
                if now >= self._next_housekeeping:
                    self._next_housekeeping = now + 1.0
                    await self._housekeeping(now)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("realtime housekeeping failed: %s", exc)
            except Exception:  # noqa: BLE001 - one bad tick must not stop every room's delivery
                log.exception("realtime tick failed")

    def flush(self, now: float) -> None:
        """Send each room's batch of events, then direct events and retries."""
        for room in self.rooms.values():
            fragments, room.outbox = room.outbox, []
            if room.reactions:
                fragments.append(event("reaction", {"counts": dict(room.reactions)}))
                room.reactions.clear()
            count = room.viewer_count(now)
            room.peak = max(room.peak, count)
            if count != room.sent_count and now - room.sent_count_at >= 1.0:
                fragments.append(event("viewer:count", {"count": count}))
                room.sent_count, room.sent_count_at = count, now
            seller, room.seller_outbox = room.seller_outbox, []
            if not fragments and not seller:
                continue
            shared = batch(fragments) if fragments else None
            to_seller = batch(fragments + seller) if seller else shared
            for conn in list(room.connections):
                text = to_seller if conn.seller else shared
                if text is not None:
                    conn.push(text)
                    self.stats["deliveries"] += len(fragments) + (len(seller) if conn.seller else 0)
        for conn in list(self.attention):
            if conn.direct:
                direct, conn.direct = conn.direct, []
                conn.push(batch(direct))
            if conn.retry():
                self.attention.discard(conn)

    async def _housekeeping(self, now: float) -> None:
        """Once a second: share counts and reactions with other processes, close empty rooms."""
        for room in list(self.rooms.values()):
            if self.bus is not None:
                local = room.local_viewers
                if local != room.published_count or now - room.published_at >= PRESENCE_HEARTBEAT:
                    room.published_count, room.published_at = local, now
                    await self.bus.publish("presence", room.livestream_id, {"n": local})
                if room.local_reactions:
                    counts, room.local_reactions = dict(room.local_reactions), collections.Counter()
                    await self.bus.publish("reactions", room.livestream_id, {"c": counts})
            else:
                room.local_reactions.clear()
            if not room.connections:
                del self.rooms[room.livestream_id]
                await self._write_room_figures(room, now)
        if now >= self._next_figures:
            self._next_figures = now + self.options.figures_seconds
            await self._write_figures()

    async def _write_figures(self) -> None:
        now = time.monotonic()
        for room in list(self.rooms.values()):
            await self._write_room_figures(room, now)

    async def _write_room_figures(self, room: Room, now: float) -> None:
        for conn in room.connections:
            if not conn.publisher:
                room.watch_seconds += now - conn.counted_until
                conn.counted_until = now
        seconds = int(room.watch_seconds)
        if not (room.joined or seconds or room.peak):
            return
        async with self.transaction(system=True) as db:
            await store.add_viewer_figures(
                db, room.livestream_id, peak=room.peak, joined=room.joined, watch_seconds=seconds,
            )
        room.joined = 0
        room.watch_seconds -= seconds


@contextlib.asynccontextmanager
async def running(hub: Hub) -> AsyncIterator[Hub]:
    """Run a hub for the duration of a block (tests and benchmarks)."""
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()
