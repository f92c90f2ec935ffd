"""Database: the embedded server, the connection pool, migrations and caller context.

Row-level security pattern
--------------------------
Migrations run as the connecting (owner) user. Application queries run as
`settings.db_app_role`, a role without BYPASSRLS that every pooled connection switches
to with `SET ROLE` (the `role` setting survives the pool's `RESET ALL`). Each
transaction names its caller with ONE statement before any query:

    SELECT set_config('app.user_id', $1, true), set_config('app.system', $2, true)

`true` makes both settings local to the transaction, so a pooled connection never
carries one caller's identity into the next. Policies in `sql/migrations/0002_rls.sql`
compare rows with `app_user_id()`; `Database.transaction(system=True)` is for trusted
server work without a caller (webhooks, expiry sweeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import subprocess
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from sql import MIGRATIONS_DIR

log = logging.getLogger("shopstream.db")

# Any constant shared by every process of this app; two starting at once serialise on it.
MIGRATION_LOCK_KEY = 0x5E0B_5743

CONNECT_TIMEOUT = 5.0  # seconds to open one pooled connection, handshake included
SET_CALLER = "SELECT set_config('app.user_id', $1, true), set_config('app.system', $2, true)"

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration file is malformed, or differs from the one already applied."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read `NNNN_name.sql` files in version order; each must open with `-- Why:`."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        if not version.isdigit() or not name:
            raise MigrationError(f"{path.name}: expected NNNN_name.sql")
        sql = path.read_text()
        if not sql.lstrip().startswith("-- Why:"):
            raise MigrationError(f"{path.name}: must start with a '-- Why:' comment")
        migrations.append(Migration(version, name, sql))
    if not migrations:
        # Applying nothing would start a server whose first query fails far from here.
        raise MigrationError(
            f"no migrations found in {directory}: the installation is incomplete "
            "(sql/migrations/*.sql must be installed as package data)"
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return migrations


async def migrate(dsn: str, app_role: str, *, quiet: bool = False) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; return their versions.

    An advisory lock serialises concurrent callers; a second process waits, then finds
    nothing left to do. Already-applied files must not have changed.
    """
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(CREATE_MIGRATIONS_TABLE)
            done = {
                r["version"]: r["checksum"]
                for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
            }
            for m in load_migrations():
                if m.version in done:
                    if done[m.version] != m.checksum:
                        raise MigrationError(
                            f"migration {m.version}_{m.name} changed after it was applied"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        m.version, m.name, m.checksum,
                    )
                applied.append(m.version)
                if not quiet:
                    log.info("applied migration %s_%s", m.version, m.name)
            if app_role:
                await _grant_app_role(conn, app_role)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied


