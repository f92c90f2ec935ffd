"""Checkout: one session per idempotency key; totals, orders, a payment and stock holds.

`create_checkout_session` is the domain entry point (HTTP and the realtime `buy:now`
both call it). It runs in three steps:

1. Read (`SNAPSHOT`; for a buy-now outside any transaction, concurrent checkouts' reads
   going in one query, `SaleQueue.reads`; for the active cart in a transaction as the
   buyer): whether the idempotency key is known, the variants with their prices, stock
   and row versions, whether the livestream exists. A known key is a replay: the stored
   session is returned. A new key asking for more than a variant has right now is
   refused here (409); in a sold-out drop that is almost every attempt.
2. Compute here: merge the lines, check the variants, group them per seller, price
   them, apply the coupon (`coupons.discount_for`), split the discount across orders.
3. Write, in one statement outside any explicit transaction, so its work commits as the
   statement ends. A sale with a coupon goes alone to `place_checkout`
   (sql/migrations/0060); the others go through `commerce.sales.SaleQueue`, which
   writes sales of the same variants that arrive while one is being written together in
   one `place_checkouts` call (sql/migrations/0080), each sale kept or refused on its
   own. Either claims the key with its answer (the payment id chosen here; a concurrent
   identical request waits on that row, then gets the stored answer), checks the
   address, takes the coupon use under the coupon's lock (place_checkout: per-user and
   usage limits exact), writes the payment, orders, items, holds and inventory events,
   and takes the stock under the variant rows' locks, in id order. A refused sale
   leaves nothing, key included. The drop's hot variant row is locked only inside
   PostgreSQL.

The provider's intent: a provider whose intents need no network call (offline) makes it
before step 3 and the payment row carries it. Otherwise it is created after step 3 with
an idempotency key derived from the payment id and stored on the payment (first writer
wins); a replay or a retry after a provider failure repeats this and gets the same intent.

The write under the lock decides every sale; the stock read in step 1 only refuses early
what it would refuse, and so does the SaleQueue when a group that committed after that
read (same row version) left too little. The coupon read in step 2 is not locked: its
validity window is checked a moment before the write, its limits under the lock in step 3.
Lock order (see commerce/holds.py): coupon row, then variants in id order.
The cart path leaves the cart active; it is marked converted when the payment succeeds.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg

from commerce import coupons
from commerce.errors import CouponInvalid, IdempotencyConflict, Invalid, NotFound, OutOfStock
from commerce.payments.base import PaymentProvider
from commerce.sales import Sale, SaleFailed, SaleQueue, read_snapshots

READ_KEY = "SELECT request_hash, response FROM idempotency_keys WHERE user_id = $1 AND key = $2"
SELECT_ACTIVE_CART = "SELECT id, coupon_id FROM carts WHERE user_id = $1 AND status = 'active'"
SELECT_CART_LINES = "SELECT product_id, variant_id, qty FROM cart_items WHERE cart_id = $1 ORDER BY created_at, id"
SELECT_SESSION = """
SELECT p.id, p.provider, p.provider_intent_id, p.client_secret, p.amount, p.currency,
       p.expires_at, p.status,
       array(SELECT o.id FROM orders o WHERE o.payment_id = p.id ORDER BY o.seller_id) AS order_ids
FROM payments p WHERE p.id = $1
"""
STORE_INTENT = """
UPDATE payments SET provider_intent_id = coalesce(provider_intent_id, $2),
                    client_secret = coalesce(client_secret, $3), updated_at = now()
