"""Checkout: one session per idempotency key; totals, orders, a payment and stock holds.

`create_checkout_session` is the domain entry point (HTTP and the realtime `buy:now`
both call it). It runs in two steps:

1. One transaction as the buyer (`hot_transaction`: BEGIN travels with the caller's
   identity): claim the idempotency key together with its answer, the payment id chosen
   here (INSERT ... ON CONFLICT DO NOTHING; a concurrent identical request waits on that
   row and then reads it), lock the coupon row and take a redemption, insert the
   payment, one order per seller, the order items, the stock holds with their inventory
   events, and last take the stock with `take_stock` (sql/migrations/0050), a
   conditional `UPDATE ... SET stock = stock - qty WHERE ... AND stock >= qty` per
   variant in id order, sent with COMMIT in one message. A variant short of stock
   raises OutOfStock and the whole transaction (key included) rolls back. The hot
   variant rows are locked only inside PostgreSQL, for that statement and the commit.
2. The provider's intent. A provider whose intents need no network call (offline)
   creates it before step 1 and the payment row carries it. Otherwise it is created
   outside any transaction with an idempotency key derived from the payment id and
   stored on the payment (first writer wins); a replay or a retry after a provider
   failure repeats this step and gets the same intent.

Before step 1, a buy-now checkout may be refused with one query outside any transaction
(`precheck`): when the key is new and a variant is already short, the answer is 409 at
the cost of one round trip. In a sold-out drop that is almost every attempt. The
conditional UPDATE in step 1 still decides every sale; the pre-check only refuses
early what step 1 would refuse.

Lock order (see commerce/holds.py): coupon row, then variants in id order.
The cart path leaves the cart active; it is marked converted when the payment succeeds.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from commerce import coupons
from commerce.errors import CouponInvalid, IdempotencyConflict, Invalid, NotFound, OutOfStock
from commerce.payments.base import PaymentProvider

CLAIM_KEY = """
INSERT INTO idempotency_keys (user_id, key, request_hash, response) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING key
"""
READ_KEY = "SELECT request_hash, response FROM idempotency_keys WHERE user_id = $1 AND key = $2"
SELECT_ADDRESS = """
SELECT line1, line2, city, state, postal_code, country, phone FROM addresses
WHERE id = $1 AND user_id = $2
"""
SELECT_ACTIVE_CART = "SELECT id, coupon_id FROM carts WHERE user_id = $1 AND status = 'active'"
SELECT_CART_LINES = "SELECT product_id, variant_id, qty FROM cart_items WHERE cart_id = $1 ORDER BY created_at, id"
SELECT_VARIANTS = """
SELECT v.id, v.product_id, v.seller_id, v.stock, coalesce(v.price_override, p.price) AS price,
       p.currency, p.status
FROM product_variants v JOIN products p ON p.id = v.product_id
WHERE v.id = ANY($1::uuid[])
"""
LOCK_COUPON_BY_CODE = f"SELECT {coupons.COUPON_COLUMNS} FROM coupons WHERE code = $1 FOR UPDATE"
LOCK_COUPON_BY_ID = f"SELECT {coupons.COUPON_COLUMNS} FROM coupons WHERE id = $1 FOR UPDATE"
COUNT_USER_REDEMPTIONS = """
SELECT count(*) FROM coupon_redemptions
WHERE coupon_id = $1 AND user_id = $2 AND status IN ('held', 'redeemed')
"""
TAKE_COUPON_USE = """
UPDATE coupons SET used_count = used_count + 1
WHERE id = $1 AND (usage_limit IS NULL OR used_count < usage_limit) RETURNING used_count
"""
INSERT_REDEMPTION = "INSERT INTO coupon_redemptions (coupon_id, user_id, payment_id) VALUES ($1, $2, $3)"
SELECT_LIVESTREAM = "SELECT id FROM livestreams WHERE id = $1"
INSERT_PAYMENT = """
INSERT INTO payments (id, user_id, provider, amount, currency, expires_at, cart_id,
                      provider_intent_id, client_secret)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7, $8, $9) RETURNING expires_at
