"""The room hub: who is in which livestream room, and fan-out of events to them.

Batching: an event is encoded once when emitted and appended to its room's outbox; a
room's outbox leaves as ONE message, the same string handed to every recipient, so the
cost per recipient is one send per batch however fast the chat runs (aiortc's SCTP
costs 0.2-0.3 ms per message, measured here). With `batching=False` every event is
sent on its own as it happens: the baseline the benchmark compares against.

Adaptive tick (`adaptive=True`, the default): an event that finds its room quiet (no
batch for `tick_seconds`) leaves at once, at the end of the current loop iteration.
In a busy room the first event queued opens a batch that leaves `hold_seconds` (half a
tick) later with whatever joined it. So no event waits longer than the hold, a quiet
room delivers in about a millisecond, and a room sends at most one batch per hold
however fast its chat runs. At 20 events/s that is ~10 batches/s, what the fixed
100 ms tick sent, with half its longest wait: the batches start when events do
instead of on a fixed grid. With `adaptive=False` every event waits for the hub's
global tick.

Priorities (`priority()`): commerce and session events (acks, errors, `stock:update`,
`product:highlighted`, `drop:announced`, `stream:state`, `order:new`, `welcome`) are
URGENT: they leave at once whatever the tick, first in their batch, and are never
dropped. Chat is CHAT.
Reactions (summed) and the viewer count (the latest, at most once a second) are
AMBIENT: coalesced, never queued one by one.

Sending never waits: a transport's `send_text` either writes at once or says it would
block. A recipient that would block gets a backlog of its own, kept by class: urgent
events in order (past `max_urgent` the connection is closed rather than lose one: the
client reconnects and its `welcome` carries the room's state), chat in order and
bounded (`max_pending`; the oldest `chat:new` is dropped and counted), reactions summed
and the latest viewer count. The backlog is retried every tick, urgent events first.
Under overload a room also sheds its oldest chat past `max_room_chat` per batch.

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
from datetime import UTC, datetime
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


URGENT, CHAT, AMBIENT = 0, 1, 2
_CLASSES = {"chat:new": CHAT, "chat:deleted": CHAT, "reaction": AMBIENT, "viewer:count": AMBIENT}
# A backlog leaves in messages of at most this many events / characters: a viewer that
# comes back from a stall must not get one message larger than DataChannels carry.
BACKLOG_EVENTS = 128
BACKLOG_CHARS = 60_000


def priority(event_type: str) -> int:
    """Return an event type's class: URGENT (commerce, session), CHAT or AMBIENT."""
    return _CLASSES.get(event_type, URGENT)


@dataclass
class HubOptions:
    tick_seconds: float = 0.1
    batching: bool = True
    adaptive: bool = True  # a quiet room sends at once; a busy one holds events briefly
    hold_seconds: float | None = None  # longest wait in a busy room (None: half a tick)
    max_pending: int = 256  # chat events kept for one slow recipient
    max_urgent: int = 2048  # urgent events kept for one slow recipient before closing it
    max_room_chat: int = 500  # chat events in one room batch before the oldest are shed
    lean_datachannel: bool = True  # send on DataChannels through media.datachannel
    recent_chat: int = 50
    figures_seconds: float = 10.0  # how often viewer figures are written


@dataclass
class Parts:
    """One batch's content, by class: what a backlogged recipient keeps of it."""

    urgent: list[str]
    chat: list[tuple[str, str]]  # (event type, fragment)
    reactions: dict[str, int] | None = None
    viewer_count: int | None = None


