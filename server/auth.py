"""Authentication: password hashing, access tokens, rotating refresh tokens, login limits.

Access tokens are short-lived HS256 JWTs carrying the user id and role; the algorithm
is pinned when decoding, so `alg=none` and every other algorithm are refused.
Refresh tokens are random strings stored only as SHA-256 hashes. Each use spends the
token and issues the next one in the same family; presenting a spent token again means
it was stolen or replayed, so the whole family is revoked.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import argon2
import asyncpg
import jwt

from server.errors import ApiError, unauthenticated

ALGORITHM = "HS256"
ISSUER = "shopstream"


@dataclass(frozen=True)
class Identity:
    """The caller of a request: a user id and the role their token carries."""

    user_id: str
    role: str


class Passwords:
    """Hash and verify passwords with argon2id; hashing runs off the event loop."""

    def __init__(self) -> None:
        self._hasher = argon2.PasswordHasher()
        # Verifying an unknown email against this keeps response times alike.
        self._dummy = self._hasher.hash(secrets.token_hex(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash or self._dummy, password)
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

        ok = await asyncio.to_thread(check)
        return ok and password_hash is not None


class Tokens:
    """Issue and check access tokens; issue, rotate and revoke refresh tokens."""

    def __init__(self, secret: str, access_ttl: int, refresh_ttl: int) -> None:
        self._secret = secret
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def access_token(self, user_id: str, role: str) -> str:
        now = int(time.time())
        claims = {
            "sub": user_id, "role": role, "iat": now, "exp": now + self.access_ttl,
            "iss": ISSUER, "typ": "access", "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def identity(self, token: str) -> Identity:
        """Return the identity an access token proves, or raise 401."""
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], issuer=ISSUER,
                options={"require": ["sub", "exp", "iat", "role", "typ"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("access token expired") from None
        except jwt.InvalidTokenError:
            raise unauthenticated("invalid access token") from None
        if claims["typ"] != "access" or claims["role"] not in ("user", "seller", "admin"):
            raise unauthenticated("invalid access token")
        try:
            uuid.UUID(claims["sub"])
        except (ValueError, TypeError, AttributeError):
            raise unauthenticated("invalid access token") from None
        return Identity(claims["sub"], claims["role"])

    async def issue_refresh(
        self, conn: asyncpg.Connection, user_id: str, family_id: str | None = None
    ) -> str:
        token = secrets.token_urlsafe(32)
        await conn.execute(
            """INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
               VALUES ($1, $2, $3, $4)""",
            user_id, family_id or str(uuid.uuid4()), _digest(token),
            datetime.now(UTC) + timedelta(seconds=self.refresh_ttl),
        )
        return token

    async def rotate_refresh(self, conn: asyncpg.Connection, token: str) -> tuple[str, str] | None:
        """Spend a refresh token and return (user_id, next token).

        A spent or revoked token revokes its whole family and returns None: the caller
        commits that revocation, then answers 401 (raising here would roll it back).
        """
        row = await conn.fetchrow(
            """SELECT id, user_id, family_id, expires_at, used_at, revoked_at
               FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE""",
            _digest(token),
        )
        if row is None:
            raise unauthenticated("invalid refresh token")
        if row["used_at"] is not None or row["revoked_at"] is not None:
            await self.revoke_family(conn, row["family_id"])
            return None
        if row["expires_at"] <= datetime.now(UTC):
            raise unauthenticated("refresh token expired")
        await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE id = $1", row["id"])
        user_id = str(row["user_id"])
        return user_id, await self.issue_refresh(conn, user_id, str(row["family_id"]))

    async def revoke(self, conn: asyncpg.Connection, token: str) -> None:
        """Revoke the family of a refresh token (logout); unknown tokens are ignored."""
        family = await conn.fetchval(
            "SELECT family_id FROM refresh_tokens WHERE token_hash = $1", _digest(token)
        )
        if family is not None:
            await self.revoke_family(conn, family)

    @staticmethod
    async def revoke_family(conn: asyncpg.Connection, family_id: uuid.UUID | str) -> None:
        await conn.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
            family_id,
        )


class Callers:
    """Confirm that the user a valid access token names still exists.

    An access token outlives its account by up to its TTL. Without this check the ghost
    passed every auth rule and its first write failed on the users foreign key (a 500).
    A confirmation is kept for `ttl` seconds, so it costs one indexed query per user per
    `ttl`; an account deleted within that window still surfaces as a foreign-key
    violation naming the caller, which the middleware maps to the same 401 (`forget`).
    """

    EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)"

    def __init__(self, ttl: float = 2.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._confirmed: dict[str, float] = {}

    async def exists(self, pool: asyncpg.Pool, user_id: str) -> bool:
        """Return whether the user exists (a recent confirmation answers without a query)."""
        now = time.monotonic()
        confirmed = self._confirmed.get(user_id)
        if confirmed is not None and now - confirmed < self.ttl:
            return True
        found = bool(await pool.fetchval(self.EXISTS, user_id))
        if found:
            if len(self._confirmed) >= self.max_entries:
                self._confirmed.clear()  # cheaper than an LRU: a miss is one query
            self._confirmed[user_id] = now
        else:
            self._confirmed.pop(user_id, None)
        return found

    def forget(self, user_id: str) -> None:
        self._confirmed.pop(user_id, None)


def account_gone() -> ApiError:
    return unauthenticated("the account of this access token no longer exists")


class RefreshReuse(ApiError):
    """A spent refresh token was presented again; its family is now revoked."""

    def __init__(self) -> None:
        super().__init__(
            401, "unauthenticated", "refresh token was already used; every session of this login is revoked"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class RateLimiter:
    """Allow `limit` events per `window` seconds per key (sliding window, in memory).

    One process's view; the realtime layer's Redis limiter covers several processes.
    """

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, weight: float = 1.0) -> int:
        """Record an attempt; return 0 if allowed, else the seconds to wait.

        `weight` below 1 gives a key a proportionally larger budget (one client address
        may carry many accounts' logins).
        """
        now = time.monotonic()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self.max_keys:
                self._evict(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit / weight:
            return max(1, int(hits[0] + self.window - now + 0.999))
        hits.append(now)
        return 0

    def _evict(self, now: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]:
            del self._hits[key]
        if len(self._hits) >= self.max_keys:
            self._hits.clear()
