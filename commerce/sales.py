"""The checkout's hot path, batched: sales of the same variants written together, one
transaction and one commit for many; buy-now stock reads made together (SnapshotReads).

In a drop, every sale of the one variant waits for the previous sale's commit on its
row. A :class:`SaleQueue` writes a sale at once when no sale of the same variants is
being written, and otherwise queues it; when the write in flight ends, everything queued
meanwhile goes in one `place_checkouts()` call (sql/migrations/0080): one transaction
and a fixed number of set-based statements for the whole group, each sale kept or
refused on its own (stock, address). An idle server adds no delay; a busy one commits
a batch at a time.

Sales with a coupon are never grouped: a sale locks its coupon before its variants, and
a group holding one sale's variants while locking another sale's coupon would break
that order (commerce/holds.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Hashable, Mapping
from typing import Any

import asyncpg

MAX_GROUP = 50
Versions = Mapping[str, str]  # variant id -> the row version (xmin) its stock was read at


@dataclasses.dataclass(frozen=True)
class Sale:
    """place_checkout's arguments, by name and in order (sql/migrations/0060_place_checkout.sql).

    A group goes to place_checkouts as a JSON array of these, keyed by the field names
    (the fields of the checkout_sale type, sql/migrations/0080).
    """

    user: str
    key: str
    hash: str
    response: str  # JSON text
    payment: str
    provider: str
    amount: int
    currency: str
    ttl_seconds: float
    cart: str | None
    intent: str | None
    client_secret: str | None
    coupon: str | None
    livestream: str | None
    address: str
    order_ids: list[str]
    sellers: list[str]
    subtotals: list[int]
    discounts: list[int]
    line_orders: list[str]
    product_ids: list[str]
    variant_ids: list[str]
    qtys: list[int]
    prices: list[int]

    def args(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}


FIELDS = tuple(f.name for f in dataclasses.fields(Sale))
PLACE_ONE = f"""
SELECT replayed, request_hash, response, expires_at, NULL::text AS error_state, NULL::text AS error_detail,
       NULL::jsonb AS stock_left
