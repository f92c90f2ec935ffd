"""Cluster routes: the origin's relay endpoint (WHEP between workers/nodes) and the admin view."""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import asdict

from aiohttp import web

from server.api import Api, json_response
from server.errors import ApiError, register_domain_error
from server.keys import CLUSTER, GATEWAY, HUB, REDIS, SETTINGS
from server.keys import SFU as SFU_KEY
from server.routes.media import SDP, created, read_offer, refusals_explained
from signaling.cluster import (
    RELAY_HEADER,
    RELAY_PATH,
    Cluster,
    ClusterUnavailable,
    NodeBusy,
    RelayRefused,
)
from signaling.directory import Directory, DirectoryUnavailable, NodeInfo, summarize

api = Api()

register_domain_error(ClusterUnavailable, 503, "cluster_unavailable")
register_domain_error(RelayRefused, 503, "relay_unavailable")
register_domain_error(NodeBusy, 307, "redirect")

CLUSTER_VIEW = {
    "type": "object",
    "required": ["node", "connected", "nodes", "rooms"],
    "properties": {
        "node": {"type": "string"}, "connected": {"type": "boolean"},
        "nodes": {"type": "array", "items": {"type": "object"}},
        "rooms": {"type": "array", "items": {"type": "object"}},
    },
}


async def cluster_context(app: web.Application) -> AsyncIterator[None]:
    """Join the cluster when Redis is configured (after the SFU and its gateway exist)."""
    settings = app[SETTINGS]
    if REDIS not in app:
        yield
        return
    cluster = Cluster(
        app[SFU_KEY], Directory(app[REDIS], settings.redis_prefix), node_id=settings.cluster_id,
        url=settings.cluster_url, public_url=settings.public_url,
        jwt_secret=settings.jwt_secret.get(), max_viewers=settings.max_node_viewers,
    )
    app[GATEWAY].placement = cluster
    app[CLUSTER] = cluster
    await cluster.start()
    yield
    await cluster.stop()


@api.route(
    "POST", RELAY_PATH, summary="Relay a room to another worker or node (internal WHEP)",
    tags=("internal",), status=201, request_content_type=SDP, response_content_type=SDP,
    response={"type": "string"}, errors=(400, 403, 409, 415, 503),
)
@refusals_explained("relay")
async def relay(request: web.Request) -> web.Response:
    cluster = request.app.get(CLUSTER)
    shown = request.headers.get(RELAY_HEADER, "")
    if cluster is None or not hmac.compare_digest(shown.encode(), cluster.grant.encode()):
        raise ApiError(403, "forbidden", "relays need the cluster's grant")
    offer = await read_offer(request)
    room_id = request.match_info["id"]
    # A relay is one more viewer of the origin's room, with no events channel.
    session = await request.app[SFU_KEY].watch(
        room_id, offer, viewer="relay:" + request.headers.get("X-Shopstream-Node", "?"))
    return created(session, request)


@api.route(
    "GET", "/api/v1/admin/cluster", summary="Nodes, rooms, relays and viewer counts of the cluster",
    auth="admin", tags=("admin",), response=CLUSTER_VIEW, errors=(503,),
)
async def cluster_view(request: web.Request) -> web.Response:
    cluster = request.app.get(CLUSTER)
    if cluster is None:
        # One process without Redis: the cluster is this server.
        sfu = request.app[SFU_KEY]
        watching = {room_id: len(room.viewers) for room_id, room in sfu.rooms.items()}
        nodes = [NodeInfo(id="local", url="", public_url=request.app[SETTINGS].public_url, boot="",
                          rooms=watching, viewers=sum(watching.values()))]
        connected, node_id = False, "local"
    else:
        try:
            nodes = await cluster.directory.nodes()
        except DirectoryUnavailable:
            raise ClusterUnavailable("the room directory (Redis) is unreachable") from None
        connected, node_id = True, cluster.node_id
    rooms = summarize(nodes)
    # The realtime hub's count (events connections, cluster-wide through Redis presence),
    # where this worker has the room's hub.
    hub_rooms = request.app[HUB].hub.rooms if HUB in request.app else {}
    now = time.monotonic()
    for room in rooms:
        hub_room = hub_rooms.get(room["id"])
        room["viewerCount"] = hub_room.viewer_count(now) if hub_room is not None else None
    return json_response({"node": node_id, "connected": connected,
                          "nodes": [asdict(n) for n in nodes], "rooms": rooms})

