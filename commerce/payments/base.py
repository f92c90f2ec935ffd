"""The payment provider interface: create, fetch, cancel and refund payment intents.

Two implementations: `stripe_provider.StripeProvider` (the official library, async)
and `offline.OfflineProvider` (the embedded default: intents live in our payments
table and the web checkout confirms them with Stripe's test card numbers).
Every provider raises `commerce.errors.PaymentProviderError` when it cannot answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Stripe's PaymentIntent statuses that this project acts on.
SUCCEEDED = "succeeded"
CANCELED = "canceled"
REQUIRES_PAYMENT_METHOD = "requires_payment_method"


@dataclass(frozen=True)
class Intent:
    """A payment intent as the provider reports it (never as a webhook claims it)."""

    id: str
    client_secret: str | None
    status: str
    amount: int = 0
    currency: str = ""
    amount_refunded: int = 0
    # Set when the last attempt failed (declined card): the payment failed.
    last_error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == REQUIRES_PAYMENT_METHOD and self.last_error is not None


class PaymentProvider(Protocol):
    """What checkout, webhooks and refunds need from a payment provider."""

    name: str
    # True when create_intent makes no network call (and cannot fail for the network):
    # the checkout then creates the intent before writing the sale, and the payment row
    # carries it.
    local_intents: bool

    async def create_intent(
        self, amount: int, currency: str, idempotency_key: str, metadata: dict[str, str]
    ) -> Intent:
        """Create (or, for a key already used, return) the intent for one checkout."""
        ...

    async def retrieve_intent(self, intent_id: str) -> Intent:
        """Fetch the intent's current state from the provider."""
        ...

    async def refund(self, intent_id: str, amount: int, idempotency_key: str) -> Intent:
        """Refund `amount` of a succeeded intent; return the intent afterwards."""
        ...

    async def cancel_intent(self, intent_id: str) -> Intent:
        """Cancel an unpaid intent; a paid one is returned unchanged (status succeeded)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
