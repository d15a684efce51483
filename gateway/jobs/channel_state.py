"""Channel disables that must outlive a process and reach every replica.

An upstream answering 401/402/403 (a dead key, an empty account) and an admin's disable take a
channel out of routing "until an admin re-enables it": a restart must not quietly re-enable
it, and every replica must follow, not only the one that saw the error or got the admin call.
So those decisions are rows in `channel_states` (no row = enabled), written where they are
made and read by each replica at start and every `jobs.channel_sync_interval` seconds.
Disables that follow from the settings (`enabled: false`, a missing credential) are derived
at start and never stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.jobs.routing import Channel, Router
from gateway.jobs.tables import ChannelStateRow

log = logging.getLogger(__name__)

Sessions = async_sessionmaker[AsyncSession]


async def store(sessions: Sessions, name: str, reason: str | None) -> None:
    """Record `name` as disabled for `reason`, or (None) as enabled."""
    for _ in range(2):  # an insert racing another replica's: the second round updates
        try:
            async with sessions.begin() as session:
                row = await session.get(ChannelStateRow, name)
                if reason is None:
                    await session.execute(delete(ChannelStateRow)
                                          .where(ChannelStateRow.name == name))
                elif row is None:
                    session.add(ChannelStateRow(name=name, disabled_reason=reason,
                                                disabled_at=datetime.now(UTC)))
                else:
                    row.disabled_reason = reason
            return
        except IntegrityError:
            continue


async def stored(sessions: Sessions) -> dict[str, str]:
    """Disabled channel name -> reason."""
    async with sessions() as session:
        rows = (await session.execute(select(ChannelStateRow))).scalars()
        return {r.name: r.disabled_reason for r in rows}


async def disable(sessions: Sessions, channel: Channel, reason: str) -> None:
    """Disable `channel` here and for every replica, across restarts. Stored first, then
    applied here: a sync reading in between must not find the change here but not stored."""
    await store(sessions, channel.name, reason)
    channel.disable(reason, stored=True)


async def enable(sessions: Sessions, channel: Channel) -> None:
    await store(sessions, channel.name, None)
    channel.enable()


class ChannelStateSync:
    """Applies the stored states to this replica's channels, once and then periodically."""

    def __init__(self, sessions: Sessions, router: Router, interval: float) -> None:
        self.sessions = sessions
        self.router = router
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def apply(self) -> None:
        read_at = time.monotonic()
        states = await stored(self.sessions)
        for channel in self.router.channels:
            if channel.state_changed >= read_at:
                continue  # changed here while we read: our snapshot may predate that change
            reason = states.get(channel.name)
            if reason is not None and channel.disabled_reason != reason:
                channel.disable(reason, stored=True)
            elif reason is None and channel.disabled_stored:
                log.info("channel %s re-enabled (by an admin, possibly on another replica)",
                         channel.name)
                channel.enable()

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.create_task(self._loop(), name="channel-state-sync")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.apply()
            except Exception as exc:  # a database hiccup: keep the last known states
                log.warning("channel state sync failed: %s", type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
