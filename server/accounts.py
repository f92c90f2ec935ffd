"""Accounts: users, profiles, addresses and becoming a seller (SQL next to its use)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from commerce.errors import Conflict, NotFound

INSERT_USER = "INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id"
INSERT_PROFILE = "INSERT INTO profiles (id, name) VALUES ($1, $2)"
SELECT_LOGIN = """
SELECT u.id, u.password_hash, p.role FROM users u JOIN profiles p ON p.id = u.id
WHERE u.email = $1
"""
SELECT_PROFILE = """
SELECT u.id, u.email, p.name, p.role, p.avatar_url, u.created_at,
       s.id AS seller_id, s.display_name, s.bio, s.socials, s.kyc_status
FROM users u JOIN profiles p ON p.id = u.id LEFT JOIN sellers s ON s.user_id = u.id
WHERE u.id = $1
"""
ADDRESS_COLUMNS = "id, line1, line2, city, state, postal_code, country, phone, created_at"
# camelCase API field -> column; the only fields a client may write.
ADDRESS_FIELDS = {
    "line1": "line1", "line2": "line2", "city": "city", "state": "state",
    "postalCode": "postal_code", "country": "country", "phone": "phone",
}
PROFILE_FIELDS = {"name": "name", "avatarUrl": "avatar_url"}


async def create_user(conn: asyncpg.Connection, email: str, password_hash: str, name: str) -> str:
    """Insert a user and their profile; raise Conflict when the email is taken."""
    try:
        async with conn.transaction():
            user_id = await conn.fetchval(INSERT_USER, email, password_hash)
            await conn.execute(INSERT_PROFILE, user_id, name)
    except asyncpg.UniqueViolationError:
        raise Conflict("an account with this email already exists", code="email_taken") from None
    return str(user_id)


async def login_row(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow(SELECT_LOGIN, email)


async def role_of(conn: asyncpg.Connection, user_id: str) -> str:
    role = await conn.fetchval("SELECT role FROM profiles WHERE id = $1", user_id)
    if role is None:
        raise NotFound("user not found")
    return str(role)


async def profile(conn: asyncpg.Connection, user_id: str) -> dict[str, Any]:
    row = await conn.fetchrow(SELECT_PROFILE, user_id)
    if row is None:
        raise NotFound("user not found")
    return profile_json(row)


def profile_json(row: asyncpg.Record) -> dict[str, Any]:
    seller = None
    if row["seller_id"] is not None:
        seller = {
            "id": str(row["seller_id"]), "displayName": row["display_name"], "bio": row["bio"],
            "socials": _json(row["socials"]), "kycStatus": row["kyc_status"],
        }
    return {
        "id": str(row["id"]), "email": row["email"], "name": row["name"], "role": row["role"],
        "avatarUrl": row["avatar_url"], "createdAt": row["created_at"].isoformat(),
        "seller": seller,
    }


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def update_profile(conn: asyncpg.Connection, user_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    sets, args = _assignments(changes, PROFILE_FIELDS, start=2)
    if sets:
        await conn.execute(
            f"UPDATE profiles SET {sets}, updated_at = now() WHERE id = $1", user_id, *args
        )
    return await profile(conn, user_id)


def _assignments(changes: dict[str, Any], allowed: dict[str, str], start: int) -> tuple[str, list[Any]]:
    """Build `col = $n, ...` from whitelisted fields only (no mass assignment)."""
    parts, args = [], []
    for key, column in allowed.items():
        if key in changes:
            args.append(changes[key])
            parts.append(f"{column} = ${start + len(args) - 1}")
    return ", ".join(parts), args


def address_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "line1": row["line1"], "line2": row["line2"], "city": row["city"],
        "state": row["state"], "postalCode": row["postal_code"], "country": row["country"],
        "phone": row["phone"], "createdAt": row["created_at"].isoformat(),
    }


async def list_addresses(conn: asyncpg.Connection, user_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 ORDER BY created_at, id",
        user_id,
    )
    return [address_json(r) for r in rows]


async def add_address(conn: asyncpg.Connection, user_id: str, data: dict[str, Any]) -> dict[str, Any]:
    count = await conn.fetchval("SELECT count(*) FROM addresses WHERE user_id = $1", user_id)
    if count >= 20:
        raise Conflict("an account may keep at most 20 addresses", code="limit_reached")
    columns = [ADDRESS_FIELDS[k] for k in ADDRESS_FIELDS if k in data]
    values = [data[k] for k in ADDRESS_FIELDS if k in data]
    placeholders = ", ".join(f"${i + 2}" for i in range(len(values)))
    row = await conn.fetchrow(
        f"INSERT INTO addresses (user_id, {', '.join(columns)}) VALUES ($1, {placeholders}) "
        f"RETURNING {ADDRESS_COLUMNS}",
        user_id, *values,
    )
    return address_json(row)


async def update_address(
    conn: asyncpg.Connection, user_id: str, address_id: str, changes: dict[str, Any]
) -> dict[str, Any]:
    sets, args = _assignments(changes, ADDRESS_FIELDS, start=3)
    query = (
        f"UPDATE addresses SET {sets} WHERE id = $1 AND user_id = $2 RETURNING {ADDRESS_COLUMNS}"
        if sets else
        f"SELECT {ADDRESS_COLUMNS} FROM addresses WHERE id = $1 AND user_id = $2"
    )
    row = await conn.fetchrow(query, address_id, user_id, *args)
    if row is None:
        raise NotFound("address not found")
    return address_json(row)


async def delete_address(conn: asyncpg.Connection, user_id: str, address_id: str) -> None:
    deleted = await conn.fetchval(
        "DELETE FROM addresses WHERE id = $1 AND user_id = $2 RETURNING id", address_id, user_id
    )
    if deleted is None:
        raise NotFound("address not found")


async def become_seller(conn: asyncpg.Connection, user_id: str, data: dict[str, Any]) -> str:
    """Create the caller's seller record and raise their role; return the new role."""
    try:
        await conn.execute(
            "INSERT INTO sellers (user_id, display_name, bio, socials) VALUES ($1, $2, $3, $4)",
            user_id, data["displayName"], data.get("bio", ""), json.dumps(data.get("socials", {})),
        )
    except asyncpg.UniqueViolationError:
        raise Conflict("this account is already a seller", code="already_seller") from None
    role = await conn.fetchval(
        """UPDATE profiles SET role = CASE WHEN role = 'admin' THEN 'admin' ELSE 'seller' END,
                  updated_at = now()
           WHERE id = $1 RETURNING role""",
        user_id,
    )
    return str(role)