"""
INSERT_ORDERS = """
INSERT INTO orders (user_id, seller_id, payment_id, livestream_id, coupon_id, shipping_address,
                    subtotal, discount, total, currency)
SELECT $1, s.seller_id, $2, $3, $4, $5, s.subtotal, s.discount, s.subtotal - s.discount, $6
FROM unnest($7::uuid[], $8::bigint[], $9::bigint[]) AS s(seller_id, subtotal, discount)
RETURNING id, seller_id
"""
INSERT_ORDER_ITEMS = """
INSERT INTO order_items (order_id, product_id, variant_id, qty, price)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int[], $5::bigint[])
"""
# Holds and their 'hold' inventory events in one statement; the stock itself is taken
# afterwards, so the variant rows stay unlocked as long as possible.
INSERT_HOLDS_AND_EVENTS = """
WITH h AS (
    INSERT INTO stock_holds (payment_id, order_id, variant_id, qty, expires_at)
    SELECT $1, s.order_id, s.variant_id, s.qty, $2
    FROM unnest($3::uuid[], $4::uuid[], $5::int[]) AS s(order_id, variant_id, qty)
    RETURNING id, order_id, variant_id, qty
)
INSERT INTO inventory_events (product_id, variant_id, delta, reason, order_id, hold_id)
SELECT s.product_id, h.variant_id, -h.qty, 'hold', h.order_id, h.id
FROM h JOIN unnest($4::uuid[], $6::uuid[]) AS s(variant_id, product_id) ON s.variant_id = h.variant_id
"""
# Sent with COMMIT as literal SQL (HotTransaction.commit_with): only UUIDs and integers go in.
TAKE_STOCK = "SELECT take_stock('{{{ids}}}'::uuid[], '{{{qtys}}}'::int[])"
OUT_OF_STOCK_SQLSTATE = "SS001"
SELECT_SESSION = """
SELECT p.id, p.provider, p.provider_intent_id, p.client_secret, p.amount, p.currency,
       p.expires_at, p.status,
       array(SELECT o.id FROM orders o WHERE o.payment_id = p.id ORDER BY o.seller_id) AS order_ids
FROM payments p WHERE p.id = $1
"""
PRECHECK = """
SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE user_id = $1 AND key = $2) AS known_key,
       array_agg(s.variant_id) FILTER (WHERE v.stock < s.qty) AS short
FROM unnest($3::uuid[], $4::int[]) AS s(variant_id, qty)
JOIN product_variants v ON v.id = s.variant_id
"""
STORE_INTENT = """
UPDATE payments SET provider_intent_id = coalesce(provider_intent_id, $2),
                    client_secret = coalesce(client_secret, $3), updated_at = now()
