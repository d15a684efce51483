"""The same paths on PostgreSQL (asyncpg): migrations, keys, jobs, ledger, restart.

Runs when FLUXGATE_TEST_PG_URL points at a server where the user may create databases
(`.ci/run` starts one); skipped otherwise."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from billing import ledger
from billing.errors import InsufficientFunds
from billing.keys import create_key
from gateway.database import make_engine, make_sessionmaker, upgrade
from tests.conftest import PG_URL, start_gateway

pytestmark = pytest.mark.skipif(not PG_URL, reason="FLUXGATE_TEST_PG_URL is not set")


def test_generation_ledger_and_restart_on_postgres(tmp_path: Path, pg_database: str) -> None:
    first = start_gateway(tmp_path / "data", database_url=pg_database)
    try:
        key_id, key = first.create_key(balance=1_000_000)
        resp = httpx.post(f"{first.base_url}/v1/images/generations",
                          headers={"authorization": f"Bearer {key}"},
                          json={"model": "flux-kontext-pro", "prompt": "a fox", "n": 2,
                                "response_format": "url"}, timeout=60)
        assert resp.status_code == 200, resp.text
        failed = httpx.post(f"{first.base_url}/v1/images/generations",
                            headers={"authorization": f"Bearer {key}"},
                            json={"model": "flux-kontext-pro", "prompt": "x sandbox:fail"},
                            timeout=60)
        assert failed.status_code == 502
    finally:
        first.stop()
    second = start_gateway(tmp_path / "data", database_url=pg_database)
    try:
        async def check() -> tuple[int, int, list[str]]:
            async with second.services.sessions() as s:
                balance = (await s.execute(text("SELECT balance FROM api_keys WHERE id = :k"),
                                           {"k": key_id})).scalar_one()
                statuses = list((await s.execute(text(
                    "SELECT status FROM jobs WHERE key_id = :k ORDER BY status"),
                    {"k": key_id})).scalars())
                return balance, await ledger.ledger_sum(s, key_id), statuses

        balance, total, statuses = second.call(check())
        assert balance == total == 1_000_000 - 2 * 40_000
        assert statuses == ["failed", "succeeded", "succeeded"]
        assert httpx.get(resp.json()["data"][0]["url"].replace(first.base_url, second.base_url)
                         ).status_code == 200
    finally:
        second.stop()


async def test_concurrent_spends_never_overspend_on_postgres(pg_database: str) -> None:
    """1,000 concurrent 1-unit reservations against a balance of 100 (50 connections)."""
    engine = make_engine(pg_database)
    await upgrade(engine)
    sessions = make_sessionmaker(engine)
    async with sessions.begin() as s:
        key_id = (await create_key(s, name="race", balance=100)).row.id

    async def spend(i: int) -> bool:
        try:
            async with sessions.begin() as s:
                await ledger.reserve(s, key_id, f"job_{i}", 1)
            return True
        except InsufficientFunds:
            return False

    results = await asyncio.gather(*(spend(i) for i in range(1000)))
    async with sessions() as s:
        balance = (await s.execute(text("SELECT balance FROM api_keys WHERE id = :k"),
                                   {"k": key_id})).scalar_one()
        total = await ledger.ledger_sum(s, key_id)
    await engine.dispose()
    assert sum(results) == 100 and results.count(False) == 900
    assert balance == total == 0


