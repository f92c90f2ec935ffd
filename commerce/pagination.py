"""Cursor pagination: opaque cursors that carry the last row's sort key.

A cursor is URL-safe base64 of `{"k": <listing kind>, "v": [<sort key values>]}`. Pages are
read with a keyset condition such as `(created_at, id) < ($n, $m)`, so a row inserted
while a client pages never shifts later pages (no duplicates, no gaps). A cursor made
for another listing, or one that does not decode, is a 400.

A listing fetches `limit + 1` rows after `decode_cursor(...)`'s key and hands them to
`page(...)`, which keeps `limit` of them and makes the next cursor from the last one.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from commerce.errors import Invalid

Row = TypeVar("Row")
# The usual keyset: newest (or oldest) first, the row id breaking ties.
CREATED = ("created_at", "id")
TIME_AND_ID: tuple[type, ...] = (datetime, uuid.UUID)


def encode_cursor(kind: str, *values: Any) -> str:
    """Return the opaque cursor for a row whose sort key is `values`."""
    raw = json.dumps({"k": kind, "v": list(values)}, separators=(",", ":"), default=_plain)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(
    cursor: str | None, kind: str, types: tuple[type, ...] = TIME_AND_ID
) -> tuple[Any, ...] | None:
    """Return the sort key a cursor carries (None without a cursor); raise Invalid if bad.

    `types` names each value's type: `datetime` values travel as ISO strings, `uuid.UUID`
    as canonical strings (returned as str), `float` as a JSON number.
    """
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not isinstance(data, dict) or data.get("k") != kind:
            raise ValueError("cursor belongs to another listing")
        values = data["v"]
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError("wrong sort key")
        return tuple(_cast(value, expected) for value, expected in zip(values, types, strict=True))
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        raise Invalid("cursor is not valid for this listing", fields={"cursor": "invalid cursor"}) from None


def split_page(
    rows: Sequence[Row], limit: int, kind: str, key: tuple[str, ...] = CREATED
) -> tuple[list[Row], str | None]:
    """Keep the first `limit` of up to limit+1 rows; return them and the next page's cursor.

    `key` names the row columns of the sort key, in the order the listing compares them.
    """
    kept = list(rows[:limit])
    if len(rows) <= limit or not kept:
        return kept, None
    last: Any = kept[-1]
    return kept, encode_cursor(kind, *(last[column] for column in key))


def page(
    rows: Sequence[Row], limit: int, kind: str, to_json: Callable[[Row], Any],
    key: tuple[str, ...] = CREATED,
) -> dict[str, Any]:
    """Build `{items, nextCursor}` from up to limit+1 rows sorted by `key`."""
    kept, next_cursor = split_page(rows, limit, kind, key)
    return {"items": [to_json(r) for r in kept], "nextCursor": next_cursor}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot put {type(value).__name__} in a cursor")


def _cast(value: Any, expected: type) -> Any:
    if expected is datetime:
        if not isinstance(value, str):
            raise TypeError("expected a timestamp")
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("timestamp without time zone")
        return parsed
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("expected a number")
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return float(value)
    if expected is uuid.UUID:
        if not isinstance(value, str):
            raise TypeError("expected an id")
        return str(uuid.UUID(value))
    raise TypeError(f"unsupported cursor type {expected}")
