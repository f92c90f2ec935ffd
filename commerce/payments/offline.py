"""The offline provider: the embedded default when no Stripe key is set.

Its intents live in our payments table (`provider_intent_id`, `client_secret`,
`status`); the web checkout confirms one with a Stripe test card number through
`POST /api/v1/payments/{id}/confirm`, and the outcome goes through exactly the same
fulfilment code as a Stripe webhook (`commerce.fulfilment.apply_intent`).

Cards: 4000 0000 0000 0002 (and Stripe's other decline numbers) decline; any other
number that passes the Luhn check succeeds, 4242 4242 4242 4242 being the usual one.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from commerce.errors import Invalid, NotFound
from commerce.payments.base import CANCELED, REQUIRES_PAYMENT_METHOD, SUCCEEDED, Intent

DECLINED_CARDS = {
    "4000000000000002": "Your card was declined.",
    "4000000000009995": "Your card has insufficient funds.",
    "4000000000009987": "Your card was declined (lost card).",
    "4000000000000069": "Your card has expired.",
    "4000000000000127": "Your card's security code is incorrect.",
    "4000000000000341": "Your card was declined.",
}
SELECT_INTENT = """
SELECT provider_intent_id, client_secret, status, amount, currency, refunded_amount, last_error
FROM payments WHERE provider_intent_id = $1 AND provider = 'offline'
"""
# Our payment status -> the PaymentIntent status Stripe would report.
INTENT_STATUS = {
    "requires_payment": REQUIRES_PAYMENT_METHOD, "succeeded": SUCCEEDED, "refunded": SUCCEEDED,
    "failed": CANCELED, "canceled": CANCELED,
}

Transaction = Callable[..., contextlib.AbstractAsyncContextManager[asyncpg.Connection]]


def luhn_ok(number: str) -> bool:
    """Return True when the card number passes the Luhn checksum."""
    digits = [int(d) for d in number]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class OfflineProvider:
    """Payment intents kept in the payments table; confirmed with test card numbers."""

    name = "offline"
    local_intents = True

    def __init__(self, transaction: Transaction) -> None:
        # `transaction(system=True)` as in server.db.Database.transaction.
        self._transaction = transaction

    async def create_intent(
        self, amount: int, currency: str, idempotency_key: str, metadata: dict[str, str]
    ) -> Intent:
        # Derived from the key: creating twice names the same intent. The caller stores
        # it on the payment (first writer wins), so the secret is the stored one.
        intent_id = "pi_offline_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        secret = f"{intent_id}_secret_{secrets.token_urlsafe(18)}"
        return Intent(intent_id, secret, REQUIRES_PAYMENT_METHOD, amount, currency.upper())

    async def retrieve_intent(self, intent_id: str) -> Intent:
        async with self._system() as conn:
            row = await conn.fetchrow(SELECT_INTENT, intent_id)
        if row is None:
            raise NotFound("payment intent not found")
        return Intent(
            id=row["provider_intent_id"], client_secret=row["client_secret"],
            status=INTENT_STATUS[row["status"]], amount=row["amount"], currency=row["currency"],
            amount_refunded=row["refunded_amount"], last_error=row["last_error"],
        )

    async def confirm(self, intent: Intent, card: dict[str, Any]) -> Intent:
        """Charge a card against an open intent; return the intent as it now stands."""
        number = "".join(str(card["cardNumber"]).split())
        if not number.isdigit() or not 12 <= len(number) <= 19 or not luhn_ok(number):
            raise Invalid("the card number is invalid", fields={"cardNumber": "invalid"})
        now = datetime.now(UTC)
        year = int(card["expYear"])
        year = year + 2000 if year < 100 else year
        if (year, int(card["expMonth"])) < (now.year, now.month):
            raise Invalid("the card has expired", fields={"expYear": "expired"})
        if intent.status != REQUIRES_PAYMENT_METHOD:
            return intent
        declined = DECLINED_CARDS.get(number)
        if declined:
            return Intent(intent.id, intent.client_secret, REQUIRES_PAYMENT_METHOD,
                          intent.amount, intent.currency, last_error=declined)
        return Intent(intent.id, intent.client_secret, SUCCEEDED, intent.amount, intent.currency)

    async def refund(self, intent_id: str, amount: int, idempotency_key: str) -> Intent:
        intent = await self.retrieve_intent(intent_id)
        if intent.status != SUCCEEDED:
            raise Invalid("only a paid intent can be refunded")
        # Nothing to call: the caller records the refund on the payment and order.
        return Intent(intent.id, intent.client_secret, SUCCEEDED, intent.amount,
                      intent.currency, amount_refunded=intent.amount_refunded + amount)

    async def cancel_intent(self, intent_id: str) -> Intent:
        intent = await self.retrieve_intent(intent_id)
        if intent.status == SUCCEEDED:
            return intent
        return Intent(intent.id, intent.client_secret, CANCELED, intent.amount, intent.currency)

    async def close(self) -> None:
        return None

    @contextlib.asynccontextmanager
    async def _system(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._transaction(system=True) as conn:
            yield conn
