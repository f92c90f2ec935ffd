"""Client sessions: identify callers, answer their messages, and front the hub.

`Realtime` is what the server keeps in `app[HUB]`: it implements the contract of
`server/notify.py` (`emit`, `stock_changed`) by delegating to the hub, and turns each
client message into its effect plus an `ack` or an `error` event. Whatever a client
sends, the answer is an event; the connection stays usable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg

from commerce.errors import CommerceError
from commerce.outage import database_unavailable
from media.errors import SessionNotFound
from signaling import events, store
from signaling.chat import Chat, Limits
from signaling.events import ClientMessage, ProtocolError
from signaling.hub import Connection, Hub, Participant, Transport
from signaling.shop import Commerce, NoCommerce

log = logging.getLogger("shopstream.realtime")


class AuthFailed(Exception):
    """An access token that does not prove an identity."""


# Return (user_id, role) for an access token or raise AuthFailed; from server.auth.Tokens.
Authenticate = Callable[[str], tuple[str, str]]


class Realtime:
    """The realtime service: sessions on top of the hub, chat and the commerce seam."""

    def __init__(self, hub: Hub, chat: Chat, limits: Limits, authenticate: Authenticate, *,
                 commerce: Commerce | None = None, action_limit: int = 10, action_window: int = 10,
                 inbound_per_second: int = 20) -> None:
        self.hub = hub
        self.chat = chat
        self.limits = limits
        self.authenticate = authenticate
        self.commerce: Commerce = commerce or NoCommerce()
        self.action_limit = action_limit
        self.action_window = action_window
        self.inbound_per_second = inbound_per_second
        self._inbound: dict[Connection, tuple[float, int]] = {}
        self._handlers: dict[str, Callable[[Connection, ClientMessage], Awaitable[None]]] = {
            "chat:send": self._chat_send, "reaction:send": self._reaction,
            "cart:add": self._cart_add, "buy:now": self._buy_now, "auth": self._auth,
            "quality:set": self._quality_set,
        }
        # Set by the media gateway: pin a media session's quality, return its layer (RID).
        self.set_quality: Callable[[str, str], str | None] | None = None

    # -- server/notify.py contract ---------------------------------------------------

    async def emit(self, livestream_id: str, event_type: str, payload: dict[str, Any],
                   *, audience: str = "all") -> None:
        await self.hub.emit(livestream_id, event_type, payload, audience=audience)

    def stock_changed(self, variant_ids: Iterable[str]) -> None:
        self.hub.stock_changed(variant_ids)

    async def start(self) -> None:
        await self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()

    # -- sessions --------------------------------------------------------------------

    async def identify(self, token: str) -> Participant:
        """Return the participant an access token proves; raise AuthFailed."""
        user_id, role = self.authenticate(token)
        return await self.participant(user_id, role)

    async def participant(self, user_id: str, role: str) -> Participant:
        """Return a signed-in user as a participant (with the name others see)."""
        async with self.hub.transaction(system=True) as db:
            name = await store.user_name(db, user_id)
        if name is None:  # a valid token that outlived its account
            raise AuthFailed("the account of this access token no longer exists")
        return Participant(user_id, name, role)

    async def room_exists(self, livestream_id: str) -> bool:
        if livestream_id in self.hub.rooms:
            return True
        async with self.hub.transaction(system=True) as db:
            return await store.room_info(db, livestream_id) is not None

    async def open(self, livestream_id: str, transport: Transport,
                   participant: Participant | None, *, publisher: bool = False) -> Connection:
        """Join a room (raises commerce NotFound for an unknown livestream)."""
        return await self.hub.join(livestream_id, transport, participant, publisher=publisher)

    def close(self, conn: Connection) -> None:
        self._inbound.pop(conn, None)
        self.hub.leave(conn)

    async def handle(self, conn: Connection, data: str | bytes) -> None:
        """Answer one client message; every failure becomes an `error` event."""
        ref: str | None = None
        try:
            message = events.parse(data)
            ref = message.ref
            self._check_flood(conn, ref)
            await self._handlers[message.type](conn, message)
        except ProtocolError as exc:
            conn.send_direct(events.error(exc.code, exc.message, exc.ref, **exc.details))
        except CommerceError as exc:
            conn.send_direct(events.error(exc.code, exc.message, ref, **exc.details))
        except AuthFailed as exc:
            conn.send_direct(events.error("unauthenticated", str(exc), ref))
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("realtime message failed: %s", exc)
            conn.send_direct(events.error("unavailable", "temporarily unavailable, try again", ref))
        except Exception as exc:  # noqa: BLE001 - the session boundary: a bug must not end the session
            if database_unavailable(exc):  # e.g. InterfaceError: the pool's connection was closed
                log.warning("realtime message failed: %s", exc)
                conn.send_direct(events.error("unavailable", "temporarily unavailable, try again", ref))
                return
            log.exception("realtime message crashed (session %s)", conn.session_id)
            conn.send_direct(events.error("internal_error", "internal error", ref))

    def _check_flood(self, conn: Connection, ref: str | None) -> None:
        now = time.monotonic()
        start, count = self._inbound.get(conn, (now, 0))
        if now - start >= 1.0:
            start, count = now, 0
        self._inbound[conn] = (start, count + 1)
        if count + 1 > self.inbound_per_second:
            raise ProtocolError("rate_limited", "too many messages on this connection", ref, retryAfter=1)

    @staticmethod
    def _signed_in(conn: Connection, ref: str | None, doing: str) -> Participant:
        if conn.participant is None:
            raise ProtocolError("unauthenticated", f"sign in to {doing}", ref)
        return conn.participant

    # -- handlers --------------------------------------------------------------------

    async def _chat_send(self, conn: Connection, message: ClientMessage) -> None:
        author = self._signed_in(conn, message.ref, "chat")
        chat = await self.chat.post(
            conn.room.livestream_id, author, message.payload["message"],
            privileged=conn.seller, ref=message.ref,
        )
        conn.send_direct(events.ack(message.ref, id=chat["id"], ts=chat["ts"]))
        await self.hub.emit(conn.room.livestream_id, "chat:new", chat)

    async def _reaction(self, conn: Connection, message: ClientMessage) -> None:
        self.hub.react(conn.room, message.payload["kind"])

    async def _action_limit(self, user: Participant, ref: str | None) -> None:
        wait = await self.limits.hit(f"action:{user.user_id}", self.action_limit, self.action_window)
        if wait:
            raise ProtocolError("rate_limited", f"too many requests: wait {wait} s", ref, retryAfter=wait)

    async def _cart_add(self, conn: Connection, message: ClientMessage) -> None:
        user = self._signed_in(conn, message.ref, "add to the cart")
        await self._action_limit(user, message.ref)
        p = message.payload
        cart = await self.commerce.add_to_cart(user.user_id, p["productId"], p["variantId"], p["qty"])
        conn.send_direct(events.ack(message.ref, cart=cart))

    async def _buy_now(self, conn: Connection, message: ClientMessage) -> None:
        user = self._signed_in(conn, message.ref, "buy")
        await self._action_limit(user, message.ref)
        p = message.payload
        livestream_id = conn.room.livestream_id
        session = await self.commerce.buy_now(
            user.user_id, product_id=p["productId"], variant_id=p["variantId"], qty=p["qty"],
            address_id=p.get("addressId"), livestream_id=livestream_id,
            # The client's ref names its attempt: a retried buy-now returns the same session.
            idempotency_key=f"live:{livestream_id}:{message.ref}",
        )
        conn.send_direct(events.ack(message.ref, checkout=session))
        self.hub.stock_changed([p["variantId"]])

    async def _quality_set(self, conn: Connection, message: ClientMessage) -> None:
        media = getattr(conn.transport, "media_session", None)
        if media is None or self.set_quality is None or conn.publisher:
            raise ProtocolError(
                "no_media_session", "quality:set works on the events DataChannel of a watch session",
                message.ref,
            )
        quality = message.payload["layer"]
        try:
            layer = self.set_quality(media, quality)
        except (SessionNotFound, ValueError) as exc:  # the media session has just gone
            raise ProtocolError("no_media_session", str(exc)[:200], message.ref) from None
        conn.send_direct(events.event("quality:current", {"quality": quality, "layer": layer}))
        if message.ref is not None:
            conn.send_direct(events.ack(message.ref, quality=quality, layer=layer))

    async def _auth(self, conn: Connection, message: ClientMessage) -> None:
        participant = await self.identify(message.payload["accessToken"])
        conn.set_participant(participant)
        conn.send_direct(events.ack(message.ref, identity=participant.as_json()))
