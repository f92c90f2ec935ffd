"""Time-limited TURN credentials: coturn's TURN REST API scheme (`use-auth-secret`).

The server and coturn share one secret (coturn's `static-auth-secret`). For each
session the server mints::

    username   = "<unix expiry>:<id>"
    credential = base64(HMAC-SHA1(secret, username))

coturn recomputes the credential from the username and refuses it after the expiry,
so nothing is stored and a leaked credential dies on its own. Clients get them as
RFC 9725 ``Link: <turn:...>; rel="ice-server"`` headers on WHIP/WHEP answers and from
``GET /api/v1/ice-servers`` for the web pages' ``RTCPeerConnection``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from server.config import Settings


@dataclass(frozen=True)
class TurnCredentials:
    """One minted username/credential pair for the configured TURN URLs."""

    urls: tuple[str, ...]
    username: str
    credential: str
    expires_at: int

    def ice_server(self) -> dict[str, object]:
        """Return the W3C ``RTCIceServer`` dictionary a browser takes."""
        return {"urls": list(self.urls), "username": self.username, "credential": self.credential}

    def link_headers(self) -> list[str]:
        """Return one RFC 9725 ``Link`` header value per TURN URL."""
        return [
            f'<{url}>; rel="ice-server"; username="{_quote(self.username)}"; '
            f'credential="{_quote(self.credential)}"; credential-type="password"'
            for url in self.urls
        ]


def mint(settings: Settings, session_id: str, now: float | None = None) -> TurnCredentials | None:
    """Mint credentials for `session_id`, valid for TURN_CREDENTIAL_TTL; None without TURN."""
    if not settings.turn_urls or not settings.turn_secret:
        return None
    expires_at = int(now if now is not None else time.time()) + settings.turn_credential_ttl
    # coturn reads the expiry up to the first ':'; the id is only a label for its logs.
    username = f"{expires_at}:{session_id.replace(':', '_')}"
    digest = hmac.new(settings.turn_secret.get().encode(), username.encode(), hashlib.sha1).digest()
    return TurnCredentials(settings.turn_urls, username, base64.b64encode(digest).decode(), expires_at)


def _quote(value: str) -> str:
    # A quoted-string in a Link parameter: escape the two characters that would end it.
    return value.replace("\\", "\\\\").replace('"', '\\"')
