"""Per-key rate and concurrency limits."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from billing.limits import (
    ConcurrencyLimiter,
    RateLimiter,
    RedisConcurrencyLimiter,
    format_duration,
)


async def test_burst_of_100_at_20_per_minute() -> None:
    limiter = RateLimiter()
    decisions = await asyncio.gather(*(limiter.hit("key_a", 20) for _ in range(100)))
    allowed = [d for d in decisions if d and d.allowed]
    denied = [d for d in decisions if d and not d.allowed]
    assert len(allowed) == 20 and len(denied) == 80
    assert all(d.retry_after >= 1 for d in denied)
    headers = denied[0].headers()
    assert headers["retry-after"] == str(denied[0].retry_after)
    assert headers["x-ratelimit-limit-requests"] == "20"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 55 <= denied[0].retry_after <= 60
    assert sorted(d.remaining for d in allowed) == list(range(20))
    other = await limiter.hit("key_b", 20)  # keys are independent
    assert other is not None and other.allowed
    assert await limiter.hit("key_a", None) is None


async def test_sliding_window_counter_and_short_period() -> None:
    limiter = RateLimiter(strategy="sliding-window-counter", period=1)
    results = [await limiter.hit("k", 5) for _ in range(8)]
    assert [r.allowed for r in results if r] == [True] * 5 + [False] * 3
    with pytest.raises(ValueError):
        RateLimiter(strategy="fixed-window")  # type: ignore[arg-type]


async def test_redis_down_fails_open_to_a_bounded_fallback() -> None:
    limiter = RateLimiter("redis://127.0.0.1:1/0", replicas=2, cooldown=0)
    decisions = [await limiter.hit("k", 20) for _ in range(15)]
    assert all(d is not None and d.degraded for d in decisions)
    assert sum(1 for d in decisions if d and d.allowed) == 10  # 20 // 2 replicas
    assert limiter.backend_errors == limiter.fallbacks == 15


async def test_after_a_redis_failure_the_fallback_decides_for_the_cooldown() -> None:
    """An outage must not add the Redis timeout to every request: after one failure the
    in-process fallback decides until the cooldown ends, then Redis is tried again."""
    now = [1000.0]
    limiter = RateLimiter("redis://127.0.0.1:1/0", replicas=2, cooldown=5.0,
                          clock=lambda: now[0])
    for _ in range(10):
        decision = await limiter.hit("k", 20)
        assert decision is not None and decision.degraded
    assert (limiter.backend_errors, limiter.fallbacks) == (1, 10)
    now[0] += 5.0
    await limiter.hit("k", 20)
    assert (limiter.backend_errors, limiter.fallbacks) == (2, 11)  # tried Redis once more


def test_reset_format() -> None:
    assert [format_duration(x) for x in (0, 0.2, 59.1, 60, 3723)] == [
        "0s", "1s", "1m0s", "1m0s", "1h2m3s"]


async def test_concurrency_in_process() -> None:
    slots = ConcurrencyLimiter()
    assert await slots.acquire("k", "j1", 2)
    assert await slots.acquire("k", "j1", 2)  # same job: same slot
    assert await slots.acquire("k", "j2", 2)
    assert not await slots.acquire("k", "j3", 2)
    await slots.release("k", "j1")
    await slots.release("k", "j1")  # twice is harmless
    assert await slots.in_flight("k") == 1
    assert await slots.acquire("k", "j3", 2)
    assert await slots.acquire("other", "j9", None)


async def test_concurrency_in_redis_never_over_admits() -> None:
    client = fakeredis.FakeAsyncRedis()
    slots = RedisConcurrencyLimiter(client)
    results = await asyncio.gather(*(slots.acquire("k", f"j{i}", 3) for i in range(30)))
    assert 1 <= sum(results) <= 3
    assert await slots.in_flight("k") == sum(results)
    for i in range(30):
        await slots.release("k", f"j{i}")
    assert await slots.in_flight("k") == 0
    assert sum([await slots.acquire("k", f"x{i}", 3) for i in range(5)]) == 3


REDIS_URL = __import__("os").environ.get("FLUXGATE_TEST_REDIS_URL")


@pytest.mark.skipif(not REDIS_URL, reason="FLUXGATE_TEST_REDIS_URL is not set")
async def test_replicas_share_one_limit_through_a_real_redis() -> None:
    """Two gateway replicas (two limiters) on one Redis: a burst of 100 spread over both
    gets 20 through in all, not 20 each."""
    import secrets

    key = f"key_{secrets.token_hex(6)}"  # a fresh key: no state from earlier runs
    # a generous backend timeout: this checks the sharing, not the fail-open path (a loaded
    # CI machine can exceed the production 50 ms and would, rightly, fall back in-process)
    first = RateLimiter(REDIS_URL, replicas=2, timeout=5.0)
    second = RateLimiter(REDIS_URL, replicas=2, timeout=5.0)
    decisions = [await (first if i % 2 else second).hit(key, 20) for i in range(100)]
    allowed = [d for d in decisions if d and d.allowed]
    assert len(allowed) == 20
    assert not any(d.degraded for d in decisions if d)  # decided by Redis, not a fallback
