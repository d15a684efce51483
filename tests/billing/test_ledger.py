"""The ledger on a real SQLite database: the spend race, every job path, reconciliation."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import ledger
from billing.errors import InsufficientFunds, InvalidKey, LedgerConflict
from billing.keys import create_key
from billing.tables import ApiKeyRow, LedgerRow

Sessions = async_sessionmaker[AsyncSession]


async def _key(sessions: Sessions, balance: int | None = 1_000) -> str:
    async with sessions.begin() as s:
        return (await create_key(s, name="t", balance=balance)).row.id


async def _balance(sessions: Sessions, key_id: str) -> int:
    async with sessions() as s:
        return int((await s.execute(
            select(ApiKeyRow.balance).where(ApiKeyRow.id == key_id))).scalar_one())


async def _rows(sessions: Sessions, job_id: str) -> list[tuple[str, int]]:
    async with sessions() as s:
        rows = await s.execute(select(LedgerRow.kind, LedgerRow.amount)
                               .where(LedgerRow.job_id == job_id).order_by(LedgerRow.id))
        return [(k, a) for k, a in rows]


async def _assert_reconciled(sessions: Sessions, key_id: str) -> None:
    async with sessions() as s:
        assert await ledger.reconcile(s) == []
        assert await ledger.ledger_sum(s, key_id) == await _balance(sessions, key_id)


@pytest.mark.slow
async def test_1000_concurrent_spends_against_100(sessions: Sessions) -> None:
    key_id = await _key(sessions, balance=100)
    low = [100]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            low[0] = min(low[0], await _balance(sessions, key_id))
            await asyncio.sleep(0.005)

    async def spend(i: int) -> bool:
        try:
            async with sessions.begin() as s:
                await ledger.reserve(s, key_id, f"job_{i}", 1)
            return True
        except InsufficientFunds:
            return False

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(spend(i) for i in range(1000)))
    done.set()
    await sampler
    assert results.count(True) == 100
    assert results.count(False) == 900
    assert low[0] >= 0
    assert await _balance(sessions, key_id) == 0
    async with sessions() as s:
        reserves = (await s.execute(select(LedgerRow).where(LedgerRow.kind == "reserve"))).all()
    assert len(reserves) == 100
    await _assert_reconciled(sessions, key_id)


async def test_success_reserve_then_settle(sessions: Sessions) -> None:
    key_id = await _key(sessions)
    async with sessions.begin() as s:
        await ledger.reserve(s, key_id, "j1", 80, model="flux-kontext-max")
    async with sessions.begin() as s:
        assert await ledger.settle(s, key_id, "j1", 40, upstream_cost=30) == 40
    assert await _rows(sessions, "j1") == [("reserve", -80), ("settle", 40)]
    assert await _balance(sessions, key_id) == 960
    async with sessions.begin() as s:  # idempotent: same answer, no new row
        assert await ledger.settle(s, key_id, "j1", 40) == 40
        assert await ledger.job_charge(s, "j1") == 40
        with pytest.raises(LedgerConflict):
            await ledger.release(s, key_id, "j1")
    assert len(await _rows(sessions, "j1")) == 2
    async with sessions() as s:
        settle_row = (await s.execute(select(LedgerRow).where(LedgerRow.kind == "settle"))
                      ).scalar_one()
    assert (settle_row.upstream_cost, settle_row.model) == (30, "flux-kontext-max")
    await _assert_reconciled(sessions, key_id)


async def test_failure_release_gives_everything_back(sessions: Sessions) -> None:
    key_id = await _key(sessions)
    async with sessions.begin() as s:
        await ledger.reserve(s, key_id, "j1", 40)
        assert await ledger.release(s, key_id, "j1", note="upstream_error") == 40
        assert await ledger.release(s, key_id, "j1") == 40
        with pytest.raises(LedgerConflict):
            await ledger.settle(s, key_id, "j1", 40)
    assert await _rows(sessions, "j1") == [("reserve", -40), ("release", 40)]
    assert await _balance(sessions, key_id) == 1_000
    await _assert_reconciled(sessions, key_id)


async def test_moderation_release_keeps_the_fee(sessions: Sessions) -> None:
    key_id = await _key(sessions)
    async with sessions.begin() as s:
        await ledger.reserve(s, key_id, "j1", 40)
        assert await ledger.release(s, key_id, "j1", fee=5, note="moderated") == 35
        await ledger.reserve(s, key_id, "j2", 40)
        assert await ledger.release(s, key_id, "j2", fee=500) == 0  # fee capped at the hold
    assert await _balance(sessions, key_id) == 1_000 - 5 - 40
    await _assert_reconciled(sessions, key_id)


async def test_settle_never_charges_more_than_held(sessions: Sessions) -> None:
    key_id = await _key(sessions)
    async with sessions.begin() as s:
        await ledger.reserve(s, key_id, "j1", 40)
        assert await ledger.settle(s, key_id, "j1", 100) == 0
    assert await _balance(sessions, key_id) == 960


async def test_refund_after_settle_is_a_new_row(sessions: Sessions) -> None:
    key_id = await _key(sessions)
    async with sessions.begin() as s:
        await ledger.reserve(s, key_id, "j1", 40)
        with pytest.raises(LedgerConflict):
            await ledger.refund(s, key_id, "j1")
        await ledger.settle(s, key_id, "j1", 30)
        with pytest.raises(LedgerConflict):
            await ledger.refund(s, key_id, "j1", 31)
        assert await ledger.refund(s, key_id, "j1") == 30
        assert await ledger.refund(s, key_id, "j1") == 30  # once per job
    assert await _rows(sessions, "j1") == [("reserve", -40), ("settle", 10), ("refund", 30)]
    assert await _balance(sessions, key_id) == 1_000
    await _assert_reconciled(sessions, key_id)


async def test_reserve_is_idempotent_per_job(sessions: Sessions) -> None:
    key_id = await _key(sessions)
    other = await _key(sessions)
    async with sessions.begin() as s:
        await ledger.reserve(s, key_id, "j1", 40)
        await ledger.reserve(s, key_id, "j1", 40)
        with pytest.raises(LedgerConflict):
            await ledger.reserve(s, other, "j1", 40)
    assert await _balance(sessions, key_id) == 960
    await _assert_reconciled(sessions, key_id)


async def test_insufficient_funds_leaves_nothing(sessions: Sessions) -> None:
    key_id = await _key(sessions, balance=10)
    async with sessions.begin() as s:
        with pytest.raises(InsufficientFunds):
            await ledger.reserve(s, key_id, "j1", 11)
        with pytest.raises(InvalidKey):
            await ledger.reserve(s, "key_missing", "j2", 1)
    assert await _rows(sessions, "j1") == []
    async with sessions.begin() as s:  # the job id stays usable
        await ledger.reserve(s, key_id, "j1", 10)
    assert await _balance(sessions, key_id) == 0


async def test_unlimited_key_goes_negative_but_reconciles(sessions: Sessions) -> None:
    key_id = await _key(sessions, balance=None)
    async with sessions.begin() as s:
        await ledger.reserve(s, key_id, "j1", 40)
        await ledger.settle(s, key_id, "j1", 40)
    assert await _balance(sessions, key_id) == -40
    await _assert_reconciled(sessions, key_id)


async def test_concurrent_settle_and_release_one_wins(sessions: Sessions) -> None:
    key_id = await _key(sessions)
    async with sessions.begin() as s:
        await ledger.reserve(s, key_id, "j1", 40)

    async def finish(i: int) -> str:
        try:
            async with sessions.begin() as s:
                if i % 2:
                    await ledger.settle(s, key_id, "j1", 40)
                    return "settle"
                await ledger.release(s, key_id, "j1")
                return "release"
        except LedgerConflict:
            return "conflict"

    outcomes = await asyncio.gather(*(finish(i) for i in range(20)))
    rows = await _rows(sessions, "j1")
    assert len(rows) == 2
    winner = rows[1][0]
    assert outcomes.count(winner) == 10 and outcomes.count("conflict") == 10
    assert await _balance(sessions, key_id) == (960 if winner == "settle" else 1_000)
    await _assert_reconciled(sessions, key_id)


async def test_adjustments_and_top_ups(sessions: Sessions) -> None:
    key_id = await _key(sessions, balance=100)
    async with sessions.begin() as s:
        await ledger.adjustment(s, key_id, 50, note="goodwill")
        await ledger.adjustment(s, key_id, -120, note="correction")
        with pytest.raises(InsufficientFunds):
            await ledger.adjustment(s, key_id, -31, note="too much")
        await ledger.adjustment(s, key_id, -31, note="allowed", allow_negative=True)
        await ledger.top_up(s, key_id, 1)
        with pytest.raises(ValueError):
            await ledger.top_up(s, key_id, 0)
        with pytest.raises(InvalidKey):
            await ledger.adjustment(s, "key_missing", -1, note="x")
    assert await _balance(sessions, key_id) == 0
    await _assert_reconciled(sessions, key_id)


async def test_reconcile_finds_drift(sessions: Sessions) -> None:
    key_id = await _key(sessions, balance=100)
    async with sessions.begin() as s:
        row = await s.get(ApiKeyRow, key_id)
        assert row is not None
        row.balance = 99  # an edit that bypasses the ledger
    async with sessions() as s:
        drift = await ledger.reconcile(s)
    assert [(d.key_id, d.balance, d.ledger_sum) for d in drift] == [(key_id, 99, 100)]
