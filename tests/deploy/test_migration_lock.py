"""Replicas that start together migrate one at a time (the migration runs as each pod's init
step in deploy/kubernetes): `upgrade` holds a PostgreSQL advisory lock, so the second finds
the schema at head instead of creating the same tables again."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from gateway.database import make_engine, upgrade
from tests.conftest import PG_URL

pytestmark = pytest.mark.skipif(not PG_URL, reason="FLUXGATE_TEST_PG_URL is not set")


async def test_concurrent_upgrades_on_postgres(pg_database: str) -> None:
    engines = [make_engine(pg_database) for _ in range(3)]
    try:
        results = await asyncio.gather(*(upgrade(e) for e in engines), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        async with engines[0].connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                        ).scalars().all()
        assert len(versions) == 1
    finally:
        for engine in engines:
            await engine.dispose()
