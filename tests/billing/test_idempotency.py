"""Idempotency keys: one winner among concurrent claims, replay, mismatch, abandon, purge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing import idempotency as idem
from billing.errors import InvalidValue
from billing.idempotency import ClaimState

Sessions = async_sessionmaker[AsyncSession]
FP = idem.fingerprint("POST", "/v1/images/generations", {"prompt": "a cat", "n": 1})


async def _claim(sessions: Sessions, key: str = "idem-1", fp: str = FP,
                 key_id: str = "key_a", **kw: object) -> idem.Claim:
    async with sessions.begin() as s:
        return await idem.claim(s, key_id, key, fp, **kw)  # type: ignore[arg-type]


def test_fingerprint_is_canonical() -> None:
    a = idem.fingerprint("post", "/p", {"b": 1, "a": [1, 2]})
    assert a == idem.fingerprint("POST", "/p", {"a": [1, 2], "b": 1})
    assert a != idem.fingerprint("POST", "/q", {"a": [1, 2], "b": 1})
    assert a != idem.fingerprint("POST", "/p", {"a": [2, 1], "b": 1})
    assert idem.fingerprint("POST", "/p", b"x") == idem.fingerprint("POST", "/p", "x")


async def test_50_concurrent_claims_one_winner(sessions: Sessions) -> None:
    claims = await asyncio.gather(*(_claim(sessions) for _ in range(50)))
    states = [c.state for c in claims]
    assert states.count(ClaimState.NEW) == 1
    assert states.count(ClaimState.IN_PROGRESS) == 49


async def test_replay_mismatch_and_scope(sessions: Sessions) -> None:
    assert (await _claim(sessions)).state is ClaimState.NEW
    async with sessions.begin() as s:
        await idem.attach_job(s, "key_a", "idem-1", "job_1")
    assert (await _claim(sessions)).job_id == "job_1"
    async with sessions.begin() as s:
        await idem.complete(s, "key_a", "idem-1", status_code=200, body=b'{"ok":1}',
                            headers={"content-type": "application/json"})
    replay = await _claim(sessions)
    assert replay.state is ClaimState.REPLAY and replay.job_id == "job_1"
    assert replay.response == idem.StoredResponse(200, b'{"ok":1}',
                                                  {"content-type": "application/json"})
    other = idem.fingerprint("POST", "/v1/images/generations", {"prompt": "a dog"})
    assert (await _claim(sessions, fp=other)).state is ClaimState.MISMATCH
    assert (await _claim(sessions, key_id="key_b")).state is ClaimState.NEW  # per API key


async def test_abandon_frees_the_key_but_keeps_answers(sessions: Sessions) -> None:
    await _claim(sessions)
    async with sessions.begin() as s:
        await idem.abandon(s, "key_a", "idem-1")
    assert (await _claim(sessions)).state is ClaimState.NEW
    async with sessions.begin() as s:
        await idem.complete(s, "key_a", "idem-1", status_code=500, body=b"err")
        await idem.abandon(s, "key_a", "idem-1")
    assert (await _claim(sessions)).state is ClaimState.REPLAY  # even a 500 is replayed


async def test_retention_and_purge(sessions: Sessions) -> None:
    old = datetime.now(UTC) - timedelta(hours=25)
    await _claim(sessions, key="old", now=old)
    await _claim(sessions, key="fresh")
    day = timedelta(hours=24)
    assert (await _claim(sessions, key="fresh", now=datetime.now(UTC) + timedelta(hours=23))
            ).state is ClaimState.IN_PROGRESS
    # past the retention a key is forgotten and can be claimed again
    assert (await _claim(sessions, key="old", fp="other", retention=day)).state is ClaimState.NEW
    await _claim(sessions, key="older", now=old)
    async with sessions.begin() as s:
        assert await idem.purge_older_than(s, datetime.now(UTC) - day) == 1
    assert (await _claim(sessions, key="older")).state is ClaimState.NEW


async def test_key_validation(sessions: Sessions) -> None:
    for bad in ("", "x" * 256, "caf\u00e9", "a\nb"):
        with pytest.raises(InvalidValue):
            await _claim(sessions, key=bad)
    assert (await _claim(sessions, key="k" * 255)).state is ClaimState.NEW
