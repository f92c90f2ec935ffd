"""The payment provider's life in the app, the hold-expiry sweep, and after-commit effects.

`payments_ctx` (a cleanup_ctx generator) opens the provider chosen by the settings
(a Stripe secret key -> Stripe, otherwise the offline provider), stores it in
`app[PAYMENTS]`, and runs the sweep that releases expired holds every
`settings.hold_sweep_seconds`. `after_commit` runs what a fulfilment step asks for
once its transaction has committed: room notifications, cancelling a failed intent
at the provider, giving back money paid for orders that were already canceled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from commerce import holds
from commerce.errors import PaymentProviderError
from commerce.fulfilment import Outcome
from commerce.outage import database_unavailable
from commerce.payments.offline import OfflineProvider
from commerce.payments.stripe_provider import StripeProvider
from server import notify
from server.keys import DB, PAYMENTS, SETTINGS

log = logging.getLogger("shopstream.payments")

RECORD_REFUND = """
UPDATE payments SET refunded_amount = refunded_amount + $2, updated_at = now() WHERE id = $1
"""


async def payments_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open the payment provider and run the expiry sweep until shutdown."""
    settings = app[SETTINGS]
    if settings.stripe_secret_key:
        provider: StripeProvider | OfflineProvider = StripeProvider(
            settings.stripe_secret_key.get(), settings.stripe_api_base,
            max_network_retries=settings.stripe_max_network_retries,
        )
    else:
        provider = OfflineProvider(app[DB].transaction)
    app[PAYMENTS] = provider
    sweeper = asyncio.create_task(_sweep_forever(app), name="hold-expiry-sweep")
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    await provider.close()


async def sweep_once(app: web.Application) -> int:
    """Release every hold past its expiry now; return how many payments were settled."""
    outcomes = await holds.expire_due(app[DB].transaction, app[PAYMENTS])
    for outcome in outcomes:
        await after_commit(app, outcome)
    return len(outcomes)


async def _sweep_forever(app: web.Application) -> None:
    interval = app[SETTINGS].hold_sweep_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            await sweep_once(app)
        except (OSError, PaymentProviderError) as exc:
            log.warning("hold expiry sweep failed: %s", exc)
        except Exception as exc:  # noqa: BLE001 - a background loop must survive one bad round
            if database_unavailable(exc):  # the next round, after the database is back, catches up
                log.warning("hold expiry sweep skipped: database unavailable (%s)", exc)
            else:
                log.exception("hold expiry sweep failed")


async def after_commit(app: web.Application, outcome: Outcome | None) -> None:
    """Notify rooms and settle with the provider what a committed fulfilment step decided."""
    if outcome is None:
        return
    provider = app[PAYMENTS]
    if outcome.released_variant_ids:
        notify.stock_changed(app, outcome.released_variant_ids)
    for order in outcome.paid_orders:
        if order["livestreamId"]:
            await notify.room_event(app, order["livestreamId"], "order:new", order, audience="seller")
    if outcome.cancel_intent_id:
        try:
            await provider.cancel_intent(outcome.cancel_intent_id)
        except PaymentProviderError as exc:
            log.warning("could not cancel intent %s: %s", outcome.cancel_intent_id, exc)
    if outcome.refund_amount and outcome.refund_intent_id:
        try:
            await provider.refund(outcome.refund_intent_id, outcome.refund_amount,
                                  f"canceled-orders-{outcome.payment_id}")
        except PaymentProviderError as exc:
            log.error("could not refund %s on %s: %s", outcome.refund_amount,
                      outcome.refund_intent_id, exc)
            return
        async with app[DB].transaction(system=True) as conn:
            await conn.execute(RECORD_REFUND, outcome.payment_id, outcome.refund_amount)