WHERE id = $1 RETURNING provider_intent_id, client_secret
"""


class Database(Protocol):
    """What the checkout needs of server.db.Database."""

    pool: asyncpg.Pool

    def transaction(self, user_id: str | None = None) -> AbstractAsyncContextManager[asyncpg.Connection]: ...


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


@dataclass
class Plan:
    """What step 2 computed: everything place_checkout writes."""

    lines: list[Line]
    cart_id: Any
    livestream_id: str | None
    address_id: str
    currency: str
    coupon_id: Any
    sellers: list[str]
    subtotals: list[int]
    discounts: list[int]
    prices: dict[str, int]
    seller_of: dict[str, str]
    versions: dict[str, str]  # the variants' row versions where their stock was read

    @property
    def total(self) -> int:
        return sum(self.subtotals) - sum(self.discounts)


def request_hash(body: dict[str, Any]) -> str:
    """Hash a request body canonically: same content, same hash, whatever the key order."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def create_checkout_session(
    db: Database, sales: SaleQueue, provider: PaymentProvider, *, user_id: str, idempotency_key: str,
    body: dict[str, Any], hold_ttl_seconds: int,
) -> Session:
    """Create (or replay) the checkout session for this buyer and idempotency key.

    `body` is `{addressId}` (the active cart) or `{addressId, items: [{productId,
    variantId, qty}], couponCode?, livestreamId?}` (buy now). Raises NotFound, Invalid,
    OutOfStock, CouponInvalid, IdempotencyConflict, PaymentProviderError.
    """
    digest = request_hash(body)
    plan = await _plan(db, sales, user_id, idempotency_key, body)
    if plan is None:
        return Session(await _replay(db, provider, user_id, idempotency_key, digest), False)
    payment_id = str(uuid.uuid4())
    intent = None
    if provider.local_intents:  # no network call: the payment row carries its intent
        intent = await provider.create_intent(
            plan.total, plan.currency, f"checkout-{payment_id}", {"paymentId": payment_id}
        )
    order_ids = [str(uuid.uuid4()) for _ in plan.sellers]
    order_of = dict(zip(plan.sellers, order_ids, strict=True))
    lines = plan.lines
    sale = Sale(
        user=user_id, key=idempotency_key, hash=digest, response=json.dumps({"paymentId": payment_id}),
        payment=payment_id, provider=provider.name, amount=plan.total, currency=plan.currency,
        ttl_seconds=float(hold_ttl_seconds), cart=_str(plan.cart_id), intent=intent and intent.id,
        client_secret=intent and intent.client_secret, coupon=_str(plan.coupon_id),
        livestream=plan.livestream_id, address=plan.address_id, order_ids=order_ids,
        sellers=plan.sellers, subtotals=plan.subtotals, discounts=plan.discounts,
        line_orders=[order_of[plan.seller_of[ln.variant_id]] for ln in lines],
        product_ids=[ln.product_id for ln in lines], variant_ids=[ln.variant_id for ln in lines],
        qtys=[ln.qty for ln in lines], prices=[plan.prices[ln.variant_id] for ln in lines],
    )
    try:
        placed = await sales.place(sale, plan.versions)
    except (asyncpg.PostgresError, SaleFailed) as e:
        raise _place_error(e.sqlstate, e.detail, plan) or e from None
    if placed["replayed"]:  # the same key, claimed meanwhile by a concurrent request
        return Session(await _replay(db, provider, user_id, idempotency_key, digest), False)
    session = {
        "orderIds": order_ids, "paymentId": payment_id,
        "paymentIntentId": intent and intent.id, "clientSecret": intent and intent.client_secret,
        "amount": plan.total, "currency": plan.currency, "expiresAt": _iso(placed["expires_at"]),
        "provider": provider.name, "status": "requires_payment",
    }
    if intent is None:
        session["paymentIntentId"], session["clientSecret"] = await _create_intent(
            db, provider, user_id, payment_id, session
        )
    return Session(session, True, sale.variant_ids)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


# place_checkout's own SQLSTATEs (sql/migrations/0060_place_checkout.sql).
def _place_error(state: str, detail: str | None, plan: Plan) -> Exception | None:
    if state == "SS001":
        return OutOfStock("not enough stock", variantIds=[detail])
    if state == "SS002":
        return CouponInvalid("you have already used this coupon", reason="per_user_limit")
    if state == "SS003":
        return CouponInvalid("this coupon has been used up", reason="exhausted")
    if state == "SS004":
        return NotFound("address not found", addressId=plan.address_id)
    return None