FROM place_checkout({", ".join(f"${i}" for i in range(1, len(FIELDS) + 1))})
"""
PLACE_MANY = "SELECT * FROM place_checkouts($1::jsonb)"


class SaleFailed(Exception):
    """A sale of a group was refused: its SQLSTATE and DETAIL (place_checkout's own codes)."""

    def __init__(self, sqlstate: str, detail: str | None) -> None:
        super().__init__(f"sale failed with SQLSTATE {sqlstate}")
        self.sqlstate = sqlstate
        self.detail = detail


# A checkout's first read, for one or several checkouts at once (read_snapshots): for
# each checkout n, whether its key is known and its livestream exists, and one row per
# variant found (none found: one row of NULLs). Idempotency keys, variants, products and
# livestreams are not behind row-level security.
SNAPSHOT = """
SELECT r.n, EXISTS (SELECT 1 FROM idempotency_keys k WHERE k.user_id = r.user_id AND k.key = r.key) AS known_key,
       r.livestream_id IS NULL OR EXISTS (SELECT 1 FROM livestreams s WHERE s.id = r.livestream_id)
           AS livestream_found,
       v.id, v.product_id, v.seller_id, v.stock, v.xmin::text AS version,
       coalesce(v.price_override, p.price) AS price, p.currency, p.status
FROM unnest($1::uuid[], $2::text[], $3::uuid[]) WITH ORDINALITY AS r(user_id, key, livestream_id, n)
LEFT JOIN (unnest($4::bigint[], $5::uuid[]) AS l(n, variant_id)
           JOIN product_variants v ON v.id = l.variant_id
           JOIN products p ON p.id = v.product_id) ON l.n = r.n
"""
SnapshotRead = tuple[str, str, "str | None", list[str]]  # user id, key, livestream id, variant ids


async def read_snapshots(
    db: asyncpg.Pool | asyncpg.Connection, reads: list[SnapshotRead],
) -> list[list[asyncpg.Record]]:
    """SNAPSHOT's rows for each read, in the reads' order."""
    lines = [(n, variant) for n, read in enumerate(reads, 1) for variant in read[3]]
    rows = await db.fetch(
        SNAPSHOT, [r[0] for r in reads], [r[1] for r in reads], [r[2] for r in reads],
        [n for n, _ in lines], [variant for _, variant in lines],
    )
    results: list[list[asyncpg.Record]] = [[] for _ in reads]
    for row in rows:
        results[row["n"] - 1].append(row)
    return results


# Run once by every new pool connection (server/db.py `warm`), with nothing to read or
# write: prepares the hot statements, looks up their types, and has PostgreSQL compile
# place_checkouts and plan its statements, all before the first drop.
WARM_UP = ((PLACE_MANY, ("[]",)), (SNAPSHOT, ([], [], [], [], [])))


class SnapshotReads:
    """The buy-now checkout's first read, batched: one query in flight at a time.

    A read starts a query at once when none is in flight; otherwise it waits, and every
    read that arrived meanwhile goes in the next query. An idle server reads one
    checkout per query; a backlogged one (a drop) reads dozens, saving each a pool
    checkout and a round trip. If a batch fails as a whole, each of its reads is made
    again alone, so one checkout's error stays its own.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._waiting: list[tuple[SnapshotRead, asyncio.Future[list[asyncpg.Record]]]] = []
        self._reader: asyncio.Task[None] | None = None
        self.batches = 0  # queries of more than one read (for tests and metrics)

    async def read(self, user_id: str, key: str, livestream_id: str | None,
                   variant_ids: list[str]) -> list[asyncpg.Record]:
        """SNAPSHOT's rows for this checkout."""
        future: asyncio.Future[list[asyncpg.Record]] = asyncio.get_running_loop().create_future()
        self._waiting.append(((user_id, key, livestream_id, variant_ids), future))
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="snapshot reads")
        return await future

    async def close(self) -> None:
        """Let the read in flight finish."""
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._results([args for args, _ in batch])
                except BaseException as exc:  # every read of the batch hears of it
                    _fail([future for _, future in batch], exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                _settle([future for _, future in batch], results)
        finally:
            self._reader = None
            for _, future in self._waiting:  # only when this task was cancelled
                future.cancel()
            self._waiting = []

    async def _results(self, reads: list[SnapshotRead]) -> list[list[asyncpg.Record] | Exception]:
        if len(reads) > 1:
            self.batches += 1
            try:
                return list(await read_snapshots(self.pool, reads))
            except asyncpg.PostgresError:
                pass  # each read again alone, below
        return [await self._alone(read) for read in reads]

    async def _alone(self, read: SnapshotRead) -> list[asyncpg.Record] | Exception:
        try:
            return (await read_snapshots(self.pool, [read]))[0]
        except asyncpg.PostgresError as e:
            return e


class SaleQueue:
    """Write sales through place_checkouts, grouping those of the same variants.

    A sale with a coupon, or one that its group's call could not write, goes alone
    through place_checkout.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._waiting: dict[Hashable, list[tuple[Sale, Versions, asyncio.Future[Any]]]] = {}
        self._writers: dict[Hashable, asyncio.Task[None]] = {}
        # Per variant, what the last group that wrote it knew: the row version it locked
        # and the stock it left. One entry per variant ever sold here.
        self._left: dict[str, tuple[str, int]] = {}
        self.reads = SnapshotReads(pool)
        self.groups = 0  # place_checkouts calls of more than one sale (for tests and metrics)
        self.refused_early = 0  # sales refused without a write (for tests and metrics)

    async def place(self, sale: Sale, seen: Versions | None = None) -> asyncpg.Record:
        """Write one sale; return its row. Raises SaleFailed or asyncpg errors.

        `seen`: each variant's row version (xmin) where the caller read its stock. A
        group that locked that same version committed after that read, so while this
        sale was being made; if the group left less than the sale needs, "not enough
        stock" was true then, and the sale is refused (SS001) without a write. In a drop
        this answers at once the buyers who read the stock just before it ran out.
        """
        seen = seen or {}
        if (short := self._short(sale, seen)) is not None:
            self.refused_early += 1
            raise SaleFailed("SS001", short)
        if sale.coupon is not None:
            return await self.pool.fetchrow(PLACE_ONE, *sale.args())
        key = tuple(sorted(sale.variant_ids))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((sale, seen, future))
        if key not in self._writers:
            self._writers[key] = asyncio.create_task(self._write(key), name="sales")
        row = await future
        if row["error_state"] is not None:
            raise SaleFailed(row["error_state"], row["error_detail"])
        return row

    async def close(self) -> None:
        """Let the reads and writes in flight finish."""
        await self.reads.close()
        if self._writers:
            await asyncio.gather(*self._writers.values(), return_exceptions=True)

    async def _write(self, key: Hashable) -> None:
        try:
            while waiting := self._waiting.pop(key, None):
                group, rest = waiting[:MAX_GROUP], waiting[MAX_GROUP:]
                if rest:
                    self._waiting[key] = rest
                try:
                    outcomes = await self._outcomes([sale for sale, _, _ in group])
                except BaseException as exc:  # every caller of the group hears of it
                    _fail([future for _, _, future in group], exc)
                    if not isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
                        raise
                    continue
                _settle([future for _, _, future in group], outcomes)
                self._refuse_short(key)
        finally:
            del self._writers[key]
            for _, _, future in self._waiting.pop(key, []):  # only when this task was cancelled
                future.cancel()

    def _short(self, sale: Sale, seen: Versions) -> str | None:
        """The first variant that a group, committed since `seen`, left short for this sale."""
        for variant, qty in zip(sale.variant_ids, sale.qtys, strict=True):
            left = self._left.get(variant)
            if left is not None and left[0] == seen.get(variant) and left[1] < qty:
                return variant
        return None

    def _refuse_short(self, key: Hashable) -> None:
        """Refuse the waiting sales that the group just written left short (see place)."""
        kept = []
        for sale, seen, future in self._waiting.get(key, []):
            if (short := self._short(sale, seen)) is None:
                kept.append((sale, seen, future))
            elif not future.done():
                self.refused_early += 1
                future.set_exception(SaleFailed("SS001", short))
        if kept:
            self._waiting[key] = kept
        else:
            self._waiting.pop(key, None)

    async def _outcomes(self, sales: list[Sale]) -> list[asyncpg.Record | asyncpg.PostgresError]:
        """Each sale's row or error, from one place_checkouts call.

        A sale is written again alone when the group's call failed as a whole (something
        other than stock or an address: a cart or livestream deleted meanwhile, say) or
        when its key was claimed by an earlier sale of the group that was then refused
        (SS000); so a sale's outcome never depends on the others'.
        """
        if len(sales) > 1:
            self.groups += 1
        try:
            rows = await self.pool.fetch(PLACE_MANY, json.dumps([s.as_dict() for s in sales]))
        except asyncpg.PostgresError:
            return [await self._place_alone(sale) for sale in sales]
        for variant, (version, stock) in json.loads(rows[0]["stock_left"]).items():
            self._left[variant] = (version, stock)
        return [await self._place_alone(sale) if row["error_state"] == "SS000" else row
                for sale, row in zip(sales, rows, strict=True)]

    async def _place_alone(self, sale: Sale) -> asyncpg.Record | asyncpg.PostgresError:
        try:
            return await self.pool.fetchrow(PLACE_ONE, *sale.args())
        except asyncpg.PostgresError as e:
            return e


def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    """Pass one error to every caller still waiting (a cancellation as a cancellation)."""
    for future in futures:
        if future.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        else:
            future.set_exception(exc)


def _settle(futures: list[asyncio.Future[Any]], outcomes: list[Any]) -> None:
    """Give each caller still waiting its own outcome: a result, or an error raised."""
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
