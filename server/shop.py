"""The commerce seam of the realtime layer (`signaling/shop.py`), served by our own code.

`cart:add` and `buy:now` over a DataChannel or WebSocket run exactly the code the HTTP
endpoints run: the same transaction as the user (RLS), the same stock holds, the same
idempotency keys.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from commerce import cart, checkout
from commerce.errors import Invalid
from server import notify
from server.keys import DB, PAYMENTS, SALES, SETTINGS

LATEST_ADDRESS = "SELECT id FROM addresses WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT 1"


class ShopCommerce:
    """Implement `signaling.shop.Commerce` with the cart and checkout modules."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def add_to_cart(self, user_id: str, product_id: str, variant_id: str, qty: int) -> dict[str, Any]:
        async with self.app[DB].transaction(user_id) as conn:
            return await cart.add_item(conn, user_id, product_id, variant_id, qty)

    async def buy_now(
        self, user_id: str, *, product_id: str, variant_id: str, qty: int, address_id: str | None,
        idempotency_key: str, livestream_id: str,
    ) -> dict[str, Any]:
        app = self.app
        if address_id is None:
            # One tap in the live room ships to the buyer's latest address.
            async with app[DB].transaction(user_id) as conn:
                latest = await conn.fetchval(LATEST_ADDRESS, user_id)
            if latest is None:
                raise Invalid("add a shipping address before buying", fields={"addressId": "required"})
            address_id = str(latest)
        body = {
            "addressId": address_id, "livestreamId": livestream_id,
            "items": [{"productId": product_id, "variantId": variant_id, "qty": qty}],
        }
        session = await checkout.create_checkout_session(
            app[DB], app[SALES], app[PAYMENTS], user_id=user_id, idempotency_key=idempotency_key,
            body=body, hold_ttl_seconds=app[SETTINGS].hold_ttl_seconds,
        )
        if session.created:
            # The realtime layer tells the rooms; the cached catalog reads are ours to drop.
            notify.cached_stock_changed(app, session.variant_ids)
        return session.body
