"""API keys: format and checksum, hashing at rest, allow-lists, updates, the auth cache."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from billing import keys
from billing.errors import InvalidKey, InvalidValue, KeyExpired, KeyForbidden, KeyRevoked
from billing.tables import ApiKeyRow

Sessions = async_sessionmaker[AsyncSession]


class QueryCounter:
    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._on)

    def _on(self, *_: Any) -> None:
        self.count += 1


def test_format_and_checksum() -> None:
    key = keys.generate("live")
    assert re.fullmatch(r"fk_live_[0-9A-Za-z]{38}", key)
    assert keys.mode_of(key) == "live"
    assert keys.mode_of(keys.generate("test")) == "test"
    assert keys.mode_of(key[:-1]) is None
    assert keys.mode_of("sk-" + key) is None


async def test_10000_mutations_rejected_without_a_query(engine: AsyncEngine,
                                                         sessions: Sessions) -> None:
    async with sessions.begin() as s:
        created = await keys.create_key(s, name="t", balance=0)
    key = created.plaintext
    rng = random.Random(7)
    counter = QueryCounter(engine)
    cache = keys.KeyCache()
    async with sessions() as s:
        for _ in range(10_000):
            pos = rng.randrange(len(key))
            choices = keys.ALPHABET + "_-" if pos >= 8 else "abcdefghijklmnopqrstuvwxyz_"
            mutated = key[:pos] + rng.choice([c for c in choices if c != key[pos]]) + key[pos + 1:]
            with pytest.raises(InvalidKey):
                await keys.authenticate(s, mutated)
            with pytest.raises(InvalidKey):
                await cache.authenticate(s, mutated)
    assert counter.count == 0
    async with sessions() as s:
        assert (await keys.authenticate(s, key)).id == created.row.id
    assert counter.count == 1


async def test_no_plaintext_key_in_the_database_file(tmp_path: Path, engine: AsyncEngine,
                                                     sessions: Sessions) -> None:
    plaintexts = []
    async with sessions.begin() as s:
        for i in range(20):
            created = await keys.create_key(s, name=f"k{i}", balance=10,
                                            mode="test" if i % 2 else "live")
            plaintexts.append(created.plaintext)
    await engine.dispose()  # checkpoint the WAL into the file
    dump = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("billing.db*")))  # noqa: ASYNC240
    assert re.findall(rb"fk_(live|test)_[0-9A-Za-z]{30,}", dump) == []
    assert all(p.encode() not in dump for p in plaintexts)
    assert keys.hash_key(plaintexts[0]).encode() in dump


async def test_revoked_and_expired(sessions: Sessions) -> None:
    async with sessions.begin() as s:
        created = await keys.create_key(s, name="t", balance=0,
                                        expires_at=datetime.now(UTC) + timedelta(hours=1))
        assert (await keys.authenticate(s, created.plaintext)).id == created.row.id
        with pytest.raises(KeyExpired):
            await keys.authenticate(s, created.plaintext, datetime.now(UTC) + timedelta(hours=2))
        await keys.revoke(s, created.row.id)
        with pytest.raises(KeyRevoked):
            await keys.authenticate(s, created.plaintext)
        with pytest.raises(InvalidKey):
            await keys.authenticate(s, keys.generate())  # well formed, unknown


async def test_model_and_ip_allow_lists(sessions: Sessions) -> None:
    async with sessions.begin() as s:
        row = (await keys.create_key(s, name="t", models=["flux-kontext-pro", "flux-*-dev"],
                                     ip_allow=["10.0.0.0/8", "2001:db8::1"])).row
    keys.check_model(row, "flux-kontext-pro")
    keys.check_model(row, "flux-kontext-dev")
    with pytest.raises(KeyForbidden) as err:
        keys.check_model(row, "flux-kontext-max")
    assert err.value.param == "model"
    keys.check_ip(row, "10.1.2.3")
    keys.check_ip(row, "::ffff:10.1.2.3")
    keys.check_ip(row, "2001:db8::1")
    for bad in ("11.0.0.1", "2001:db8::2", None, "not-an-ip"):
        with pytest.raises(KeyForbidden):
            keys.check_ip(row, bad)
    open_row = (await _create(sessions)).row
    keys.check_ip(open_row, None)
    keys.check_model(open_row, "anything")


async def _create(sessions: Sessions, **kwargs: Any) -> keys.CreatedKey:
    async with sessions.begin() as s:
        return await keys.create_key(s, name="t", **kwargs)


async def test_update_key(sessions: Sessions) -> None:
    created = await _create(sessions, balance=5, rpm=10, owner="acme")
    async with sessions.begin() as s:
        row = await keys.update_key(s, created.row.id, name="renamed", rpm=None,
                                    ip_allow=["192.168.1.7"], price_group="reseller",
                                    max_concurrency=3)
    assert (row.name, row.rpm, row.ip_allow, row.price_group, row.max_concurrency, row.owner,
            row.balance) == ("renamed", None, ["192.168.1.7/32"], "reseller", 3, "acme", 5)
    async with sessions.begin() as s:
        with pytest.raises(InvalidValue):
            await keys.update_key(s, created.row.id, ip_allow=["10.0.0.300/8"])
        with pytest.raises(InvalidValue):
            await keys.update_key(s, created.row.id, rpm=0)
        with pytest.raises(InvalidKey):
            await keys.update_key(s, "key_missing", name="x")
        row = await keys.update_key(s, created.row.id, disabled=True)
    async with sessions() as s:
        with pytest.raises(KeyRevoked):
            await keys.authenticate(s, created.plaintext)


async def test_cache_sees_a_revocation_within_5_seconds(sessions: Sessions) -> None:
    """Another replica revokes: this process's cache must refuse the key within its TTL."""
    now = [1000.0]
    cache = keys.KeyCache(ttl=5.0, clock=lambda: now[0])
    created = await _create(sessions, balance=0)
    async with sessions() as s:
        assert (await cache.authenticate(s, created.plaintext)).id == created.row.id
        assert (await cache.authenticate(s, created.plaintext)).id == created.row.id
    assert (cache.hits, cache.misses) == (1, 1)
    async with sessions.begin() as s:  # another replica revokes: this cache is not told
        await s.execute(update(ApiKeyRow).where(ApiKeyRow.id == created.row.id)
                        .values(revoked_at=datetime.now(UTC)))
    now[0] += 4.9
    async with sessions() as s:
        await cache.authenticate(s, created.plaintext)  # still cached, within the bound
    now[0] += 0.1
    async with sessions() as s:
        with pytest.raises(KeyRevoked):
            await cache.authenticate(s, created.plaintext)


async def test_cache_invalidated_at_once_in_process(sessions: Sessions) -> None:
    cache = keys.KeyCache(clock=lambda: 0.0)
    created = await _create(sessions, balance=0)
    async with sessions() as s:
        await cache.authenticate(s, created.plaintext)
    async with sessions.begin() as s:
        await keys.revoke(s, created.row.id)  # reaches every cache of the process
    async with sessions() as s:
        with pytest.raises(KeyRevoked):
            await cache.authenticate(s, created.plaintext)
    with pytest.raises(ValueError):
        keys.KeyCache(ttl=6)


async def test_cache_checks_expiry_on_every_hit(sessions: Sessions) -> None:
    cache = keys.KeyCache(clock=lambda: 0.0)
    created = await _create(sessions, expires_at=datetime.now(UTC) + timedelta(minutes=1))
    async with sessions() as s:
        await cache.authenticate(s, created.plaintext)
        with pytest.raises(KeyExpired):
            await cache.authenticate(s, created.plaintext, datetime.now(UTC) + timedelta(hours=1))
