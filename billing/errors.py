"""The billing exception tree; `gateway/api/errors.py` maps each class to a status code.

    BillingError
    ├── InvalidKey            malformed, failing its checksum, or unknown
    │   ├── KeyRevoked
    │   └── KeyExpired
    ├── KeyForbidden          the key may not do this (model, IP)
    ├── InsufficientFunds     the balance cannot cover the reservation
    ├── LedgerConflict        a ledger operation contradicts an earlier one
    ├── InvalidValue          a setting of a key (CIDR, limit, model list) is not valid
    ├── RateLimited           too many requests or jobs in flight for the key
    └── IdempotencyError
        ├── IdempotencyMismatch   same Idempotency-Key, different request
        └── IdempotencyInProgress same Idempotency-Key while the first is still running
"""

from __future__ import annotations


class BillingError(Exception):
    """Base of every billing error."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidKey(BillingError):
    """The API key is malformed, fails its checksum, or is unknown."""


class KeyRevoked(InvalidKey):
    """The key was revoked or disabled."""


class KeyExpired(InvalidKey):
    """The key is past its expiry time."""


class KeyForbidden(BillingError):
    """The key exists but may not be used for this request."""


class InsufficientFunds(BillingError):
    """The key's balance cannot cover the price of the request."""


class LedgerConflict(BillingError):
    """A ledger operation contradicts an earlier one for the same job."""


class InvalidValue(BillingError):
    """A value given for a key's settings is not valid (`param` names it)."""


class RateLimited(BillingError):
    """The key is over its request rate or its limit of jobs in flight.

    `retry_after` is whole seconds (>= 1); `limit`, `remaining` and `reset` describe the
    limit that refused the request, for the `x-ratelimit-*` headers."""

    def __init__(self, message: str, *, retry_after: int, limit: int, remaining: int = 0,
                 reset: float = 0.0, scope: str = "requests",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.reset = reset
        self.scope = scope


class IdempotencyError(BillingError):
    """A request's Idempotency-Key cannot be honoured."""


class IdempotencyMismatch(IdempotencyError):
    """The Idempotency-Key was used before with a different request body (422)."""


class IdempotencyInProgress(IdempotencyError):
    """The first request with this Idempotency-Key is still running (409)."""
