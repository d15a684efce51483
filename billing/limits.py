"""Per-key limits: requests per minute (the `limits` library) and jobs in flight.

`RateLimiter` uses a moving window (or a sliding-window counter), never a fixed window, in
memory by default or in Redis when a URL is given. Its answer carries what the HTTP layer
needs for `Retry-After` and the `x-ratelimit-*-requests` headers. When Redis fails or is slow
(> `timeout`), the limiter fails open to a bounded in-process limiter (`rpm // replicas`),
logs and counts it in `backend_errors`: a Redis outage never becomes an outage or a 5xx.
After a failure Redis is left alone for `cooldown` seconds (the fallback decides), so an
outage does not add the timeout to every request; `fallbacks` counts those decisions.

`ConcurrencyLimiter` caps jobs in flight per key: a job takes a slot at submit and gives it
back when it reaches a terminal state. Slots are sets of job ids, so giving one back twice is
harmless. In-process by default; `RedisConcurrencyLimiter` shares them between replicas.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.aio.strategies import (
    RateLimiter as LimitsStrategy,
)

log = logging.getLogger(__name__)

Strategy = Literal["moving-window", "sliding-window-counter"]


@dataclass(frozen=True, slots=True)
class RateDecision:
    """One rate-limit decision. `reset_after` is seconds until a slot frees (0 when the
    window is empty); `retry_after` is whole seconds >= 1 when refused, else 0."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: int = 0
    degraded: bool = False  # decided by the in-process fallback because the backend failed

    def headers(self) -> dict[str, str]:
        """`x-ratelimit-*-requests` (OpenAI's names) and, when refused, `retry-after`."""
        out = {"x-ratelimit-limit-requests": str(self.limit),
               "x-ratelimit-remaining-requests": str(self.remaining),
               "x-ratelimit-reset-requests": format_duration(self.reset_after)}
        if not self.allowed:
            out["retry-after"] = str(self.retry_after)
        return out


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s", "1h2m3s" (whole seconds, rounded up)."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _strategy(name: Strategy, storage: Storage) -> LimitsStrategy:
    if name == "moving-window":
        return MovingWindowRateLimiter(storage)
    if name == "sliding-window-counter":
        return SlidingWindowCounterRateLimiter(storage)
    raise ValueError(f"unknown rate-limit strategy {name!r} (a fixed window is not offered)")


