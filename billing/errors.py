"""The billing exception tree; `gateway/api/errors.py` maps each class to a status code.

    BillingError
    ├── InvalidKey            malformed, failing its checksum, or unknown
    │   ├── KeyRevoked
    │   └── KeyExpired
    ├── KeyForbidden          the key may not do this (model, IP)
    ├── InsufficientFunds     the balance cannot cover the reservation
    └── LedgerConflict        a ledger operation contradicts an earlier one
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
