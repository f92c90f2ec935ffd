"""Commerce errors: domain code raises these; `server/errors.py` maps them to HTTP.

    CommerceError
    ├── NotFound            unknown id, or one the caller may not see (never reveal which)
    ├── Forbidden           the caller is known but lacks the right (e.g. not a seller)
    ├── Invalid             input that passed the schema but breaks a business rule
    └── Conflict            the request is valid but the current state refuses it
        ├── OutOfStock          carries the variants that lack stock
        ├── CouponInvalid
        ├── InvalidState        an illegal state transition (order, livestream)
        └── IdempotencyConflict the same key was used with a different request
    PaymentProviderError    the payment provider failed or is unreachable
"""

from __future__ import annotations

from typing import Any


class CommerceError(Exception):
    """Base of every error the commerce package raises on purpose."""

    code = "commerce_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class NotFound(CommerceError):
    code = "not_found"


class Forbidden(CommerceError):
    code = "forbidden"


class Invalid(CommerceError):
    code = "validation_error"


class Conflict(CommerceError):
    code = "conflict"


class OutOfStock(Conflict):
    code = "out_of_stock"


class CouponInvalid(Conflict):
    code = "coupon_invalid"


class InvalidState(Conflict):
    code = "invalid_state"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


class PaymentProviderError(CommerceError):
    code = "payment_provider_error"