WHERE id = $1 RETURNING provider_intent_id, client_secret
"""

Query = Callable[..., Awaitable[Any]]


class HotTransaction(Protocol):
    """What the checkout needs of server.db.HotTransaction."""

    conn: asyncpg.Connection

    async def commit_with(self, sql: str) -> None: ...


class Database(Protocol):
    """What the checkout needs of server.db.Database."""

    pool: asyncpg.Pool

    def transaction(self, user_id: str | None = None) -> AbstractAsyncContextManager[asyncpg.Connection]: ...

    def hot_transaction(self, user_id: str) -> AbstractAsyncContextManager[HotTransaction]: ...


@dataclass(frozen=True)
class Line:
    product_id: str
    variant_id: str
    qty: int


@dataclass
class Session:
    """A checkout session: the response body and what changed (for notifications)."""

    body: dict[str, Any]
    created: bool
    variant_ids: list[str] = field(default_factory=list)


def request_hash(body: dict[str, Any]) -> str:
    """Hash a request body canonically: same content, same hash, whatever the key order."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def create_checkout_session(
    db: Database, provider: PaymentProvider, *, user_id: str, idempotency_key: str,
    body: dict[str, Any], hold_ttl_seconds: int,
) -> Session:
    """Create (or replay) the checkout session for this buyer and idempotency key.

    `body` is `{addressId}` (the active cart) or `{addressId, items: [{productId,
    variantId, qty}], couponCode?, livestreamId?}` (buy now; sold-out refused by the
    pre-check). Raises NotFound, Invalid, OutOfStock, CouponInvalid,
    IdempotencyConflict, PaymentProviderError.
    """
    if "items" in body:
        await _refuse_if_sold_out(db.pool.fetchrow, user_id, idempotency_key, body["items"])
    digest = request_hash(body)
    payment_id = str(uuid.uuid4())
    response = json.dumps({"paymentId": payment_id})
    try:
        async with db.hot_transaction(user_id) as tx:
            if await tx.conn.fetchval(CLAIM_KEY, user_id, idempotency_key, digest, response) is None:
                row = await tx.conn.fetchrow(READ_KEY, user_id, idempotency_key)
                if row["request_hash"] != digest:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used with a different request", key=idempotency_key
                    )
                payment_id = json.loads(row["response"])["paymentId"]
                created = None
            else:
                created = await _hold(tx, user_id, payment_id, body, hold_ttl_seconds, provider)
    except asyncpg.PostgresError as e:
        if e.sqlstate != OUT_OF_STOCK_SQLSTATE:
            raise
        raise OutOfStock("not enough stock", variantIds=[e.detail]) from None
    if created is None:  # a replay: read what the first request made
        return Session(await _session_body(db, provider, user_id, payment_id), False)
    if created["paymentIntentId"] is None:
        intent_id, secret = await _create_intent(db, provider, user_id, payment_id, created)
        created.update(paymentIntentId=intent_id, clientSecret=secret)
    return Session(created, True, sorted({ln.variant_id for ln in created.pop("lines")}))


async def _refuse_if_sold_out(
    query: Query, user_id: str, idempotency_key: str, items: list[dict[str, Any]]
) -> None:
    """Raise OutOfStock when a new key asks for more than a variant has right now."""
    wanted: dict[str, int] = {}
    for item in items:
        try:
            variant_id = str(uuid.UUID(str(item["variantId"])))
        except ValueError:
            return  # the full path reports the bad id
        wanted[variant_id] = wanted.get(variant_id, 0) + int(item["qty"])
    row = await query(PRECHECK, user_id, idempotency_key, list(wanted), list(wanted.values()))
    if not row["known_key"] and row["short"]:
        raise OutOfStock("not enough stock", variantIds=sorted(str(v) for v in row["short"]))


async def _session_body(db: Database, provider: PaymentProvider, user_id: str, payment_id: str) -> dict[str, Any]:
    async with db.transaction(user_id) as conn:
        row = await conn.fetchrow(SELECT_SESSION, payment_id)
    body = {
        "orderIds": [str(o) for o in row["order_ids"]], "paymentId": str(row["id"]),
        "paymentIntentId": row["provider_intent_id"], "clientSecret": row["client_secret"],
        "amount": row["amount"], "currency": row["currency"], "expiresAt": _iso(row["expires_at"]),
        "provider": row["provider"], "status": row["status"],
    }
    if body["paymentIntentId"] is None:  # the first request's provider call failed: retry it
        body["paymentIntentId"], body["clientSecret"] = await _create_intent(db, provider, user_id, payment_id, body)
    return body


