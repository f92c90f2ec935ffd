"""Media signaling over HTTP: WHIP publish, WHEP watch, leaving a session (RFC 9725 style)."""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from functools import wraps
from http import HTTPStatus
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from media import (
    SFU,
    BadOffer,
    MediaPortsExhausted,
    PublisherConflict,
    RoomFull,
    RoomNotFound,
    SessionNotFound,
)
from media.layers import QUALITIES
from server import turn
from server.api import Api, json_response, path_id, read_body
from server.errors import ApiError, error_response, register_domain_error, unauthenticated
from server.keys import BEARER, GATEWAY, HUB, IDENTITY, SETTINGS
from server.keys import SFU as SFU_KEY

api = Api()
log = logging.getLogger("shopstream.media")

register_domain_error(BadOffer, 400, "bad_offer")
register_domain_error(PublisherConflict, 409, "publisher_conflict")
register_domain_error(RoomFull, 503, "room_full")
register_domain_error(MediaPortsExhausted, 503, "media_ports_exhausted")
register_domain_error(RoomNotFound, 409, "not_live")
register_domain_error(SessionNotFound, 404, "not_found")

SDP = "application/sdp"
MEDIA_ERRORS = (400, 401, 403, 404, 409, 415, 503)
WATCH_ERRORS = (307, *MEDIA_ERRORS)  # 307: a busy node sends the viewer to another one


async def read_offer(request: web.Request) -> str:
    """Return the SDP offer of a WHIP/WHEP request, or raise a clear 4xx."""
    if request.content_type != SDP:
        raise ApiError(415, "unsupported_media_type", "expected Content-Type: application/sdp")
    raw = await read_body(request)
    try:
        offer = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_offer", "the SDP offer is not UTF-8 text") from None
    if not offer.lstrip().startswith("v=0"):
        raise ApiError(400, "bad_offer", "the body is not an SDP offer (it must start with v=0)")
    return offer


async def participant_of(request: web.Request) -> Any:
    """Return who the events DataChannel of this session speaks for (None: anonymous)."""
    identity = request.get(IDENTITY)
    if identity is None:
        return None
    return await request.app[HUB].participant(identity.user_id, identity.role)


