"""The money path: every balance change is a ledger row written in the same transaction.

Amounts are integer micro-units of the configured currency. The balance of a key always equals
the sum of its ledger rows (`reconcile` lists the keys where it does not).

A job's rows, all keyed to its id:

    reserve  -held             written at submit; one conditional UPDATE that cannot overspend
    settle   held - price      the image is stored: the difference comes back   } exactly one
    release  held - fee        nothing delivered: the hold comes back minus fee } of these two
    refund   +charged (or less) after a settle, an operator gives money back

Concurrency (SQLite and PostgreSQL alike, no `SELECT ... FOR UPDATE`): every job-keyed row is
first *claimed* with `INSERT ... ON CONFLICT DO NOTHING RETURNING id` against
`UNIQUE(job_id, kind)` (and `UNIQUE(terminal_of)` for settle/release), and only the winner
moves money. A loser re-reads the winning row and answers as the winner did, so every function
here is idempotent per job, and a job is settled or released, never both. Nothing here
commits: the caller owns the transaction (reserve belongs in the one that creates the job row).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billing.errors import InsufficientFunds, InvalidKey, LedgerConflict
from billing.tables import ApiKeyRow, LedgerRow

#: Kinds that belong to a job (everything but topup and adjustment).
JOB_KINDS = ("reserve", "settle", "release", "refund")
TERMINAL_KINDS = ("settle", "release")


#: the tables themselves: the hot statements are Core, no ORM unit of work or identity map
_LEDGER = cast(Table, LedgerRow.__table__)
_KEYS = cast(Table, ApiKeyRow.__table__)


def _now() -> datetime:
    return datetime.now(UTC)


_CLAIM_COLUMNS = ("key_id", "job_id", "kind", "amount", "upstream_cost", "model", "note",
                  "terminal_of", "created_at")


@functools.cache
def _claim_statement(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, built once per dialect (the hot path
    reuses the statement object, and with it SQLAlchemy's compiled form)."""
    columns: dict[str, Any] = {c: bindparam(c) for c in _CLAIM_COLUMNS}
    if dialect == "sqlite":
        stmt: Any = sqlite.insert(_LEDGER).values(columns).on_conflict_do_nothing()
    elif dialect == "postgresql":
        stmt = postgresql.insert(_LEDGER).values(columns).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        stmt = insert(_LEDGER).values(columns)
    return stmt.returning(_LEDGER.c.id)


_APPLY = (update(_KEYS).where(_KEYS.c.id == bindparam("k_id"))
          .values(balance=_KEYS.c.balance + bindparam("k_amount")))
_HOLD = (update(_KEYS).where(_KEYS.c.id == bindparam("k_id"),
                             or_(_KEYS.c.unlimited.is_(True),
                                 _KEYS.c.balance >= bindparam("k_amount")))
         .values(balance=_KEYS.c.balance - bindparam("k_amount")))
_JOB_ROWS = (select(_LEDGER.c.kind, _LEDGER.c.amount, _LEDGER.c.model, _LEDGER.c.key_id)
             .where(_LEDGER.c.job_id == bindparam("j_id")))


async def _claim_row(session: AsyncSession, values: dict[str, Any]) -> int | None:
    """Insert a ledger row unless it collides with a unique constraint; its id, or None."""
    stmt = _claim_statement(session.get_bind().dialect.name)
    params = {c: values.get(c) for c in _CLAIM_COLUMNS}
    row_id = (await session.execute(stmt, params)).scalar_one_or_none()
    return int(row_id) if row_id is not None else None


async def _apply(session: AsyncSession, key_id: str, amount: int) -> None:
    result = await session.execute(_APPLY, {"k_id": key_id, "k_amount": amount})
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InvalidKey(f"No API key with id {key_id!r}.", param="key_id")


async def _key_exists(session: AsyncSession, key_id: str) -> bool:
    found = await session.execute(select(ApiKeyRow.id).where(ApiKeyRow.id == key_id))
    return found.scalar_one_or_none() is not None


async def _job_rows(session: AsyncSession, job_id: str) -> dict[str, Any]:
    """A job's ledger rows by kind (each with `.amount`, `.model`, `.key_id`): plain rows."""
    rows = await session.execute(_JOB_ROWS, {"j_id": job_id})
    return {row.kind: row for row in rows}


