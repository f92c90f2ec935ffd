"""Stripe webhooks: verify the signature, then hand the event to commerce.webhooks."""

from __future__ import annotations

from aiohttp import web

from commerce import webhooks
from commerce.payments.stripe_provider import WebhookSignatureError, verify_webhook
from server.api import Api, json_response, read_body, refuse_nul
from server.errors import ApiError
from server.keys import DB, PAYMENTS, SETTINGS
from server.payments import after_commit
from signaling import bounded_json

api = Api()

# Stripe's own default: an event signed more than five minutes ago is refused.
SIGNATURE_TOLERANCE_SECONDS = 300
RECEIVED = {
    "type": "object", "required": ["received", "handled"],
    "properties": {"received": {"type": "boolean"}, "handled": {"type": "boolean"}},
}


@api.route(
    "POST", "/api/v1/webhooks/stripe", auth="none", tags=("webhooks",), response=RECEIVED,
    errors=(502,),
    summary="Stripe events (Stripe-Signature verified, tolerance 300 s); unknown types are "
            "answered 200 and ignored",
)
async def stripe_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    payload = await read_body(request)
    try:
        verify_webhook(payload, request.headers.get("Stripe-Signature"),
                       settings.stripe_webhook_secret.get(), SIGNATURE_TOLERANCE_SECONDS)
    except WebhookSignatureError as exc:
        raise ApiError(400, "invalid_signature", str(exc)) from None
    try:
        # Signed, so Stripe's own; still decoded with a depth limit, like every body.
        event = bounded_json.loads(payload, max_depth=64)
        event["id"], event["type"], event["data"]["object"]  # noqa: B018 - shape check
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise ApiError(400, "malformed_event", "the event is not a Stripe event object") from None
    refuse_nul(event)
    handled, outcome = await webhooks.process_event(
        request.app[DB].transaction, request.app[PAYMENTS], event
    )
    await after_commit(request.app, outcome)
    return json_response({"received": True, "handled": handled})