async def _grant_app_role(conn: asyncpg.Connection, role: str) -> None:
    """Create the application role if missing and give it exactly the rights it needs."""
    ident = '"' + role.replace('"', '""') + '"'
    # Roles are cluster-wide: another database's migration may create it concurrently.
    with contextlib.suppress(asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        if not exists:
            await conn.execute(f"CREATE ROLE {ident} NOLOGIN NOBYPASSRLS")
    with contextlib.suppress(asyncpg.DuplicateObjectError):
        await conn.execute(f"GRANT {ident} TO CURRENT_USER")
    await conn.execute(
        f"""
        GRANT USAGE ON SCHEMA public TO {ident};
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {ident};
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {ident};
        REVOKE UPDATE, DELETE, TRUNCATE ON inventory_events, schema_migrations FROM {ident};
        REVOKE INSERT ON schema_migrations FROM {ident};
        """
    )


class Database:
    """The application's pool, with transactions that carry the caller for RLS."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(
        cls, dsn: str, app_role: str, *, min_size: int = 2, max_size: int = 20,
        warm: Sequence[tuple[str, Sequence[Any]]] = (), connect_timeout: float = CONNECT_TIMEOUT,
    ) -> Database:
        """Open a pool whose connections all run as the application role.

        `warm`: (statement, arguments) that every new connection runs once, so that the
        first real use of a hot path on that connection (a drop's first sales, say) does
        not pay for preparing it: asyncpg's statement and type lookups, PostgreSQL's
        parsing and planning of the statements and of the functions they call.

        `connect_timeout` bounds opening one connection (asyncpg's default is 60 s): a
        database host that stopped answering costs a request that long, then a 503.
        """

        async def init(conn: asyncpg.Connection) -> None:
            if app_role:
                await conn.execute(f'SET ROLE "{app_role}"')
            for statement, args in warm:
                await conn.fetch(statement, *args)

        async def reset(conn: asyncpg.Connection) -> None:
            # asyncpg's default reset is one more round trip (RESET ALL, UNLISTEN, ...) on
            # every release. Our only session state is the role set above, meant to stay;
            # the caller's identity is transaction-local, and an open transaction is
            # rolled back by the pool before this is called.
            return None

        # No JIT: our statements are short, and compiling one (asyncpg's type lookup query
        # crosses the cost threshold) took 20-40 ms of a connection's first queries.
        pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=init, reset=reset, command_timeout=30,
            timeout=connect_timeout, server_settings={"jit": "off"},
        )
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def transaction(
        self, user_id: str | None = None, *, system: bool = False, isolation: str = "read_committed"
    ) -> AsyncIterator[asyncpg.Connection]:
        """Run a transaction as `user_id` (or as trusted server work with `system=True`)."""
        async with self.pool.acquire() as conn, conn.transaction(isolation=isolation):
            await conn.execute(SET_CALLER, user_id or "", "on" if system else "off")
            yield conn

    async def ping(self) -> bool:
        """Return True when the database answers a query within two seconds."""
        try:
            async with asyncio.timeout(2):
                return await self.pool.fetchval("SELECT 1") == 1
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL did not start; the message carries the end of its log."""


class EmbeddedPostgres:
    """Run PostgreSQL from the `pgserver` package inside the data folder.

    pgserver logs every initdb/pg_ctl call with its full output at INFO, and
    platformdirs warns when XDG_RUNTIME_DIR is unset: both go to `log_path` in the data
    folder (next to PostgreSQL's own `pg/log`), never to the terminal, and the end of
    that file is shown when the server fails to start.
    """

    LOG_NAME = "embedded-postgres.log"

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pg").resolve()
        self.log_path = self.pgdata.parent / self.LOG_NAME
        self._server = None
        self._handler: logging.Handler | None = None

    def start(self) -> str:
        """Start (or reuse) the server and return a DSN for its `shopstream` database."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        pg_log = self._capture_logs()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                import pgserver  # imported lazily: only the embedded mode needs it

                self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
                exists = self._server.psql(
                    "SELECT 1 FROM pg_database WHERE datname = 'shopstream';"
                )
                if "(0 rows)" in exists:
                    self._server.psql("CREATE DATABASE shopstream;")
                return self._server.get_uri("shopstream")
            except (OSError, subprocess.SubprocessError, AssertionError) as exc:
                pg_log.error("embedded PostgreSQL failed: %r", exc)
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL in {self.pgdata} did not start "
                    f"({type(exc).__name__}); the end of {self.log_path}:\n"
                    + self.log_tail()
                ) from exc
            finally:
                for warning in caught:
                    pg_log.warning("%s: %s", warning.category.__name__, warning.message)

    def log_tail(self, lines: int = 40) -> str:
        """Return the last `lines` lines of the embedded database's log file."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def _capture_logs(self) -> logging.Logger:
        pg_log = logging.getLogger("pgserver")
        if self._handler is None:
            self._handler = logging.FileHandler(self.log_path)
            self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            pg_log.addHandler(self._handler)
        pg_log.setLevel(logging.INFO)
        pg_log.propagate = False
        return pg_log

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._handler is not None:
            logging.getLogger("pgserver").removeHandler(self._handler)
            self._handler.close()
            self._handler = None