async def _create_intent(
    db: Database, provider: PaymentProvider, user_id: str, payment_id: str, session: dict[str, Any]
) -> tuple[str, str]:
    """Create the provider's intent for a payment and store it (first writer wins)."""
    intent = await provider.create_intent(
        session["amount"], session["currency"], f"checkout-{payment_id}", {"paymentId": payment_id}
    )
    async with db.transaction(user_id) as conn:
        stored = await conn.fetchrow(STORE_INTENT, payment_id, intent.id, intent.client_secret)
    return stored["provider_intent_id"], stored["client_secret"]


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def _lines(conn: asyncpg.Connection, user_id: str, body: dict[str, Any]) -> tuple[list[Line], Any, Any]:
    """Return the lines to buy (duplicates merged), the cart id and the cart's coupon id."""
    cart_id = coupon_id = None
    if "items" in body:
        raw = [(i["productId"], i["variantId"], int(i["qty"])) for i in body["items"]]
    else:
        cart = await conn.fetchrow(SELECT_ACTIVE_CART, user_id)
        if cart is None:
            raise Invalid("the cart is empty", fields={"cart": "empty"})
        cart_id, coupon_id = cart["id"], cart["coupon_id"]
        raw = [(str(r["product_id"]), str(r["variant_id"]), r["qty"])
               for r in await conn.fetch(SELECT_CART_LINES, cart_id)]
    if not raw:
        raise Invalid("the cart is empty", fields={"cart": "empty"})
    merged: dict[str, Line] = {}
    for product_id, variant_id, qty in raw:
        variant_id = _uuid(variant_id, "variantId")
        product_id = _uuid(product_id, "productId")
        prev = merged.get(variant_id)
        if prev is not None and prev.product_id != product_id:
            raise NotFound("variant not found", variantId=variant_id)
        merged[variant_id] = Line(product_id, variant_id, qty + (prev.qty if prev else 0))
    return [merged[v] for v in sorted(merged)], cart_id, coupon_id


