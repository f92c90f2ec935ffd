"""Stripe through the official library's async client.

The API base is a setting (tests point it at `localstripe`); idempotency keys come
from our own ids (a retried checkout or refund cannot charge twice); the library
retries network errors and 409/5xx answers itself (`max_network_retries`).
"""

from __future__ import annotations

import logging
from typing import Any

import stripe

from commerce.errors import PaymentProviderError
from commerce.payments.base import SUCCEEDED, Intent

log = logging.getLogger("shopstream.payments")


def _intent(resource: Any) -> Intent:
    obj = resource.to_dict() if hasattr(resource, "to_dict") else resource
    charge = obj.get("latest_charge")
    refunded = int(charge.get("amount_refunded") or 0) if isinstance(charge, dict) else 0
    error = obj.get("last_payment_error")
    return Intent(
        id=obj["id"], client_secret=obj.get("client_secret"), status=obj["status"],
        amount=int(obj.get("amount") or 0), currency=str(obj.get("currency") or "").upper(),
        amount_refunded=refunded,
        last_error=(error.get("message") or error.get("code") or "declined") if error else None,
    )


class StripeProvider:
    """Payment intents at Stripe (or anything that speaks its API)."""

    name = "stripe"
    local_intents = False

    def __init__(self, secret_key: str, api_base: str, *, max_network_retries: int = 2) -> None:
        self._http = stripe.AIOHTTPClient(timeout=30)
        self._client = stripe.StripeClient(
            secret_key, base_addresses={"api": api_base.rstrip("/")},
            max_network_retries=max_network_retries, http_client=self._http,
        )

    async def create_intent(
        self, amount: int, currency: str, idempotency_key: str, metadata: dict[str, str]
    ) -> Intent:
        try:
            obj = await self._client.v1.payment_intents.create_async(
                params={
                    "amount": amount, "currency": currency.lower(), "metadata": metadata,
                    "payment_method_types": ["card"],
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise PaymentProviderError(f"stripe: {exc.user_message or exc}") from None
        return _intent(obj)

    async def retrieve_intent(self, intent_id: str) -> Intent:
        try:
            obj = await self._client.v1.payment_intents.retrieve_async(
                intent_id, params={"expand": ["latest_charge"]}
            )
        except stripe.StripeError as exc:
            raise PaymentProviderError(f"stripe: {exc.user_message or exc}") from None
        return _intent(obj)

    async def refund(self, intent_id: str, amount: int, idempotency_key: str) -> Intent:
        try:
            await self._client.v1.refunds.create_async(
                params={"payment_intent": intent_id, "amount": amount},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise PaymentProviderError(f"stripe refund: {exc.user_message or exc}") from None
        return await self.retrieve_intent(intent_id)

    async def cancel_intent(self, intent_id: str) -> Intent:
        try:
            return _intent(await self._client.v1.payment_intents.cancel_async(intent_id))
        except stripe.InvalidRequestError:
            # Already succeeded or canceled: report what it is now.
            intent = await self.retrieve_intent(intent_id)
            if intent.status == SUCCEEDED:
                log.warning("payment intent %s succeeded before it could be canceled", intent_id)
            return intent
        except stripe.StripeError as exc:
            raise PaymentProviderError(f"stripe cancel: {exc.user_message or exc}") from None

    async def close(self) -> None:
        await self._http.close_async()


class WebhookSignatureError(ValueError):
    """The Stripe-Signature header is missing, wrong or too old."""


def verify_webhook(payload: bytes, header: str | None, secret: str, tolerance: int) -> None:
    """Check a webhook's Stripe-Signature over the raw body; raise WebhookSignatureError."""
    if not secret:
        raise WebhookSignatureError("no webhook secret is configured")
    try:
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=tolerance)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureError(str(exc.user_message or exc).split(".")[0]) from None
