"""The money path: every balance change is a ledger row written in the same transaction.

Amounts are integer micro-units of the configured currency. Reserve is one conditional UPDATE
that cannot overspend; settle and release are keyed to the job id (unique per kind) and are
idempotent. The balance of a key always equals the sum of its ledger rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import InsufficientFunds, InvalidKey, LedgerConflict
from billing.tables import ApiKeyRow, LedgerRow


async def _apply(session: AsyncSession, key_id: str, amount: int) -> None:
    result = await session.execute(
        update(ApiKeyRow).where(ApiKeyRow.id == key_id)
        .values(balance=ApiKeyRow.balance + amount))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidKey(f"No API key with id {key_id!r}.", param="key_id")


async def top_up(session: AsyncSession, key_id: str, amount: int, *, kind: str = "topup",
                 note: str | None = None) -> None:
    """Add `amount` (may be negative for kind="adjustment") to a key's balance."""
    await _apply(session, key_id, amount)
    session.add(LedgerRow(key_id=key_id, kind=kind, amount=amount, note=note,
                          created_at=datetime.now(UTC)))
    await session.flush()


async def _job_rows(session: AsyncSession, job_id: str) -> dict[str, LedgerRow]:
    rows = (await session.execute(select(LedgerRow).where(LedgerRow.job_id == job_id))).scalars()
    return {row.kind: row for row in rows}


async def reserve(session: AsyncSession, key_id: str, job_id: str, amount: int, *,
                  model: str | None = None) -> None:
    """Hold `amount` for `job_id`; raises InsufficientFunds when the balance cannot cover it
    (unlimited keys always can). Idempotent for the same job."""
    if "reserve" in await _job_rows(session, job_id):
        return
    result = await session.execute(
        update(ApiKeyRow)
        .where(ApiKeyRow.id == key_id,
               or_(ApiKeyRow.unlimited.is_(True), ApiKeyRow.balance >= amount))
        .values(balance=ApiKeyRow.balance - amount))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InsufficientFunds("Insufficient balance: top up this key to continue.")
    session.add(LedgerRow(key_id=key_id, job_id=job_id, kind="reserve", amount=-amount,
                          model=model, created_at=datetime.now(UTC)))
    await session.flush()


async def settle(session: AsyncSession, key_id: str, job_id: str, price: int, *,
                 upstream_cost: int | None = None) -> int:
    """Charge `price` for a delivered job: returns what was held beyond the price. Idempotent;
    raises LedgerConflict when the job was already released."""
    rows = await _job_rows(session, job_id)
    if "settle" in rows:
        return rows["settle"].amount
    if "release" in rows:
        raise LedgerConflict(f"job {job_id} was already released")
    held = -rows["reserve"].amount if "reserve" in rows else 0
    back = held - price
    await _apply(session, key_id, back)
    session.add(LedgerRow(key_id=key_id, job_id=job_id, kind="settle", amount=back,
                          upstream_cost=upstream_cost, model=rows["reserve"].model
                          if "reserve" in rows else None, created_at=datetime.now(UTC)))
    await session.flush()
    return back


async def release(session: AsyncSession, key_id: str, job_id: str, *, fee: int = 0,
                  note: str | None = None) -> int:
    """Give back what was held for a job that delivered nothing, minus `fee`. Idempotent;
    raises LedgerConflict when the job was already settled."""
    rows = await _job_rows(session, job_id)
    if "release" in rows:
        return rows["release"].amount
    if "settle" in rows:
        raise LedgerConflict(f"job {job_id} was already settled")
    held = -rows["reserve"].amount if "reserve" in rows else 0
    back = max(held - fee, 0)
    await _apply(session, key_id, back)
    session.add(LedgerRow(key_id=key_id, job_id=job_id, kind="release", amount=back, note=note,
                          created_at=datetime.now(UTC)))
    await session.flush()
    return back


async def ledger_sum(session: AsyncSession, key_id: str) -> int:
    """Sum of a key's ledger rows (equals its balance)."""
    total = (await session.execute(
        select(func.coalesce(func.sum(LedgerRow.amount), 0)).where(LedgerRow.key_id == key_id)
    )).scalar_one()
    return int(total)