def _terminal_answer(rows: dict[str, Any], job_id: str, kind: str) -> int:
    if kind in rows:
        return int(rows[kind].amount)
    other = "released" if kind == "settle" else "settled"
    raise LedgerConflict(f"job {job_id} was already {other}")


def _held(rows: dict[str, Any]) -> int:
    return -rows["reserve"].amount if "reserve" in rows else 0


async def top_up(session: AsyncSession, key_id: str, amount: int, *, kind: str = "topup",
                 note: str | None = None) -> None:
    """Add `amount` micro-units to a key's balance with a ledger row of `kind`.

    Raises ValueError for a non-positive top-up and InvalidKey for an unknown key.
    (`kind="adjustment"` with a signed amount is kept for compatibility; prefer `adjustment`.)
    """
    if kind == "topup" and amount <= 0:
        raise ValueError("a top-up must be positive")
    await _apply(session, key_id, amount)
    await _claim_row(session, {"key_id": key_id, "kind": kind, "amount": amount, "note": note,
                               "created_at": _now()})


async def adjustment(session: AsyncSession, key_id: str, amount: int, *, note: str,
                     allow_negative: bool = False) -> None:
    """An operator's signed correction of a balance, with the reason in `note`.

    A negative adjustment that would take a prepaid key below zero raises InsufficientFunds
    unless `allow_negative`. Raises InvalidKey for an unknown key, ValueError for 0."""
    if amount == 0:
        raise ValueError("an adjustment must not be zero")
    if amount < 0 and not allow_negative:
        result = await session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == key_id,
                   or_(ApiKeyRow.unlimited.is_(True), ApiKeyRow.balance >= -amount))
            .values(balance=ApiKeyRow.balance + amount))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            if not await _key_exists(session, key_id):
                raise InvalidKey(f"No API key with id {key_id!r}.", param="key_id")
            raise InsufficientFunds("The adjustment would make the balance negative.")
    else:
        await _apply(session, key_id, amount)
    await _claim_row(session, {"key_id": key_id, "kind": "adjustment", "amount": amount,
                               "note": note, "created_at": _now()})


async def reserve(session: AsyncSession, key_id: str, job_id: str, amount: int, *,
                  model: str | None = None) -> None:
    """Hold `amount` for `job_id`.

    Raises InsufficientFunds when the balance cannot cover it (unlimited keys always can),
    InvalidKey for an unknown key, LedgerConflict when the job already has a reservation of
    another key. Idempotent for the same job."""
    if amount < 0:
        raise ValueError("a reservation must not be negative")
    row_id = await _claim_row(session, {
        "key_id": key_id, "job_id": job_id, "kind": "reserve", "amount": -amount,
        "model": model, "created_at": _now()})
    if row_id is None:
        existing = (await _job_rows(session, job_id))["reserve"]
        if existing.key_id != key_id:
            raise LedgerConflict(f"job {job_id} is reserved on another key")
        return
    result = await session.execute(_HOLD, {"k_id": key_id, "k_amount": amount})
    if result.rowcount != 1:  # type: ignore[attr-defined]
        # never committed, never seen by anyone: the claim is withdrawn, not an edit
        await session.execute(delete(LedgerRow).where(LedgerRow.id == row_id))
        if not await _key_exists(session, key_id):
            raise InvalidKey(f"No API key with id {key_id!r}.", param="key_id")
        raise InsufficientFunds("Insufficient balance: top up this key to continue.")


async def settle(session: AsyncSession, key_id: str, job_id: str, price: int, *,
                 upstream_cost: int | None = None) -> int:
    """Charge `price` for a delivered job; returns what came back from the hold.

    Never charges more than was held when there is a reservation. Idempotent (a second call
    returns the first answer); raises LedgerConflict when the job was already released."""
    if price < 0:
        raise ValueError("a price must not be negative")
    rows = await _job_rows(session, job_id)
    if "settle" in rows:
        return int(rows["settle"].amount)
    if "release" in rows:
        raise LedgerConflict(f"job {job_id} was already released")
    held = _held(rows)
    charge = min(price, held) if "reserve" in rows else price
    back = held - charge
    row_id = await _claim_row(session, {
        "key_id": key_id, "job_id": job_id, "kind": "settle", "amount": back,
        "upstream_cost": upstream_cost, "terminal_of": job_id,
        "model": rows["reserve"].model if "reserve" in rows else None, "created_at": _now()})
    if row_id is None:  # a concurrent settle or release won
        return _terminal_answer(await _job_rows(session, job_id), job_id, "settle")
    await _apply(session, key_id, back)
    return back


