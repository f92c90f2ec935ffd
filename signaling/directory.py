"""The room directory and node registry in Redis: who originates each room, who is alive.

Keys (under the deployment's prefix):

* ``node:{id}``: JSON of a registered worker/node (its id, the base URL other nodes
  reach it at, its ``PUBLIC_URL``, a boot id, its load: rooms, relays, viewers),
  written every heartbeat with a TTL; ``nodes`` is a sorted set of ids by last beat.
* ``room:{id}``: JSON ``{"node", "url", "boot"}``: the room's origin, refreshed by the
  origin's heartbeat and expiring with it. An entry whose node no longer beats with
  that boot id is stale: a new publisher anywhere may take the room over at once.

Every call raises :class:`DirectoryUnavailable` when Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

HEARTBEAT_SECONDS = 2.0
EXPIRY_SECONDS = 6.0  # three missed heartbeats: the node or room is gone

_FAILURES = (RedisError, OSError, asyncio.TimeoutError)

# Take the room if it is free, ours, or its origin is no longer alive with the same boot.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local entry = cjson.decode(current)
  if entry['node'] ~= ARGV[2] then
    local node = redis.call('GET', ARGV[4] .. entry['node'])
    if node and cjson.decode(node)['boot'] == entry['boot'] then
      return current
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return false
"""

# Drop the entry only if it is still ours (a new origin may have taken it over).
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current)['node'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class DirectoryUnavailable(Exception):
    """Redis cannot be reached: the directory cannot say where a room is."""


@dataclass(frozen=True)
class Origin:
    """Where a room's publisher is: the origin's node id, base URL and boot id."""

    node: str
    url: str
    boot: str


@dataclass
class NodeInfo:
    """A registered worker/node and its load."""

    id: str
    url: str
    public_url: str
    boot: str
    rooms: dict[str, int] = field(default_factory=dict)  # originated room -> its viewers here
    relays: dict[str, int] = field(default_factory=dict)  # relayed room -> its viewers here
    viewers: int = 0
    seen: float = 0.0


class Directory:
    """Read and write the room directory and the node registry."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _room_key(self, room_id: str) -> str:
        return f"{self.prefix}room:{room_id}"

    def _node_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    async def register(self, node: NodeInfo) -> None:
        """Write (or refresh) a node's registration with its load."""
        node.seen = time.time()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._node_key(node.id), json.dumps(asdict(node)), px=int(EXPIRY_SECONDS * 1000))
                pipe.zadd(f"{self.prefix}nodes", {node.id: node.seen})
                pipe.zremrangebyscore(f"{self.prefix}nodes", 0, node.seen - 3600)
                await pipe.execute()
        except _FAILURES as exc:
            raise DirectoryUnavailable(str(exc)) from exc

    async def unregister(self, node_id: str) -> None:
        """Remove a node that shuts down cleanly."""
        try:
            await self.redis.delete(self._node_key(node_id))
            await self.redis.zrem(f"{self.prefix}nodes", node_id)
        except _FAILURES as exc:
            raise DirectoryUnavailable(str(exc)) from exc

    async def nodes(self) -> list[NodeInfo]:
        """Return the nodes alive now."""
        try:
            ids = await self.redis.zrangebyscore(
                f"{self.prefix}nodes", time.time() - EXPIRY_SECONDS, "+inf")
            names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
            raw = await self.redis.mget([self._node_key(n) for n in names]) if names else []
        except _FAILURES as exc:
            raise DirectoryUnavailable(str(exc)) from exc
        return [NodeInfo(**json.loads(r)) for r in raw if r is not None]

    async def claim(self, room_id: str, origin: Origin) -> Origin | None:
        """Record `origin` as the room's origin; return the live other origin instead, if any."""
        entry = json.dumps(asdict(origin))
        try:
            current = await self.redis.eval(
                _CLAIM, 1, self._room_key(room_id), entry, origin.node,
                int(EXPIRY_SECONDS * 1000), f"{self.prefix}node:",
            )
        except _FAILURES as exc:
            raise DirectoryUnavailable(str(exc)) from exc
        return Origin(**json.loads(current)) if current else None

    async def refresh(self, room_ids: list[str], origin: Origin) -> None:
        """Extend the entries of the rooms this node originates (its heartbeat)."""
        if not room_ids:
            return
        entry = json.dumps(asdict(origin))
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room_id in room_ids:
                    pipe.set(self._room_key(room_id), entry, px=int(EXPIRY_SECONDS * 1000))
                await pipe.execute()
        except _FAILURES as exc:
            raise DirectoryUnavailable(str(exc)) from exc

    async def release(self, room_id: str, node_id: str) -> None:
        """Forget the room's origin if it is still `node_id` (its room ended here)."""
        try:
            await self.redis.eval(_RELEASE, 1, self._room_key(room_id), node_id)
        except _FAILURES as exc:
            raise DirectoryUnavailable(str(exc)) from exc

    async def alive(self, origin: Origin) -> bool:
        """Return whether `origin`'s node is still registered with the same boot."""
        try:
            node = await self.redis.get(self._node_key(origin.node))
        except _FAILURES as exc:
            raise DirectoryUnavailable(str(exc)) from exc
        return node is not None and json.loads(node)["boot"] == origin.boot

    async def origin(self, room_id: str) -> Origin | None:
        """Return the room's origin if it has a live one."""
        try:
            raw = await self.redis.get(self._room_key(room_id))
            if raw is None:
                return None
            origin = Origin(**json.loads(raw))
            node = await self.redis.get(self._node_key(origin.node))
        except _FAILURES as exc:
            raise DirectoryUnavailable(str(exc)) from exc
        if node is None or json.loads(node)["boot"] != origin.boot:
            return None  # its node died: the entry only waits for its expiry
        return origin


def summarize(nodes: list[NodeInfo]) -> list[dict[str, Any]]:
    """Return each room with its origin, its relays and its media viewers over every node."""
    rooms: dict[str, dict[str, Any]] = {}

    def room(room_id: str) -> dict[str, Any]:
        return rooms.setdefault(room_id, {"id": room_id, "origin": None, "relays": {}, "viewers": 0})

    for node in nodes:
        for room_id, viewers in node.rooms.items():
            room(room_id)["origin"] = node.id
            room(room_id)["viewers"] += viewers
        for room_id, viewers in node.relays.items():
            room(room_id)["relays"][node.id] = viewers
            room(room_id)["viewers"] += viewers
    return sorted(rooms.values(), key=lambda r: r["id"])
