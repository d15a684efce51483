"""The Alembic migrations build exactly the schema the ORM models describe: a model changed
without a migration (or the reverse) would work in tests that create tables from the models
and break on a real upgrade."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.database import all_metadata, make_engine, upgrade

PG_URL = os.environ.get("FLUXGATE_TEST_PG_URL")


async def diff_after_upgrade(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync), all_metadata()))
    finally:
        await engine.dispose()


async def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    assert await diff_after_upgrade(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}") == []


@pytest.mark.skipif(not PG_URL, reason="FLUXGATE_TEST_PG_URL is not set")
async def test_postgres_schema_matches_the_models() -> None:
    import secrets

    import asyncpg  # the admin connection that makes a fresh database for this test

    assert PG_URL is not None
    name = f"fg_migrations_{secrets.token_hex(4)}"
    plain = PG_URL.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            base = PG_URL.rsplit("/", 1)[0]
            assert await diff_after_upgrade(f"{base}/{name}") == []
        finally:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await conn.close()
