"""Channels and routing: which upstream channel takes a job, in which order.

Selection: the highest priority tier first, weighted random inside a tier; channels whose
breaker is open or that an admin must re-enable are skipped. Each channel caps its concurrent
jobs with a semaphore (jobs queue for a slot instead of failing).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Mapping

import httpx

from adapters.base import Adapter
from adapters.registry import build_adapter
from adapters.sandbox import SandboxAdapter
from billing.pricing import to_micro
from gateway.settings import ChannelSettings, Settings

log = logging.getLogger(__name__)


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown` s lets one probe through."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if time.monotonic() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = time.monotonic()


class Channel:
    """One configured upstream channel: its adapter, limits, breaker and state."""

    def __init__(self, settings: ChannelSettings, adapter: Adapter) -> None:
        self.settings = settings
        self.name = settings.name
        self.kind = settings.type
        self.adapter = adapter
        self.priority = settings.priority
        self.weight = settings.weight
        self.cost_per_image = (to_micro(settings.cost_per_image)
                               if settings.cost_per_image is not None else None)
        mapping = settings.model_map()
        self.model_map: Mapping[str, str] = mapping or {m: m for m in adapter.capabilities.models}
        self.breaker = CircuitBreaker()
        self.disabled_reason: str | None = None if settings.enabled else "disabled in config"
        limit = settings.max_concurrency
        self._slots = asyncio.Semaphore(limit) if limit else None
        self.active = 0

    @property
    def label(self) -> str:
        return self.adapter.capabilities.label

    def serves(self, model: str) -> bool:
        return model in self.model_map

    def upstream_model(self, model: str) -> str:
        return self.model_map[model]

    async def acquire(self) -> None:
        if self._slots is not None:
            await self._slots.acquire()
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        if self._slots is not None:
            self._slots.release()

    def disable(self, reason: str) -> None:
        log.warning("channel %s disabled: %s", self.name, reason)
        self.disabled_reason = reason

    def enable(self) -> None:
        self.disabled_reason = None
        self.breaker.success()


class Router:
    """Orders the channels that may take a job."""

    def __init__(self, channels: list[Channel], rng: random.Random | None = None,
                 test_channel: Channel | None = None) -> None:
        self.channels = channels
        self._rng = rng or random.Random()
        #: the sandbox that serves test-mode keys, whatever the live channels are
        self.test_channel = test_channel or next(
            (c for c in channels if c.kind == "sandbox"),
            Channel(ChannelSettings(name="sandbox-test", type="sandbox"), SandboxAdapter()))

    def get(self, name: str) -> Channel | None:
        return next((c for c in self.channels if c.name == name), None)

    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for ch in self.channels:
            if ch.disabled_reason is None:
                for m in ch.model_map:
                    seen[m] = None
        return list(seen)

    def candidates(self, model: str, *, kinds: set[str] | None = None) -> list[Channel]:
        """Channels able to take `model` now, in the order to try them."""
        usable = [c for c in self.channels
                  if c.serves(model) and c.disabled_reason is None
                  and (kinds is None or c.kind in kinds)]
        ordered: list[Channel] = []
        for prio in sorted({c.priority for c in usable}, reverse=True):
            tier = [c for c in usable if c.priority == prio]
            while tier:
                weights = [max(c.weight, 0) for c in tier]
                if sum(weights) == 0:
                    pick = tier[0]
                else:
                    pick = self._rng.choices(tier, weights=weights)[0]
                ordered.append(pick)
                tier.remove(pick)
        return ordered


def channel_settings(settings: Settings) -> list[ChannelSettings]:
    """The configured channels, or the sandbox when none are configured."""
    if settings.channels:
        return list(settings.channels)
    return [ChannelSettings(name="sandbox", type="sandbox", options=dict(settings.sandbox))]


def build_router(settings: Settings, client: httpx.AsyncClient,
                 env: Mapping[str, str] | None = None) -> Router:
    """Build every channel's adapter from settings; secrets come from the environment."""
    env = os.environ if env is None else env
    channels = []
    for cs in channel_settings(settings):
        secret = env.get(cs.api_key_env) if cs.api_key_env else None
        adapter = build_adapter(cs.type, cs.options, secret, cs.base_url, client)
        channels.append(Channel(cs, adapter))
    return Router(channels)
