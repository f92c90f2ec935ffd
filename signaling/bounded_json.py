"""Decode untrusted JSON text with limits: the one decoder for request bodies and client events.

`json.loads` recurses once per nesting level, so `[` x 1,000 (4 KB) raises RecursionError,
not a ValueError: callers that caught only bad JSON let it through as a server error.
And decoding a body of many tiny values (`[{},{},...]`, 1 MiB) holds the event loop for
tens of milliseconds before any schema is consulted. So the text is measured *before*
decoding, with C-speed passes (`bytes.count`, one regex, `translate`, `replace`): nesting
deeper than `max_depth`, or more than `max_values` values, is refused like any other
malformed text. Lone UTF-16 surrogates (`"\\ud800"`) decode to a str that cannot be
encoded back to UTF-8 (PostgreSQL, a socket): refused as well.

    try:
        value = bounded_json.loads(raw, max_depth=32, max_chars=4096)
    except bounded_json.TooLarge: ...
    except bounded_json.Malformed as exc: ...   # str(exc) says why

It lives in `signaling` because both `server` (HTTP bodies) and `signaling` (the event
protocol) must reach it, and dependencies point from `server` to `signaling`.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32  # our deepest schema nests 3 levels; far below the decoder's recursion limit

# A JSON string literal, escapes included (the unrolled form: linear, no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# After strings are gone, keep only brackets, as parentheses: the decoder's recursion depth
# at any point is (openers - closers) so far, whichever kind they are.
_PARENS = bytes.maketrans(b"[]{}", b"()()")
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
# `\ud800`..`\udfff` escapes: a surrogate, alone or in a pair (a pair is a valid character).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Malformed(ValueError):
    """Text that is not acceptable JSON: invalid, not UTF-8, too deep, too many values."""


class TooLarge(ValueError):
    """Text longer than the caller's limit."""


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH, max_chars: int | None = None,
          max_values: int | None = None) -> Any:
    """Decode JSON text within the limits; raise Malformed or TooLarge."""
    if max_chars is not None and len(data) > max_chars:
        raise TooLarge(f"longer than {max_chars} characters")
    if isinstance(data, bytes):
        raw = data
        try:
            # RFC 8259 section 8.1: JSON exchanged between systems is UTF-8 (a BOM is tolerated).
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Malformed("not valid UTF-8") from None
    else:
        text = data
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:
            raise Malformed("not valid Unicode text") from None
    check_shape(raw, max_depth=max_depth, max_values=max_values)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError stays caught as a second line: check_shape makes it unreachable.
        raise Malformed("not valid JSON") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
        raise Malformed("a string holds a lone UTF-16 surrogate")
    return value


def check_shape(raw: bytes, *, max_depth: int, max_values: int | None = None) -> None:
    """Raise Malformed when JSON text nests deeper than `max_depth` or holds too many values.

    Brackets and commas inside string literals do not count. Each pass of the depth
    loop deletes every innermost pair, so what remains after `max_depth` passes is nested
    deeper than that; a pass that deletes nothing means unbalanced brackets, which the
    decoder would refuse only after recursing into them.
    """
    opens = raw.count(b"[") + raw.count(b"{")
    if opens <= max_depth and (max_values is None or opens + raw.count(b",") < max_values):
        return  # the common case: too few brackets and commas to matter
    if max_values is not None:
        # Every value is at most two string literals (a key and its value): a cheap lower
        # bound that spares the string pass below on bodies of many short strings.
        strings = (raw.count(b'"') - raw.count(b'\\"')) // 2
        if strings > 2 * max_values:
            raise Malformed(f"more than {max_values} values")
    bare = _STRING.sub(b"", raw)
    if max_values is not None:
        # Every value but a container's first follows a comma; every container opens once.
        values = bare.count(b",") + bare.count(b"[") + bare.count(b"{") + 1
        if values > max_values:
            raise Malformed(f"more than {max_values} values")
    parens = bare.translate(_PARENS, _NOT_BRACKETS)
    too_deep = b"(" * (max_depth + 1)
    for _ in range(max_depth):
        if not parens:
            return
        if too_deep in parens:
            break
        fewer = parens.replace(b"()", b"")
        if len(fewer) == len(parens):
            break
        parens = fewer
    else:
        if not parens:
            return
    raise Malformed(f"nested deeper than {max_depth} levels (or unbalanced)")


def nul_path(value: Any, where: str = "") -> str | None:
    """Return the dotted path of the first string (or key) holding NUL; None if none does.

    PostgreSQL text cannot hold NUL: decoded input that reaches the database is
    checked with this, and refused as a validation error rather than failing in a query.
    """
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            path = ".".join(filter(None, [where, str(key)]))
            if "\x00" in key:
                return path
            if (found := nul_path(item, path)) is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            if (found := nul_path(item, ".".join(filter(None, [where, str(i)])))) is not None:
                return found
    return None


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return not _encodable(value)
    if isinstance(value, dict):
        return any(not _encodable(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
