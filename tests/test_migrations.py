"""The migrations build exactly the schema the ORM models describe, and the newest one can be
undone and redone: on SQLite, and on PostgreSQL when FLUXGATE_TEST_PG_URL is set."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from gateway.database import alembic_config, all_metadata, make_engine, upgrade


def _differences(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), all_metadata()))


def _down_one_and_up(connection: Connection, url: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.downgrade(cfg, "-1")
    command.upgrade(cfg, "head")


async def test_migrations_match_the_models_and_the_newest_reverts(any_database: str) -> None:
    engine = make_engine(any_database)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            assert await conn.run_sync(_differences) == []
            await conn.run_sync(_down_one_and_up, any_database)
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()