class Connection:
    """One recipient in one room: its transport, identity and bounded backlog."""

    __slots__ = (
        "session_id", "transport", "participant", "room", "publisher", "seller", "ready",
        "closed", "urgent", "chat", "reactions", "viewer_count", "dropped", "counted_until",
        "_hub",
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
        # The backlog: what the transport could not take yet, by class.
        self.urgent: collections.deque[str] = collections.deque()
        self.chat: collections.deque[tuple[str, str]] = collections.deque()
        self.reactions: collections.Counter[str] = collections.Counter()
        self.viewer_count: int | None = None
        self.dropped = 0
        self.counted_until = time.monotonic()
        self._hub = hub

    @property
    def user_id(self) -> str | None:
        return self.participant.user_id if self.participant else None

    @property
    def backlog(self) -> int:
        """Return how many events wait for this recipient (coalesced ones count once)."""
        return len(self.urgent) + len(self.chat) + bool(self.reactions) + (self.viewer_count is not None)

    def set_participant(self, participant: Participant) -> None:
        self.participant = participant
        self.seller = self.room.is_owner(participant)

    def send_direct(self, fragment: str, event_type: str = "ack") -> None:
        """Send an event to this connection alone, before any chat waiting for it."""
        if priority(event_type) == URGENT:
            self.offer(fragment, Parts([fragment], []))
        else:
            self.offer(fragment, Parts([], [(event_type, fragment)]))
        if self.backlog:
            self._hub.serve_soon()

    def offer(self, text: str | None, parts: Parts) -> None:
        """Send a batch now if nothing waits and the transport takes it, else keep it by class."""
        if self.closed:
            return
        hub = self._hub
        if text is not None and self.ready and not self.backlog and self.transport.send_text(text):
            hub.stats["messages"] += 1
            return
        self.urgent.extend(parts.urgent)
        for item in parts.chat:
            if len(self.chat) >= hub.options.max_pending:
                self._drop_chat()
            self.chat.append(item)
        if parts.reactions:
            self.reactions.update(parts.reactions)
        if parts.viewer_count is not None:
            self.viewer_count = parts.viewer_count
        hub.attention.add(self)
        if len(self.urgent) > hub.options.max_urgent:
            # Never lose a commerce event silently: end the session instead; the client
            # reconnects and its welcome carries the room's current state.
            log.warning("closing session %s: %d urgent events backlogged", self.session_id, len(self.urgent))
            hub.stats["closed_slow"] += 1
            self.transport.close()
            hub.leave(self)

    def _drop_chat(self) -> None:
        """Drop the oldest `chat:new` (a `chat:deleted` is kept while a message is left)."""
        for i, (kind, _) in enumerate(self.chat):
            if kind == "chat:new":
                del self.chat[i]
                break
        else:
            self.chat.popleft()
        self.dropped += 1
        self._hub.stats["dropped"] += 1

    def retry(self) -> bool:
        """Send the backlog, urgent events first, while the transport takes it; True when empty."""
        hub = self._hub
        # Unbatched (the benchmark's baseline) means one event per message, backlog too.
        limit = BACKLOG_EVENTS if hub.options.batching else 1
        while self.ready and not self.closed and self.backlog:
            fragments: list[str] = []
            size = n_urgent = n_chat = 0
            taken_reactions = taken_count = False
            for fragment in self.urgent:
                if fragments and (len(fragments) >= limit or size + len(fragment) > BACKLOG_CHARS):
                    break
                fragments.append(fragment)
                size += len(fragment)
                n_urgent += 1
            if n_urgent == len(self.urgent):
                for _, fragment in self.chat:
                    if fragments and (len(fragments) >= limit or size + len(fragment) > BACKLOG_CHARS):
                        break
                    fragments.append(fragment)
                    size += len(fragment)
                    n_chat += 1
            if n_chat == len(self.chat) and n_urgent == len(self.urgent):
                if self.reactions and len(fragments) < limit:
                    fragments.append(event("reaction", {"counts": dict(self.reactions)}))
                    taken_reactions = True
                if self.viewer_count is not None and len(fragments) < limit:
                    fragments.append(event("viewer:count", {"count": self.viewer_count}))
                    taken_count = True
            if not self.transport.send_text(batch(fragments)):
                return False
            hub.stats["messages"] += 1
            for _ in range(n_urgent):
                self.urgent.popleft()
            for _ in range(n_chat):
                self.chat.popleft()
            if taken_reactions:
                self.reactions.clear()
            if taken_count:
                self.viewer_count = None
        return not self.backlog or self.closed


class Room:
    """One livestream's recipients and live state in this process."""

    def __init__(self, info: store.RoomInfo) -> None:
        self.livestream_id = info.livestream_id
        self.owner_user_id = info.owner_user_id
        self.state = info.state
        self.highlighted = info.highlighted_product
        self.drop = info.drop  # the last `drop:announced`, for `welcome` until its time
        self.connections: set[Connection] = set()
        # (class, event type, fragment) in emission order, for everyone / the seller only.
        self.outbox: list[tuple[int, str, str]] = []
        self.seller_outbox: list[tuple[int, str, str]] = []
        self.last_batch = -1e9  # monotonic time of the room's last batch
        self.scheduled: asyncio.Handle | None = None  # the room's next batch, when one is due
        self.due_now = False  # the scheduled batch leaves in this loop iteration
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

    def pending_drop(self) -> dict[str, Any] | None:
        """Return the announced drop while its time is still ahead, else None."""
        if self.drop is None:
            return None
        try:
            at = datetime.fromisoformat(self.drop["at"])
        except (KeyError, TypeError, ValueError):
            return None
        return self.drop if at > datetime.now(UTC) else None

    def apply(self, kind: str, payload: dict[str, Any]) -> None:
        """Keep the snapshot that `welcome` carries in step with the events."""
        if kind == "stream:state":
            self.state = payload.get("state", self.state)
        elif kind == "product:highlighted":
            self.highlighted = payload
        elif kind == "drop:announced":
            self.drop = payload
        elif kind == "stock:update" and self.highlighted is not None:
            if self.highlighted.get("id") == payload.get("productId"):
                for variant in self.highlighted.get("variants", []):
                    if variant.get("id") == payload.get("variantId"):
                        variant["stock"] = payload.get("stock")


def _same_drop(a: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """Say whether two `drop:announced` payloads announce one drop (times compared as instants)."""
    try:
        return b is not None and a["productId"] == b.get("productId") and (
            datetime.fromisoformat(a["at"]) == datetime.fromisoformat(b["at"]))
    except (KeyError, TypeError, ValueError):
        return False


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
        self._serving: asyncio.Handle | None = None  # backlogs served at the end of this iteration

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
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None
        for room in list(self.rooms.values()):
            if room.scheduled is not None:
                room.scheduled.cancel()
                room.scheduled = None
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
                "highlightedProduct": room.highlighted, "drop": room.pending_drop(),
                "viewerCount": room.viewer_count(time.monotonic()), "recentChat": recent,
            },
        })
        conn.urgent.appendleft(welcome)  # whatever arrived during the query waits behind it
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
        if event_type == "reaction" and audience == "all":
            self._add_reactions(room, payload.get("counts", {}))
            return
        fragment = event(event_type, payload)
        cls = priority(event_type)
        if audience.startswith("user:"):
            user_id = audience[5:]
            for conn in room.connections:
                if conn.user_id == user_id:
                    conn.send_direct(fragment, event_type)
        elif self.options.batching:
            (room.seller_outbox if audience == "seller" else room.outbox).append((cls, event_type, fragment))
            self._schedule(room, urgent=cls == URGENT)
        else:
            parts = Parts([fragment], []) if cls == URGENT else Parts([], [(event_type, fragment)])
            for conn in list(room.connections):
                if audience == "all" or conn.seller:
                    conn.offer(fragment, parts)
                    self.stats["deliveries"] += 1

    def react(self, room: Room, kind: str) -> None:
        """Count a reaction; the room gets the sums with its next batch."""
        room.local_reactions[kind] += 1
        self._add_reactions(room, {kind: 1})

    def _add_reactions(self, room: Room, counts: dict[str, int]) -> None:
        if self.options.batching:
            room.reactions.update(counts)
            self._schedule(room, urgent=False)
            return
        fragment = event("reaction", {"counts": counts})
        parts = Parts([], [], reactions=counts)
        for conn in list(room.connections):
            conn.offer(fragment, parts)
            self.stats["deliveries"] += 1

    def _schedule(self, room: Room, *, urgent: bool) -> None:
        """Make sure the room's outbox leaves: now if urgent or quiet, else with its next batch."""
        loop = asyncio.get_running_loop()
        if room.scheduled is not None:
            if not urgent or room.due_now:
                return
            room.scheduled.cancel()  # an urgent event does not wait for the tick
        elif not (urgent or self.options.adaptive):
            return  # the global tick sends it
        now = loop.time()
        options = self.options
        if urgent or now - room.last_batch >= options.tick_seconds:
            # call_soon, not a send here: events emitted together (a burst of stock
            # updates) still leave as one batch, at the end of this loop iteration.
            room.scheduled, room.due_now = loop.call_soon(self._flush_room_now, room), True
        else:
            room.due_now = False
            hold = options.tick_seconds / 2 if options.hold_seconds is None else options.hold_seconds
            room.scheduled = loop.call_at(now + hold, self._flush_room_now, room)

    def _flush_room_now(self, room: Room) -> None:
        room.scheduled = None
        if self.rooms.get(room.livestream_id) is room:
            self.flush_room(room, time.monotonic())
            self.serve_soon()

    def serve_soon(self) -> None:
        """Retry backlogs (direct events included) at the end of this loop iteration."""
        if self._serving is None:
            self._serving = asyncio.get_running_loop().call_soon(self._serve)

    def _serve(self) -> None:
        self._serving = None
        for conn in list(self.attention):
            if conn.retry():
                self.attention.discard(conn)

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

        The chat stored meanwhile, then the room's state, highlighted product and pending
        drop as the database has them now, when they differ from what the room last heard.
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
            drop = info.drop if info is not None else None
            if drop is not None and not _same_drop(drop, room.drop):
                self.deliver(room.livestream_id, "drop:announced", drop)
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
                self.flush(now, due_only=self.options.adaptive)
                if now >= self._next_housekeeping:
                    self._next_housekeeping = now + 1.0
                    await self._housekeeping(now)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                log.warning("realtime housekeeping failed: %s", exc)
            except Exception:  # noqa: BLE001 - one bad tick must not stop every room's delivery
                log.exception("realtime tick failed")

    def flush(self, now: float, *, due_only: bool = False) -> None:
        """Send each room's batch (and its viewer count), then retry backlogs.

        With `due_only`, rooms whose own batch is already scheduled are left to it.
        """
        for room in list(self.rooms.values()):
            if not (due_only and room.scheduled is not None):
                self.flush_room(room, now)
        self._serve()

    def flush_room(self, room: Room, now: float) -> None:
        """Send a room's outbox as one batch: urgent events first, then chat, then ambient."""
        if room.scheduled is not None:
            room.scheduled.cancel()
            room.scheduled = None
        outbox, room.outbox = room.outbox, []
        seller_outbox, room.seller_outbox = room.seller_outbox, []
        chat = [(kind, f) for cls, kind, f in outbox if cls != URGENT]
        if len(chat) > self.options.max_room_chat:
            # More chat than one batch should carry: shed the oldest (coalesced kinds
            # already are; urgent events never are).
            shed = len(chat) - self.options.max_room_chat
            self.stats["shed"] += shed
            chat = chat[shed:]
        parts = Parts([f for cls, _, f in outbox if cls == URGENT], chat)
        if room.reactions:
            parts.reactions = dict(room.reactions)
            room.reactions.clear()
        count = room.viewer_count(now)
        room.peak = max(room.peak, count)
        if count != room.sent_count and now - room.sent_count_at >= 1.0:
            parts.viewer_count = count
            room.sent_count, room.sent_count_at = count, now
        if not (parts.urgent or parts.chat or parts.reactions or parts.viewer_count is not None
                or seller_outbox):
            return
        room.last_batch = asyncio.get_running_loop().time()
        shared = _message(parts)
        to_seller, seller_parts = shared, parts
        if seller_outbox:
            seller_parts = Parts(
                parts.urgent + [f for cls, _, f in seller_outbox if cls == URGENT],
                parts.chat + [(kind, f) for cls, kind, f in seller_outbox if cls != URGENT],
                parts.reactions, parts.viewer_count,
            )
            to_seller = _message(seller_parts)
        n_all = _events(parts)
        n_seller = _events(seller_parts)
        for conn in list(room.connections):
            if conn.seller:
                if to_seller is not None:
                    conn.offer(to_seller, seller_parts)
                    self.stats["deliveries"] += n_seller
            elif shared is not None:
                conn.offer(shared, parts)
                self.stats["deliveries"] += n_all

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


def _message(parts: Parts) -> str | None:
    """Return one batch's message text (urgent, chat, reactions, count), or None if empty."""
    fragments = parts.urgent + [f for _, f in parts.chat]
    if parts.reactions:
        fragments.append(event("reaction", {"counts": parts.reactions}))
    if parts.viewer_count is not None:
        fragments.append(event("viewer:count", {"count": parts.viewer_count}))
    return batch(fragments) if fragments else None


def _events(parts: Parts) -> int:
    return len(parts.urgent) + len(parts.chat) + bool(parts.reactions) + (parts.viewer_count is not None)


@contextlib.asynccontextmanager
async def running(hub: Hub) -> AsyncIterator[Hub]:
    """Run a hub for the duration of a block (tests and benchmarks)."""
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()
