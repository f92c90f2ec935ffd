"""The narrow interface through which `cart:add` and `buy:now` reach the commerce code.

The realtime layer does not know how carts and checkouts are stored: the composition
root installs an object with these two coroutines (it opens its own transaction as the
user, applies the same stock holds and idempotency rules as the HTTP endpoints, and
raises `commerce.errors` classes). Until one is installed, both answer `unavailable`.

    class Commerce(Protocol):
        async def add_to_cart(self, user_id, product_id, variant_id, qty) -> dict   # the cart
        async def buy_now(self, user_id, *, product_id, variant_id, qty, address_id,
                          idempotency_key, livestream_id) -> dict   # the checkout session
"""

from __future__ import annotations

from typing import Any, Protocol

from commerce.errors import CommerceError


class Commerce(Protocol):
    """What the realtime layer needs from commerce."""

    async def add_to_cart(self, user_id: str, product_id: str, variant_id: str, qty: int) -> dict[str, Any]:
        """Add a variant to the user's active cart; return the cart contract."""

    async def buy_now(
        self, user_id: str, *, product_id: str, variant_id: str, qty: int, address_id: str | None,
        idempotency_key: str, livestream_id: str,
    ) -> dict[str, Any]:
        """Check out exactly this variant for the user, holding stock; return the session
        `{orderIds, paymentIntentId, clientSecret, amount, currency, expiresAt}`."""


class Unavailable(CommerceError):
    code = "unavailable"


class NoCommerce:
    """The default until the commerce functions are installed: every call is refused."""

    async def add_to_cart(self, user_id: str, product_id: str, variant_id: str, qty: int) -> dict[str, Any]:
        raise Unavailable("adding to the cart is not available on this server")

    async def buy_now(self, user_id: str, **_: Any) -> dict[str, Any]:
        raise Unavailable("buying is not available on this server")
