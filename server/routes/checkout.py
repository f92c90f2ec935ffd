"""Checkout sessions and the offline provider's card confirmation."""

from __future__ import annotations

from aiohttp import web

from commerce import checkout, fulfilment
from commerce.errors import InvalidState, NotFound
from commerce.payments.offline import OfflineProvider
from server import notify
from server.api import Api, json_response
from server.errors import ApiError
from server.keys import BODY, DB, IDENTITY, PAYMENTS, SALES, SETTINGS
from server.payments import after_commit

api = Api()

_ID = {"type": "string", "minLength": 1, "maxLength": 64}
CHECKOUT_IN = {
    "type": "object", "additionalProperties": False, "required": ["addressId"],
    "properties": {
        "addressId": _ID,
        "items": {
            "type": "array", "minItems": 1, "maxItems": 50,
            "items": {
                "type": "object", "additionalProperties": False,
                "required": ["productId", "variantId", "qty"],
                "properties": {
                    "productId": _ID, "variantId": _ID,
                    "qty": {"type": "integer", "minimum": 1, "maximum": 100},
                },
            },
        },
        "couponCode": {"type": "string", "minLength": 1, "maxLength": 40},
        "livestreamId": _ID,
    },
}
SESSION = {
    "type": "object",
    "required": ["orderIds", "paymentId", "paymentIntentId", "clientSecret", "amount", "currency",
                 "expiresAt", "provider", "status"],
    "properties": {
        "orderIds": {"type": "array", "items": {"type": "string"}},
        "paymentId": {"type": "string"},
        "paymentIntentId": {"type": "string"}, "clientSecret": {"type": "string"},
        "amount": {"type": "integer"}, "currency": {"type": "string"},
        "expiresAt": {"type": "string"}, "provider": {"enum": ["stripe", "offline"]},
        "status": {"enum": ["requires_payment", "succeeded", "failed", "canceled", "refunded"]},
    },
}
IDEMPOTENCY_KEY = {
    "required": True, "schema": {"type": "string", "pattern": "^[!-~]{1,200}$"},
    "description": "1-200 visible ASCII characters; the same key answers the same session",
}


@api.route(
    "POST", "/api/v1/checkout/session", auth="user", tags=("checkout",), body=CHECKOUT_IN,
    response=SESSION, status=201, errors=(409, 502), headers={"Idempotency-Key": IDEMPOTENCY_KEY},
    summary="Hold stock and open a payment for the active cart or the given items "
            "(header Idempotency-Key; the same key answers the same session, again with 201)",
)
async def create_session(request: web.Request) -> web.Response:
    key = request.headers["Idempotency-Key"]  # checked by the route wrapper
    app = request.app
    session = await checkout.create_checkout_session(
        app[DB], app[SALES], app[PAYMENTS], user_id=request[IDENTITY].user_id,
        idempotency_key=key, body=request[BODY], hold_ttl_seconds=app[SETTINGS].hold_ttl_seconds,
    )
    if session.created:
        notify.stock_changed(app, session.variant_ids)
    return json_response(session.body, status=201)


CARD_IN = {
    "type": "object", "additionalProperties": False,
    "required": ["cardNumber", "expMonth", "expYear", "cvc"],
    "properties": {
        "cardNumber": {"type": "string", "pattern": r"^[0-9 ]{12,23}$"},
        "expMonth": {"type": "integer", "minimum": 1, "maximum": 12},
        "expYear": {"type": "integer", "minimum": 0, "maximum": 2100},
        "cvc": {"type": "string", "pattern": r"^[0-9]{3,4}$"},
    },
}
CONFIRMED = {
    "type": "object", "required": ["paymentIntentId", "status", "orderIds"],
    "properties": {
        "paymentIntentId": {"type": "string"}, "status": {"enum": ["succeeded"]},
        "orderIds": {"type": "array", "items": {"type": "string"}},
    },
}
SELECT_OWN_PAYMENT = """
SELECT p.id, array(SELECT o.id FROM orders o WHERE o.payment_id = p.id ORDER BY o.seller_id) AS order_ids
FROM payments p WHERE p.provider_intent_id = $1 AND p.user_id = $2
"""
LOCK_PAYMENT = "SELECT * FROM payments WHERE id = $1 FOR UPDATE"


@api.route(
    "POST", "/api/v1/payments/{paymentIntentId}/confirm", auth="user", tags=("checkout",),
    body=CARD_IN, response=CONFIRMED, errors=(402, 409),
    summary="Pay an offline-provider intent with a test card (4242... succeeds, "
            "4000 0000 0000 0002 declines); 404 when Stripe is the provider",
)
async def confirm_offline(request: web.Request) -> web.Response:
    app = request.app
    provider = app[PAYMENTS]
    if not isinstance(provider, OfflineProvider):
        raise NotFound("offline payments are not enabled: confirm with Stripe")
    intent_id = request.match_info["paymentIntentId"]
    user_id = request[IDENTITY].user_id
    async with app[DB].transaction(user_id) as conn:
        own = await conn.fetchrow(SELECT_OWN_PAYMENT, intent_id, user_id)
    if own is None:
        raise NotFound("payment intent not found")
    intent = await provider.confirm(await provider.retrieve_intent(intent_id), request[BODY])
    async with app[DB].transaction(system=True) as conn:
        payment = await conn.fetchrow(LOCK_PAYMENT, own["id"])
        if payment["status"] != "requires_payment":
            raise InvalidState(f"this payment is already {payment['status']}", status=payment["status"])
        outcome = await fulfilment.apply_intent(conn, payment, intent)
    await after_commit(app, outcome)
    if outcome.failed:
        raise ApiError(402, "card_declined", intent.last_error or "the card was declined",
                       {"paymentIntentId": intent_id})
    return json_response({"paymentIntentId": intent_id, "status": "succeeded",
                          "orderIds": [str(o) for o in own["order_ids"]]})
