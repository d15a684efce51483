"""Periodic clean-up that no request triggers: idempotency keys past their 24 h retention."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import idempotency

log = logging.getLogger("fluxgate.housekeeping")


async def purge_idempotency_keys(sessions: async_sessionmaker[AsyncSession]) -> int:
    """Delete the idempotency keys older than their retention; returns how many."""
    async with sessions.begin() as session:
        return await idempotency.purge_older_than(
            session, datetime.now(UTC) - idempotency.RETENTION)


async def run(sessions: async_sessionmaker[AsyncSession], interval: float) -> None:
    """Every `interval` seconds (first at start), until cancelled. Never raises."""
    while True:
        try:
            purged = await purge_idempotency_keys(sessions)
            if purged:
                log.info("purged %d idempotency keys older than %s", purged,
                         idempotency.RETENTION)
        except Exception as exc:  # a database hiccup: try again next round
            log.warning("idempotency purge failed: %s", type(exc).__name__)
        await asyncio.sleep(interval)
