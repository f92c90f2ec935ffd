"""Opaque keyset cursors: base64 of the last row's sort key, refused cleanly when forged."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Any

from commerce.errors import Invalid


def encode_cursor(sort_value: datetime, row_id: Any) -> str:
    raw = json.dumps([sort_value.isoformat(), str(row_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """Return (sort value, id) from a cursor, None for no cursor; Invalid for a bad one."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value, row_id = json.loads(raw)
        return datetime.fromisoformat(value), str(uuid.UUID(row_id))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise Invalid("cursor is not valid", fields={"cursor": "not a cursor from this list"}) from None


def page(rows: list[Any], limit: int, key: str, to_json: Any) -> dict[str, Any]:
    """Build `{items, nextCursor}` from up to limit+1 rows sorted by (key, id)."""
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1][key], rows[-1]["id"]) if more and rows else None
    return {"items": [to_json(r) for r in rows], "nextCursor": next_cursor}
