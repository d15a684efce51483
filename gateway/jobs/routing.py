"""Channels and routing: which upstream channel takes a job, in which order.

Selection (`Router.candidates`): channels that serve the model, are enabled and whose breaker
lets a call through; the highest priority tier first, weighted random inside a tier (without
replacement, so every usable channel appears once, as a failover order).

Circuit breaker (per channel): opens after `breaker_threshold` (5) consecutive failures; stays
open `breaker_cooldown` (30 s); then half-open, letting exactly ONE probe call through: its
success closes the breaker, its failure re-opens it for another cooldown. `candidates()` claims
the probe when it lists a half-open channel (the job service lists with `claim=False` and
claims right before the call, giving back a probe that never reported); a probe claimed but
never reported is otherwise released after `probe_timeout` (4 cooldowns).

Concurrency: each channel caps its in-flight jobs (`max_concurrency`; BFL defaults to 24) and,
optionally, per model (`model_concurrency`; BFL defaults to 6 for flux-kontext-max). Callers
queue for a slot instead of failing.

Connections: each channel owns its HTTP clients (`gateway/jobs/connections.py`): an API pool
sized from its concurrency cap and a guarded client for the result URLs its upstream names.
`Router.aclose()` closes them.

Zero-config: with no channel configured, `BFL_API_KEY`, `FAL_KEY` and `REPLICATE_API_TOKEN` in
the environment each create a channel named after its type (BFL first, then fal, then
Replicate), and the sandbox is kept out of live routing. With neither, the sandbox serves every
model. `Router.test_channel` is always a sandbox channel, for test-mode keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from pydantic import ValidationError

from adapters.base import Adapter
from adapters.registry import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MODEL_CONCURRENCY,
    ENV_CREDENTIALS,
    FACTORIES,
    NEEDS_SECRET,
    build_adapter,
)
from billing.pricing import to_micro
from gateway.aiohttp_transport import verifying_context
from gateway.jobs.connections import ChannelClients, channel_clients
from gateway.settings import ChannelSettings, ConfigError, Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown` s lets one probe through.

    `clock` is injectable (monotonic seconds) so tests need no sleeps.
    """

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, *,
                 clock: Clock = time.monotonic, probe_timeout: float | None = None) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.probe_timeout = probe_timeout if probe_timeout is not None else 4 * cooldown
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probe_since: float | None = None

    @property
    def state(self) -> str:
        """`closed`, `open` (refusing) or `half_open` (cooldown over; one probe allowed)."""
        if self.opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self.opened_at >= self.cooldown else "open"

    def allow(self) -> bool:
        """May a call go through now? Claims the single probe when half-open."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if self._probe_since is None or now - self._probe_since >= self.probe_timeout:
            self._probe_since = now
            return True
        return False

    def available(self) -> bool:
        """Would `allow()` let a call through now? (Peeks; claims nothing.)"""
        state = self.state
        if state != "half_open":
            return state == "closed"
        return self._probe_since is None or self._clock() - self._probe_since >= self.probe_timeout

    def abandon_probe(self) -> None:
        """Give back a claimed probe whose call never reported success or failure (the
        attempt ended for another reason), so the next caller may probe at once."""
        if self.state == "half_open":
            self._probe_since = None

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._probe_since = None

    def failure(self) -> None:
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self._clock()  # (re-)open: a failed probe starts a new cooldown
            self._probe_since = None


class Channel:
    """One configured upstream channel: its adapter, limits, breaker and state."""

    def __init__(self, settings: ChannelSettings, adapter: Adapter, *,
                 clock: Clock = time.monotonic, clients: ChannelClients | None = None) -> None:
        self.settings = settings
        self.clients = clients  # the HTTP clients the adapter uses (None: it uses none)
        self.name = settings.name
        self.kind = settings.type
        self.adapter = adapter
        self.priority = settings.priority
        self.weight = settings.weight
        self.cost_per_image = (to_micro(settings.cost_per_image)
                               if settings.cost_per_image is not None else None)
        mapping = settings.model_map()
        self.model_map: Mapping[str, str] = mapping or {m: m for m in adapter.capabilities.models}
        self.breaker = CircuitBreaker(settings.breaker_threshold, settings.breaker_cooldown,
                                      clock=clock)
        self.disabled_reason: str | None = None
        self.disabled_at: float | None = None  # unix time
        self.disabled_stored = False  # the reason is in channel_states (upstream or admin)
        self.state_changed = 0.0  # time.monotonic() of the last disable/enable here
        if not settings.enabled:
            self.disable("disabled in config")
        self.max_concurrency = settings.max_concurrency or DEFAULT_MAX_CONCURRENCY.get(self.kind)
        self._slots = asyncio.Semaphore(self.max_concurrency) if self.max_concurrency else None
        caps = {**DEFAULT_MODEL_CONCURRENCY.get(self.kind, {}), **settings.model_concurrency}
        self.model_concurrency = caps
        self._model_slots = {m: asyncio.Semaphore(n) for m, n in caps.items()}
        self.active = 0

    @property
    def label(self) -> str:
        return self.adapter.capabilities.label

    def serves(self, model: str) -> bool:
        return model in self.model_map

    def upstream_model(self, model: str) -> str:
        return self.model_map[model]

    async def acquire(self, model: str | None = None) -> None:
        """Wait for a slot on this channel (and for `model`'s own cap, when given and set).

        Pass the same `model` to `release()`.
        """
        model_slot = self._model_slots.get(model) if model else None
        if model_slot is not None:
            await model_slot.acquire()
        try:
            if self._slots is not None:
                await self._slots.acquire()
        except BaseException:
            if model_slot is not None:
                model_slot.release()
            raise
        self.active += 1

    def release(self, model: str | None = None) -> None:
        self.active -= 1
        if self._slots is not None:
            self._slots.release()
        model_slot = self._model_slots.get(model) if model else None
        if model_slot is not None:
            model_slot.release()

    def would_wait(self, model: str | None = None) -> bool:
        """Would `acquire(model)` wait now (the channel or the model is at its cap)?"""
        model_slot = self._model_slots.get(model) if model else None
        return bool((model_slot is not None and model_slot.locked())
                    or (self._slots is not None and self._slots.locked()))

    @contextlib.asynccontextmanager
    async def slot(self, model: str | None = None) -> AsyncIterator[None]:
        """`async with channel.slot(model):` — acquire and always release."""
        await self.acquire(model)
        try:
            yield
        finally:
            self.release(model)

    def disable(self, reason: str, *, stored: bool = False) -> None:
        """Take the channel out of routing until `enable()`; the reason and time are kept.
        `stored`: the decision is also in channel_states (see channel_state.py)."""
        log.warning("channel %s disabled: %s", self.name, reason)
        self.disabled_reason = reason
        self.disabled_at = time.time()
        self.disabled_stored = stored
        self.state_changed = time.monotonic()

    def enable(self) -> None:
        self.disabled_reason = None
        self.disabled_at = None
        self.disabled_stored = False
        self.state_changed = time.monotonic()
        self.breaker.success()

    async def aclose(self) -> None:
        """Close the channel's HTTP clients (its adapter cannot be used afterwards)."""
        if self.clients is not None:
            await self.clients.aclose()

    def describe(self) -> dict[str, Any]:
        """The channel's state for the admin API (no secrets)."""
        return {
            "name": self.name, "type": self.kind, "label": self.label,
            "models": dict(self.model_map), "priority": self.priority, "weight": self.weight,
            "enabled": self.disabled_reason is None, "disabled_reason": self.disabled_reason,
            "disabled_at": self.disabled_at, "breaker": self.breaker.state,
            "consecutive_failures": self.breaker.failures, "active": self.active,
            "max_concurrency": self.max_concurrency,
            "max_connections": self.clients.size if self.clients is not None else None,
            "model_concurrency": dict(self.model_concurrency),
        }


class Router:
    """Orders the channels that may take a job; holds the test-mode sandbox channel."""

    def __init__(self, channels: list[Channel], rng: random.Random | None = None,
                 test_channel: Channel | None = None) -> None:
        self.channels = channels
        self._rng = rng or random.Random()
        self.test_channel = test_channel

    async def aclose(self) -> None:
        """Close every channel's HTTP clients (at shutdown)."""
        test = [self.test_channel] if self.test_channel not in (None, *self.channels) else []
        for channel in [*self.channels, *test]:
            if channel is not None:
                await channel.aclose()

    def get(self, name: str) -> Channel | None:
        found = next((c for c in self.channels if c.name == name), None)
        if found is None and self.test_channel is not None and self.test_channel.name == name:
            return self.test_channel
        return found

    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for ch in self.channels:
            if ch.disabled_reason is None:
                for m in ch.model_map:
                    seen[m] = None
        return list(seen)

    def candidates(self, model: str, kinds: set[str] | None = None, *,
                   input_images: int = 0, claim: bool = True) -> list[Channel]:
        """Channels able to take `model` now, in the order to try them.

        Skips disabled channels, channels whose adapter takes fewer than `input_images`
        images, and channels whose breaker refuses; listing a half-open channel claims its
        single probe, unless `claim=False`: then the caller claims it with `breaker.allow()`
        right before calling that channel (and `abandon_probe()`s it when it never reports).
        """
        usable = [c for c in self.channels
                  if c.serves(model) and c.disabled_reason is None
                  and (kinds is None or c.kind in kinds)
                  and c.adapter.capabilities.max_input_images >= input_images]
        ordered: list[Channel] = []
        for prio in sorted({c.priority for c in usable}, reverse=True):
            tier = [c for c in usable if c.priority == prio]
            while tier:
                weights = [max(c.weight, 0) for c in tier]
                pick = tier[0] if sum(weights) == 0 else self._rng.choices(tier, weights)[0]
                ordered.append(pick)
                tier.remove(pick)
        if not claim:
            return [c for c in ordered if c.breaker.available()]
        return [c for c in ordered if c.breaker.allow()]


def _default_sandbox(settings: Settings) -> ChannelSettings:
    return ChannelSettings(name="sandbox", type="sandbox", options=dict(settings.sandbox))


def zero_config_channels(env: Mapping[str, str]) -> list[ChannelSettings]:
    """One channel per well-known credential present in `env` (name = type)."""
    return [ChannelSettings(name=kind, type=kind, api_key_env=var, priority=priority)
            for var, (kind, priority) in ENV_CREDENTIALS.items() if env.get(var)]


def channel_settings(settings: Settings,
                     env: Mapping[str, str] | None = None) -> list[ChannelSettings]:
    """The configured channels; else zero-config channels from `env`; else the sandbox."""
    if settings.channels:
        return list(settings.channels)
    return zero_config_channels(os.environ if env is None else env) or [_default_sandbox(settings)]


def _secret(cs: ChannelSettings, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(secret, env variable name) of a channel; well-known variables are the fallback."""
    var = cs.api_key_env or next((v for v, (k, _) in ENV_CREDENTIALS.items() if k == cs.type),
                                 None)
    return (env.get(var) if var else None), var


def _build_channel(cs: ChannelSettings, settings: Settings, env: Mapping[str, str],
                   clock: Clock, verify: ssl.SSLContext) -> Channel:
    secret, var = _secret(cs, env)
    if cs.type not in FACTORIES:
        raise ConfigError(f"channels.{cs.name}: type {cs.type!r} has no adapter in this build")
    clients = channel_clients(
        cs, max_concurrency=cs.max_concurrency or DEFAULT_MAX_CONCURRENCY.get(cs.type),
        download_timeout=settings.jobs.download_timeout, verify=verify)
    try:
        adapter = build_adapter(cs.type, cs.options, secret, cs.base_url, clients.api,
                                clients.results)
    except ValidationError as exc:  # the options model refused one: name the option
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"channels.{cs.name}.options{'.' + where if where else ''}: "
                          f"{err['msg']}{more}") from exc
    except ValueError as exc:
        first = str(exc).splitlines()
        raise ConfigError(f"channels.{cs.name}: invalid channel: {' '.join(first[:3])}") from exc
    channel = Channel(cs, adapter, clock=clock, clients=clients)
    if cs.type in NEEDS_SECRET and not secret and channel.disabled_reason is None:
        channel.disable(f"no credential: environment variable {var or 'api_key_env'} is not set")
    return channel


def build_router(settings: Settings, *, env: Mapping[str, str] | None = None,
                 rng: random.Random | None = None, clock: Clock = time.monotonic) -> Router:
    """Build every channel's adapter and HTTP clients from settings; secrets come from `env`
    (os.environ). Close the router with `aclose()`.

    Raises ConfigError for an unknown channel type or invalid channel options.
    """
    env = os.environ if env is None else env
    verify = verifying_context()  # one context (CA bundle loaded once) per process
    channels = [_build_channel(cs, settings, env, clock, verify)
                for cs in channel_settings(settings, env)]
    names = [c.name for c in channels]
    if len(set(names)) != len(names):
        raise ConfigError(f"channels: names must be unique, got {names}")
    test = next((c for c in channels if c.kind == "sandbox"), None)
    if test is None:
        test = _build_channel(_default_sandbox(settings), settings, env, clock, verify)
    log.info("channels: %s (test channel: %s)",
             ", ".join(f"{c.name}[{c.kind}]" for c in channels), test.name)
    return Router(channels, rng=rng, test_channel=test)