async def _plan(
    db: Database, sales: SaleQueue, user_id: str, idempotency_key: str, body: dict[str, Any]
) -> Plan | None:
    """Steps 1 and 2: read, check and price the checkout; None when the key is known."""
    livestream_id = body.get("livestreamId")
    if livestream_id is not None:
        livestream_id = _uuid(livestream_id, "livestreamId")
    cart_id = cart_coupon_id = None
    if "items" in body:
        lines = _merge([(i["productId"], i["variantId"], int(i["qty"])) for i in body["items"]])
        rows = await sales.reads.read(user_id, idempotency_key, livestream_id, [ln.variant_id for ln in lines])
    else:
        async with db.transaction(user_id) as conn:
            cart = await conn.fetchrow(SELECT_ACTIVE_CART, user_id)
            raw = [] if cart is None else [
                (str(r["product_id"]), str(r["variant_id"]), r["qty"])
                for r in await conn.fetch(SELECT_CART_LINES, cart["id"])
            ]
            lines = _merge(raw)
            [rows] = await read_snapshots(conn, [(user_id, idempotency_key, livestream_id, [ln.variant_id for ln in lines])])
        if cart is not None:
            cart_id, cart_coupon_id = cart["id"], cart["coupon_id"]
    if rows[0]["known_key"]:
        return None
    if not lines:
        raise Invalid("the cart is empty", fields={"cart": "empty"})

    variants = {str(r["id"]): r for r in rows if r["id"] is not None}
    short = []
    for line in lines:
        v = variants.get(line.variant_id)
        if v is None or str(v["product_id"]) != line.product_id or v["status"] != "active":
            raise NotFound("variant not found", variantId=line.variant_id)
        if v["stock"] < line.qty:
            short.append(line.variant_id)
    if short:  # an early answer; the write decides
        raise OutOfStock("not enough stock", variantIds=short)
    currencies = {variants[ln.variant_id]["currency"] for ln in lines}
    if len(currencies) != 1:
        raise Invalid("all items of one checkout must have the same currency")
    currency = currencies.pop()
    address_id = _uuid(body["addressId"], "addressId")
    if not rows[0]["livestream_found"]:
        raise NotFound("livestream not found", livestreamId=livestream_id)

    # Per seller (sorted, so order ids come back in a stable order): subtotal.
    seller_of = {ln.variant_id: str(variants[ln.variant_id]["seller_id"]) for ln in lines}
    prices = {ln.variant_id: variants[ln.variant_id]["price"] for ln in lines}
    sellers = sorted(set(seller_of.values()))
    subtotals = [sum(prices[ln.variant_id] * ln.qty for ln in lines if seller_of[ln.variant_id] == s)
                 for s in sellers]
    subtotal = sum(subtotals)

    coupon = None
    code = body.get("couponCode")
    if code:
        coupon = await db.pool.fetchrow(coupons.SELECT_COUPON_BY_CODE, coupons.normalize_code(code))
        if coupon is None:
            raise CouponInvalid("no coupon has this code", reason="unknown")
    elif cart_coupon_id is not None:
        coupon = await db.pool.fetchrow(coupons.SELECT_COUPON_BY_ID, cart_coupon_id)
    discount = 0
    if coupon is not None:
        discount = coupons.discount_for(coupon, subtotal=subtotal, currency=currency, seller_ids=set(sellers))
    if subtotal - discount <= 0:
        raise Invalid("the total must be more than zero")
    return Plan(
        lines=lines, cart_id=cart_id, livestream_id=livestream_id, address_id=address_id,
        currency=currency, coupon_id=coupon["id"] if coupon else None, sellers=sellers,
        subtotals=subtotals, discounts=_split_discount(discount, subtotals), prices=prices,
        seller_of=seller_of, versions={ln.variant_id: variants[ln.variant_id]["version"] for ln in lines},
    )


async def _replay(
    db: Database, provider: PaymentProvider, user_id: str, idempotency_key: str, digest: str
) -> dict[str, Any]:
    """The session a known key answered, if this is the same request (else 409)."""
    async with db.transaction(user_id) as conn:
        key = await conn.fetchrow(READ_KEY, user_id, idempotency_key)
        if key["request_hash"] != digest:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different request", key=idempotency_key
            )
        payment_id = json.loads(key["response"])["paymentId"]
        row = await conn.fetchrow(SELECT_SESSION, payment_id)
    session = {
        "orderIds": [str(o) for o in row["order_ids"]], "paymentId": str(row["id"]),
        "paymentIntentId": row["provider_intent_id"], "clientSecret": row["client_secret"],
        "amount": row["amount"], "currency": row["currency"], "expiresAt": _iso(row["expires_at"]),
        "provider": row["provider"], "status": row["status"],
    }
    if session["paymentIntentId"] is None:  # the first request's provider call failed: retry it
        session["paymentIntentId"], session["clientSecret"] = await _create_intent(
            db, provider, user_id, payment_id, session
        )
    return session


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


def _merge(raw: list[tuple[str, str, int]]) -> list[Line]:
    """The lines to buy, duplicates merged, in variant id order (the lock order)."""
    merged: dict[str, Line] = {}
    for product_id, variant_id, qty in raw:
        variant_id = _uuid(variant_id, "variantId")
        product_id = _uuid(product_id, "productId")
        prev = merged.get(variant_id)
        if prev is not None and prev.product_id != product_id:
            raise NotFound("variant not found", variantId=variant_id)
        merged[variant_id] = Line(product_id, variant_id, qty + (prev.qty if prev else 0))
    return [merged[v] for v in sorted(merged)]


def _uuid(value: str, name: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise NotFound(f"{name} not found", **{name: value}) from None


def _split_discount(discount: int, subtotals: list[int]) -> list[int]:
    """Share a discount across orders in proportion to their subtotals."""
    total = sum(subtotals)
    if not discount or not total:
        return [0] * len(subtotals)
    shares = [discount * s // total for s in subtotals]
    # The rounding remainder (fewer cents than orders) goes to the largest order.
    shares[subtotals.index(max(subtotals))] += discount - sum(shares)
    return shares
