"""The migrations build exactly the schema the ORM models describe, and the newest one can be
undone and redone: on SQLite, and on PostgreSQL when FLUXGATE_TEST_PG_URL is set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from gateway.database import alembic_config, all_metadata, make_engine, upgrade
from tests.test_postgres import PG_URL, pg_database

__all__ = ["pg_database"]  # the fixture, re-exported for pytest


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/migrations.db"
    if not PG_URL:
        pytest.skip("FLUXGATE_TEST_PG_URL is not set")
    url: str = request.getfixturevalue("pg_database")
    return url


def _differences(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), all_metadata()))


def _down_one_and_up(connection: Connection, url: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, "-1")
    command.upgrade(cfg, "head")


async def test_migrations_match_the_models_and_the_newest_reverts(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            assert await conn.run_sync(_differences) == []
            await conn.run_sync(_down_one_and_up, database_url)
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()