class RateLimiter:
    """Requests per period per key. `storage_url` None: memory; "redis://..." (or
    "async+redis://..."): Redis, failing open to memory with `rpm // replicas`."""

    def __init__(self, storage_url: str | None = None, *, strategy: Strategy = "moving-window",
                 period: int = 60, timeout: float = 0.25, replicas: int = 1,
                 cooldown: float = 5.0, key_prefix: str = "fluxgate",
                 clock: Callable[[], float] = time.monotonic,
                 observe: Callable[[float], None] | None = None) -> None:
        self.period = period
        self.observe = observe  # told the seconds of each backend (Redis) call that answered
        self.timeout = timeout
        self.replicas = max(1, replicas)
        self.cooldown = cooldown
        self.backend_errors = 0  # failed or slow backend calls
        self.fallbacks = 0  # decisions made in-process because the backend was unavailable
        self._clock = clock
        self._skip_until = 0.0
        self._prefix = key_prefix
        self._fallback = _strategy(strategy, MemoryStorage())
        self._primary: LimitsStrategy | None = None
        if storage_url:
            uri = storage_url if storage_url.startswith("async+") else f"async+{storage_url}"
            options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            self._primary = _strategy(strategy, RedisStorage(
                uri, implementation="redispy", key_prefix=key_prefix, **options))

    def _item(self, amount: int) -> RateLimitItem:
        if self.period == 60:
            return RateLimitItemPerMinute(amount)
        return RateLimitItemPerSecond(amount, self.period)

    async def hit(self, key_id: str, limit: int | None) -> RateDecision | None:
        """Count one request of `key_id` against `limit` per period; None when there is no
        limit. Never raises for a backend failure (fails open, counted)."""
        if not limit:
            return None
        if self._primary is not None:
            if self._clock() >= self._skip_until:
                try:
                    started = time.perf_counter()
                    decided = await asyncio.wait_for(
                        self._decide(self._primary, self._item(limit), key_id),
                        self.timeout * 2)
                    if self.observe is not None:
                        self.observe(time.perf_counter() - started)
                    return decided
                except Exception as exc:  # fail open: any backend failure or timeout
                    self.backend_errors += 1
                    self._skip_until = self._clock() + self.cooldown
                    log.warning("rate-limit backend failed (%s); in-process limits (rpm/%d) "
                                "for %.0f s", type(exc).__name__, self.replicas, self.cooldown)
            self.fallbacks += 1
            fallback = max(1, limit // self.replicas)
            decision = await self._decide(self._fallback, self._item(fallback), key_id)
            return RateDecision(decision.allowed, limit, min(decision.remaining, limit),
                                decision.reset_after, decision.retry_after, degraded=True)
        return await self._decide(self._fallback, self._item(limit), key_id)

    async def _decide(self, strategy: LimitsStrategy, item: RateLimitItem,
                      key_id: str) -> RateDecision:
        allowed = await strategy.hit(item, self._prefix, key_id)
        stats = await strategy.get_window_stats(item, self._prefix, key_id)
        reset_after = max(0.0, stats.reset_time - time.time())
        retry_after = 0 if allowed else max(1, math.ceil(reset_after))
        return RateDecision(allowed=allowed, limit=item.amount,
                            remaining=max(0, stats.remaining), reset_after=reset_after,
                            retry_after=retry_after)

    @property
    def backend(self) -> str:
        """"redis" or "memory"."""
        return "memory" if self._primary is None else "redis"

    async def reset(self) -> None:
        """Forget every count (tests, admin)."""
        await self._fallback.storage.reset()
        if self._primary is not None:
            await self._primary.storage.reset()


class ConcurrencySlots(Protocol):
    """Jobs in flight per key."""

    async def acquire(self, key_id: str, job_id: str, limit: int | None) -> bool: ...

    async def release(self, key_id: str, job_id: str) -> None: ...

    async def in_flight(self, key_id: str) -> int: ...


class ConcurrencyLimiter:
    """In-process jobs in flight per key (one replica, or a per-replica cap)."""

    def __init__(self) -> None:
        self._jobs: dict[str, set[str]] = {}

    async def acquire(self, key_id: str, job_id: str, limit: int | None) -> bool:
        """Take a slot for `job_id`; False when the key already has `limit` jobs in flight.
        No limit: always True (and still counted). Taking the same job's slot again is True."""
        jobs = self._jobs.setdefault(key_id, set())
        if job_id in jobs:
            return True
        if limit is not None and len(jobs) >= limit:
            return False
        jobs.add(job_id)
        return True

    async def release(self, key_id: str, job_id: str) -> None:
        """Give the job's slot back (harmless when it holds none)."""
        jobs = self._jobs.get(key_id)
        if jobs is not None:
            jobs.discard(job_id)
            if not jobs:
                del self._jobs[key_id]

    async def in_flight(self, key_id: str) -> int:
        return len(self._jobs.get(key_id, ()))


class RedisConcurrencyLimiter:
    """Jobs in flight per key shared through Redis (a set of job ids per key, expiring after
    `ttl` seconds without a new job so leaked slots heal). Fails open to an in-process
    limiter on a Redis error, counting it in `backend_errors`. `client` is a
    `redis.asyncio.Redis` (or fakeredis)."""

    def __init__(self, client: Any, *, ttl: int = 3600, timeout: float = 0.1,
                 key_prefix: str = "fluxgate:inflight") -> None:
        self._redis = client
        self._ttl = ttl
        self._timeout = timeout
        self._prefix = key_prefix
        self._fallback = ConcurrencyLimiter()
        self.backend_errors = 0

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}:{key_id}"

    async def acquire(self, key_id: str, job_id: str, limit: int | None) -> bool:
        try:
            return await asyncio.wait_for(self._acquire(key_id, job_id, limit), self._timeout)
        except Exception as exc:
            self.backend_errors += 1
            log.warning("concurrency backend failed (%s); using the in-process fallback",
                        type(exc).__name__)
            return await self._fallback.acquire(key_id, job_id, limit)

    async def _acquire(self, key_id: str, job_id: str, limit: int | None) -> bool:
        key = self._key(key_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(key, job_id)
            pipe.scard(key)
            pipe.expire(key, self._ttl)
            added, count, _ = await pipe.execute()
        if limit is not None and added and count > limit:
            # over the cap (perhaps with a concurrent acquirer): back out; never over-admits
            await self._redis.srem(key, job_id)
            return False
        return True

    async def release(self, key_id: str, job_id: str) -> None:
        await self._fallback.release(key_id, job_id)
        try:
            await asyncio.wait_for(self._redis.srem(self._key(key_id), job_id), self._timeout)
        except Exception as exc:
            self.backend_errors += 1
            log.warning("concurrency backend failed on release (%s)", type(exc).__name__)

    async def in_flight(self, key_id: str) -> int:
        try:
            count = await asyncio.wait_for(self._redis.scard(self._key(key_id)), self._timeout)
            return int(count)
        except Exception:
            self.backend_errors += 1
            return await self._fallback.in_flight(key_id)
