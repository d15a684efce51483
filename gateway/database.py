"""The database: engine and session factory, the gateway's declarative base, migrations.

SQLite (aiosqlite) is the embedded default, PostgreSQL (asyncpg) the production database.
Alembic migrations in the top-level `migrations/` folder are applied on start-up
(`auto_migrate`) and by `fluxgate db upgrade`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

log = logging.getLogger(__name__)
T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[Any]]

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


def values_of(row: Any) -> dict[str, Any]:
    """An ORM object's column values, as a dict for a Core INSERT (no session involved)."""
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


class Writer:
    """Where the job pipeline's writes go: `await writer.run(work)` runs `work(session)` in a
    transaction and answers its result once committed.

    With `group_commit` (SQLite, which has one writer at a time anyway) one task runs the
    works queued meanwhile in ONE transaction: many jobs' writes cost one commit, and no
    connection waits in SQLite's busy loop for the write lock. When a work raises, that batch
    is rolled back and each of its works is run again alone, so one work's error (say,
    insufficient funds) reaches only its own caller. Works therefore must be pure database
    statements, safe to run again after a rollback, and must never call the writer. Without
    `group_commit` (PostgreSQL), each work is its own transaction on the pool, run at once.
    A caller that is cancelled does not stop its queued work: once queued, it is written."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, group_commit: bool,
                 max_batch: int = 200) -> None:
        self.sessions = sessions
        self.group_commit = group_commit
        self.max_batch = max_batch
        self.batches = 0  # transactions the group writer committed (for /readyz, bench)
        self._queue: asyncio.Queue[tuple[Work, asyncio.Future[Any]] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        if not self.group_commit:
            async with self.sessions.begin() as session:
                return await work(session)
        if self._closed:
            raise RuntimeError("the database writer is closed")
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(self._queue), name="db:writer")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((work, future))
        return await asyncio.shield(future)

    async def _loop(self, queue: asyncio.Queue[tuple[Work, asyncio.Future[Any]] | None]
                    ) -> None:
        stop = False
        while not stop:
            item = await queue.get()
            batch = [] if item is None else [item]
            stop = item is None
            while len(batch) < self.max_batch and not queue.empty():
                item = queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[tuple[Work, asyncio.Future[Any]]]) -> None:
        if len(batch) > 1:
            try:
                results = []
                async with self.sessions.begin() as session:
                    for work, _ in batch:
                        results.append(await work(session))
            except Exception:  # whose? run each alone: only its caller gets the error
                log.debug("a batch of %d writes failed; writing them one by one", len(batch))
            else:
                self.batches += 1
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                return
        for work, future in batch:
            try:
                async with self.sessions.begin() as session:
                    result = await work(session)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                self.batches += 1
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        """Write what is queued, then stop (later `run`s raise)."""
        self._closed = True
        if self._queue is not None and self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await asyncio.gather(self._task, return_exceptions=True)


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


#: the PostgreSQL advisory lock `upgrade` holds: any 64-bit number, the same for every replica
MIGRATION_LOCK = 0x666C7578_67617465  # "fluxgate"


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every pending migration. On PostgreSQL, replicas starting together (each pod's
    init step, or `auto_migrate`) take turns: the migration transaction holds an advisory
    lock, and whoever comes second finds the schema at head."""
    url = engine.url.render_as_string(hide_password=False)
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK})
        await conn.run_sync(_upgrade, url)
