"""Routing: priority tiers, weights, the breaker's single probe, concurrency caps, zero-config."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from adapters.base import UpstreamRejected, UpstreamRequest
from adapters.sandbox import SandboxAdapter
from gateway.jobs.routing import Channel, CircuitBreaker, Router, build_router
from gateway.settings import ChannelSettings, ConfigError, Settings, load_settings

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config.example.yaml"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sandbox_channel(name: str, **fields: Any) -> Channel:
    return Channel(ChannelSettings(name=name, type="sandbox", **fields), SandboxAdapter())


def settings(*channels: dict[str, Any]) -> Settings:
    return Settings(channels=[ChannelSettings(**c) for c in channels])


# --- selection -------------------------------------------------------------------------------

def test_priority_tiers_come_first() -> None:
    low, high = sandbox_channel("low", priority=0), sandbox_channel("high", priority=10)
    mid = sandbox_channel("mid", priority=5)
    router = Router([low, high, mid], rng=random.Random(1))
    for _ in range(50):
        assert [c.name for c in router.candidates("flux-kontext-pro")] == ["high", "mid", "low"]


def test_weighted_split_inside_a_tier() -> None:
    chans = [sandbox_channel("a", weight=1), sandbox_channel("b", weight=3),
             sandbox_channel("c", weight=6)]
    router = Router(chans, rng=random.Random(1234))
    firsts = Counter(router.candidates("flux-kontext-pro")[0].name for _ in range(2000))
    assert abs(firsts["a"] / 2000 - 0.1) < 0.03
    assert abs(firsts["b"] / 2000 - 0.3) < 0.04
    assert abs(firsts["c"] / 2000 - 0.6) < 0.04
    # every channel is still listed once, as failover
    assert sorted(c.name for c in router.candidates("flux-kontext-pro")) == ["a", "b", "c"]


def test_zero_weight_is_last_resort() -> None:
    router = Router([sandbox_channel("spare", weight=0), sandbox_channel("main", weight=1)],
                    rng=random.Random(3))
    for _ in range(100):
        assert [c.name for c in router.candidates("flux-kontext-pro")] == ["main", "spare"]


def test_disabled_model_and_kind_filters() -> None:
    off = sandbox_channel("off", enabled=False)
    only_max = sandbox_channel("only-max", models=["flux-kontext-max"])
    mapped = sandbox_channel("mapped", models={"flux-kontext-pro": "upstream-pro"})
    router = Router([off, only_max, mapped], rng=random.Random(0))
    assert [c.name for c in router.candidates("flux-kontext-pro")] == ["mapped"]
    assert mapped.upstream_model("flux-kontext-pro") == "upstream-pro"
    assert router.candidates("flux-kontext-pro", kinds={"bfl"}) == []
    assert off.disabled_reason == "disabled in config"
    assert set(router.models()) == {"flux-kontext-max", "flux-kontext-pro"}


def test_disable_records_reason_and_time() -> None:
    ch = sandbox_channel("s")
    router = Router([ch])
    ch.disable("402 from upstream: insufficient credits")
    assert router.candidates("flux-kontext-pro") == []
    info = ch.describe()
    assert info["enabled"] is False
    assert info["disabled_reason"] == "402 from upstream: insufficient credits"
    assert isinstance(info["disabled_at"], float)
    ch.enable()
    assert ch.describe()["disabled_reason"] is None
    assert router.candidates("flux-kontext-pro") == [ch]


# --- breaker ---------------------------------------------------------------------------------

def test_breaker_opens_after_five_failures_and_allows_exactly_one_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=5, cooldown=30.0, clock=clock)
    for _ in range(4):
        breaker.failure()
        assert breaker.state == "closed" and breaker.allow()
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert [breaker.allow() for _ in range(5)] == [True, False, False, False, False]
    breaker.failure()  # the probe failed: a new cooldown
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 30
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(5))


def test_unreported_probe_is_released_after_probe_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=1, cooldown=10.0, clock=clock, probe_timeout=40.0)
    breaker.failure()
    clock.now += 10
    assert breaker.allow()
    clock.now += 39
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


async def _attempt(router: Router, req: UpstreamRequest) -> str:
    """What the job service does on submit: try candidates in order, report to the breaker."""
    for ch in router.candidates(req.model):
        async with ch.slot(req.model):
            try:
                await ch.adapter.submit(req)
            except UpstreamRejected as exc:
                if exc.retryable:
                    ch.breaker.failure()
                    continue
                raise
            ch.breaker.success()
            return ch.name
    return "none"


async def test_dead_channel_is_skipped_then_probed_once() -> None:
    clock = FakeClock()
    cfg = settings(
        {"name": "a", "type": "bfl", "base_url": "https://a.example", "priority": 10,
         "api_key_env": "A_KEY"},
        {"name": "b", "type": "bfl", "base_url": "https://b.example", "api_key_env": "B_KEY"})
    router = build_router(cfg, env={"A_KEY": "ka", "B_KEY": "kb"},
                          rng=random.Random(0), clock=clock)
    ok = httpx.Response(200, json={"id": "t", "polling_url": "https://b.example/v1/get_result?id=t"})
    req = UpstreamRequest(model="flux-kontext-pro", prompt="x")
    with respx.mock(assert_all_called=False) as mock:
        a = mock.post("https://a.example/v1/flux-kontext-pro").mock(
            return_value=httpx.Response(503, text="overloaded"))
        mock.post("https://b.example/v1/flux-kontext-pro").mock(return_value=ok)

        assert [await _attempt(router, req) for _ in range(5)] == ["b"] * 5
        assert a.call_count == 5
        channel_a = router.get("a")
        assert channel_a is not None and channel_a.breaker.state == "open"

        for _ in range(20):  # open: zero calls to a
            assert await _attempt(router, req) == "b"
        assert a.call_count == 5

        async def slow_503(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(0.02)  # the probe is in flight while the other jobs route
            return httpx.Response(503, text="still overloaded")

        a.mock(side_effect=slow_503)
        clock.now += 30  # half-open; 10 concurrent jobs, exactly one probe, which fails
        results = await asyncio.gather(*(_attempt(router, req) for _ in range(10)))
        assert results == ["b"] * 10
        assert a.call_count == 6

        a.mock(side_effect=None, return_value=ok)  # a recovers
        clock.now += 30
        assert await _attempt(router, req) == "a"  # the probe succeeds and closes the breaker
        assert [await _attempt(router, req) for _ in range(5)] == ["a"] * 5
        assert a.call_count == 12


# --- concurrency ------------------------------------------------------------------------------

async def _run(ch: Channel, n: int, model: str | None) -> int:
    peak = 0
    active = 0

    async def one() -> None:
        nonlocal peak, active
        async with ch.slot(model):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.002)
            active -= 1

    await asyncio.gather(*(one() for _ in range(n)))
    assert ch.active == 0
    return peak


async def test_concurrency_cap_under_50_acquirers() -> None:
    ch = sandbox_channel("s", max_concurrency=5)
    assert await _run(ch, 50, None) == 5


async def test_bfl_defaults_24_and_6_for_max() -> None:
    router = build_router(settings({"name": "bfl", "type": "bfl"}),
                          env={"BFL_API_KEY": "k"})
    ch = router.channels[0]
    assert ch.max_concurrency == 24
    assert ch.model_concurrency == {"flux-kontext-max": 6}
    assert await _run(ch, 50, "flux-kontext-max") == 6
    assert await _run(ch, 50, "flux-kontext-pro") == 24


async def test_configured_model_cap() -> None:
    router = build_router(settings({"name": "s", "type": "sandbox", "max_concurrency": 10,
                                    "model_concurrency": {"flux-kontext-max": 2}}), env={})
    assert await _run(router.channels[0], 50, "flux-kontext-max") == 2


async def test_cancelled_waiter_gives_back_its_model_slot() -> None:
    ch = Channel(ChannelSettings(name="s", type="sandbox", max_concurrency=1,
                                 model_concurrency={"m": 5}), SandboxAdapter())
    await ch.acquire("m")
    waiter = asyncio.create_task(ch.acquire("m"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    ch.release("m")
    assert await _run(ch, 10, "m") == 1


# --- zero-config and build ---------------------------------------------------------------------

async def test_zero_config_channels_from_env() -> None:
    router = build_router(Settings(),
                          env={"FAL_KEY": "f", "BFL_API_KEY": "b", "REPLICATE_API_TOKEN": "r"})
    assert [c.name for c in router.channels] == ["bfl", "fal", "replicate"]
    assert all(c.disabled_reason is None for c in router.channels)
    assert [c.name for c in router.candidates("flux-kontext-pro")] == ["bfl", "fal", "replicate"]
    assert [c.name for c in router.candidates("flux-kontext-dev")] == ["replicate"]
    assert [c.name for c in router.candidates("flux-kontext-pro", input_images=3)] == \
        ["bfl", "fal"]
    assert router.test_channel is not None and router.test_channel.kind == "sandbox"
    assert router.test_channel not in router.channels
    assert router.get("sandbox") is router.test_channel


async def test_one_credential_one_channel() -> None:
    router = build_router(Settings(), env={"REPLICATE_API_TOKEN": "r8_x"})
    assert [(c.name, c.kind) for c in router.channels] == [("replicate", "replicate")]


async def test_no_credentials_sandbox_serves_everything() -> None:
    router = build_router(Settings(), env={})
    assert [c.kind for c in router.channels] == ["sandbox"]
    # every model of every family (Kontext, FLUX.2, FLUX 3 Image: gateway/families.py)
    from gateway.families import MODELS

    assert set(router.models()) == {m.id for m in MODELS}
    assert router.test_channel is router.channels[0]


async def test_configured_channels_win_over_env() -> None:
    cfg = settings({"name": "sbx", "type": "sandbox"},
                   {"name": "reseller", "type": "openai", "base_url": "https://r.example",
                    "api_key_env": "R_KEY", "models": {"flux-kontext-pro": "flux-kontext-pro"}})
    router = build_router(cfg, env={"BFL_API_KEY": "b", "R_KEY": "k"})
    assert [c.name for c in router.channels] == ["sbx", "reseller"]
    assert router.test_channel is router.channels[0]


async def test_missing_secret_disables_with_reason() -> None:
    router = build_router(settings({"name": "eu", "type": "bfl",
                                    "base_url": "https://api.eu.bfl.ai"}), env={})
    ch = router.channels[0]
    assert ch.disabled_reason is not None and "BFL_API_KEY" in ch.disabled_reason
    assert router.candidates("flux-kontext-pro") == []


@pytest.mark.parametrize("channel", [
    {"name": "x", "type": "bfl", "options": {"no_such_option": 1}},
    {"name": "x", "type": "openai"},  # no base_url
    {"name": "x", "type": "local_worker", "options": {"workers": "not a list"}},
])
async def test_bad_channel_is_a_config_error(channel: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"channels\.x"):
        build_router(settings(channel), env={"BFL_API_KEY": "k"})


async def test_config_example_channels_build() -> None:
    cfg = load_settings(EXAMPLE_CONFIG)
    env = {"BFL_API_KEY": "b", "FAL_KEY": "f", "REPLICATE_API_TOKEN": "r"}
    router = build_router(cfg, env=env, rng=random.Random(0))
    assert {c.kind for c in router.channels} == {"bfl", "fal", "replicate", "openai", "comfyui",
                                                   "local_worker", "sandbox"}
    assert [c.name for c in router.candidates("flux-kontext-pro")] == ["bfl", "fal", "replicate"]
    assert router.test_channel is not None and router.test_channel.kind == "sandbox"
