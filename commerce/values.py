"""Timestamps as the API writes them: ISO 8601 with a time zone, refused cleanly otherwise."""

from __future__ import annotations

from datetime import datetime

from commerce.errors import Invalid


def parse_moment(raw: str | None, name: str) -> datetime | None:
    """Return the aware datetime in raw (None stays None); Invalid names the field."""
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except (ValueError, TypeError):
        raise Invalid(f"{name} is not an ISO 8601 date-time", fields={name: "not a date-time"}) from None
    if value.tzinfo is None:
        # A naive time would silently mean the server's zone.
        raise Invalid(f"{name} needs a time zone offset", fields={name: "missing time zone"})
    return value


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