async def release(session: AsyncSession, key_id: str, job_id: str, *, fee: int = 0,
                  note: str | None = None) -> int:
    """Give back the hold of a job that delivered nothing, minus `fee` (capped at the hold);
    returns what came back. Idempotent; raises LedgerConflict when the job was settled."""
    rows = await _job_rows(session, job_id)
    if "release" in rows:
        return int(rows["release"].amount)
    if "settle" in rows:
        raise LedgerConflict(f"job {job_id} was already settled")
    held = _held(rows)
    back = held - min(max(fee, 0), held)
    row_id = await _claim_row(session, {
        "key_id": key_id, "job_id": job_id, "kind": "release", "amount": back, "note": note,
        "terminal_of": job_id, "model": rows["reserve"].model if "reserve" in rows else None,
        "created_at": _now()})
    if row_id is None:  # a concurrent settle or release won
        return _terminal_answer(await _job_rows(session, job_id), job_id, "release")
    await _apply(session, key_id, back)
    return back


async def refund(session: AsyncSession, key_id: str, job_id: str, amount: int | None = None,
                 *, note: str | None = None) -> int:
    """Give back `amount` (default: everything charged) of a settled job, as a new row;
    returns the refunded amount. One refund per job: a second call returns the first one's
    amount. Raises LedgerConflict when the job was not settled or `amount` exceeds the charge."""
    rows = await _job_rows(session, job_id)
    if "refund" in rows:
        return int(rows["refund"].amount)
    if "settle" not in rows:
        raise LedgerConflict(f"job {job_id} was not settled; nothing to refund")
    charged = _held(rows) - rows["settle"].amount
    amount = charged if amount is None else amount
    if not 0 < amount <= charged:
        raise LedgerConflict(f"a refund of job {job_id} must be within 1..{charged}")
    row_id = await _claim_row(session, {
        "key_id": key_id, "job_id": job_id, "kind": "refund", "amount": amount, "note": note,
        "model": rows["settle"].model, "created_at": _now()})
    if row_id is None:
        return int((await _job_rows(session, job_id))["refund"].amount)
    await _apply(session, key_id, amount)
    return amount


async def job_charge(session: AsyncSession, job_id: str) -> int:
    """What a job costs its key right now: held (reserved, not yet final), charged (settled),
    a fee (released) or less after a refund. 0 for a job without ledger rows."""
    total = (await session.execute(
        select(func.coalesce(func.sum(LedgerRow.amount), 0)).where(LedgerRow.job_id == job_id)
    )).scalar_one()
    return -int(total)


async def ledger_sum(session: AsyncSession, key_id: str) -> int:
    """Sum of a key's ledger rows (equals its balance)."""
    total = (await session.execute(
        select(func.coalesce(func.sum(LedgerRow.amount), 0)).where(LedgerRow.key_id == key_id)
    )).scalar_one()
    return int(total)


@dataclass(frozen=True, slots=True)
class Drift:
    """A key whose balance differs from the sum of its ledger rows."""

    key_id: str
    balance: int
    ledger_sum: int


async def reconcile(session: AsyncSession) -> list[Drift]:
    """Every key whose balance differs from its ledger sum (an empty list is the invariant)."""
    sums = (select(LedgerRow.key_id, func.sum(LedgerRow.amount).label("total"))
            .group_by(LedgerRow.key_id).subquery())
    total = func.coalesce(sums.c.total, 0)
    rows = await session.execute(
        select(ApiKeyRow.id, ApiKeyRow.balance, total)
        .outerjoin(sums, sums.c.key_id == ApiKeyRow.id)
        .where(ApiKeyRow.balance != total).order_by(ApiKeyRow.id))
    return [Drift(key_id=k, balance=int(b), ledger_sum=int(s)) for k, b, s in rows]