def _uuid(value: str, name: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise NotFound(f"{name} not found", **{name: value}) from None


async def _hold(
    tx: HotTransaction, user_id: str, payment_id: str, body: dict[str, Any], ttl: int,
    provider: PaymentProvider,
) -> dict[str, Any]:
    """Create the payment, orders, items and holds; take the stock and commit.

    Return the session body (`paymentIntentId` None when the provider's intent is still
    to be created) with the bought `lines`. Taking the stock is the last statement and
    goes with COMMIT: the hot variant rows of a drop are locked only inside PostgreSQL.
    """
    conn = tx.conn
    lines, cart_id, cart_coupon_id = await _lines(conn, user_id, body)
    variants = {str(r["id"]): r for r in await conn.fetch(SELECT_VARIANTS, [ln.variant_id for ln in lines])}
    short = []
    for line in lines:
        v = variants.get(line.variant_id)
        if v is None or str(v["product_id"]) != line.product_id or v["status"] != "active":
            raise NotFound("variant not found", variantId=line.variant_id)
        if v["stock"] < line.qty:
            short.append(line.variant_id)
    # A cheap early answer for the common sold-out case; TAKE_STOCK below decides.
    if short:
        raise OutOfStock("not enough stock", variantIds=short)
    currencies = {variants[ln.variant_id]["currency"] for ln in lines}
    if len(currencies) != 1:
        raise Invalid("all items of one checkout must have the same currency")
    currency = currencies.pop()

    address = await conn.fetchrow(SELECT_ADDRESS, _uuid(body["addressId"], "addressId"), user_id)
    if address is None:
        raise NotFound("address not found", addressId=body["addressId"])
    livestream_id = body.get("livestreamId")
    if livestream_id is not None:
        livestream_id = _uuid(livestream_id, "livestreamId")
        if await conn.fetchval(SELECT_LIVESTREAM, livestream_id) is None:
            raise NotFound("livestream not found", livestreamId=livestream_id)

    # Per seller (sorted, so order ids come back in a stable order): subtotal.
    by_seller: dict[str, list[Line]] = {}
    for line in lines:
        by_seller.setdefault(str(variants[line.variant_id]["seller_id"]), []).append(line)
    sellers = sorted(by_seller)
    subtotals = [sum(variants[ln.variant_id]["price"] * ln.qty for ln in by_seller[s]) for s in sellers]
    subtotal = sum(subtotals)

    coupon = None
    code = body.get("couponCode")
    if code:
        coupon = await conn.fetchrow(LOCK_COUPON_BY_CODE, coupons.normalize_code(code))
        if coupon is None:
            raise CouponInvalid("no coupon has this code", reason="unknown")
    elif cart_coupon_id is not None:
        coupon = await conn.fetchrow(LOCK_COUPON_BY_ID, cart_coupon_id)
    discount = 0
    if coupon is not None:
        discount = coupons.discount_for(coupon, subtotal=subtotal, currency=currency,
                                        seller_ids=set(sellers))
        used = await conn.fetchval(COUNT_USER_REDEMPTIONS, coupon["id"], user_id)
        if coupon["per_user_limit"] is not None and used >= coupon["per_user_limit"]:
            raise CouponInvalid("you have already used this coupon", reason="per_user_limit")
        if await conn.fetchval(TAKE_COUPON_USE, coupon["id"]) is None:
            raise CouponInvalid("this coupon has been used up", reason="exhausted")
    discounts = _split_discount(discount, subtotals)
    total = subtotal - discount
    if total <= 0:
        raise Invalid("the total must be more than zero")

    intent = None
    if provider.local_intents:  # no network call: the payment row carries its intent
        intent = await provider.create_intent(
            total, currency, f"checkout-{payment_id}", {"paymentId": payment_id}
        )
    expires_at = await conn.fetchval(
        INSERT_PAYMENT, payment_id, user_id, provider.name, total, currency, float(ttl), cart_id,
        intent and intent.id, intent and intent.client_secret,
    )
    if coupon is not None:
        await conn.execute(INSERT_REDEMPTION, coupon["id"], user_id, payment_id)
    orders = await conn.fetch(
        INSERT_ORDERS, user_id, payment_id, livestream_id, coupon["id"] if coupon else None,
        json.dumps(_address_json(address)), currency, sellers, subtotals, discounts,
    )
    order_of = {str(r["seller_id"]): r["id"] for r in orders}
    line_orders = [order_of[str(variants[ln.variant_id]["seller_id"])] for ln in lines]
    ids = [ln.variant_id for ln in lines]
    qtys = [ln.qty for ln in lines]
    await conn.execute(
        INSERT_ORDER_ITEMS, line_orders, [ln.product_id for ln in lines], ids, qtys,
        [variants[v]["price"] for v in ids],
    )
    await conn.execute(
        INSERT_HOLDS_AND_EVENTS, payment_id, expires_at, line_orders, ids, qtys,
        [ln.product_id for ln in lines],
    )
    # Last: take the stock, in variant-id order (lines are sorted by variant id), and
    # commit. `ids` hold canonical UUIDs (`_lines`) and `qtys` integers.
    await tx.commit_with(TAKE_STOCK.format(ids=",".join(ids), qtys=",".join(str(int(q)) for q in qtys)))
    return {
        "orderIds": [str(order_of[s]) for s in sellers], "paymentId": payment_id,
        "paymentIntentId": intent and intent.id, "clientSecret": intent and intent.client_secret,
        "amount": total, "currency": currency, "expiresAt": _iso(expires_at),
        "provider": provider.name, "status": "requires_payment", "lines": lines,
    }


def _split_discount(discount: int, subtotals: list[int]) -> list[int]:
    """Share a discount across orders in proportion to their subtotals."""
    total = sum(subtotals)
    if not discount or not total:
        return [0] * len(subtotals)
    shares = [discount * s // total for s in subtotals]
    # The rounding remainder (fewer cents than orders) goes to the largest order.
    shares[subtotals.index(max(subtotals))] += discount - sum(shares)
    return shares


def _address_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "line1": row["line1"], "line2": row["line2"], "city": row["city"], "state": row["state"],
        "postalCode": row["postal_code"], "country": row["country"], "phone": row["phone"],
    }
