"""The database: engine and session factory, the gateway's declarative base, migrations.

SQLite (aiosqlite) is the embedded default, PostgreSQL (asyncpg) the production database.
Alembic migrations in the top-level `migrations/` folder are applied on start-up
(`auto_migrate`) and by `fluxgate db upgrade`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class GatewayBase(DeclarativeBase):
    """Declarative base of the gateway's own tables (jobs, files, webhook deliveries)."""


def all_metadata() -> list[MetaData]:
    """Every table fluxgate owns, for Alembic."""
    import gateway.jobs.tables
    import gateway.storage.tables
    import gateway.webhooks.tables  # noqa: F401
    from billing.tables import BillingBase

    return [GatewayBase.metadata, BillingBase.metadata]


class TransactionCounter:
    """Counts the transactions an engine ends (commits and rollbacks) since it was attached:
    what `/readyz` and the benchmark report as database work per image."""

    def __init__(self) -> None:
        self.commits = 0
        self.rollbacks = 0

    def attach(self, engine: AsyncEngine) -> None:
        event.listen(engine.sync_engine, "commit", self._on_commit)
        event.listen(engine.sync_engine, "rollback", self._on_rollback)

    def _on_commit(self, _conn: Connection) -> None:
        self.commits += 1

    def _on_rollback(self, _conn: Connection) -> None:
        self.rollbacks += 1


def make_engine(url: str, *, pool_size: int = 20, max_overflow: int = 30,
                pool_timeout: float = 60.0) -> AsyncEngine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and foreign keys. The pool is
    sized from settings (`database.*`); a request waiting for a connection gives up after
    `pool_timeout` s (the overload guard answers 503 long before that)."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    pooled = True
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        pooled = bool(path) and path != ":memory:"  # in-memory: one static connection
        if pooled:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}
    if pooled:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout)
    engine = create_async_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def _upgrade(connection: Connection, url: str) -> None:
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every pending migration."""
    url = engine.url.render_as_string(hide_password=False)
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, url)
