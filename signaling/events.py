"""The event protocol of DESIGN.md: validate client messages, build and encode server events.

Every message is JSON text `{"type": ..., "payload": {...}}`; the server may send an
array of events in one message (batching). Client messages are validated strictly here:
anything malformed, unknown or too large becomes a `ProtocolError`, which the session
answers with an `error` event, never by dropping the connection.

Server events are encoded once (`event()` returns the JSON text of one event) and the
same text is shared by every recipient; `batch()` joins several into one message
without decoding them again.

Server events beyond DESIGN.md's list:
`drop:announced {productId, product, at}`: the seller announced that an attached product
goes on sale at `at` (ISO 8601, UTC); `product` is the catalog's product contract. Viewers
count down to it. A later announcement replaces the pending one, and `welcome.room.drop`
carries it (or null) for whoever joins before `at`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema

from signaling import bounded_json

MAX_MESSAGE_BYTES = 4096
MAX_DEPTH = 8  # a message nests 2 levels; 4 KB of `[` once crashed the decoder
CHAT_MAX_CHARS = 500  # chat_messages.message CHECK in 0001_schema.sql
REACTION_KINDS = ("heart", "like", "fire", "clap", "laugh", "wow")

_UUID = {
    "type": "string",
    "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
}
_REF = {"type": "string", "minLength": 1, "maxLength": 64}
_QTY = {"type": "integer", "minimum": 1, "maximum": 99}


def _schema(required: list[str], **properties: Any) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": required,
        "properties": {"ref": _REF, **properties},
    }


# One schema per client message type; `ref` is optional unless the answer must be
# matched to its request (cart and buy-now acks).
CLIENT_SCHEMAS: dict[str, dict[str, Any]] = {
    "chat:send": _schema(["message"], message={"type": "string", "minLength": 1, "maxLength": CHAT_MAX_CHARS}),
    "reaction:send": _schema(["kind"], kind={"enum": list(REACTION_KINDS)}),
    "cart:add": _schema(["productId", "variantId", "qty", "ref"], productId=_UUID, variantId=_UUID, qty=_QTY),
    "buy:now": _schema(
        ["productId", "variantId", "qty", "ref"],
        productId=_UUID, variantId=_UUID, qty=_QTY, addressId=_UUID,
    ),
    "auth": _schema(["accessToken"], accessToken={"type": "string", "minLength": 1, "maxLength": 4096}),
    # A viewer pins the quality of its video (events DataChannel of a watch session only).
    "quality:set": _schema(["layer"], layer={"enum": ["auto", "high", "low"]}),
}
_VALIDATORS = {name: jsonschema.Draft202012Validator(s) for name, s in CLIENT_SCHEMAS.items()}


class ProtocolError(Exception):
    """A client message the server refuses; answered with an `error` event carrying `code`."""

    def __init__(self, code: str, message: str, ref: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.details = details


@dataclass(frozen=True)
class ClientMessage:
    """One validated client message."""

    type: str
    payload: dict[str, Any]

    @property
    def ref(self) -> str | None:
        return self.payload.get("ref")


def parse(data: str | bytes) -> ClientMessage:
    """Validate one client message; raise ProtocolError naming what is wrong."""
    if isinstance(data, bytes):
        # Binary frames, and DataChannel text that is not UTF-8 (media.aiortc_hook).
        raise ProtocolError("bad_message", "messages must be UTF-8 JSON text, not binary")
    try:
        message = bounded_json.loads(data, max_depth=MAX_DEPTH, max_chars=MAX_MESSAGE_BYTES)
    except bounded_json.TooLarge:
        raise ProtocolError("too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes") from None
    except bounded_json.Malformed as exc:
        raise ProtocolError("malformed_json", f"message is not acceptable JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", 'expected an object {"type": ..., "payload": {...}}')
    payload = message.get("payload", {})
    ref = payload.get("ref") if isinstance(payload, dict) else None
    ref = ref if isinstance(ref, str) and 0 < len(ref) <= 64 else None
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "type must be a string", ref)
    if set(message) - {"type", "payload"}:
        raise ProtocolError("bad_message", "only type and payload are allowed at the top level", ref)
    validator = _VALIDATORS.get(kind)
    if validator is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}", ref)
    if not isinstance(payload, dict):
        raise ProtocolError("validation_error", "payload must be an object", ref)
    errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        where = ".".join(str(p) for p in error.absolute_path) or "payload"
        raise ProtocolError("validation_error", f"{where}: {error.message}"[:200], ref, field=where)
    # NUL arrives only as the escape \u0000 (raw control characters are invalid JSON).
    if "\\u0000" in data and (nul_at := bounded_json.nul_path(payload, "payload")) is not None:
        raise ProtocolError("validation_error", f"{nul_at}: contains NUL", ref, field=nul_at)
    return ClientMessage(kind, payload)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def event(kind: str, payload: dict[str, Any]) -> str:
    """Return the JSON text of one server event."""
    return _dumps({"type": kind, "payload": payload})


def batch(events: list[str]) -> str:
    """Join encoded events into one message: the event itself, or an array of several."""
    if len(events) == 1:
        return events[0]
    return "[" + ",".join(events) + "]"


def decode(message: str) -> list[dict[str, Any]]:
    """Split a server message into its events (for clients, tests and benchmarks)."""
    value = json.loads(message)
    return value if isinstance(value, list) else [value]


def error(code: str, message: str, ref: str | None = None, **details: Any) -> str:
    payload: dict[str, Any] = {"code": code, "message": message, "ref": ref}
    if details:
        payload["details"] = details
    return event("error", payload)


def ack(ref: str | None, **data: Any) -> str:
    return event("ack", {"ref": ref, **data})