def refusals_explained(
    what: str,
) -> Callable[[Callable[[web.Request], Awaitable[web.Response]]],
              Callable[[web.Request], Awaitable[web.Response]]]:
    """Make a WHIP/WHEP refusal readable where publishers look: status line, headers, log.

    ffmpeg and OBS show neither the body nor the headers of a failed WHIP request, but
    ffmpeg prints the status line ("HTTP error 400 Bad Request: ..."), so the reason
    goes there too; ``X-Error-Code``/``X-Error-Message`` carry it for other clients
    (and CORS pages), and the server logs it at warning level with the livestream id.
    """

    def decorate(
        handler: Callable[[web.Request], Awaitable[web.Response]],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        @wraps(handler)
        async def explained(request: web.Request) -> web.Response:
            try:
                return await handler(request)
            except Exception as exc:
                response = error_response(exc)
                if response is None:
                    raise
            assert isinstance(response.body, bytes)
            error = json.loads(response.body)["error"]
            message = _header_text(error["message"])
            response.headers["X-Error-Code"] = error["code"]
            response.headers["X-Error-Message"] = message
            standard = HTTPStatus(response.status).phrase
            response.set_status(response.status, f"{standard}: {message}"[:400])
            log.warning(
                "%s of livestream %s refused with %d %s: %s (client %r)",
                what, request.match_info.get("id"), response.status, error["code"], message,
                request.headers.get("User-Agent", "-"),
            )
            return response

        return explained

    return decorate


def _header_text(text: str) -> str:
    """Return ``text`` as one printable ASCII line (a header value or reason phrase)."""
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    return re.sub(r"[\x00-\x1f\x7f]+", " ", ascii_text).strip()


def created(session: Any, request: web.Request) -> web.Response:
    location = f"/api/v1/sessions/{session.id}"
    headers = CIMultiDict({"Location": location, "ETag": f'"{session.id}"'})
    # RFC 9725: the TURN servers (with credentials minted for this session) as Link headers.
    credentials = turn.mint(request.app[SETTINGS], session.id)
    for link in credentials.link_headers() if credentials else ():
        headers.add("Link", link)
    return web.Response(status=201, text=session.answer_sdp, content_type=SDP, headers=headers)


@api.route(
    "POST", "/api/v1/livestreams/{id}/publish", summary="Publish a livestream (WHIP)",
    tags=("media",), status=201, request_content_type=SDP, response_content_type=SDP,
    response={"type": "string"}, errors=MEDIA_ERRORS,
)
@refusals_explained("WHIP publish")
async def publish(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    offer = await read_offer(request)
    bearer = request.get(BEARER)
    if bearer is None:
        raise unauthenticated("publishing needs the seller's access token or the stream key as Bearer")
    identity = request.get(IDENTITY)
    session = await request.app[GATEWAY].publish(
        livestream_id, offer, bearer=bearer, user_id=identity.user_id if identity else None,
        participant=await participant_of(request),
    )
    return created(session, request)


@api.route(
    "POST", "/api/v1/livestreams/{id}/watch", summary="Watch a livestream (WHEP)",
    tags=("media",), status=201, auth="optional", request_content_type=SDP,
    query={"quality": {"enum": list(QUALITIES)}},
    response_content_type=SDP, response={"type": "string"}, errors=WATCH_ERRORS,
)
@refusals_explained("WHEP watch")
async def watch(request: web.Request) -> web.Response:
    livestream_id = path_id(request)
    offer = await read_offer(request)
    identity = request.get(IDENTITY)
    quality = request.query.get("quality", "auto")  # validated against the route's query schema
    session = await request.app[GATEWAY].watch(
        livestream_id, offer, user_id=identity.user_id if identity else None,
        participant=await participant_of(request), quality=quality, path=request.path_qs,
    )
    return created(session, request)


ICE_SERVERS = {
    "type": "object",
    "required": ["iceServers", "expiresAt"],
    "properties": {
        "iceServers": {"type": "array", "items": {
            "type": "object", "required": ["urls"],
            "properties": {"urls": {"type": "array", "items": {"type": "string"}},
                           "username": {"type": "string"}, "credential": {"type": "string"}},
        }},
        "expiresAt": {"type": ["integer", "null"]},
    },
}


@api.route(
    "GET", "/api/v1/ice-servers", summary="ICE servers for a browser peer connection (TURN credentials)",
    tags=("media",), auth="optional", response=ICE_SERVERS,
)
async def ice_servers(request: web.Request) -> web.Response:
    # The web pages build their RTCPeerConnection before the WHIP/WHEP answer (and its
    # Link headers) exists, so they ask here first. No TURN configured: an empty list.
    credentials = turn.mint(request.app[SETTINGS], "web-" + secrets.token_hex(8))
    if credentials is None:
        return json_response({"iceServers": [], "expiresAt": None})
    return json_response({"iceServers": [credentials.ice_server()], "expiresAt": credentials.expires_at},
                         headers={"Cache-Control": "no-store"})


@api.route(
    "DELETE", "/api/v1/sessions/{sessionId}", summary="Leave a media session",
    tags=("media",), status=200, response_content_type="text/plain", response={"type": "string"},
)
async def leave(request: web.Request) -> web.Response:
    # The session URL itself is the capability (unguessable id), as in WHIP. RFC 9725
    # answers 200 OK (ffmpeg's WHIP muxer reads a response body and fails on 204).
    await request.app[SFU_KEY].close_session(request.match_info["sessionId"])
    return web.Response(status=200, text="", content_type="text/plain")


@api.route(
    "PATCH", "/api/v1/sessions/{sessionId}", summary="Trickle ICE (not supported)",
    tags=("media",), status=405, errors=(405,),
)
async def trickle(request: web.Request) -> web.Response:
    raise ApiError(
        405, "method_not_allowed", "trickle ICE is not supported: send a complete offer",
        headers={"Allow": "DELETE"},
    )


class RoomMetrics(Collector):
    """Export the SFU's per-room counters to Prometheus at scrape time."""

    COUNTERS = ("packets_in", "bytes_in", "packets_out", "bytes_out", "drops",
                "keyframe_requests", "nacks_served")

    def __init__(self, sfu: SFU) -> None:
        self.sfu = sfu

    def collect(self) -> Any:
        stats = self.sfu.all_stats()
        viewers = GaugeMetricFamily("shopstream_room_viewers", "Viewers per room", labels=["room"])
        families = {
            name: CounterMetricFamily(f"shopstream_room_{name}", f"SFU {name.replace('_', ' ')}", labels=["room"])
            for name in self.COUNTERS
        }
        for room_id, room in stats.items():
            viewers.add_metric([room_id], float(room["viewers"]))
            for name, family in families.items():
                family.add_metric([room_id], float(room[name]))
        yield viewers
        yield from families.values()
        yield from self._quality()

    def _quality(self) -> Any:
        """Yield the viewers' quality per room: viewers per layer, loss, bandwidth estimates."""
        layers = GaugeMetricFamily("shopstream_room_layer_viewers",
                                   "Viewers per simulcast layer", labels=["room", "layer"])
        loss = GaugeMetricFamily("shopstream_room_viewer_loss_ratio",
                                 "Mean fraction of packets the viewers report lost", labels=["room"])
        estimate = GaugeMetricFamily("shopstream_room_viewer_estimate_bps",
                                     "Viewers' bandwidth estimates (min, max)", labels=["room", "stat"])
        for room_id, room in self.sfu.all_quality_stats().items():
            for rid, count in sorted(room["layers"].items()):
                layers.add_metric([room_id, rid], float(count))
            loss.add_metric([room_id], float(room["loss"]))
            if room["estimates_bps"]:
                estimate.add_metric([room_id, "min"], float(min(room["estimates_bps"])))
                estimate.add_metric([room_id, "max"], float(max(room["estimates_bps"])))
        yield from (layers, loss, estimate)

