"""Stripe webhook events: dispatch by type through a dict of handlers.

The signature is checked before this module sees an event (server/routes/webhooks.py).
Each handler re-fetches the PaymentIntent from the provider rather than trusting the
payload, then, in ONE transaction, records the event id (a duplicate delivery finds
it and changes nothing) and applies the intent's state through `commerce.fulfilment`,
which only ever moves states forward. That also makes out-of-order delivery harmless:
whatever the event's type, the intent's current state is what gets applied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from commerce import fulfilment
from commerce.payments.base import PaymentProvider

RECORD_EVENT = """
INSERT INTO processed_webhook_events (id, type) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING id
"""
LOCK_PAYMENT_BY_INTENT = "SELECT * FROM payments WHERE provider_intent_id = $1 FOR UPDATE"

Transaction = Callable[..., AbstractAsyncContextManager[asyncpg.Connection]]
Handler = Callable[[Transaction, PaymentProvider, dict[str, Any]], Awaitable["fulfilment.Outcome | None"]]


async def _apply(
    transaction: Transaction, provider: PaymentProvider, event: dict[str, Any], intent_id: str
) -> fulfilment.Outcome | None:
    intent = await provider.retrieve_intent(intent_id)
    async with transaction(system=True) as conn:
        if await conn.fetchval(RECORD_EVENT, event["id"], event["type"]) is None:
            return None  # already processed
        payment = await conn.fetchrow(LOCK_PAYMENT_BY_INTENT, intent_id)
        if payment is None:
            return None  # not one of ours (another integration on the same account)
        return await fulfilment.apply_intent(conn, payment, intent)


async def on_payment_intent(
    transaction: Transaction, provider: PaymentProvider, event: dict[str, Any]
) -> fulfilment.Outcome | None:
    """payment_intent.succeeded | payment_failed | canceled: apply the intent's state."""
    return await _apply(transaction, provider, event, str(event["data"]["object"]["id"]))


async def on_charge_refunded(
    transaction: Transaction, provider: PaymentProvider, event: dict[str, Any]
) -> fulfilment.Outcome | None:
    """charge.refunded: record what the provider says was refunded on the intent."""
    intent_id = event["data"]["object"].get("payment_intent")
    if not intent_id:
        return None
    return await _apply(transaction, provider, event, str(intent_id))


HANDLERS: dict[str, Handler] = {
    "payment_intent.succeeded": on_payment_intent,
    "payment_intent.payment_failed": on_payment_intent,
    "payment_intent.canceled": on_payment_intent,
    "charge.refunded": on_charge_refunded,
}


async def process_event(
    transaction: Transaction, provider: PaymentProvider, event: dict[str, Any]
) -> tuple[bool, fulfilment.Outcome | None]:
    """Handle one verified event; return (handled, outcome). Unknown types are ignored."""
    handler = HANDLERS.get(str(event.get("type")))
    if handler is None:
        return False, None
    return True, await handler(transaction, provider, event)
