"""Realtime over HTTP: the events WebSocket, chat moderation, and the hub's lifetime."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, WSMsgType, web

from commerce.outage import database_unavailable
from server import notify
from server.api import Api, json_response, path_id
from server.errors import ApiError, not_found, register_domain_error, unauthenticated
from server.shop import ShopCommerce
from server.keys import BODY, DB, HUB, IDENTITY, QUERY, REDIS, SETTINGS, TOKENS
from signaling import chat, events
from signaling.bus import Bus, connect
from signaling.chat import Chat, Limits
from signaling.hub import Hub, HubOptions, Participant
from signaling.sessions import AuthFailed, Realtime
from signaling.transports import WebSocketTransport

log = logging.getLogger("shopstream.realtime")
api = Api()
# A participant lookup (WHEP's DataChannel, the events socket) may find the account gone.
register_domain_error(AuthFailed, 401, "unauthenticated")

UUID = {"type": "string", "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}
MODERATION_IN = {
    "type": "object", "additionalProperties": False, "required": ["action"],
    "properties": {
        "action": {"enum": list(chat.MODERATION_ACTIONS)},
        "userId": UUID, "messageId": UUID,
        "seconds": {"type": "integer", "minimum": 1, "maximum": 30 * 24 * 3600},
    },
}
MODERATION_OUT = {
    "type": "object", "required": ["action"],
    "properties": {
        "action": {"enum": list(chat.MODERATION_ACTIONS)},
        "userId": {"type": "string"}, "messageId": {"type": "string"},
        "until": {"type": ["string", "null"]},
    },
}


async def realtime_context(app: web.Application) -> AsyncIterator[None]:
    """Run the realtime hub (and its Redis bus when REDIS_URL is set) with the app."""
    settings = app[SETTINGS]
    bus = None
    if settings.redis_url:
        app[REDIS] = connect(settings.redis_url.get())
        process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        bus = Bus(app[REDIS], prefix=settings.redis_prefix, process_id=process_id)
    database = app[DB]
    options = HubOptions(tick_seconds=settings.realtime_tick_ms / 1000, batching=settings.realtime_batching,
                         adaptive=settings.realtime_adaptive,
                         lean_datachannel=settings.realtime_lean_datachannel)
    hub = Hub(database.transaction, options=options, bus=bus)
    limits = Limits(bus)
    tokens = app[TOKENS]

    def authenticate(token: str) -> tuple[str, str]:
        try:
            identity = tokens.identity(token)
        except ApiError as exc:
            raise AuthFailed(exc.message) from None
        return identity.user_id, identity.role

    realtime = Realtime(
        hub, Chat(database.transaction, limits, rate_limit=settings.chat_rate_limit,
                  rate_window=settings.chat_rate_window),
        limits, authenticate, commerce=ShopCommerce(app),
    )
    await realtime.start()
    app[HUB] = realtime
    yield
    await realtime.stop()
    if bus is not None:
        await app[REDIS].aclose()


@api.route(
    "GET", "/api/v1/livestreams/{id}/events", auth="optional", tags=("realtime",), status=101,
    summary="Realtime events of a livestream room over a WebSocket (same protocol as the DataChannel)",
    query={"token": {"type": "string", "minLength": 1, "maxLength": 4096}}, errors=(426,),
)
async def events_socket(request: web.Request) -> web.StreamResponse:
    livestream_id = path_id(request)
    realtime: Realtime = request.app[HUB]
    participant: Participant | None = None
    token = request[QUERY].get("token")
    try:
        if token is not None:
            participant = await realtime.identify(token)
        elif (identity := request.get(IDENTITY)) is not None:
            participant = await realtime.participant(identity.user_id, identity.role)
    except AuthFailed as exc:
        raise unauthenticated(str(exc)) from None
    ws = web.WebSocketResponse(compress=False, heartbeat=30, max_msg_size=64 * 1024)
    if not ws.can_prepare(request).ok:
        raise ApiError(426, "upgrade_required", "this endpoint speaks WebSocket only",
                       headers={"Upgrade": "websocket"})
    if not await realtime.room_exists(livestream_id):
        raise not_found("livestream not found")
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the client left during the upgrade
        return ws
    try:
        conn = await realtime.open(
            livestream_id, WebSocketTransport(transport, lambda: transport.close()), participant
        )
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        # Upgraded already: no 503 can be sent now. 1013 asks the client to try again later.
        await ws.send_str(events.error("unavailable", "temporarily unavailable, try again"))
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
        return ws
    try:
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await realtime.handle(conn, message.data)
    finally:
        realtime.close(conn)
    return ws


@api.route(
    "POST", "/api/v1/seller/livestreams/{id}/moderation", auth="seller", tags=("realtime",),
    summary="Mute, unmute, ban or unban a user, or delete a message, in a livestream's chat",
    body=MODERATION_IN, response=MODERATION_OUT, errors=(404,),
)
async def moderation(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    identity = request[IDENTITY]
    body = request[BODY]
    async with request.app[DB].transaction(system=True) as db:
        owner = await chat.livestream_owner(db, livestream_id)
        if owner is None or (owner != identity.user_id and identity.role != "admin"):
            raise not_found("livestream not found")
        result = await chat.moderate(
            db, livestream_id, body["action"], user_id=body.get("userId"),
            message_id=body.get("messageId"), seconds=body.get("seconds"),
        )
    if body["action"] == "delete":
        await notify.room_event(request.app, livestream_id, "chat:deleted", {"id": result["messageId"]})
    elif body["action"] in ("mute", "ban"):
        await notify.room_event(
            request.app, livestream_id, "error",
            {"code": "muted" if body["action"] == "mute" else "banned",
             "message": f"you were {'muted' if body['action'] == 'mute' else 'banned'} in this chat",
             "ref": None, "details": {"until": result["until"]}},
            audience=f"user:{result['userId']}",
        )
    return json_response(result)

