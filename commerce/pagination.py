"""Cursor pagination: opaque cursors that carry the last row's sort key.

A cursor is URL-safe base64 of `{"k": <sort kind>, "v": [<sort key values>]}`. Pages are
read with a keyset condition such as `(created_at, id) < ($n, $m)`, so a row inserted
while a client pages never shifts later pages (no duplicates, no gaps). A cursor made
for another sort kind, or one that does not decode, is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from datetime import datetime
from typing import Any

from commerce.errors import Invalid


def encode_cursor(kind: str, *values: Any) -> str:
    """Return the opaque cursor for a row whose sort key is `values`."""
    raw = json.dumps({"k": kind, "v": list(values)}, separators=(",", ":"), default=str)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, kind: str, types: tuple[type, ...]) -> tuple[Any, ...] | None:
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
