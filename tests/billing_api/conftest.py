"""End-to-end billing harness: the real gateway (the main harness in `tests/conftest.py`)
plus ledger helpers and an admin token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from billing import keys as key_service
from billing import ledger
from tests.conftest import Gateway

ADMIN_TOKEN = "admin-secret-for-tests"


class BillingGateway(Gateway):
    """A running gateway with helpers that read the ledger."""

    def ledger_rows(self, job_id: str) -> list[tuple[str, int]]:
        from sqlalchemy import select

        from billing.tables import LedgerRow

        async def go() -> list[tuple[str, int]]:
            async with self.services.sessions() as s:
                rows = await s.execute(select(LedgerRow.kind, LedgerRow.amount)
                                       .where(LedgerRow.job_id == job_id)
                                       .order_by(LedgerRow.id))
                return [(k, a) for k, a in rows]

        result: list[tuple[str, int]] = self.call(go())
        return result

    def key_rows(self, key_id: str) -> list[tuple[str | None, str, int]]:
        from sqlalchemy import select

        from billing.tables import LedgerRow

        async def go() -> list[tuple[str | None, str, int]]:
            async with self.services.sessions() as s:
                rows = await s.execute(select(LedgerRow.job_id, LedgerRow.kind, LedgerRow.amount)
                                       .where(LedgerRow.key_id == key_id)
                                       .order_by(LedgerRow.id))
                return [(j, k, a) for j, k, a in rows]

        result: list[tuple[str | None, str, int]] = self.call(go())
        return result

    def balance(self, key_id: str) -> tuple[int, int, int]:
        """(balance, ledger sum, number of drifting keys)."""

        async def go() -> tuple[int, int, int]:
            async with self.services.sessions() as s:
                row = await key_service.get_key(s, key_id)
                return (row.balance, await ledger.ledger_sum(s, key_id),
                        len(await ledger.reconcile(s)))

        result: tuple[int, int, int] = self.call(go())
        return result


@pytest.fixture
def billing_gateway_factory(gateway_factory: Callable[..., Gateway],
                            ) -> Callable[..., BillingGateway]:
    """`gateway_factory` for BillingGateways with the admin token set."""

    def make(**overrides: Any) -> BillingGateway:
        overrides.setdefault("admin_token", ADMIN_TOKEN)
        gw = gateway_factory(cls=BillingGateway, **overrides)
        assert isinstance(gw, BillingGateway)
        return gw

    return make


@pytest.fixture
def bgw(billing_gateway_factory: Callable[..., BillingGateway]) -> BillingGateway:
    return billing_gateway_factory(billing={"moderation_fee": 0.005})
